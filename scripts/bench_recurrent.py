"""One recurrent layer's prefill, token by token against chunked: Qwen3-Next-80B-A3B's gated DeltaNet layer,
Kimi-Linear-48B-A3B's Kimi Delta Attention layer (the delta rule with a decay per key channel) and
Granite-4.0-H-Small's Mamba2 layer (their config.json's widths, bfloat16, random weights), each over a step of
``--tokens`` tokens split evenly over ``--rows`` fresh rows, and one mixed step (a prefill beside ``--decodes``
decode rows, where the chunked path pads each short row to a chunk), in one process. The layer whole (projections, conv,
recurrence, gated norm, output projection) runs under jit on both paths, the path forced by the mixer's bucket rule
(``recurrent_state.use_chunks``) patched at trace time; the table also gives how far apart the two outputs are.

    python scripts/bench_recurrent.py                   # T = 512, 2048; 1 and 8 rows (a GPU's run)
    python scripts/bench_recurrent.py --tiny            # tiny widths on the CPU: that the script works
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from bench_common import environment, timed, write_json
from flax import nnx

from jllm.attention import AttentionMetadata
from jllm.models import gated_deltanet, mamba2
from jllm.models.registry import build_args

# the recurrent layers' widths of each model's config.json (its other keys only as the family reader needs them)
LAYERS = {
    "Qwen3-Next-80B-A3B gated DeltaNet": dict(
        architectures=["Qwen3NextForCausalLM"],
        hidden_size=2048,
        linear_num_key_heads=16,
        linear_num_value_heads=32,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        linear_conv_kernel_dim=4,
        layer_types=["linear_attention", "full_attention"],
        num_attention_heads=16,
        num_key_value_heads=2,
        head_dim=256,
        num_experts=0,
    ),
    "Kimi-Linear-48B-A3B Kimi Delta Attention": dict(
        architectures=["KimiLinearForCausalLM"],
        hidden_size=2304,
        linear_attn_config=dict(num_heads=32, head_dim=128, short_conv_kernel_size=4),
        layer_types=["linear_attention", "full_attention"],
        mlp_layer_types=["dense", "dense"],
        num_attention_heads=32,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
    ),
    "Granite-4.0-H-Small Mamba2": dict(
        architectures=["GraniteMoeHybridForCausalLM"],
        hidden_size=4096,
        mamba_n_heads=128,
        mamba_d_head=64,
        mamba_n_groups=1,
        mamba_d_state=128,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_chunk_size=256,
        layer_types=["mamba", "attention"],
        num_attention_heads=32,
        num_key_value_heads=8,
        num_local_experts=0,
        shared_intermediate_size=1024,
        position_embedding_type="nope",
    ),
}
# --tiny: the same layers at a few channels (the chunked SSD in chunks of 32, so a step crosses chunks)
TINY = {
    "Qwen3-Next-80B-A3B gated DeltaNet": dict(
        hidden_size=64, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
        linear_value_head_dim=16, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    ),
    "Kimi-Linear-48B-A3B Kimi Delta Attention": dict(
        hidden_size=64, linear_attn_config=dict(num_heads=4, head_dim=16, short_conv_kernel_size=4),
        num_attention_heads=4, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
    ),
    "Granite-4.0-H-Small Mamba2": dict(
        hidden_size=64, mamba_n_heads=8, mamba_d_head=16, mamba_d_state=16, mamba_chunk_size=32,
        num_attention_heads=4, num_key_value_heads=2,
    ),
}  # fmt: skip
MIXER_MODULES = {"gated_deltanet": gated_deltanet, "mamba2": mamba2}


def random_layer(config: dict[str, Any], dtype: Any, seed: int) -> tuple[nnx.Module, Any, Any]:
    """The model's first recurrent layer's mixer with every parameter random (scaled so activations stay O(1)), the
    module whose ``use_chunks`` it calls, and its spec (``DeltaNetSpec`` or ``Mamba2Spec``)."""
    _, args = build_args(dict(config, vocab_size=256, intermediate_size=64, num_hidden_layers=2), dtype)
    spec = args.layers[0]
    if spec.mixer == "gated_deltanet":
        module, layer, mixer_spec = gated_deltanet, gated_deltanet.GatedDeltaNet(args, spec), args.deltanet
    else:
        module, layer, mixer_spec = mamba2, mamba2.Mamba2Mixer(args, spec), args.mamba2
    graphdef, params = nnx.split(layer)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [
        (jax.random.normal(k, x.shape, jnp.float32) * (x.shape[0] ** -0.5 if x.ndim > 1 else 0.5)).astype(x.dtype)
        for k, x in zip(keys, leaves, strict=True)
    ]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves)), module, mixer_spec


def step_meta(num_tokens: int, num_rows: int, decodes: int = 0) -> AttentionMetadata:
    """``num_tokens`` tokens: ``decodes`` one-token rows continuing a sequence, the rest split evenly over
    ``num_rows`` fresh rows; each row in its own state slot."""
    lens = np.full(num_rows, (num_tokens - decodes) // num_rows)
    lens[: (num_tokens - decodes) % num_rows] += 1
    lens = np.concatenate([lens, np.ones(decodes, int)])
    return AttentionMetadata(
        slot_mapping=jnp.zeros(num_tokens, jnp.int32),
        query_start_loc=jnp.asarray(np.cumsum([0, *lens]), jnp.int32),
        kv_lens=jnp.asarray(lens + 100 * (np.arange(len(lens)) >= num_rows), jnp.int32),
        block_tables=jnp.zeros((len(lens), 1), jnp.int32),
        state_slots=jnp.arange(1, len(lens) + 1, dtype=jnp.int32),
    )


def layer_program(layer: nnx.Module, module: Any, chunked: bool) -> Any:
    """The layer's prefill under jit, its path forced: ``use_chunks`` patched while it traces."""
    graphdef, state = nnx.split(layer)

    def run(state: nnx.State, x: jax.Array, pool: tuple, meta: AttentionMetadata) -> tuple:
        with mock.patch.object(module, "use_chunks", lambda *_: chunked):
            return nnx.merge(graphdef, state)(x, None, None, pool, meta)

    return functools.partial(jax.jit(run), state)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="512,2048", help="the step's tokens, comma-separated")
    parser.add_argument("--rows", default="1,8", help="rows the tokens are split over, comma-separated")
    parser.add_argument(
        "--decodes",
        type=int,
        default=63,
        help="one more step: the largest --tokens as one prefill beside this many decode rows "
        "(63: a mixed step in the default bucket of 2048 tokens x 64 rows); 0 skips it",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tiny", action="store_true", help="tiny widths (a CPU check that the script runs)")
    parser.add_argument("--json", type=Path, metavar="PATH")
    args = parser.parse_args(argv)
    tokens, rows_list = ([int(v) for v in s.split(",")] for s in (args.tokens, args.rows))
    env = environment()
    print(f"card: {env['card']} ({env['platform']}); jax {env['versions']['jax']}; {args.dtype}, random weights, "
          f"prefill rows fresh; median of {args.repeats}{'; tiny widths' if args.tiny else ''}")  # fmt: skip
    layers = {}
    for seed, (name, config) in enumerate(LAYERS.items()):
        config = dict(config, **TINY[name]) if args.tiny else config
        layers[name] = (config, *random_layer(config, args.dtype, seed))
        print(f"{name}: hidden {config['hidden_size']}, {layers[name][-1]}")
    print("\n| layer | tokens | rows | token by token ms | chunked ms | speed-up | outputs' relative difference |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    results = []
    for seed, (name, (config, layer, module, mixer_spec)) in enumerate(layers.items()):
        state_spec = mixer_spec.state_spec(args.dtype)
        paths = {chunked: layer_program(layer, module, chunked) for chunked in (False, True)}
        cases = [(t, r, 0) for t in tokens for r in rows_list]
        cases += [(max(tokens), 1, args.decodes)] if args.decodes else []
        for num_tokens, num_rows, decodes in cases:
            meta, pool = step_meta(num_tokens, num_rows, decodes), state_spec.zeros(num_rows + decodes + 1)
            x = jax.random.normal(jax.random.key(seed), (num_tokens, config["hidden_size"]), args.dtype)
            ms, outs = {}, {}
            for chunked, program in paths.items():
                call = functools.partial(program, x, pool, meta)
                ms[chunked] = 1e3 * float(np.median(timed(call, args.repeats)))
                outs[chunked] = np.asarray(call()[0], np.float32)
            diff = float(np.linalg.norm(outs[True] - outs[False]) / np.linalg.norm(outs[False]))
            rows = f"{num_rows} + {decodes} decodes" if decodes else num_rows
            print(f"| {name} | {num_tokens} | {rows} | {ms[False]:.2f} | {ms[True]:.2f} | "
                  f"{ms[False] / ms[True]:.1f}x | {diff:.1e} |", flush=True)  # fmt: skip
            case = {"layer": name, "tokens": num_tokens, "rows": num_rows, "decodes": decodes}
            results.append(dict(case, token_by_token_ms=ms[False], chunked_ms=ms[True], relative_difference=diff))
    write_json(args.json, {"environment": env, "dtype": args.dtype, "tiny": args.tiny, "results": results})
    return results


if __name__ == "__main__":
    main()

"""Tensor-parallel checks on 8 fake CPU devices, run by tests/test_tensor_parallel.py in a subprocess.

``XLA_FLAGS`` must be set before JAX starts, so these checks cannot share the pytest process. Every check runs here
once and the findings go to one JSON file, so the test pays for JAX start-up and each compilation only once.

Usage: ``python tests/tp_worker.py SPEC.json OUT.json`` where SPEC names the model directories (see ``main``); a
SPEC with ``families`` (name -> [model directory, TP sizes]) runs only ``family_case`` for each
(tests/test_families.py).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import contextlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

sys.path[:0] = [str(Path(__file__).parents[1]), str(Path(__file__).parent)]  # this checkout's jllm, model helpers
from test_kernels import make_inputs  # noqa: E402

from jllm import LLM, SamplingParams, kv_cache, parallel  # noqa: E402
from jllm.attention import AttentionMetadata, kernel_head_dim, paged_attention  # noqa: E402
from jllm.loader import LoadedModel, load_model, save_model  # noqa: E402
from jllm.safetensors_index import SafetensorsIndex  # noqa: E402

# Small engine: 2 step buckets (16 tokens x 1/4 sequences) compile in seconds.
ENGINE_ARGS = dict(dtype="float32", max_model_len=64, max_num_batched_tokens=16, max_num_seqs=4, num_pages=40)
# Ragged on purpose: the 40-token prompt is prefilled in 16-token chunks beside the decodes of the others.
PROMPTS = [[1, 5, 77, 300, 9000, 12, 40], [1, 2000, 3000, 4000], list(range(100, 140))]
# Per prompt: the 40-token prompt samples its first token 3 steps after the others, which decode 3 more so that the
# three finish together: its last decodes alone would compile a 1-token bucket's forward and a 1-row sampler more
GREEDY = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (15, 15, 12)]
# Requests that compile, on first use, the step programs greedy decoding leaves out: the random base sampler, and the
# general sampler (top-k, logprobs, a penalty) with the prompt-logprobs program. One token each: the prefill step
# compiles them all (in greedy's 4-token bucket), a decode of the prompt alone would only add a 1-token bucket.
OTHER_PROGRAMS = [
    SamplingParams(temperature=1.0, seed=0, max_tokens=1),
    SamplingParams(temperature=1.0, top_k=5, seed=0, max_tokens=1, logprobs=2, prompt_logprobs=2, presence_penalty=0.5),
]
# "%x = f32[16,576]{1,0} all-reduce(" -> ("f32", "16,576", "all-reduce")
COLLECTIVE = re.compile(
    r"= (\w+)\[([\d,]*)\]\S* (all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(?:-start)?\("
)


def prefill_logits(loaded: LoadedModel, token_ids: list[int], page_size: int = 16) -> np.ndarray:
    """Logits ``[T, vocab]`` of one prefill through a pool on the TP sharding.

    Parameters are jit arguments on their own shardings: a closure over the model would make them constants that
    XLA places on one device, and nothing would be partitioned.
    """
    args, mesh = loaded.args, loaded.mesh
    t = len(token_ids)
    pages = -(-t // page_size)
    spec = kv_cache.KVCacheSpec.for_model(args, page_size, args.dtype)
    pool = kv_cache.allocate_kv_pool(spec, pages + 1, parallel.kv_pool_sharding(mesh))
    positions = np.arange(t, dtype=np.int32)
    block_table = np.arange(1, 1 + pages, dtype=np.int32)  # page 0 is reserved
    meta = AttentionMetadata(
        slot_mapping=jnp.asarray(block_table[positions // page_size] * page_size + positions % page_size),
        query_start_loc=jnp.asarray([0, t], jnp.int32),
        kv_lens=jnp.asarray([t], jnp.int32),
        block_tables=jnp.asarray(block_table[None, :]),
    )
    graphdef, state = nnx.split(loaded.model)

    @jax.jit
    def forward(state: nnx.State, ids: jax.Array, pos: jax.Array, pool: list, meta: AttentionMetadata) -> jax.Array:
        model = nnx.merge(graphdef, state)
        hidden, _ = model(ids, pos, pool, meta)
        return model.compute_logits(hidden)

    return np.asarray(forward(state, jnp.asarray(token_ids, jnp.int32), jnp.asarray(positions), pool, meta))


@contextlib.contextmanager
def collectives_of_compiled_programs() -> Iterator[list[list[tuple[str, list[int]]]]]:
    """Records, for every program compiled inside the block, its collectives as (op, result dims)."""
    programs: list[list[tuple[str, list[int]]]] = []
    compile_ = jax.stages.Lowered.compile

    def spy(self: jax.stages.Lowered, *args: Any, **kwargs: Any) -> jax.stages.Compiled:
        compiled = compile_(self, *args, **kwargs)
        found = COLLECTIVE.findall(compiled.as_text())
        programs.append([(op, [int(d) for d in dims.split(",") if d]) for _, dims, op in found])
        return compiled

    jax.stages.Lowered.compile = spy
    try:
        yield programs
    finally:
        jax.stages.Lowered.compile = compile_


def placement(llm: LLM) -> dict[str, Any]:
    """Every parameter's and the pool's spec, global bytes and bytes on each device."""

    def describe(x: jax.Array) -> dict[str, Any]:
        return {
            "spec": str(x.sharding.spec),
            "shape": list(x.shape),
            "nbytes": x.nbytes,
            "device_nbytes": [s.data.nbytes for s in x.addressable_shards],
            "device_shapes": [list(s.data.shape) for s in x.addressable_shards],
        }

    engine = llm.engine
    params = {"/".join(map(str, p)): describe(v.get_value()) for p, v in nnx.to_flat_state(engine.runner.state)}
    pool = engine.runner.kv_caches[0]
    return {
        "params": params,
        "pool": describe(pool),
        "pool_sharding_ok": pool.sharding.is_equivalent_to(parallel.kv_pool_sharding(engine.runner.mesh), pool.ndim),
    }


def generate_case(model_dir: str, sizes: list[int]) -> dict[str, Any]:
    """Greedy tokens, prefill logits, placements, and the names and collectives of the engine's step programs
    (compiled on first use: greedy decoding's, and above TP 1 ``OTHER_PROGRAMS``') at each TP size; logits compared
    with TP=1's here."""
    results: dict[str, Any] = {}
    reference = None
    for tp in [1, *sizes]:
        llm = LLM(model_dir, tensor_parallel_size=tp, compile_at_start=False, **ENGINE_ARGS)
        with collectives_of_compiled_programs() as step_collectives:
            tokens = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
            for params in OTHER_PROGRAMS if tp > 1 else []:  # TP 1 is only the tokens' and logits' reference
                llm.generate([PROMPTS[1]], params, use_tqdm=False)
        logits = prefill_logits(llm.engine.runner.loaded, PROMPTS[2])
        reference = logits if reference is None else reference
        results[str(tp)] = {
            "tokens": tokens,
            "logits_max_abs_diff": float(np.abs(logits - reference).max()),
            "logits_max_abs": float(np.abs(reference).max()),
            "step_collectives": step_collectives,
            "programs": sorted({name for name, _, _ in llm.engine.runner.compiled_programs()}),
            "num_layers": llm.engine.runner.loaded.args.num_layers,
            "hidden_size": llm.engine.runner.loaded.args.hidden_size,
            "kv_replicas": llm.engine.runner.loaded.kv_replicas,
            **placement(llm),
        }
        del llm
    return results


def family_case(model_dir: str, sizes: list[int], out: Path) -> dict[str, Any]:
    """Greedy tokens and the last prompt's prefill logits (an .npy file in ``out``) at each TP size, which
    tests/test_families.py compares with transformers' own (no TP 1 run: its engine would cost a compile)."""
    results: dict[str, Any] = {}
    for tp in sizes:  # programs compiled on first use: only generate_case inspects warm-up's
        llm = LLM(model_dir, tensor_parallel_size=tp, compile_at_start=False, **ENGINE_ARGS)
        logits = out / f"{Path(model_dir).name}_tp{tp}.npy"
        np.save(logits, prefill_logits(llm.engine.runner.loaded, PROMPTS[2]))
        tokens = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
        results[str(tp)] = {"tokens": tokens, "logits_file": str(logits)}
        del llm
    return results


def refused(model_dir: str, tp: int) -> str:
    try:
        LLM(model_dir, tensor_parallel_size=tp, **ENGINE_ARGS)
    except ValueError as e:
        return str(e)
    return "accepted"


def loader_reads(model_dir: str, tp: int) -> dict[str, list[int]]:
    """Per checkpoint tensor: [elements of the largest single read, the tensor's elements, number of reads]."""
    reads: dict[str, list[int]] = {}
    slice_reader = SafetensorsIndex.slice_reader

    def spy(self: SafetensorsIndex, name: str, shape: tuple[int, ...], transpose: bool, dtype: Any):
        read = slice_reader(self, name, shape, transpose, dtype)

        def counted(index: tuple[slice, ...]) -> np.ndarray:
            part = read(index)
            entry = reads.setdefault(name, [0, int(np.prod(shape)), 0])
            entry[0], entry[2] = max(entry[0], part.size), entry[2] + 1
            return part

        return counted

    SafetensorsIndex.slice_reader = spy
    try:
        load_model(model_dir, mesh=parallel.make_mesh(tp), dtype="float32")
    finally:
        SafetensorsIndex.slice_reader = slice_reader
    return reads


def params_of(loaded: LoadedModel) -> dict[str, jax.Array]:
    return {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(nnx.state(loaded.model, nnx.Param))}


def orbax_round_trip(model_dir: str, save_tp: int, restore_tps: list[int], out: Path) -> dict[str, Any]:
    """Saves at ``save_tp``, restores at each of ``restore_tps``; compares with safetensors loads at that size."""
    saved = save_model(load_model(model_dir, mesh=parallel.make_mesh(save_tp), dtype="float32"), out)
    results = {}
    for tp in restore_tps:
        mesh = parallel.make_mesh(tp)
        restored = params_of(load_model(saved, mesh=mesh, dtype="float32", load_format="orbax"))
        direct = params_of(load_model(model_dir, mesh=mesh, dtype="float32", load_format="safetensors"))
        results[str(tp)] = {
            "same_keys": restored.keys() == direct.keys(),
            "max_abs_diff": max(float(np.abs(np.asarray(restored[k]) - np.asarray(direct[k])).max()) for k in direct),
            "same_shardings": all(restored[k].sharding == direct[k].sharding for k in direct),
            "devices": sorted({len(x.sharding.device_set) for x in restored.values()}),
        }
    return results


def pallas_under_shard_map(sizes: list[int], num_kv_heads: int = 4, head_dim: int = 16) -> dict[str, float]:
    """The Pallas kernel (interpreted) per device under shard_map vs the reference on one device, with attention
    sinks (gpt-oss's), which split with the query heads. A ``head_dim`` of no power-of-two width is read by the
    kernel from a pool padded to the next (``resolve_pool``), the reference from the model's: the outputs and the
    written pool's model channels compared, its padding channels required zero."""
    q, pool, kv_lens, block_tables, qsl = make_inputs(
        0, [1, 5, 3], [17, 21, 3], page_size=16, head_dim=head_dim, group=2, dtype=jnp.float32,
        num_kv_heads=num_kv_heads,
    )  # fmt: skip
    k = jnp.asarray(np.random.default_rng(1).standard_normal((q.shape[0], num_kv_heads, head_dim)), jnp.float32)
    sinks = jnp.asarray(np.random.default_rng(2).normal(size=q.shape[1]), jnp.float32)
    slots = jnp.arange(q.shape[0], dtype=jnp.int32) + 16  # this step's K/V go to page 1

    @jax.jit
    def attend(q: jax.Array, k: jax.Array, pool: jax.Array, meta: AttentionMetadata) -> tuple[jax.Array, jax.Array]:
        return paged_attention(q, k, -k, pool, meta, sm_scale=0.25, sinks=sinks)

    ref_out, ref_pool = attend(q, k, pool, AttentionMetadata(slots, qsl, kv_lens, block_tables))
    padded_pool = jnp.pad(pool, [(0, 0)] * 4 + [(0, kernel_head_dim(head_dim) - head_dim)])
    results = {}
    for tp in sizes:
        mesh = parallel.make_mesh(tp)
        heads = NamedSharding(mesh, PartitionSpec(None, parallel.TP_AXIS))
        meta = AttentionMetadata(slots, qsl, kv_lens, block_tables, backend="pallas", mesh=mesh)
        out, new_pool = attend(
            jax.device_put(q, heads),
            jax.device_put(k, heads),
            jax.device_put(padded_pool, parallel.kv_pool_sharding(mesh)),
            meta,
        )
        results[str(tp)] = max(
            float(np.abs(np.asarray(out) - np.asarray(ref_out)).max()),
            float(np.abs(np.asarray(new_pool[..., :head_dim]) - np.asarray(ref_pool)).max()),
            float(np.abs(np.asarray(new_pool[..., head_dim:])).max(initial=0.0)),
        )
    return results


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    os.environ["JLLM_CACHE"] = spec["cache_dir"]  # keeps the persistent compilation cache out of the user's home
    if "families" in spec:
        out = Path(sys.argv[2]).parent
        found = {name: family_case(model_dir, sizes, out) for name, (model_dir, sizes) in spec["families"].items()}
        Path(sys.argv[2]).write_text(json.dumps({"devices": jax.device_count(), "generate": found}))
        return
    # these checks keep the machine code optimized (run_tp_worker sets LLVM's level 0): at level 0 the 9q_3kv model's
    # TP 3 run had a device thread reach an all-reduce over 40 s after the others, and XLA ended the process (its
    # rendezvous timeout; two runs of two on this loaded 2-core machine, 2026-12-08)
    jax.config.update("jax_disable_most_optimizations", False)
    odd, gqa, replicated = spec["model_9q_3kv"], spec["model_32q_8kv"], spec["model_16q_2kv"]
    tmp = Path(spec["tmp_dir"])
    results = {
        "devices": jax.device_count(),
        "engine_args": ENGINE_ARGS,
        "refused": {
            "9q_3kv_tp2": refused(odd, 2),
            "9q_3kv_tp4": refused(odd, 4),
            "16q_2kv_tp3": refused(replicated, 3),
        },
        "loader_reads": {"32q_8kv_tp4": loader_reads(gqa, 4), "16q_2kv_tp8": loader_reads(replicated, 8)},
        "orbax": {
            "32q_8kv_saved_tp1": orbax_round_trip(gqa, 1, [2], tmp / "saved_32q_8kv"),
            "16q_2kv_saved_tp8": orbax_round_trip(replicated, 8, [1, 4], tmp / "saved_16q_2kv"),
        },
        "pallas_shard_map": pallas_under_shard_map([2, 4]),
        "pallas_shard_map_padded_24": pallas_under_shard_map([2], head_dim=24),
        "generate": {
            "9q_3kv": generate_case(odd, [3]),
            "32q_8kv": generate_case(gqa, [2, 8]),
            "16q_2kv": generate_case(replicated, [4, 8]),
        },
    }
    Path(sys.argv[2]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()

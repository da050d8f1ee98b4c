"""Model load time: converting from safetensors vs restoring jllm's own orbax checkpoint of the same params.

For the default model and for a random-weight Llama built with transformers (saved sharded), times
``jllm.loader.load_model(hf_dir)`` (safetensors -> params) against ``load_model(saved_dir)`` where ``saved_dir`` was
written by ``jllm.loader.save_model`` (orbax restore). Best of ``--repeats`` runs each, after the files are in the
OS page cache (the first run reads them), so the numbers compare the loaders rather than the disk.

    python scripts/bench_load.py --json load.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
from flax import nnx
from machine_info import cpu_name

from jllm.loader import load_model, save_model
from jllm.model_source import DEFAULT_MODEL, resolve_model
from jllm.parallel import make_mesh


def machine() -> str:
    """The CPU and the JAX platform the numbers came from."""
    return f"{cpu_name()}, jax {jax.__version__} on {jax.devices()[0].platform}"


def random_llama(out_dir: Path, layers: int, hidden: int, dtype: str) -> Path:
    """A random-weight Llama (GQA 4:1, MLP 8/3 x hidden, 32k vocab, untied head) saved as sharded safetensors."""
    import torch
    import transformers

    heads = hidden // 128
    config = transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 256 * 256,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(getattr(torch, dtype)).eval()
    model.save_pretrained(out_dir, max_shard_size="500MB", safe_serialization=True)
    return out_dir


def best_of(repeats: int, load: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(nnx.state(load().model))  # type: ignore[attr-defined]
        times.append(time.perf_counter() - start)
    return min(times)


def bench(name: str, hf_dir: Path, work: Path, repeats: int) -> dict:
    mesh = make_mesh(1)
    loaded = load_model(hf_dir, mesh=mesh)
    params = sum(x.size for x in jax.tree.leaves(nnx.state(loaded.model, nnx.Param)))
    dtype = str(jax.tree.leaves(nnx.state(loaded.model, nnx.Param))[0].dtype)
    saved = save_model(loaded, work / f"{name}-orbax")
    del loaded
    convert_s = best_of(repeats, lambda: load_model(hf_dir, mesh=mesh, load_format="safetensors"))
    restore_s = best_of(repeats, lambda: load_model(saved, mesh=mesh, load_format="orbax"))
    return dict(
        model=name, params_m=round(params / 1e6, 1), dtype=dtype, convert_s=convert_s, restore_s=restore_s,
        speedup=convert_s / restore_s,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per loader; the best is reported")
    parser.add_argument("--layers", type=int, default=16, help="layers of the random Llama")
    parser.add_argument("--hidden-size", type=int, default=1536, help="hidden size of the random Llama")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16", help="random Llama's dtype")
    parser.add_argument("--skip-default", action="store_true", help="only the random Llama")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        work = Path(tmp)
        if not args.skip_default:
            results.append(bench(DEFAULT_MODEL, resolve_model(None), work, args.repeats))
        hf_dir = random_llama(work / "random-llama", args.layers, args.hidden_size, args.dtype)
        results.append(bench(f"random-llama-{args.layers}x{args.hidden_size}", hf_dir, work, args.repeats))

    print(f"machine: {machine()}; best of {args.repeats}")
    print(f"{'model':<34} {'params':>8} {'dtype':>9} {'convert s':>10} {'restore s':>10} {'convert/restore':>16}")
    for r in results:
        print(
            f"{r['model']:<34} {r['params_m']:>7}M {r['dtype']:>9} {r['convert_s']:>10.2f} {r['restore_s']:>10.2f}"
            f" {r['speedup']:>15.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "repeats": args.repeats, "results": results}, indent=2))


if __name__ == "__main__":
    main()

"""Quantized weights beside the model dtype, in one process: decode TPOT at a few batch sizes and prefill
throughput for each scheme (the model dtype, ``int8``, ``fp8`` weight-only, ``fp8`` FP8 x FP8, ``fp8`` W8A8 decodes in
the Triton kernel, ``fp8`` with the one-row kernel in Pallas).

Each scheme is one engine built from the YAML (``load_format: dummy`` works with every scheme) plus its keys, run
and released before the next. TPOT is ``bench_latency``'s measurement (generate ``--output-len`` tokens minus
generate 1, over ``--output-len - 1``, median of ``--repeats`` pairs after a warm-up, fresh random prompts of
``--input-len`` tokens). Prefill throughput: prompt tokens per second of a 1-token generate of ``--prefill-batch``
prompts of ``--prefill-len`` tokens (one decode step included), median of ``--repeats`` after a warm-up.

``fp8`` is the engine's defaults (what ``quantization: fp8`` alone gives); ``fp8 weight-only`` sets
``fp8_dot_min_tokens`` past every bucket (on one GPU with jax-triton its one-row steps run
the Triton FP8-weight kernel; ``fp8 weight-only XLA`` keeps them in XLA), ``fp8 x fp8`` sets it to 1 (decodes too), so
the table shows each mode at every batch size; the engine's default (FP8 x FP8 from ``fp8_dot_min_tokens`` tokens)
is then the faster of the two per bucket, to be read off here. ``fp8 w8a8 kernel`` runs steps of up to 64 tokens
(decodes of up to 64 sequences) in the Triton kernel's W8A8 mode (``fp8_kernel_compute: dot_fp8``: activations
quantized per token in the kernel, e4m3 x e4m3 MMAs) and the rest as the engine's default (prefill FP8 x FP8 in XLA).
``fp8 pallas kernel`` is ``fp8`` with its one-row steps in the Pallas port of the kernel (``fp8_kernel_backend:
pallas``: the same arithmetic, lowered by XLA as a native kernel rather than a custom call its CUDA graphs re-trace).

    PYTHONPATH=. python scripts/bench_quantization.py --config configs/llama3-8b-h200.yaml --json q.json
    PYTHONPATH=. python scripts/bench_quantization.py --config configs/bench-tiny-cpu.yaml --batch-sizes 1,4 \\
        --input-len 16 --output-len 8 --prefill-len 64 --prefill-batch 2 --repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import bench_common as common
import numpy as np
from bench_latency import measure_latency

NEVER = 1 << 30  # an fp8_dot_min_tokens no bucket reaches
SCHEMES: dict[str, dict[str, Any]] = {
    "model dtype": {"quantization": None},
    "int8": {"quantization": "int8"},
    "fp8": {"quantization": "fp8"},  # the engine's defaults: FP8 x FP8 from fp8_dot_min_tokens, weight-only below
    "fp8 weight-only": {"quantization": "fp8", "fp8_dot_min_tokens": NEVER},
    "fp8 weight-only XLA": {"quantization": "fp8", "fp8_dot_min_tokens": NEVER, "fp8_kernel_max_tokens": None},
    "fp8 x fp8": {"quantization": "fp8", "fp8_dot_min_tokens": 1},
    "fp8 w8a8 kernel": {"quantization": "fp8", "fp8_kernel_compute": "dot_fp8", "fp8_kernel_max_tokens": 64},
    # the engine's defaults with the one-row kernel as Pallas (lowered by XLA itself) instead of jax-triton: "fp8"
    # beside it shows whether the host's per-step launch cost of the jax-triton calls goes away
    "fp8 pallas kernel": {"quantization": "fp8", "fp8_kernel_backend": "pallas"},
}


def prefill_throughput(generate: common.Generate, batches: list[list[list[int]]]) -> dict[str, Any]:
    """Prompt tokens per second of 1-token generates: ``batches[0]`` warms up, the rest are timed."""
    generate(batches[0], [1] * len(batches[0]))
    seconds = []
    for batch in batches[1:]:
        start = time.perf_counter()
        generate(batch, [1] * len(batch))
        seconds.append(time.perf_counter() - start)
    tokens = sum(len(p) for p in batches[1])
    return {"prefill_s": seconds, "prefill_tok_s": tokens / statistics.median(seconds)}


def run_scheme(llm: Any, args: argparse.Namespace, rng: np.random.Generator, vocab: int) -> dict[str, Any]:
    generate = common.jllm_generator(llm)
    decode = {}
    for b in args.batch_sizes:
        batches = [common.random_prompts(rng, [args.input_len] * b, vocab) for _ in range(1 + 2 * args.repeats)]
        measured = measure_latency(generate, batches, args.output_len)
        decode[b] = {k: v for k, v in measured.items() if k != "tokens"}
        print(f"  batch {b}: TPOT {decode[b]['tpot_ms']:.2f} ms", flush=True)
    prompts = [
        common.random_prompts(rng, [args.prefill_len] * args.prefill_batch, vocab) for _ in range(1 + args.repeats)
    ]
    prefill = prefill_throughput(generate, prompts)
    print(f"  prefill: {prefill['prefill_tok_s']:,.0f} prompt tok/s", flush=True)
    return {"decode": decode, **prefill}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from jllm import LLM, distributed

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path("configs/llama3-8b-h200.yaml")
    parser.add_argument("--config", type=Path, default=default, help=f"engine YAML (default {default})")
    parser.add_argument("--schemes", type=lambda s: s.split(","), default=list(SCHEMES),
                        help=f"comma-separated, of: {', '.join(SCHEMES)} (default all)")  # fmt: skip
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32, 256],
                        help="decode batch sizes (default 1,32,256)")  # fmt: skip
    parser.add_argument("--input-len", type=int, default=128, help="decode prompts' tokens (default 128)")
    parser.add_argument("--output-len", type=int, default=64, help="generated tokens, >= 2 (default 64)")
    parser.add_argument("--prefill-len", type=int, default=1024, help="prefill prompts' tokens (default 1024)")
    parser.add_argument("--prefill-batch", type=int, default=16, help="prompts per prefill run (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per figure; median reported")
    parser.add_argument("--seed", type=int, default=0, help="seeds the prompts")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    unknown = [s for s in args.schemes if s not in SCHEMES]
    if unknown:
        parser.error(f"--schemes: unknown {unknown}; choose from {', '.join(SCHEMES)}")
    if args.output_len < 2:
        parser.error(f"--output-len={args.output_len}: TPOT needs at least 2 output tokens")
    bench = common.load_bench_model(args.config)
    if max(args.batch_sizes) > bench.engine.scheduler.max_num_seqs:
        parser.error(f"--batch-sizes up to {max(args.batch_sizes)} exceed max_num_seqs="
                     f"{bench.engine.scheduler.max_num_seqs} of {args.config}: raise it there")  # fmt: skip

    distributed.initialize(bench.engine.parallel)
    result: dict[str, Any] = {
        "environment": common.environment(), "ceilings": common.device_ceilings(bench.dtype),
        "model": bench.describe(same_weights=False), "engine": bench.engine.to_flat(), "input_len": args.input_len,
        "output_len": args.output_len, "prefill_len": args.prefill_len, "prefill_batch": args.prefill_batch,
        "repeats": args.repeats, "startup_s": {}, "schemes": {},
    }  # fmt: skip
    for name in args.schemes:
        start = time.perf_counter()
        llm = LLM(config=args.config, **SCHEMES[name])
        result["startup_s"][name] = time.perf_counter() - start
        print(f"{name} (start-up {result['startup_s'][name]:.1f} s):", flush=True)
        result["schemes"][name] = run_scheme(llm, args, np.random.default_rng(args.seed), bench.vocab)
        llm.engine.release()
        del llm
    result["jllm_startup_s"] = max(result["startup_s"].values())
    print_table(result, args.batch_sizes)
    common.write_json(args.json, result)
    return result


def print_table(result: dict[str, Any], batch_sizes: list[int]) -> None:
    common.print_header(
        result,
        f"decode: prompts of {result['input_len']} tokens, {result['output_len']} output tokens, greedy; prefill: "
        f"{result['prefill_batch']} x {result['prefill_len']} tokens; start-up below is the slowest scheme's",
    )
    base = next(iter(result["schemes"].values()))
    header = [f"batch {b} TPOT ms" for b in batch_sizes]
    print(f"\n| scheme | {' | '.join(header)} | prefill tok/s | start-up s |")
    print("|" + " --- |" * (len(header) + 3))
    for name, r in result["schemes"].items():
        cells = [
            f"{r['decode'][b]['tpot_ms']:.2f} ({base['decode'][b]['tpot_ms'] / r['decode'][b]['tpot_ms']:.2f}x)"
            for b in batch_sizes
        ]
        speedup = r["prefill_tok_s"] / base["prefill_tok_s"]
        cells += [f"{r['prefill_tok_s']:,.0f} ({speedup:.2f}x)", f"{result['startup_s'][name]:.1f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("(x: the first scheme's time over this one's, or this one's throughput over the first's)")


if __name__ == "__main__":
    main()

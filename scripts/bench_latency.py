"""Latency of small batches: time to first token (TTFT) and time per output token (TPOT), jllm beside transformers
and the roofline (transformers in a child process that exits before jllm starts).

For each of ``--batch-sizes``: that many random token-id prompts of ``--input-len`` tokens, greedy, EOS ignored.
TTFT is the wall time of a generate of 1 token; TPOT = (generate ``--output-len`` tokens - generate 1 token) /
(``--output-len`` - 1), each on fresh prompts (no prefix-cache hits), median of ``--repeats`` pairs after one
warm-up call. jllm runs through its offline API (``LLM.generate``) with the YAML's engine keys; transformers
(eager PyTorch ``generate``; on CUDA in jllm's dtype, on the CPU in float32; random weights of the same config) on
the same prompts.
The roofline divides what must move (weights, KV) by the measured copy bandwidth and what must be computed by the
measured matmul rate (``bench_common.generation_roofline``). With ``--same-weights`` jllm loads transformers' random
weights (saved as safetensors) instead of ``load_format: dummy``, and the greedy tokens of both are compared.

    PYTHONPATH=. python scripts/bench_latency.py --config configs/llama3-8b-h200.yaml --batch-sizes 1,8 --json l.json
    PYTHONPATH=. python scripts/bench_latency.py --config configs/bench-tiny-cpu.yaml --input-len 16 --output-len 16
    PYTHONPATH=. python scripts/bench_latency.py --config configs/llama3-8b-fp8-h200.yaml --skip-hf --batch-sizes 64 \
        --input-len 8000 --set max_model_len=8192 --set kv_cache_dtype=fp8   # --set: any engine key over the YAML's
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_common as common
import numpy as np


def measure_latency(generate: common.Generate, batches: list[list[list[int]]], output_len: int) -> dict[str, Any]:
    """TTFT and TPOT of one batch shape. ``batches``: a warm-up batch, then one (1-token, full-length) pair of
    batches per repeat, all distinct so no run reuses another's prompt pages. The warm-up is full-length: a first
    run pays one-time costs (on an H100, transformers' first 128-token run took 2.7x the time of its second)."""
    n = len(batches[0])
    generate(batches[0], [output_len] * n)
    first, full, tokens = [], [], []
    for one_batch, full_batch in zip(batches[1::2], batches[2::2], strict=True):
        t = time.perf_counter()
        generate(one_batch, [1] * n)
        first.append(time.perf_counter() - t)
        t = time.perf_counter()
        tokens.append(generate(full_batch, [output_len] * n))
        full.append(time.perf_counter() - t)
    tpot = [(f - o) / (output_len - 1) for f, o in zip(full, first, strict=True)]
    return {
        "ttft_ms": 1e3 * statistics.median(first), "tpot_ms": 1e3 * statistics.median(tpot),
        "gen1_s": first, "gen_full_s": full, "tpot_ms_all": [1e3 * t for t in tpot], "tokens": tokens,
    }  # fmt: skip


def run_engine(
    generate: common.Generate, batches: dict[int, list[list[list[int]]]], output_len: int
) -> dict[int, dict]:
    results = {}
    for b, batch_list in batches.items():
        results[b] = measure_latency(generate, batch_list, output_len)
        print(f"  batch {b}: TTFT {results[b]['ttft_ms']:.2f} ms, TPOT {results[b]['tpot_ms']:.2f} ms", flush=True)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1],
                        help="comma-separated batch sizes (default 1)")  # fmt: skip
    parser.add_argument("--input-len", type=int, default=128, help="prompt tokens (default 128)")
    parser.add_argument("--output-len", type=int, default=128, help="generated tokens, >= 2 (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per batch size; median reported")
    args, bench = common.parse_args(parser, argv)
    if args.output_len < 2:
        parser.error(f"--output-len={args.output_len}: TPOT needs at least 2 output tokens")
    if max(args.batch_sizes) > bench.engine.scheduler.max_num_seqs:
        parser.error(f"--batch-sizes up to {max(args.batch_sizes)} exceed max_num_seqs="
                     f"{bench.engine.scheduler.max_num_seqs} of {args.config}: raise it there")  # fmt: skip
    rng = np.random.default_rng(args.seed)  # both engines get the same prompts
    batches = {b: [common.random_prompts(rng, [args.input_len] * b, bench.vocab) for _ in range(1 + 2 * args.repeats)]
               for b in args.batch_sizes}  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="bench_latency_") as tmp:
        hf, overrides = common.run_baseline(
            args, bench, Path(tmp), functools.partial(run_engine, batches=batches, output_len=args.output_len)
        )
        llm, facts = common.start_jllm(bench, overrides)
        jllm = run_engine(common.jllm_generator(llm), batches, args.output_len)

    rows = []
    for b in args.batch_sizes:
        roof = bench.roofline([args.input_len] * b, [args.output_len] * b, b, facts["ceilings"])
        row: dict[str, Any] = {"batch_size": b, "jllm": without_tokens(jllm[b]), "roofline": roof}
        if hf is not None:
            row["transformers"] = without_tokens(hf["results"][b])
            if args.same_weights:
                flat = [[t for batch in r["tokens"] for t in batch] for r in (jllm[b], hf["results"][b])]
                row["agreement"] = common.agreement(*flat)
        rows.append(row)
    result = {
        **facts, "model": bench.describe(args.same_weights), "engine": bench.engine.to_flat(),
        "input_len": args.input_len, "output_len": args.output_len, "repeats": args.repeats,
        "same_weights": args.same_weights,
        "transformers": {k: v for k, v in hf.items() if k != "results"} if hf else None, "results": rows,
    }  # fmt: skip
    print_table(result)
    common.write_json(args.json, result)
    return result


def without_tokens(measured: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in measured.items() if k != "tokens"}


def print_table(result: dict[str, Any]) -> None:
    common.print_header(result, f"prompt {result['input_len']} tokens, {result['output_len']} output tokens, greedy")
    print(
        "\n| batch | jllm TTFT ms | jllm TPOT ms | HF TTFT ms | HF TPOT ms | roofline TTFT ms | roofline TPOT ms "
        "| jllm TPOT % of roofline | HF / jllm TPOT | greedy agreement |"
    )
    print("|" + " --- |" * 10)
    for r in result["results"]:
        j, roof, hf = r["jllm"], r["roofline"], r.get("transformers")
        agree = r.get("agreement")
        cells = [
            str(r["batch_size"]), f"{j['ttft_ms']:.2f}", f"{j['tpot_ms']:.2f}",
            f"{hf['ttft_ms']:.2f}" if hf else "-", f"{hf['tpot_ms']:.2f}" if hf else "-",
            f"{roof['ttft_ms']:.2f}", f"{roof['tpot_ms']:.2f}", f"{100 * roof['tpot_ms'] / j['tpot_ms']:.0f}",
            f"{hf['tpot_ms'] / j['tpot_ms']:.2f}x" if hf else "-",
            f"{agree['exact']}/{agree['prompts']}" if agree else "-",
        ]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

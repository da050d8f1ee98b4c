"""Offline throughput: jllm's ``LLM.generate`` on many prompts beside transformers (in a child process
that exits before jllm starts) and the roofline.

Datasets (random token ids; every prompt generates exactly its output length, greedy, EOS ignored):

- ``sharegpt-like`` (default): ``--num-prompts`` (input, output) lengths drawn independently, seeded, from lognormal
  distributions shaped like ShareGPT conversations under a Llama tokenizer: means 200 input and 180 output tokens,
  sigma 1.0 (so medians 121 and 109, and a long tail: 1.7 % of inputs pass 1,000 tokens); both at least 4
  tokens, inputs clipped to ``max_model_len - 4`` and outputs to what the context has left (clipping lowers the
  means a little where ``max_model_len`` is small).
- ``random``: every prompt ``--input-len`` tokens, every output ``--output-len`` (e.g. 1024/128 or 128/1024).

jllm gets every prompt at once after start-up and one warm-up call: output tokens/s and total (input + output)
tokens/s over the call's wall time. transformers (eager PyTorch ``generate``; on CUDA in jllm's dtype, on the CPU
in float32; random weights of the same config) runs the first ``--hf-num-prompts`` prompts, in their random order,
at each of ``--hf-batch-sizes``, left-padded, each batch as long as its longest output (static batching: shorter
outputs count only their own length, the rest is waste), each batch size for ``--hf-max-seconds`` at most (the
batch then running is cut, its tokens so far counted); its best output tokens/s is reported. The roofline is
``bench_common.generation_roofline`` at the YAML's ``max_num_seqs``. With ``--same-weights`` jllm loads
transformers' random weights and its greedy tokens are compared with those of transformers' smallest batch size.

    PYTHONPATH=. python scripts/bench_throughput.py --config configs/llama3-8b-h200.yaml --json tput.json
    PYTHONPATH=. python scripts/bench_throughput.py --dataset random --input-len 1024 --output-len 128
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_common as common
import numpy as np

SHAREGPT_MEAN_INPUT, SHAREGPT_MEAN_OUTPUT, SHAREGPT_SIGMA, MIN_LEN = 200, 180, 1.0, 4


def sharegpt_like_lengths(
    n: int,
    seed: int,
    max_model_len: int,
    mean_input: float = SHAREGPT_MEAN_INPUT,
    mean_output: float = SHAREGPT_MEAN_OUTPUT,
    sigma: float = SHAREGPT_SIGMA,
) -> tuple[list[int], list[int]]:
    """(input lengths, output lengths): lognormal with the given means (mu = ln(mean) - sigma^2 / 2), at least
    ``MIN_LEN`` each, clipped so that input + output fits ``max_model_len``."""
    rng = np.random.default_rng(seed)
    mu = lambda mean: math.log(mean) - sigma**2 / 2  # noqa: E731
    inputs = np.clip(np.rint(rng.lognormal(mu(mean_input), sigma, n)), MIN_LEN, max_model_len - MIN_LEN).astype(int)
    outputs = np.clip(np.rint(rng.lognormal(mu(mean_output), sigma, n)), MIN_LEN, max_model_len - inputs).astype(int)
    return inputs.tolist(), outputs.tolist()


def stats(lengths: list[int]) -> dict[str, float]:
    return {"mean": float(np.mean(lengths)), "median": float(np.median(lengths)), "min": min(lengths),
            "max": max(lengths), "total": sum(lengths)}  # fmt: skip


def hf_throughput(
    generate: Callable[..., list[list[int]]],
    prompts: list[list[int]],
    inputs: list[int],
    outputs: list[int],
    batch_sizes: list[int],
    max_seconds: float,
) -> list[dict[str, Any]]:
    """Per batch size: output and total tokens/s over ``max_seconds`` at most.

    ``generate(prompts, lengths, max_time=s)`` is transformers' (``bench_common.hf_generator``). A static batch runs
    as long as its longest output, so one batch of the long tail could take minutes: the batch running at the
    deadline is cut there, and the tokens it made so far count. Only whole batches' tokens are kept for agreement.
    """
    import torch

    k = len(prompts)
    generate([prompts[0][:8]], [2])  # warm-up: first-call allocations, kernels, lazy imports
    runs = []
    for b in batch_sizes:
        b = min(b, k)
        whole: list[list[int]] = []  # tokens of the batches that finished
        out_tokens = in_tokens = 0
        start = time.perf_counter()
        try:
            for i in range(0, k, b):
                left = max_seconds - (time.perf_counter() - start)
                if left <= 0:
                    break
                batch = generate(prompts[i : i + b], outputs[i : i + b], max_time=left)
                out_tokens += sum(map(len, batch))
                in_tokens += sum(inputs[i : i + b])
                if any(len(t) < n for t, n in zip(batch, outputs[i : i + b], strict=True)):
                    break  # cut by the deadline
                whole += batch
        except torch.OutOfMemoryError as e:
            torch.cuda.empty_cache()
            runs.append({"batch_size": b, "error": f"out of memory: {e}"[:300]})
            print(f"  batch {b}: out of memory", flush=True)
            continue
        wall = time.perf_counter() - start
        runs.append({
            "batch_size": b, "prompts": len(whole), "output_tokens": out_tokens, "wall_s": wall,
            "output_tokens_per_s": out_tokens / wall, "total_tokens_per_s": (out_tokens + in_tokens) / wall,
            "time_limited": len(whole) < k, "tokens": whole,
        })  # fmt: skip
        print(f"  batch {b}: {out_tokens / wall:.1f} output tokens/s ({len(whole)} whole prompts, {wall:.1f} s)",
              flush=True)  # fmt: skip
    return runs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--dataset", choices=["sharegpt-like", "random"], default="sharegpt-like")
    parser.add_argument("--num-prompts", type=int, default=1000, help="prompts jllm generates for (default 1000)")
    parser.add_argument("--input-len", type=int, default=1024, help="random dataset: prompt tokens (default 1024)")
    parser.add_argument("--output-len", type=int, default=128, help="random dataset: output tokens (default 128)")
    parser.add_argument("--hf-batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32, 128],
                        help="transformers: comma-separated batch sizes (default 1,8,32,128)")  # fmt: skip
    parser.add_argument("--hf-num-prompts", type=int, default=128, help="transformers: the first N prompts (128)")
    parser.add_argument("--hf-max-seconds", type=float, default=60.0,
                        help="transformers: seconds per batch size; the batch then running is cut (60)")  # fmt: skip
    args, bench = common.parse_args(parser, argv)
    if args.dataset == "random" and args.input_len + args.output_len > bench.max_model_len:
        parser.error(f"--input-len {args.input_len} + --output-len {args.output_len} exceed max_model_len="
                     f"{bench.max_model_len} of {args.config}")  # fmt: skip
    if args.dataset == "sharegpt-like":
        inputs, outputs = sharegpt_like_lengths(args.num_prompts, args.seed, bench.max_model_len)
    else:
        inputs, outputs = [args.input_len] * args.num_prompts, [args.output_len] * args.num_prompts
    prompts = common.random_prompts(np.random.default_rng(args.seed + 1), inputs, bench.vocab)
    k = args.hf_num_prompts

    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        hf, overrides = common.run_baseline(
            args,
            bench,
            Path(tmp),
            functools.partial(
                hf_throughput,
                prompts=prompts[:k],
                inputs=inputs[:k],
                outputs=outputs[:k],
                batch_sizes=args.hf_batch_sizes,
                max_seconds=args.hf_max_seconds,
            ),  # fmt: skip
        )
        llm, facts = common.start_jllm(bench, overrides)
        generate = common.jllm_generator(llm)
        warm_rng = np.random.default_rng(args.seed + 2)  # prompts of their own: no prefix-cache hits when timed
        generate(common.random_prompts(warm_rng, inputs[:2], bench.vocab), [min(8, n) for n in outputs[:2]])
        times = common.StepTimes()
        times.wrap(llm.engine)
        start = time.perf_counter()
        tokens = generate(prompts, outputs)
        wall = time.perf_counter() - start

    jllm = {
        "prompts": len(tokens), "output_tokens": sum(outputs), "wall_s": wall,
        "output_tokens_per_s": sum(outputs) / wall, "total_tokens_per_s": (sum(inputs) + sum(outputs)) / wall,
        "requests_per_s": len(tokens) / wall, "profile": times.summary(),
    }  # fmt: skip
    roof = bench.roofline(inputs, outputs, bench.engine.scheduler.max_num_seqs, facts["ceilings"])
    result: dict[str, Any] = {
        **facts, "model": bench.describe(args.same_weights), "engine": bench.engine.to_flat(),
        "dataset": {"name": args.dataset, "seed": args.seed, "prompts": args.num_prompts,
                    "input": stats(inputs), "output": stats(outputs)},
        "same_weights": args.same_weights, "jllm": jllm, "roofline": roof,
    }  # fmt: skip
    if hf is not None:
        runs = hf.pop("results")
        done = [r for r in runs if "error" not in r]
        if args.same_weights and done:
            ref = min(done, key=lambda r: r["batch_size"])
            result["agreement"] = {
                **common.agreement(tokens[: ref["prompts"]], ref["tokens"]),
                "hf_batch_size": ref["batch_size"],
            }
        hf["runs"] = [{k: v for k, v in r.items() if k != "tokens"} for r in runs]
        hf["best"] = max(hf["runs"], key=lambda r: r.get("output_tokens_per_s", 0.0))
        result["transformers"] = hf
    print_table(result)
    common.write_json(args.json, result)
    return result


def print_table(result: dict[str, Any]) -> None:
    d, j, roof = result["dataset"], result["jllm"], result["roofline"]
    common.print_header(
        result,
        f"dataset {d['name']} (seed {d['seed']}): {d['prompts']} prompts, input mean {d['input']['mean']:.0f} (max "
        f"{d['input']['max']}), output mean {d['output']['mean']:.0f} (max {d['output']['max']}) tokens, greedy",
    )
    print("\n| engine | batch | prompts | output tok/s | total tok/s | wall s |\n| --- | --- | --- | --- | --- | --- |")
    print(f"| jllm | <={result['engine']['max_num_seqs']} | {j['prompts']} | {j['output_tokens_per_s']:.1f} | "
          f"{j['total_tokens_per_s']:.1f} | {j['wall_s']:.2f} |")  # fmt: skip
    for r in result.get("transformers", {}).get("runs", []):
        if "error" in r:
            print(f"| transformers | {r['batch_size']} | - | {r['error'][:40]} | - | - |")
            continue
        cut = " (time limit)" if r["time_limited"] else ""
        print(f"| transformers | {r['batch_size']} | {r['prompts']}{cut} | {r['output_tokens_per_s']:.1f} | "
              f"{r['total_tokens_per_s']:.1f} | {r['wall_s']:.2f} |")  # fmt: skip
    print(f"| roofline | <={result['engine']['max_num_seqs']} | {j['prompts']} | {roof['output_tokens_per_s']:.1f} | "
          f"{roof['total_tokens_per_s']:.1f} | {roof['prefill_s'] + roof['decode_s']:.2f} |")  # fmt: skip
    line = f"\njllm: {100 * j['output_tokens_per_s'] / roof['output_tokens_per_s']:.1f} % of the roofline"
    best = result.get("transformers", {}).get("best")
    if best and "output_tokens_per_s" in best:
        ratio = j["output_tokens_per_s"] / best["output_tokens_per_s"]
        line += f", {ratio:.2f}x transformers' best (batch {best['batch_size']})"
    print(line)
    if "agreement" in result:
        a = result["agreement"]
        print(f"greedy agreement with transformers batch {a['hf_batch_size']}: {a['exact']}/{a['prompts']} prompts "
              f"identical, mean common prefix {100 * a['mean_common_prefix']:.1f} % of the output")  # fmt: skip


if __name__ == "__main__":
    main()

"""Offline generation throughput: jllm's ``LLM.generate`` beside transformers' ``generate`` on the same prompts.

Both engines get the same token-id prompts (seeded, mixed lengths, windows of real English text) and generate
exactly ``--max-tokens`` tokens each, greedily and with EOS banned (jllm: ``ignore_eos`` and ``min_tokens``;
transformers: ``min_new_tokens``), so output tokens/s counts the same work. jllm is timed after start-up (load +
compile, reported apart) and one warm-up call; transformers at each of ``--hf-batch-sizes``, prompts sorted by length
and left-padded per batch (its kindest setting), best batch size reported. Greedy agreement compares jllm's tokens
with transformers' batch-size-1 tokens, the only run without padding.

    python scripts/bench_offline.py --json offline.json
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np
from bench_common import StepTimes, agreement, hf_generate, load_hf_model
from machine_info import cpu_name

MIN_PROMPT, MAX_PROMPT = 8, 200


def machine() -> str:
    """The CPU and the JAX platform the numbers came from."""
    return f"{cpu_name()}, jax on {jax.devices()[0].device_kind}"


def corpus_text() -> str:
    """Varied English prose that ships with Python: the docstrings of a few standard-library modules."""
    import argparse as m1
    import asyncio as m2
    import collections as m3
    import email as m4
    import logging as m5
    import pathlib as m6
    import subprocess as m7
    import unittest as m8

    docs = []
    for module in (m1, m2, m3, m4, m5, m6, m7, m8):
        docs.append(inspect.getdoc(module) or "")
        for _, member in inspect.getmembers(module):
            if inspect.isclass(member) or inspect.isfunction(member):
                docs.append(inspect.getdoc(member) or "")
    return "\n\n".join(dict.fromkeys(d for d in docs if len(d) > 80))


def make_prompts(token_ids: list[int], count: int, seed: int) -> list[list[int]]:
    """``count`` windows of the tokenized corpus at distinct random offsets, lengths uniform in 8..200."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(MIN_PROMPT, MAX_PROMPT + 1, size=count)
    starts = rng.choice(len(token_ids) - MAX_PROMPT, size=count, replace=False)
    return [token_ids[s : s + n] for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)]


def run_jllm(args: argparse.Namespace, prompts: list[list[int]]) -> tuple[dict, list[list[int]]]:
    from jllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(
        args.model, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len, seed=args.seed,
    )  # fmt: skip
    startup_s = time.perf_counter() - start
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, min_tokens=args.max_tokens, ignore_eos=True)
    warm = llm.get_tokenizer().encode("Warm-up: the quick brown fox jumps over the lazy dog.")
    start = time.perf_counter()
    llm.generate([warm, warm[:5]], params, use_tqdm=False)
    warmup_s = time.perf_counter() - start

    times = StepTimes()
    times.wrap(llm.engine)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    wall_s = time.perf_counter() - start
    tokens = [o.outputs[0].token_ids for o in outputs]
    generated = sum(len(t) for t in tokens)
    result = dict(
        engine="jllm", batch=f"<={args.max_num_seqs}", tokens=generated, wall_s=wall_s, tokens_per_s=generated / wall_s,
        startup_s=startup_s, warmup_s=warmup_s, cached_prompt_tokens=sum(o.num_cached_tokens for o in outputs),
        profile=times.summary(),
    )  # fmt: skip
    return result, tokens


def run_transformers(
    args: argparse.Namespace, model_dir: Path, prompts: list[list[int]]
) -> tuple[list[dict], dict[int, list[list[int]]]]:
    model = load_hf_model(model_dir, args.dtype)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch: less padding

    def generate(batch: list[list[int]]) -> list[list[int]]:
        return hf_generate(model, batch, args.max_tokens, min_new_tokens=args.max_tokens)

    results, tokens_by_batch = [], {}
    generate([prompts[0][:8]])  # warm-up: first-call allocations and lazy imports
    for batch_size in args.hf_batch_sizes:
        tokens: list[list[int]] = [[] for _ in prompts]
        start = time.perf_counter()
        for i in range(0, len(order), batch_size):
            chunk = order[i : i + batch_size]
            for j, out in zip(chunk, generate([prompts[j] for j in chunk]), strict=True):
                tokens[j] = out
        wall_s = time.perf_counter() - start
        generated = sum(len(t) for t in tokens)
        results.append(
            dict(engine="transformers", batch=str(batch_size), tokens=generated, wall_s=wall_s,
                 tokens_per_s=generated / wall_s)
        )  # fmt: skip
        tokens_by_batch[batch_size] = tokens
        print(f"transformers batch {batch_size}: {generated / wall_s:.1f} tokens/s", flush=True)
    return results, tokens_by_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-prompts", type=int, default=32, help="prompts, lengths uniform in 8..200 tokens")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per prompt (exactly)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the prompts and the engine")
    parser.add_argument("--model", default=None, help="model directory, .gguf or alias; default: the embedded model")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="for both engines")
    parser.add_argument("--max-num-seqs", type=int, default=32, help="jllm: sequences per step")
    parser.add_argument("--max-num-batched-tokens", type=int, default=512, help="jllm: tokens per step")
    parser.add_argument("--max-model-len", type=int, default=512, help="jllm: context length")
    parser.add_argument(
        "--hf-batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32],
        help="transformers: comma-separated batch sizes to time (default 1,8,32)",
    )  # fmt: skip
    parser.add_argument("--skip-transformers", action="store_true", help="time jllm only")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if MAX_PROMPT + args.max_tokens > args.max_model_len:
        parser.error(
            f"--max-model-len={args.max_model_len} cannot hold the longest prompt ({MAX_PROMPT}) plus "
            f"--max-tokens={args.max_tokens}; raise it to {MAX_PROMPT + args.max_tokens}"
        )

    load_at_start = os.getloadavg()
    import torch
    import transformers

    from jllm.model_source import resolve_model
    from jllm.tokenizer import Tokenizer

    model_dir = resolve_model(args.model)
    prompts = make_prompts(Tokenizer.from_pretrained(model_dir).encode(corpus_text()), args.num_prompts, args.seed)
    lengths = [len(p) for p in prompts]

    jllm_result, jllm_tokens = run_jllm(args, prompts)
    print(f"jllm: {jllm_result['tokens_per_s']:.1f} tokens/s", flush=True)
    results = [jllm_result]
    hf_tokens: dict[int, list[list[int]]] = {}
    if not args.skip_transformers:
        hf_results, hf_tokens = run_transformers(args, model_dir, prompts)
        results += hf_results

    versions = dict(jax=jax.__version__, transformers=transformers.__version__, torch=torch.__version__)
    info = dict(
        machine=machine(), processor=platform.processor(), cpu_count=os.cpu_count(),
        device_kind=jax.devices()[0].device_kind, date=datetime.date.today().isoformat(),
        load_average=dict(start=load_at_start, end=os.getloadavg()), versions=versions,
        model=f"{args.model or 'default'} ({model_dir})",
        config={k: v for k, v in vars(args).items() if k != "json"},
        prompt_tokens=dict(total=sum(lengths), min=min(lengths), max=max(lengths), mean=float(np.mean(lengths))),
    )  # fmt: skip
    print(f"\nmachine: {info['machine']} (platform.processor()={info['processor']!r}); date {info['date']}")
    print(f"versions: jax {jax.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
    print(
        "load average (1, 5, 15 min) at the start: {}, at the end: {} (above ~1.5: other processes shared the cores)"
        .format(*(", ".join(f"{x:.2f}" for x in info["load_average"][k]) for k in ("start", "end")))
    )  # fmt: skip
    print(f"model: {info['model']}, dtype {args.dtype}")
    print(
        f"{args.num_prompts} prompts of {min(lengths)}..{max(lengths)} tokens (total {sum(lengths)}), "
        f"{args.max_tokens} output tokens each; jllm max_num_seqs={args.max_num_seqs}, "
        f"max_num_batched_tokens={args.max_num_batched_tokens}, max_model_len={args.max_model_len}"
    )
    print(
        f"jllm start-up (load + compile) {jllm_result['startup_s']:.1f} s, warm-up generate "
        f"{jllm_result['warmup_s']:.2f} s, prefix-cache hits {jllm_result['cached_prompt_tokens']} prompt tokens"
    )
    prof = jllm_result["profile"]
    print(
        f"jllm steps: {prof['steps']}, {prof['step_ms']:.1f} ms each; building inputs {prof['build_inputs_s']:.2f} s, "
        f"dispatch {prof['dispatch_s']:.2f} s, waiting for the device {prof['wait_s']:.2f} s, rest of the engine "
        f"(scheduler, detokenizer, outputs) {prof['engine_host_s']:.2f} s; buckets (tokens x seqs): {prof['buckets']}"
    )
    print("\n| engine | batch | tokens/s | wall s |\n| --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['engine']} | {r['batch']} | {r['tokens_per_s']:.1f} | {r['wall_s']:.2f} |")
    summary: dict = dict(info=info, results=results)
    if hf_tokens:
        best = max(results[1:], key=lambda r: r["tokens_per_s"])
        summary["ratio_vs_best_transformers"] = jllm_result["tokens_per_s"] / best["tokens_per_s"]
        print(f"\njllm / best transformers (batch {best['batch']}): {summary['ratio_vs_best_transformers']:.2f}x")
        if 1 in hf_tokens:
            summary["greedy_agreement"] = agree = agreement(jllm_tokens, hf_tokens[1])
            print(
                f"greedy agreement with transformers batch 1: {agree['exact']}/{agree['prompts']} prompts identical, "
                f"mean common prefix {100 * agree['mean_common_prefix']:.1f} % of the output"
            )
        else:
            print("greedy agreement: skipped (transformers batch size 1 did not run; padded batches may differ)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()

"""What a token mask costs one decode step in a batch of 32: the host's mask fill and the sampler's extra work.

Host: 32 llguidance matchers of a JSON schema, each walked through a valid document token by token; per step the
packed bitmask of the batch is filled (``jllm.structured_output.fill_bitmask``), then each matcher consumes its
token, as the engine does. Device: the jitted sampler (``jllm.sampler.sample``, greedy) over ``[32, vocab]`` logits
with zero-width constraints (what an unconstrained batch runs) and with the bitmask. In the engine the host's part
runs while the device runs the step's forward (the sampler waits for it); this script times each part alone.
The host's part runs under llguidance's default parser limits and under jllm's (``GRAMMAR_LIMITS``), and so does the
first mask of hostile regular expressions, which the limits exist to bound (it runs on the engine thread).

    python scripts/bench_structured_output.py                      # the default model's tokenizer (49,152 ids)
    python scripts/bench_structured_output.py --tokenizer DIR --out result.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import llguidance
import numpy as np
from bench_common import environment, timed, write_json

from jllm.model_source import resolve_model
from jllm.sampler import SamplingMode, TokenConstraints, build_sampling_metadata, no_constraints, sample
from jllm.structured_output import (
    GRAMMAR_LIMITS,
    GrammarCompiler,
    GrammarMatcher,
    StructuredOutputsParams,
    fill_bitmask,
)
from jllm.tokenizer import Tokenizer

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}},
    },
    "required": ["name", "age", "tags", "address"],
}
DOCUMENT = '{"name":"Ada Lovelace","age":36,"tags":["math","engines","poetry"],"address":{"city":"London","zip":"W1"}}'
HOSTILE_REGEXES = ("a{1000000}", "(a{1000}){1000}", r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)")
LIMITS = {"llguidance default": llguidance.LLParserLimits(), "jllm": GRAMMAR_LIMITS}


def host_step_times(
    compiler: GrammarCompiler, tokenizer: Tokenizer, rows: int, limits: llguidance.LLParserLimits
) -> tuple[list[float], list[float]]:
    """Seconds per step to fill the batch's mask, and to advance every matcher by one token."""
    vocab = compiler.vocab_size
    grammar = StructuredOutputsParams(json=SCHEMA).grammar_text()
    first = GrammarMatcher(llguidance.LLMatcher(compiler.tokenizer, grammar, limits=limits))
    matchers = [first] + [first.fork() for _ in range(rows - 1)]
    fills, advances = [], []
    for token in tokenizer.encode(DOCUMENT, add_special_tokens=False):
        t = time.perf_counter()
        fill_bitmask([(i, m, None) for i, m in enumerate(matchers)], rows, vocab)
        fills.append(time.perf_counter() - t)
        t = time.perf_counter()
        for m in matchers:
            m.accept(token)
        advances.append(time.perf_counter() - t)
    return fills, advances


def first_mask_seconds(compiler: GrammarCompiler, regex: str, limits: llguidance.LLParserLimits) -> float:
    """A new matcher and its first one-row mask: what the engine thread spends on a request's grammar at once."""
    t = time.perf_counter()
    matcher = llguidance.LLMatcher(
        compiler.tokenizer, StructuredOutputsParams(regex=regex).grammar_text(), limits=limits
    )
    fill_bitmask([(0, GrammarMatcher(matcher), None)], 1, compiler.vocab_size)
    return time.perf_counter() - t


def sampler_times(vocab: int, rows: int, iters: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    logits = jax.numpy.asarray(rng.normal(size=(rows, vocab)).astype(np.float32))
    meta = build_sampling_metadata([], rows, with_penalties=False, penalty_width=0, max_banned=8, eos_token_ids=set())
    unconstrained = no_constraints(rows)
    bitmask = rng.integers(-(2**31), 2**31, (rows, -(-vocab // 32)), dtype=np.int64).astype(np.int32)
    masked = TokenConstraints(bitmask, unconstrained.bias_ids, unconstrained.bias_values)
    run = jax.jit(sample, static_argnames=("num_top_logprobs", "mode"))
    out = {}
    for name, constraints in [("without mask", unconstrained), ("with mask", masked)]:
        c = jax.device_put(constraints)

        def call(c: Any = c) -> Any:
            return run(logits, meta, c, num_top_logprobs=0, mode=SamplingMode.GREEDY)

        out[name] = timed(call, iters)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path, help="a directory with tokenizer.json (default: the default model)")
    parser.add_argument("--rows", type=int, default=32, help="sequences in the batch, all masked")
    parser.add_argument("--iters", type=int, default=50, help="timed sampler calls per case")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    tokenizer = Tokenizer.from_pretrained(args.tokenizer or resolve_model(None))
    vocab = tokenizer.vocab_size
    compiler = GrammarCompiler(tokenizer, vocab, tokenizer.eos_token_ids)
    ms: dict[str, float] = {}
    for name, limits in LIMITS.items():
        fills, advances = host_step_times(compiler, tokenizer, args.rows, limits)
        ms[f"host mask fill ({name} limits)"] = statistics.median(fills) * 1e3
        ms[f"host matchers advance ({name} limits)"] = statistics.median(advances) * 1e3
    device = sampler_times(vocab, args.rows, args.iters)
    ms.update({f"sampler {k}": statistics.median(v) * 1e3 for k, v in device.items()})
    first_ms = {
        f"{regex} ({name} limits)": first_mask_seconds(compiler, regex, limits) * 1e3
        for regex in HOSTILE_REGEXES
        for name, limits in LIMITS.items()
    }
    env = environment()
    print(f"\n{env['cpu']} ({env['platform']}); {env['date']}; load {env['load_average'][0]:.2f}")
    print(f"batch of {args.rows}, vocabulary {vocab}, {len(fills)} decode steps of a JSON document; medians:")
    for name, value in ms.items():
        print(f"  {name:<48} {value:8.3f} ms")
    added = sum(ms[f"host {part} (jllm limits)"] for part in ("mask fill", "matchers advance"))
    added += ms["sampler with mask"] - ms["sampler without mask"]
    print(f"  {'added per masked step (jllm limits)':<48} {added:8.3f} ms")
    print("a new matcher and its first mask, one row:")
    for name, value in first_ms.items():
        print(f"  {name:<48} {value:8.3f} ms")
    result = {"environment": env, "rows": args.rows, "vocab": vocab, "median_ms": ms, "first_mask_ms": first_ms}
    write_json(args.out, result)


if __name__ == "__main__":
    main()

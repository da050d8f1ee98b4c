"""The reference for tests/test_startup.py: an engine without warm-up whose programs each compile serially on first
use, with the persistent compilation cache off (``JAX_ENABLE_COMPILATION_CACHE=false``, set by the caller before JAX
starts, since JAX reads it once): every warm-up plan run once, then the case's requests. Prints one JSON line per
case: the programs compiled (name and input layout) and each request's tokens, logprobs and prompt logprobs.
"""

from __future__ import annotations

import json
import sys

import jax

from jllm import SamplingParams
from jllm.llm import LLM
from jllm.outputs import RequestOutput


def logprobs(steps: list | None) -> list[dict[str, float] | None]:
    return [None if step is None else {str(t): e.logprob for t, e in step.items()} for step in steps or []]


def request(out: RequestOutput) -> dict:
    first = out.outputs[0]
    return {"tokens": first.token_ids, "logprobs": logprobs(first.logprobs), "prompt": logprobs(out.prompt_logprobs)}


def run(case: dict) -> dict:
    assert not jax.config.jax_enable_compilation_cache
    llm = LLM(case["model"], compile_at_start=False, **case["engine_args"])
    runner = llm.engine.runner
    for bucket in runner.buckets:
        for plan in runner.warmup_plans(bucket):
            jax.block_until_ready(runner.run(plan))
    programs = sorted(f"{name} {layout}" for name, layout, _ in runner.compiled_programs())
    outputs = [
        [request(out) for out in llm.generate(case["prompts"], SamplingParams(**params), use_tqdm=False)]
        for params in case["sampling"]
    ]
    return {"programs": programs, "outputs": outputs}


if __name__ == "__main__":
    for case in json.loads(sys.argv[1]):
        print(json.dumps(run(case)))

"""One engine start for tests/test_executable_cache.py, in a fresh process whose ``JAX_COMPILATION_CACHE_DIR`` the
caller sets: prints one JSON line per case with the warm-up's figures (programs, loaded from the executable cache
(of them, loaded by its prefetch while the weights loaded),
seconds traced / lowered / compiled, persistent-cache hits), the executable cache's WARNING lines, and each request's
tokens, logprobs and prompt logprobs (``startup_lazy_worker.request``), or with ``classify`` each prompt's class
probabilities."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys

from model_utils import Records
from startup_lazy_worker import request

from jllm import SamplingParams
from jllm.llm import LLM


def run(case: dict) -> dict:
    records, logger = Records(), logging.getLogger("jllm")
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    llm = LLM(case["model"], **case["engine_args"])
    logger.removeHandler(records)
    (report,) = [r.warmup for r in records.records if getattr(r, "startup_phase", None) == "warm-up"]
    if case.get("classify"):  # a sequence classifier: its programs are the encoder's
        outputs = [out.outputs.probs for out in llm.classify(case["prompts"], use_tqdm=False)]
        compiled = llm.engine.encoder.num_compilations
    else:
        outputs = [
            [request(out) for out in llm.generate(case["prompts"], SamplingParams(**params), use_tqdm=False)]
            for params in case["sampling"]
        ]
        compiled = llm.engine.runner.num_compilations
    return {
        "programs": report.programs,
        "loaded": report.loaded,
        "prefetched": llm.engine.runner.executable_cache.prefetched,
        "cache_hits": report.cache_hits,
        "kinds": {kind: dataclasses.asdict(times) for kind, times in report.kinds.items()},
        "compiled": compiled,
        "warnings": [r.getMessage() for r in records.records if r.levelno >= logging.WARNING],
        "outputs": outputs,
    }


if __name__ == "__main__":
    for case in json.loads(sys.argv[1]):
        print(json.dumps(run(case)))

"""Hybrid models' tensor parallelism on 8 fake CPU devices, run by tests/test_hybrid_tp.py in a subprocess (the fake
devices must be configured before JAX starts).

For each model and TP size (1 first, the reference): the float32 logits of one prompt prefilled in one step (across
the recurrent layers' chunk boundaries), the engine's greedy tokens (a long prompt prefilled in chunks beside the
others' decodes), and where the recurrent layers' parameters and state pools lie.

Usage: ``python tests/hybrid_tp_worker.py SPEC.json OUT.json``; SPEC: ``{"models": {name: [model dir, [TP sizes]]},
"cache_dir": ...}``.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

sys.path[:0] = [str(Path(__file__).parents[1]), str(Path(__file__).parent)]  # this checkout's jllm, model helpers
from model_utils import jllm_logits, relative_error  # noqa: E402
from tp_worker import collectives_of_compiled_programs  # noqa: E402

from jllm import LLM, SamplingParams  # noqa: E402

ENGINE_ARGS = dict(dtype="float32", max_model_len=128, max_num_batched_tokens=32, max_num_seqs=4, num_pages=40)
# 80 tokens: two chunks of the delta rule (64), three of the tiny Mamba2's SSD (32); the engine prefills it 32 a step
LONG_PROMPT = [1 + (7 * i) % 4000 for i in range(80)]
PROMPTS = [LONG_PROMPT, [1, 5, 77, 300, 9000, 12, 40], [1, 2000, 3000, 4000]]
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
# the recurrent layers' module (the attention and MLPs: tests/test_tensor_parallel.py)
RECURRENT = "mixer"


def describe(x: jax.Array) -> dict[str, Any]:
    return {
        "split_axis": next((i for i, axis in enumerate(x.sharding.spec) if axis is not None), None),
        "shape": list(x.shape),
        "device_shapes": [list(s.data.shape) for s in x.addressable_shards],
    }


def run(model_dir: str, tp: int) -> dict[str, Any]:
    llm = LLM(model_dir, tensor_parallel_size=tp, compile_at_start=False, **ENGINE_ARGS)
    runner = llm.engine.runner
    logits = jllm_logits(runner.loaded, LONG_PROMPT)
    with collectives_of_compiled_programs() as programs:  # the engine's step programs, compiled on first use
        tokens = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
    params = {
        "/".join(map(str, p)): describe(v.get_value())
        for p, v in nnx.to_flat_state(runner.state)
        if RECURRENT in map(str, p)
    }
    pool = next(kv for kv in runner.kv_caches if isinstance(kv, tuple))  # the first recurrent layer's state pool
    # the forward programs: those that reduce hidden states (the sampler's gather the vocabulary-split logits)
    hidden = runner.loaded.args.hidden_size
    forwards = [program for program in programs if any(dims[-1:] == [hidden] for _, dims in program)]
    return {
        "logits": logits.tolist(),
        "tokens": tokens,
        "params": params,
        "state_pool": [describe(x) for x in pool],
        "forward_collectives": forwards,
        "num_programs": len(programs),
    }


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    os.environ["JLLM_CACHE"] = spec["cache_dir"]  # keeps the persistent compilation cache out of the user's home
    out: dict[str, Any] = {"devices": jax.device_count(), "models": {}}
    for name, (model_dir, sizes) in spec["models"].items():
        runs = {str(tp): run(model_dir, tp) for tp in [1, *sizes]}
        reference = np.asarray(runs["1"].pop("logits"))
        for tp in map(str, sizes):
            logits = np.asarray(runs[tp].pop("logits"))
            runs[tp]["logits_relative_error"] = relative_error(logits, reference)
            runs[tp]["logits_max_abs_diff"] = float(np.max(np.abs(logits - reference)))
        out["models"][name] = runs
    Path(sys.argv[2]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()

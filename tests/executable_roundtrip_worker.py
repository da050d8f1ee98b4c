"""A program stored in the executable cache, read back, loaded and run, all in a fresh process for
tests/test_executable_cache.py: XLA:CPU executables serialized in a process that holds other programs (the suite's)
can lack kernels when loaded ("Function broadcast_multiply_fusion not found"). Prints the entry's key match, its
output avals and the loaded program's output beside the expected one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from test_executable_cache import compiled_program, program

from jllm.executable_cache import ExecutableCache, describe_program


def run(case: dict) -> dict:
    cache = ExecutableCache(Path(case["cache"]), "context")
    x = jnp.asarray(np.random.default_rng(case["seed"]).normal(size=(4, 2)), jnp.float32)
    call = program(2.5, x)
    key = cache.key(describe_program(call))
    cache.store(key, compiled_program(call))
    entry = cache.read(key)
    loaded = cache.load(entry)
    return {
        "key_matches": entry.key == key,
        "out_avals": [[list(shape), str(dtype)] for shape, dtype in entry.out_avals],
        "got": np.asarray(loaded([], x)).tolist(),
        "want": (np.asarray(x) * 2.5).tolist(),
        "key": key,
    }


if __name__ == "__main__":
    for case in json.loads(sys.argv[1]):
        print(json.dumps(run(case)), flush=True)

"""One dummy-weights load for tests/test_models.py in a fresh process (XLA:CPU executables serialized from a process
that holds other programs, or that came from JAX's persistent cache, can lack kernels when loaded elsewhere, so the
executable cache's round trip is checked process to process, JAX's own cache off): prints the parameters' SHA-256
and the cache's entry count; ``untraced`` makes tracing the keys' or the initializers' program raise."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jllm.executable_cache import ExecutableCache
from jllm.loader import load_model
from jllm.parallel import make_mesh


def run(case: dict) -> dict:
    if case["untraced"]:

        def untraced(*args: object) -> None:
            raise AssertionError("traced: the executable cache held this program")

        jax.random.fold_in = untraced  # what the keys' program traces
        jax.random.normal = untraced  # what the initializers trace
    cache = ExecutableCache(Path(case["cache"]), "context")
    keys = dict(mesh=make_mesh(1), dtype="float32", load_format="dummy", seed=case["seed"], executable_cache=cache)
    loaded = load_model(case["model"], **keys)
    leaves = [np.asarray(x) for x in jax.tree.leaves(nnx.split(loaded.model)[1])]
    return {
        "hashes": [hashlib.sha256(x.tobytes()).hexdigest() for x in leaves],
        "entries": len(list(cache.directory.iterdir())),
    }


if __name__ == "__main__":
    for case in json.loads(sys.argv[1]):
        print(json.dumps(run(case)), flush=True)

"""Runs ``pallas_kernels.fp8_gemv.fp8_matmul`` whole on the CPU, its kernel in Triton's interpreter, on the cases
given as JSON on argv[1].

A subprocess of tests/test_fp8_gemv.py: ``TRITON_INTERPRET`` must be set before Triton compiles anything, and the
rest of the suite must not see it; ``tests/fake_jax_triton.py`` stands in for jax-triton. Prints one JSON line per
case: its relative error against a float64 reference, whether every output is finite, and the output's shape.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import fake_jax_triton  # noqa: E402

sys.modules["jax_triton"] = fake_jax_triton

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jllm.quantization import QuantScheme  # noqa: E402
from pallas_kernels.fp8_gemv import GemvConfig, fp8_matmul  # noqa: E402


def run(case: dict) -> dict:
    lead, k, out_dims = case["lead"], case["k"], case["out"]
    kx, kw = jax.random.split(jax.random.key(case["seed"]))
    x = jax.random.normal(kx, (*lead, k), jnp.float32)
    q, scale = QuantScheme("fp8").quantize(jax.random.normal(kw, (k, *out_dims), jnp.float32) * 0.05)
    cfg = GemvConfig(**case["config"]) if case.get("config") else None
    got = np.asarray(jax.jit(lambda x, q, s: fp8_matmul(x, q, s, cfg))(x, q, scale), np.float64)
    w = np.asarray(q.astype(jnp.float32), np.float64) * np.asarray(scale, np.float64)
    ref = np.tensordot(np.asarray(x, np.float64), w, axes=1)
    return {
        "case": case,
        "rel_err": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
        "finite": bool(np.isfinite(got).all()),
        "shape": list(got.shape),
    }


if __name__ == "__main__":
    for case in json.loads(sys.argv[1]):
        print(json.dumps(run(case)), flush=True)

"""Runs ``pallas_kernels.fp8_gemv.fp8_matmul`` whole on the CPU, its kernel in Triton's interpreter, on the cases
given as JSON on argv[1].

A subprocess of tests/test_fp8_gemv.py: ``TRITON_INTERPRET`` must be set before Triton compiles anything, and the
rest of the suite must not see it; ``tests/fake_jax_triton.py`` stands in for jax-triton, with the interpreter's
float32 -> e4m3 and -> bf16 rounding made the GPU's (``exact_float_casts``). Prints one JSON line per case: its
relative error against a float64 product of the unrounded activations and the dequantized weights (``rel_err``)
and against ``ref_fp8_matmul``, the activations rounded as its compute mode must (``rel_err_exact``), whether every
output is finite, whether the zero rows came out zero, and the output's shape. A case with ``bench`` runs
``scripts/bench_fp8_gemv.py``'s ``--check`` path instead and prints its rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"

import fake_jax_triton  # noqa: E402

sys.modules["jax_triton"] = fake_jax_triton
fake_jax_triton.exact_float_casts()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jllm.quantization import QuantScheme  # noqa: E402
from pallas_kernels.fp8_gemv import fp8_matmul  # noqa: E402
from pallas_kernels.fp8_gemv_spec import GemvConfig, default_gemv_config, ref_fp8_matmul  # noqa: E402


def matmul(case: dict, x: jax.Array, q: jax.Array, scale: jax.Array) -> jax.Array:
    """The kernel's output: through ``QuantScheme.matmul`` (the engine's selection) or ``fp8_matmul`` with the case's
    tiling and weight layout (``[*out, K]`` passed for ``w_kmajor``)."""
    if "scheme" in case:  # the engine keeps quantized kernels input dimension last
        scheme = QuantScheme("fp8", fp8_dot_min_tokens=None, **case["scheme"])
        q = jnp.moveaxis(q, 0, -1)
        assert scheme.uses_fp8_kernel(x, q)
        return jax.jit(scheme.matmul)(x, q, scale)
    cfg = GemvConfig(**case["config"]) if case.get("config") else None
    if case.get("w_kmajor"):
        q = jnp.moveaxis(q, 0, -1)
    return jax.jit(lambda x, q, s: fp8_matmul(x, q, s, cfg, w_kmajor=case.get("w_kmajor", False)))(x, q, scale)


def case_compute(case: dict) -> str:
    """The compute mode a case runs in: its config's, its scheme's choice, or the default tiling's."""
    if case.get("config"):
        return GemvConfig(**case["config"]).compute
    m = int(np.prod(case["lead"]))
    return default_gemv_config(
        m, case["k"], int(np.prod(case["out"])), case.get("scheme", {}).get("fp8_kernel_compute")
    ).compute


def run(case: dict) -> dict:
    lead, k, out_dims = case["lead"], case["k"], case["out"]
    kx, kr, kw = jax.random.split(jax.random.key(case["seed"]), 3)
    x = jax.random.normal(kx, (*lead, k), jnp.float32) * jnp.exp(jax.random.normal(kr, (*lead, 1)))  # rows' scales
    x = x.reshape(-1, k).at[jnp.asarray(case.get("zero_rows", []), int)].set(0).reshape(x.shape)
    q, scale = QuantScheme("fp8").quantize(jax.random.normal(kw, (k, *out_dims), jnp.float32) * 0.05)
    q = jnp.moveaxis(q, -1, 0)  # [K, *out]: the kernel's default layout
    got = np.asarray(matmul(case, x, q, scale), np.float64)
    w = np.asarray(q.astype(jnp.float32), np.float64) * np.asarray(scale, np.float64)
    result = {
        "case": case,
        "compute": case_compute(case),
        "finite": bool(np.isfinite(got).all()),
        "shape": list(got.shape),
    }
    result["rel_err"] = _rel(got, np.tensordot(np.asarray(x, np.float64), w, axes=1))
    result["rel_err_exact"] = _rel(got, np.asarray(ref_fp8_matmul(x, q, scale, result["compute"]), np.float64))
    zero = np.asarray(case.get("zero_rows", []), int)
    result["zero_rows_zero"] = bool((got.reshape(-1, *out_dims)[zero] == 0).all())
    return result


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def run_bench_check(case: dict) -> dict:
    """``scripts/bench_fp8_gemv.py --check``'s path (every variant it checks, the references, the error rows) on a
    small shape: the script's CPU dry run, its kernel variants in the interpreter."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import bench_fp8_gemv

    k, n = case["bench"]
    w = bench_fp8_gemv.Weights(k, n, layers=2)
    args = argparse.Namespace(layers=2, tune_budget_s=0.0)
    rows = []
    for m in case["rows"]:
        rows += bench_fp8_gemv.measure("small", w, bench_fp8_gemv.check_variants(m, k, n), m, args, None)
    return {"case": case, "rows": rows}


if __name__ == "__main__":
    for case in json.loads(sys.argv[1]):
        print(json.dumps(run_bench_check(case) if "bench" in case else run(case)), flush=True)

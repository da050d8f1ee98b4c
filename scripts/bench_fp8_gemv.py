"""FP8-weight matmuls of a decode step on one GPU: the Triton kernel (``pallas_kernels.fp8_gemv``) against XLA.

For each Llama-3-8B linear shape (QKV, o_proj, gate-up, down) and a few row counts it times, per matmul, as the step
runs them (``--layers`` distinct weights called inside one jitted function, so no call finds its weights in L2 and
no call pays a launch from the host): bf16 weights through XLA (the model-dtype baseline), e4m3 weights widened in
XLA's dot (``QuantScheme`` weight-only), FP8 x FP8 through XLA (per-token activation scales), and the Triton kernel
with its default tiling and, with ``--tune``, a grid of tilings. Each figure is weight bytes over time beside the
device's measured copy bandwidth; the kernel's output is checked against XLA's weight-only output (relative
Frobenius error, bf16 activations: must be < 1e-2). The last table sums the four shapes over 32 layers: the GEMM
time of a decode step without the LM head.

    python scripts/bench_fp8_gemv.py --rows 1,8,32,64 --tune --json $OUT/fp8_gemv.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from bench_common import back_to_back, describe_ceilings, device_ceilings, environment

from jllm.quantization import QuantScheme
from pallas_kernels.fp8_gemv import COMPUTE, GemvConfig, default_gemv_config, fp8_matmul, supports

SHAPES = {"qkv": (4096, 6144), "o_proj": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}
TUNE_TILES = ((64, 128), (128, 128), (128, 256), (256, 64))  # (block_n, block_k)
TUNE_SPLITS = (1, 2, 4, 8, 16)
TUNE_WARPS_STAGES = ((4, 4), (8, 3))
WEIGHT_ONLY = QuantScheme("fp8", fp8_dot_min_tokens=None)
FP8_DOT = QuantScheme("fp8", fp8_dot_min_tokens=1)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="1,8,32,64", help="activation rows (decode batch sizes)")
    p.add_argument("--tune-rows", default="1,32", help="row counts --tune sweeps tilings at")
    p.add_argument("--layers", type=int, default=32, help="distinct weights per timed call")
    p.add_argument("--tune", action="store_true")
    p.add_argument("--tune-budget-s", type=float, default=35, help="per shape and row count, seconds")
    p.add_argument("--json", type=Path)
    return p.parse_args()


def per_call_seconds(fn: Callable[[], Any], layers: int) -> float:
    """Best seconds per matmul of a ``layers``-matmul program called back to back."""
    return back_to_back(fn, calls=10, rounds=5) / layers


class Weights:
    """``layers`` random weights of one shape: bf16, and their e4m3 quantization with per-column scales."""

    def __init__(self, k: int, n: int, layers: int, seed: int = 0):
        keys = jax.random.split(jax.random.key(seed), layers)
        self.bf16 = [jax.random.normal(key, (k, n), jnp.bfloat16) * 0.02 for key in keys]
        self.fp8 = [jax.jit(WEIGHT_ONLY.quantize)(w) for w in self.bf16]

    def program(self, matmul: Callable[..., jax.Array], x: jax.Array, quantized: bool) -> Callable[[], Any]:
        ws = self.fp8 if quantized else self.bf16
        run = jax.jit(lambda x, ws: [matmul(x, *w) if quantized else matmul(x, w) for w in ws])
        return lambda: run(x, ws)


VARIANTS: dict[str, Callable[..., jax.Array]] = {
    "bf16 XLA": lambda x, w: x @ w,
    "fp8 weight-only XLA": WEIGHT_ONLY.matmul,
    "fp8 x fp8 XLA": FP8_DOT.matmul,
    "fp8 weight-only XLA f16": lambda x, q, s: WEIGHT_ONLY.matmul(x.astype(jnp.float16), q, s).astype(x.dtype),
    "triton default": fp8_matmul,
}


def tune_configs(m: int, k: int, n: int) -> list[GemvConfig]:
    """The tilings --tune times, most promising first (the sweep stops at its time budget)."""
    block_m = max(16, default_gemv_config(m, k, n).block_m)
    grid = []
    product = itertools.product(COMPUTE, TUNE_SPLITS[::-1], TUNE_TILES, TUNE_WARPS_STAGES)
    for compute, split, (bn, bk), (warps, stages) in product:
        if compute == "fma" and m > 1:
            continue
        cfg = GemvConfig(
            block_m=1 if compute == "fma" else block_m, block_n=bn, block_k=bk, split_k=split, num_warps=warps,
            num_stages=stages, compute=compute,
        )  # fmt: skip
        programs = n // bn * split
        if supports(m, k, n, cfg) and 100 <= programs <= 1100 and k // (bk * split) >= 2:
            grid.append(cfg)
    return grid


def bench_shape(
    name: str, w: Weights, m: int, layers: int, bw: float, tune: bool, tune_budget_s: float
) -> list[dict[str, Any]]:
    k, n = w.bf16[0].shape
    x = jax.random.normal(jax.random.key(m), (m, k), jnp.bfloat16)
    rows = []
    reference = jnp.stack(jax.jit(lambda x, ws: [WEIGHT_ONLY.matmul(x, *q) for q in ws])(x, w.fp8[:2])).astype(
        jnp.float32
    )
    calls: list[tuple[str, Callable[..., jax.Array], bool, GemvConfig | None]] = [
        (label, fn, label != "bf16 XLA", None) for label, fn in VARIANTS.items()
    ]
    if tune:
        calls += [("triton", fp8_matmul, True, cfg) for cfg in tune_configs(m, k, n)]
    deadline = time.monotonic() + tune_budget_s
    for label, fn, quantized, cfg in calls:
        if cfg is not None and time.monotonic() > deadline:
            break
        matmul = fn if cfg is None else (lambda x, q, s, cfg=cfg: fp8_matmul(x, q, s, cfg))
        try:
            seconds = per_call_seconds(w.program(matmul, x, quantized), layers)
        except Exception as e:  # noqa: BLE001 - a tiling Triton cannot compile is a row of the table
            rows.append(dict(shape=name, rows=m, variant=label, config=_cfg(cfg), error=str(e)[:200]))
            continue
        row = dict(shape=name, rows=m, variant=label if cfg is None else f"triton {cfg.compute}", config=_cfg(cfg))
        row["us"] = seconds * 1e6
        weight_bytes = k * n * (1 if quantized else 2)
        row["gbps"] = weight_bytes / seconds / 1e9
        row["pct_copy"] = 100 * row["gbps"] / bw
        if label.startswith("triton"):
            got = jnp.stack(jax.jit(lambda x, ws, m=matmul: [m(x, *q) for q in ws])(x, w.fp8[:2])).astype(jnp.float32)
            row["rel_err"] = float(jnp.linalg.norm(got - reference) / jnp.linalg.norm(reference))
        rows.append(row)
    return rows


def _cfg(cfg: GemvConfig | None) -> dict[str, int] | None:
    return None if cfg is None else dataclasses.asdict(cfg)


def print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        cfg = r["config"]
        tiling = (
            ""
            if cfg is None
            else "{compute} n{block_n} k{block_k} s{split_k} w{num_warps} st{num_stages}".format(**cfg)
        )
        if "error" in r:
            print(f"  {r['shape']:8} M={r['rows']:<3} {r['variant']:22} {tiling:30} ERROR {r['error'][:80]}")
            continue
        err = f" err {r['rel_err']:.1e}" if "rel_err" in r else ""
        print(
            f"  {r['shape']:8} M={r['rows']:<3} {r['variant']:22} {tiling:30} {r['us']:8.2f} us "
            f"{r['gbps']:7.0f} GB/s {r['pct_copy']:5.1f}%{err}",
            flush=True,
        )


def best_tilings(rows: list[dict[str, Any]], top: int = 2) -> list[dict[str, Any]]:
    """The ``top`` fastest tuned tilings of each compute mode (and any that failed to compile)."""
    tuned = [r for r in rows if r["config"] is not None]
    out = [r for r in tuned if "error" in r]
    for variant in sorted({r["variant"] for r in tuned}):
        out += sorted((r for r in tuned if r["variant"] == variant and "us" in r), key=lambda r: r["us"])[:top]
    return out


def step_table(rows: list[dict[str, Any]], row_counts: list[int]) -> list[dict[str, Any]]:
    """Per row count and variant: the four shapes x 32 layers (the best tuned tiling as "triton tuned")."""
    table = []
    for m in row_counts:
        at_m = [r for r in rows if r["rows"] == m and "error" not in r]
        labels = {r["variant"] for r in at_m}
        for label in sorted(labels):
            per_shape = {}
            for name in SHAPES:
                times = [r["us"] for r in at_m if r["variant"] == label and r["shape"] == name]
                if times:
                    per_shape[name] = min(times)
            if len(per_shape) == len(SHAPES):
                name = f"{label} tuned" if label.startswith("triton ") and label != "triton default" else label
                table.append(dict(rows=m, variant=name, step_ms=32 * sum(per_shape.values()) / 1e3, **per_shape))
    return table


def main() -> None:
    args = parse_args()
    row_counts = [int(r) for r in args.rows.split(",")]
    tune_rows = {int(r) for r in args.tune_rows.split(",")} if args.tune else set()
    env = environment()
    ceilings = device_ceilings()
    bw = ceilings["copy_gbps_dev0"]
    print(f"# card: {env['card']}; {env['date']}; jax {env['versions']['jax']}; {describe_ceilings(ceilings)}")
    print(f"# Llama-3-8B linears, {args.layers} distinct weights per timed program, bf16 activations")
    rows: list[dict[str, Any]] = []
    for name, (k, n) in SHAPES.items():
        w = Weights(k, n, args.layers)
        for m in row_counts:
            shape_rows = bench_shape(name, w, m, args.layers, bw, m in tune_rows, args.tune_budget_s)
            print_rows([r for r in shape_rows if r["config"] is None] + best_tilings(shape_rows))
            rows += shape_rows
        del w
    table = step_table(rows, row_counts)
    weight_gb = 32 * sum(k * n for k, n in SHAPES.values()) / 1e9
    print(f"\n# 32 layers' four linears (no LM head): fp8 {weight_gb:.2f} GB, roofline {weight_gb / bw * 1e6:.0f} us")
    for t in table:
        print(f"  M={t['rows']:<3} {t['variant']:22} {t['step_ms']:6.3f} ms")
    if args.json:
        args.json.write_text(json.dumps(dict(env=env, ceilings=ceilings, rows=rows, step=table), indent=1))


if __name__ == "__main__":
    main()

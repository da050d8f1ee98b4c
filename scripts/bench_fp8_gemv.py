"""FP8-weight matmuls of a decode step on one GPU: the Triton kernel (``pallas_kernels.fp8_gemv``) and its Pallas
port (``pallas_kernels.fp8_gemv_pallas``) against XLA.

For each Llama-3-8B linear shape (QKV, o_proj, gate-up, down) and a few row counts it times, per matmul, as the step
runs them (``--layers`` distinct weights called inside one jitted function, so no call finds its weights in L2 and
no call pays a launch from the host): bf16 weights through XLA (the model-dtype baseline), e4m3 weights widened in
XLA's dot (``QuantScheme`` weight-only), FP8 x FP8 through XLA (per-token activation scales), the Triton kernel with
its default widening tiling ("triton default": "fma" at one row, "dot_f16" above) and W8A8 ("triton dot_fp8":
activations quantized per row in the kernel, e4m3 x e4m3 MMAs) on ``[K, N]`` and on ``[N, K]`` ("kmajor") weights,
the Pallas "fma" kernel at one row ("pallas fma": the jax-triton "triton default kmajor"'s arithmetic and tiling,
lowered by XLA itself), and with ``--tune`` a grid of tilings (the default's one-field neighbours first, then farther
ones, until ``--tune-budget-s``). Each figure is weight bytes over time beside the device's measured copy bandwidth,
and each output's relative Frobenius error against ``ref_fp8_matmul`` (float32, the activations rounded as that mode
must: bf16 activations, bf16 output). The last table sums the four shapes over 32 layers: the GEMM time of a decode
step without the LM head.

``--check`` times nothing: every default variant, the W8A8 kernel's layouts, swapped or not and 64-row tiles, and the
Pallas kernel at every row count (one program row per activation row), on one weight per shape, against the
float32 reference; exit status 1 if any error exceeds ``CHECK_BOUND``.

    python scripts/bench_fp8_gemv.py --check --rows 1,33
    python scripts/bench_fp8_gemv.py --rows 1,8,32,64 --tune --tune-compute dot_fp8 --json $OUT/fp8_gemv.json
    python scripts/bench_fp8_gemv.py --rows 1 --tune --tune-rows 1 --tune-compute fma,pallas  # jax-triton vs Pallas

On a CPU (the tests' dry run) the Pallas kernel runs in Pallas' interpreter.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from bench_common import back_to_back, describe_ceilings, device_ceilings, environment

from jllm.quantization import QuantScheme, fp8_dot
from pallas_kernels.fp8_gemv import fp8_matmul
from pallas_kernels.fp8_gemv_pallas import fp8_matmul_pallas
from pallas_kernels.fp8_gemv_spec import COMPUTE, GemvConfig, default_gemv_config, ref_fp8_matmul, supports

SHAPES = {"qkv": (4096, 6144), "o_proj": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}
TUNE_SPLITS = (1, 2, 4, 8, 16)
# --tune's grid per compute mode: (block_n, block_k) tiles and (num_warps, num_stages); the widening modes' grid is
# the one their defaults were picked from (docs/benchmarks.md), "dot_fp8"'s is new
TUNE_TILES = {
    "fma": ((64, 128), (128, 128), (128, 256), (256, 64)),
    "dot_f16": ((64, 128), (128, 128), (128, 256), (256, 64)),
    "dot_fp8": tuple(itertools.product((64, 128, 256), (64, 128, 256))),
}
TUNE_WARPS_STAGES = {
    "fma": ((4, 4), (8, 3)),
    "dot_f16": ((4, 4), (8, 3)),
    "dot_fp8": tuple(itertools.product((4, 8), (3, 4, 5))),
}
# Relative Frobenius error allowed against the float32 reference of the same rounding: the bf16 output's own rounding
# is ~1e-3 (2^-9 an element); an e4m3 activation rounded the other way moves its row by ~1/(8 sqrt(K)) >= 1e-3
CHECK_BOUND = 4e-3
PALLAS = "pallas"  # --tune-compute's name for the Pallas kernel's "fma" tilings
WEIGHT_ONLY = QuantScheme("fp8", fp8_dot_min_tokens=None)
FP8_DOT = QuantScheme("fp8", fp8_dot_min_tokens=1)
XLA: dict[str, tuple[Callable[..., jax.Array], str, str]] = {  # label: (matmul, its reference, weight layout)
    "bf16 XLA": (lambda x, w: x @ w, "bf16", "bf16"),
    "fp8 weight-only XLA": (WEIGHT_ONLY.matmul, "fma", "fp8_t"),  # the engine's: kernels [N, K]
    "fp8 x fp8 XLA": (FP8_DOT.matmul, "dot_fp8", "fp8_t"),
    "fp8 weight-only XLA f16": (
        lambda x, q, s: WEIGHT_ONLY.matmul(x.astype(jnp.float16), q, s).astype(x.dtype),
        "dot_f16",
        "fp8_t",
    ),
    # the same two on [K, N] kernels (the engine's layout before 2026-12-03)
    "fp8 weight-only XLA [K,N]": (lambda x, q, s: ((x @ q.astype(x.dtype)) * s).astype(x.dtype), "fma", "fp8"),
    "fp8 x fp8 XLA [K,N]": (lambda x, q, s: fp8_dot(x, q.T, s), "dot_fp8", "fp8"),
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One timed matmul: an XLA one (``config`` None) or a kernel (``backend``: the jax-triton one, or the Pallas
    one, which reads ``[N, K]`` weights only) with a tiling and a weight layout."""

    label: str
    reference: str  # "bf16", or the ref_fp8_matmul compute mode its output must match
    weights: str = "fp8"  # "bf16", "fp8" ([K, N]) or "fp8_t" ([N, K], the kernel's w_kmajor)
    config: GemvConfig | None = None
    tuned: bool = False
    backend: str = "triton"  # or "pallas"

    @property
    def name(self) -> str:
        return f"{self.label} tuned" if self.tuned else self.label

    def matmul(self) -> Callable[..., jax.Array]:
        if self.config is None:
            return XLA[self.label][0]
        cfg, kmajor = self.config, self.weights == "fp8_t"
        if self.backend == PALLAS:
            interpret = jax.default_backend() == "cpu"
            return lambda x, q, s: fp8_matmul_pallas(x, q, s, cfg, interpret=interpret)
        return lambda x, q, s: fp8_matmul(x, q, s, cfg, w_kmajor=kmajor)


def kernel(label: str, cfg: GemvConfig, kmajor: bool = False, tuned: bool = False) -> Variant:
    return Variant(label + " kmajor" * kmajor, cfg.compute, "fp8_t" if kmajor else "fp8", cfg, tuned)


def pallas_kernel(cfg: GemvConfig, tuned: bool = False) -> Variant:
    return Variant("pallas fma", "fma", "fp8_t", cfg, tuned, backend=PALLAS)


def default_variants(m: int, k: int, n: int) -> list[Variant]:
    """The XLA matmuls and the kernels' default tilings: widening, W8A8 on both layouts, and at one row the Pallas
    "fma" kernel (which at more rows streams the weights once per row)."""
    xla = [Variant(label, ref, weights) for label, (_, ref, weights) in XLA.items()]
    w8a8 = default_gemv_config(m, k, n, "dot_fp8")
    pallas = [pallas_kernel(default_gemv_config(m, k, n, "fma"))] if m == 1 else []
    return xla + [
        kernel("triton default", default_gemv_config(m, k, n)),
        kernel("triton default", default_gemv_config(m, k, n), kmajor=True),
        kernel("triton dot_fp8", w8a8),
        kernel("triton dot_fp8", w8a8, kmajor=True),
        *pallas,
    ]


def check_variants(m: int, k: int, n: int) -> list[Variant]:
    """``default_variants``, the W8A8 kernel unswapped on both layouts and in 64-row tiles (a Hopper wgmma's M), and
    the Pallas kernel at any row count."""
    w8a8 = default_gemv_config(m, k, n, "dot_fp8")
    plain = dataclasses.replace(w8a8, swap_ab=False)
    pallas = [] if m == 1 else [pallas_kernel(default_gemv_config(m, k, n, "fma"))]  # at one row: a default one
    return default_variants(m, k, n) + [
        kernel("triton dot_fp8 plain", plain),
        kernel("triton dot_fp8 plain", plain, kmajor=True),
        kernel("triton dot_fp8 plain m64", dataclasses.replace(plain, block_m=64)),
        *pallas,
    ]


def tune_grid(m: int, k: int, n: int, computes: list[str], timed: Sequence[Variant] = ()) -> list[Variant]:
    """The tilings --tune times (but those ``timed`` already), nearest to each mode's default tiling first (fields
    that differ, the layout counted), in a seeded shuffle within a distance, so a time budget covers every knob once
    before pairs of them."""
    skip = {(v.config, v.weights, v.backend) for v in timed}
    candidates = []
    for compute in computes:
        pallas = compute == PALLAS  # the "fma" grid, on [N, K] weights
        default = default_gemv_config(m, k, n, "fma" if pallas else compute)
        for cfg, kmajor in _grid(m, k, n, "fma" if pallas else compute):
            variant = pallas_kernel(cfg, tuned=True) if pallas else kernel(f"triton {compute}", cfg, kmajor, True)
            if (cfg, variant.weights, variant.backend) in skip:
                continue
            distance = sum(getattr(cfg, f.name) != getattr(default, f.name) for f in dataclasses.fields(cfg))
            candidates.append((distance + kmajor, variant))
    random.Random(0).shuffle(candidates)
    return [variant for _, variant in sorted(candidates, key=lambda c: c[0])]


def _grid(m: int, k: int, n: int, compute: str) -> list[tuple[GemvConfig, bool]]:
    w8a8 = compute == "dot_fp8"
    block_ms = {1} if compute == "fma" else {max(16, default_gemv_config(m, k, n, "dot_f16").block_m)}
    if w8a8:  # beside the default's: 16 rows (a swapped wgmma's N) and 64 (an unswapped one's M)
        block_ms |= {16, 64}
    layouts = swaps = (False, True) if w8a8 else (False,)
    grid = []
    product = itertools.product(
        sorted(block_ms), TUNE_TILES[compute], TUNE_SPLITS, TUNE_WARPS_STAGES[compute], swaps, layouts
    )  # fmt: skip
    for block_m, (bn, bk), split, (warps, stages), swap, kmajor in product:
        cfg = GemvConfig(
            block_m=block_m, block_n=bn, block_k=bk, split_k=split, num_warps=warps, num_stages=stages,
            compute=compute, swap_ab=swap,
        )  # fmt: skip
        programs = n // bn * split
        if supports(m, k, n, cfg) and 100 <= programs <= 1100 and k // (bk * split) >= 2:
            grid.append((cfg, kmajor))
    return grid


class Weights:
    """``layers`` random weights of one shape: bf16, their e4m3 quantization with per-column scales as the engine
    keeps it (``[N, K]``, "fp8_t"), and (on first use) the e4m3 ones as ``[K, N]`` ("fp8")."""

    def __init__(self, k: int, n: int, layers: int, seed: int = 0):
        keys = jax.random.split(jax.random.key(seed), layers)
        self.arrays = {"bf16": [(jax.random.normal(key, (k, n), jnp.bfloat16) * 0.02,) for key in keys]}
        self.arrays["fp8_t"] = [jax.jit(WEIGHT_ONLY.quantize)(w) for (w,) in self.arrays["bf16"]]

    def get(self, kind: str) -> list[tuple[jax.Array, ...]]:
        if kind not in self.arrays:  # "fp8"
            self.arrays[kind] = [(q.T, s) for q, s in self.arrays["fp8_t"]]
        return self.arrays[kind]

    def program(self, variant: Variant, x: jax.Array) -> Callable[[], list[jax.Array]]:
        ws, matmul = self.get(variant.weights), variant.matmul()
        run = jax.jit(lambda x, ws: [matmul(x, *w) for w in ws])
        return lambda: run(x, ws)

    def reference(self, mode: str, x: jax.Array, layers: int) -> jax.Array:
        """f32[layers, M, N]: the float32 product ``mode`` must match (``ref_fp8_matmul``; "bf16": ``x @ w``)."""
        if mode == "bf16":
            ws = self.get("bf16")[:layers]
            run = jax.jit(
                lambda x, ws: [jnp.matmul(x, w, precision="highest", preferred_element_type=jnp.float32) for (w,) in ws]
            )
        else:
            ws = self.get("fp8")[:layers]
            run = jax.jit(lambda x, ws: [ref_fp8_matmul(x, q, s, mode) for q, s in ws])
        return jnp.stack(run(x, ws))


def errors(outputs: list[jax.Array], ref: jax.Array) -> dict[str, float]:
    """Relative Frobenius error of the first outputs against ``ref`` (f32[layers, M, N]), and the largest error
    over the largest reference value."""
    got = jnp.stack(outputs[: ref.shape[0]]).astype(jnp.float32)
    rel = jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref)
    return {"rel_err": float(rel), "max_err": float(jnp.abs(got - ref).max() / jnp.abs(ref).max())}


def measure(
    name: str, w: Weights, variants: list[Variant], m: int, args: argparse.Namespace, bw: float | None
) -> list[dict[str, Any]]:
    """A row per variant at ``m`` rows: its time and bandwidth (unless ``bw`` is None: --check), its errors; a
    tiling Triton cannot compile is a row with its error. Tuned variants stop at ``args.tune_budget_s``."""
    k, n = w.get("bf16")[0][0].shape
    x = jax.random.normal(jax.random.key(m), (m, k), jnp.bfloat16)
    layers = min(2, args.layers)
    references = {mode: w.reference(mode, x, layers) for mode in {v.reference for v in variants}}
    deadline = None  # --tune's budget starts at the first tuned variant
    rows = []
    for variant in variants:
        if variant.tuned:
            deadline = deadline or time.monotonic() + args.tune_budget_s
            if time.monotonic() > deadline:
                break
        row = dict(shape=name, rows=m, variant=variant.name, layout=variant.weights, config=_cfg(variant.config))
        try:
            program = w.program(variant, x)  # one compile serves the timing and the errors
            if bw is not None:
                seconds = back_to_back(program, calls=10, rounds=5) / args.layers
                row["us"] = seconds * 1e6
                row["gbps"] = k * n * (2 if variant.weights == "bf16" else 1) / seconds / 1e9
                row["pct_copy"] = 100 * row["gbps"] / bw
            row.update(errors(program(), references[variant.reference]))
        except Exception as e:  # noqa: BLE001 - a tiling Triton cannot compile is a row of the table
            row["error"] = str(e)[:300]
        rows.append(row)
    return rows


def _cfg(cfg: GemvConfig | None) -> dict[str, Any] | None:
    return None if cfg is None else dataclasses.asdict(cfg)


def describe(cfg: dict[str, Any] | None) -> str:
    if cfg is None:
        return ""
    swap = " swap" * cfg["swap_ab"]
    return "m{block_m} n{block_n} k{block_k} s{split_k} w{num_warps} st{num_stages}".format(**cfg) + swap


def print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        head = f"  {r['shape']:8} M={r['rows']:<3} {r['variant']:28} {describe(r['config']):32}"
        if "error" in r:
            print(f"{head} ERROR {r['error'][:100]}", flush=True)
            continue
        timing = f"{r['us']:8.2f} us {r['gbps'] / 1e3:5.2f} TB/s {r['pct_copy']:5.1f}%" if "us" in r else ""
        bad = " OVER BOUND" if r["rel_err"] > CHECK_BOUND else ""
        print(f"{head} {timing} err {r['rel_err']:.1e} (max {r['max_err']:.1e}){bad}", flush=True)


def best_tilings(rows: list[dict[str, Any]], top: int = 2) -> list[dict[str, Any]]:
    """The ``top`` fastest tuned tilings of each compute mode and layout, after the first ``top`` that failed (the
    JSON has them all)."""
    tuned = [r for r in rows if r["variant"].endswith(" tuned")]
    out = [r for r in tuned if "error" in r][:top]
    for variant in sorted({r["variant"] for r in tuned}):
        out += sorted((r for r in tuned if r["variant"] == variant and "us" in r), key=lambda r: r["us"])[:top]
    return out


def step_table(rows: list[dict[str, Any]], row_counts: list[int]) -> list[dict[str, Any]]:
    """Per row count and variant: the four shapes x 32 layers (a tuned variant at its best tiling per shape)."""
    table = []
    for m in row_counts:
        at_m = [r for r in rows if r["rows"] == m and "us" in r]
        for label in sorted({r["variant"] for r in at_m}):
            per_shape = {}
            for name in SHAPES:
                times = [r["us"] for r in at_m if r["variant"] == label and r["shape"] == name]
                if times:
                    per_shape[name] = min(times)
            if len(per_shape) == len(SHAPES):
                table.append(dict(rows=m, variant=label, step_ms=32 * sum(per_shape.values()) / 1e3, **per_shape))
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="1,8,32,64", help="activation rows (decode batch sizes)")
    p.add_argument("--tune-rows", default="1,32", help="row counts --tune sweeps tilings at")
    p.add_argument(
        "--tune-compute",
        default=",".join(COMPUTE),
        help=f"what --tune sweeps: compute modes of jax-triton's kernel ({', '.join(COMPUTE)}) and/or {PALLAS} (the "
        "Pallas kernel's fma tilings)",
    )
    p.add_argument("--layers", type=int, default=32, help="distinct weights per timed call")
    p.add_argument("--tune", action="store_true")
    p.add_argument("--tune-budget-s", type=float, default=35, help="per shape and row count, seconds")
    p.add_argument("--check", action="store_true", help="errors only, no timing; exit 1 past CHECK_BOUND")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.row_counts = [int(r) for r in args.rows.split(",")]
    args.tune_rows = {int(r) for r in args.tune_rows.split(",")} if args.tune else set()
    args.tune_compute = args.tune_compute.split(",")
    if unknown := set(args.tune_compute) - {*COMPUTE, PALLAS}:
        p.error(f"--tune-compute: unknown {sorted(unknown)}; choose from {', '.join((*COMPUTE, PALLAS))}")
    return args


def run(args: argparse.Namespace, bw: float | None) -> list[dict[str, Any]]:
    """Every shape at every row count: timed (``bw`` the copy ceiling) or, with ``bw`` None, checked."""
    rows: list[dict[str, Any]] = []
    for name, (k, n) in SHAPES.items():
        w = Weights(k, n, 1 if bw is None else args.layers)
        for m in args.row_counts:
            if bw is None:
                variants = check_variants(m, k, n)
            else:
                variants = default_variants(m, k, n)
                variants += tune_grid(m, k, n, args.tune_compute, variants) if m in args.tune_rows else []
            shape_rows = measure(name, w, variants, m, args, bw)
            print_rows([r for r in shape_rows if not r["variant"].endswith(" tuned")] + best_tilings(shape_rows))
            rows += shape_rows
        del w
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = environment()
    print(f"# card: {env['card']}; {env['date']}; jax {env['versions']['jax']}")
    if args.check:
        print(f"# --check: one weight per Llama-3-8B shape, bf16 activations, bound {CHECK_BOUND:g}")
        rows = run(args, None)
        failed = [r for r in rows if "error" in r or r["rel_err"] > CHECK_BOUND]
        print(f"\n# {len(rows) - len(failed)} of {len(rows)} within {CHECK_BOUND:g}; failed: {len(failed)}")
        if args.json:
            args.json.write_text(json.dumps(dict(env=env, bound=CHECK_BOUND, rows=rows), indent=1))
        return 1 if failed else 0
    ceilings = device_ceilings()
    bw = ceilings["copy_gbps_dev0"]
    print(f"# {describe_ceilings(ceilings)}")
    print(f"# Llama-3-8B linears, {args.layers} distinct weights per timed program, bf16 activations")
    rows = run(args, bw)
    table = step_table(rows, args.row_counts)
    weight_gb = 32 * sum(k * n for k, n in SHAPES.values()) / 1e9
    print(f"\n# 32 layers' four linears (no LM head): fp8 {weight_gb:.2f} GB, roofline {weight_gb / bw * 1e6:.0f} us")
    for t in table:
        print(f"  M={t['rows']:<3} {t['variant']:34} {t['step_ms']:6.3f} ms")
    if args.json:
        args.json.write_text(json.dumps(dict(env=env, ceilings=ceilings, rows=rows, step=table), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Decode layers' matmuls with their norms, SwiGLU and residual adds: XLA's fusions against
``pallas_kernels.decode_gemv`` (one Pallas kernel per matmul, the work around it folded in), on one GPU.

A layer here is a Llama-3-8B layer without its attention: ``qkv = norm1(h) @ Wqkv``; ``h += qkv @ Wo`` (Wo reads the
whole QKV output, ``[6144, 4096]``, standing in for the attention between them so that no slice differs between the
two paths); ``h += silu(gate) * up @ Wd`` with ``gate, up = norm2(h) @ Wgu``. ``--layers`` distinct layers run in one
jitted function, as a step runs them (no weight found in L2, no launch from the host between them), so the time per
step is what the matmuls and the kernels around them cost: XLA's path launches the norms' reductions, split-K sums,
residual adds and the SwiGLU as ~5 small fusions a layer beside its 4 GEMMs, the kernel path 4 kernels. Each figure
is beside the roofline (the weights' bytes over the measured copy bandwidth) and each path's output against a float32
reference of the first two layers. ``--tune`` times tilings per matmul (``--layers`` independent calls) and runs
the layers again with the fastest.

    python scripts/bench_decode_gemv.py --rows 1,8 --tune --json $OUT/decode_gemv.json
    python scripts/bench_decode_gemv.py --hidden 128 --qkv 192 --intermediate 256 --layers 2 --rows 1  # CPU dry run

On a CPU the kernels run in Pallas' interpreter: a check of the script, not a timing.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from bench_common import back_to_back, describe_ceilings, device_ceilings, environment

from jllm.attention import kernels_interpreted
from pallas_kernels.decode_gemv import DecodeGemvConfig, decode_matmul, default_config, ref_decode_matmul

EPS = 1e-5
KINDS = ("qkv_norm", "o_residual", "gate_up_swiglu", "down_residual")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="1,8", help="activation rows (the decode batch), each <= 16")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--qkv", type=int, default=6144, help="QKV's output width (Llama-3-8B: 32 + 2 x 8 heads of 128)")
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--tune", action="store_true", help="time tilings per matmul, then the layers with the fastest")
    p.add_argument("--tune-budget-s", type=float, default=60.0, help="seconds of tilings per matmul and row count")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def make_layers(args: argparse.Namespace) -> list[dict[str, jax.Array]]:
    """``--layers`` layers of random bf16 weights (scaled so activations stay O(1) through the layers)."""
    d, q, f = args.hidden, args.qkv, args.intermediate

    def layer(key: jax.Array) -> dict[str, jax.Array]:
        k = jax.random.split(key, 6)

        def normal(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
            return (jax.random.normal(key, shape, jnp.float32) / fan_in**0.5).astype(jnp.bfloat16)

        return {
            "norm1": (1.0 + 0.1 * jax.random.normal(k[0], (d,))).astype(jnp.bfloat16),
            "qkv": normal(k[1], (d, q), d),
            "o": normal(k[2], (q, d), q) * 0.5,
            "norm2": (1.0 + 0.1 * jax.random.normal(k[3], (d,))).astype(jnp.bfloat16),
            "gate_up": normal(k[4], (d, 2, f), d),
            "down": normal(k[5], (f, d), f) * 0.5,
        }

    return [jax.jit(layer)(key) for key in jax.random.split(jax.random.key(0), args.layers)]


def _normed(x: jax.Array, weight: jax.Array, w: jax.Array) -> jax.Array:
    """``normed_linear``'s arithmetic for XLA: ``(x * w) @ W * rsqrt(mean(x^2) + eps)``."""
    x32 = x.astype(jnp.float32)
    factor = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + EPS)
    y = jnp.einsum("mk,k...->m...", (x32 * weight.astype(jnp.float32)).astype(x.dtype), w)
    return (y.astype(jnp.float32) * factor.reshape(factor.shape + (1,) * (y.ndim - 2))).astype(y.dtype)


def _swiglu(gate_up: jax.Array) -> jax.Array:
    return jax.nn.silu(gate_up[:, 0]) * gate_up[:, 1]


def xla_kind(kind: str, p: dict[str, jax.Array], x: dict[str, jax.Array]) -> jax.Array:
    """One matmul of ``kind`` with the work around it, as jllm's model writes it for XLA (``kind_call``'s inputs)."""
    if kind == "qkv_norm":
        return _normed(x["d"], p["norm1"], p["qkv"])
    if kind == "o_residual":
        return x["q"] @ p["o"] + x["d"]
    if kind == "gate_up_swiglu":
        return _swiglu(_normed(x["d"], p["norm2"], p["gate_up"]))
    return x["f"] @ p["down"] + x["d"]


def kind_call(
    kind: str, p: dict[str, jax.Array], x: dict[str, jax.Array], matmul: Callable[..., jax.Array] = ref_decode_matmul
) -> jax.Array:
    """One matmul of ``kind`` on layer ``p``'s weights, its inputs from ``x`` ("d": hidden-wide, "q": QKV-wide, "f":
    MLP-wide), through ``matmul``: ``decode_matmul`` (``kernel``) or, by default, its float32 reference."""
    if kind == "qkv_norm":
        return matmul(x["d"], p["qkv"], norm_weight=p["norm1"], eps=EPS)
    if kind == "o_residual":
        return matmul(x["q"], p["o"], residual=x["d"])
    if kind == "gate_up_swiglu":
        return matmul(x["d"], p["gate_up"], norm_weight=p["norm2"], eps=EPS, swiglu=True)
    return matmul(x["f"], p["down"], residual=x["d"])


def kernel(cfg: DecodeGemvConfig | None) -> Callable[..., jax.Array]:
    """``decode_matmul`` at tiling ``cfg`` (None: its default), interpreted off a GPU."""
    return functools.partial(decode_matmul, config=cfg, interpret=kernels_interpreted())


def chained(call: Callable[[str, dict[str, jax.Array], dict[str, jax.Array]], jax.Array]) -> Callable[..., jax.Array]:
    """A layer from its four matmuls (``call(kind, p, inputs)``), each feeding the next: QKV on ``h``, ``h`` plus the
    output projection of QKV's output, gate-up on that, ``h`` plus the down projection of its activation."""

    def layer(h: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
        qkv = call("qkv_norm", p, {"d": h})
        h = call("o_residual", p, {"q": qkv, "d": h})
        act = call("gate_up_swiglu", p, {"d": h})
        return call("down_residual", p, {"f": act, "d": h})

    return layer


def kernel_layer(configs: dict[str, DecodeGemvConfig | None]) -> Callable[..., jax.Array]:
    """The layer in ``decode_matmul``'s kernels, each kind at its tiling."""
    return chained(lambda kind, p, x: kind_call(kind, p, x, kernel(configs[kind])))


def stacked(layer: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """All layers in one jitted function, each feeding the next, unrolled as jllm's step runs them."""

    def run(h: jax.Array, layers: list[dict[str, jax.Array]]) -> jax.Array:
        for p in layers:
            h = layer(h, p)
        return h

    return jax.jit(run)


def relative_error(got: jax.Array, ref: jax.Array) -> float:
    got = got.astype(jnp.float32)
    return float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref))


def kind_shape(kind: str, args: argparse.Namespace) -> tuple[int, int]:
    """(K, N) of a kind's matmul (gate-up: N per half)."""
    d, q, f = args.hidden, args.qkv, args.intermediate
    return {"qkv_norm": (d, q), "o_residual": (q, d), "gate_up_swiglu": (d, f), "down_residual": (f, d)}[kind]


# XLA's one-row GEMMs as its autotuner tiles them on an H100 (scripts/gpu_specs/autotune_b1_h100.textproto): the
# weights as the MMA's A side, 64-128 columns by 16-64 inputs a step, the row padded to 8, 3-4 stages, 2-4 warps.
# The sweep starts there.
_XLA_LIKE = DecodeGemvConfig(block_n=128, block_k=64, num_warps=4, num_stages=3, swap_ab=True)


def tilings(k: int, n: int, swiglu: bool) -> list[DecodeGemvConfig]:
    """The default first, then XLA's kind of tiling and its neighbours: column blocks 16-128, input steps 32-256,
    2-8 warps, 3-5 stages, split-K 1-4 (1 with SwiGLU), the weights as the MMA's A side or B side."""
    first = default_config(k, n, swiglu=swiglu)
    grid = [
        DecodeGemvConfig(bn, bk, warps, stages, split, swap)
        for bn, bk, warps, stages, split, swap in itertools.product(
            (16, 32, 64, 128), (32, 64, 128, 256), (2, 4, 8), (3, 4, 5), (1,) if swiglu else (1, 2, 4), (True, False)
        )
        if n % bn == 0 and k % (bk * split) == 0 and (bn >= 64 or not swap)
    ]
    fields = ("block_n", "block_k", "num_warps", "num_stages", "split_k", "swap_ab")

    def distance(c: DecodeGemvConfig) -> int:
        return sum(getattr(c, f) != getattr(_XLA_LIKE, f) for f in fields)

    return [first] + sorted((c for c in grid if c != first), key=distance)


def tune(kind: str, m: int, layers: list[dict[str, jax.Array]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Microseconds per call of each tiling (``--layers`` independent calls in one program), the default's first,
    then others until the budget."""
    k, n = kind_shape(kind, args)
    key = jax.random.key(m)
    x = {name: jax.random.normal(key, (m, width), jnp.bfloat16) for name, width in
         (("d", args.hidden), ("q", args.qkv), ("f", args.intermediate))}  # fmt: skip
    programs = {"xla": jax.jit(lambda x, layers: [xla_kind(kind, p, x) for p in layers])}
    for cfg in tilings(k, n, kind == "gate_up_swiglu"):
        programs[cfg] = jax.jit(lambda x, layers, cfg=cfg: [kind_call(kind, p, x, kernel(cfg)) for p in layers])
    rows, deadline = [], time.monotonic() + args.tune_budget_s
    for i, (cfg, run) in enumerate(programs.items()):
        if i > 1 and time.monotonic() > deadline:  # XLA's and the default tiling always
            break
        row = {"kind": kind, "rows": m, "config": "xla" if cfg == "xla" else cfg.__dict__}
        try:
            row["us"] = back_to_back(lambda run=run: run(x, layers), calls=10, rounds=3) / len(layers) * 1e6
        except Exception as e:  # noqa: BLE001 - a tiling Triton cannot compile is a row with its error
            row["error"] = str(e)[:200]
        if "us" in row:
            row["gbps"] = sum(w.nbytes for w in kind_weights(kind, layers)) / len(layers) / row["us"] / 1e3
        rows.append(row)
    return rows


def kind_weights(kind: str, layers: list[dict[str, jax.Array]]) -> list[jax.Array]:
    name = {"qkv_norm": "qkv", "o_residual": "o", "gate_up_swiglu": "gate_up", "down_residual": "down"}[kind]
    return [p[name] for p in layers]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = environment()
    ceilings = device_ceilings()
    bw = ceilings["copy_gbps_dev0"] * 1e9
    print(f"# card: {env['card']}; {env['date']}; jax {env['versions']['jax']}; {describe_ceilings(ceilings)}")
    layers = make_layers(args)
    weight_bytes = sum(w.nbytes for p in layers for name, w in p.items() if not name.startswith("norm"))
    roofline_ms = weight_bytes / bw * 1e3
    print(f"# {args.layers} layers (hidden {args.hidden}, QKV {args.qkv}, MLP {args.intermediate}, no attention): "
          f"{weight_bytes / 1e9:.2f} GB of bf16 weights, roofline {roofline_ms:.3f} ms")  # fmt: skip
    results: dict[str, Any] = {
        "env": env, "ceilings": ceilings, "args": vars(args) | {"json": str(args.json)}, "weight_bytes": weight_bytes,
        "roofline_ms": roofline_ms, "steps": [], "tuning": [],
    }  # fmt: skip
    defaults = dict.fromkeys(KINDS)
    print(f"\n{'rows':>4}  {'path':16} {'ms / step':>9}  {'TB/s':>5}  {'% roofline':>10}  {'err vs f32':>10}")
    for m in (int(r) for r in args.rows.split(",")):
        h = jax.random.normal(jax.random.key(m), (m, args.hidden), jnp.bfloat16)
        ref = stacked(chained(kind_call))(h, layers[:2])
        paths = {"xla": chained(xla_kind), "pallas default": kernel_layer(defaults)}
        if args.tune:
            best = {}
            for kind in KINDS:
                rows = tune(kind, m, layers, args)
                results["tuning"] += rows
                xla = next(r for r in rows if r["config"] == "xla")
                timed = [r for r in rows if "us" in r and r["config"] != "xla"]
                fastest = min(timed, key=lambda r: r["us"]) if timed else None
                best[kind] = DecodeGemvConfig(**fastest["config"]) if fastest else None
                if fastest:
                    print(f"  {kind:15} M={m}: XLA {xla['us']:.2f} us ({xla['gbps']:.0f} GB/s); Pallas default "
                          f"{timed[0]['us']:.2f} us, best of {len(timed)} {fastest['us']:.2f} us "
                          f"({fastest['gbps']:.0f} GB/s) {best[kind]}")  # fmt: skip
            paths["pallas tuned"] = kernel_layer(best)
        for name, layer in paths.items():
            run = stacked(layer)
            seconds = back_to_back(lambda run=run, h=h: run(h, layers), calls=10, rounds=5)
            err = relative_error(stacked(layer)(h, layers[:2]), ref)
            row = {"rows": m, "path": name, "ms": seconds * 1e3, "tbps": weight_bytes / seconds / 1e12,
                   "pct_roofline": 100 * roofline_ms / (seconds * 1e3), "rel_err": err}  # fmt: skip
            results["steps"].append(row)
            print(f"{m:>4}  {name:16} {row['ms']:9.3f}  {row['tbps']:5.2f}  {row['pct_roofline']:10.1f}  {err:10.2e}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Paged attention speed on one GPU: the Pallas kernel vs the reference path and JAX's stock Pallas paged_attention.

Decode steps (batch x context, 32 query / 8 KV heads, head_dim 128, bf16, pages scattered at random over the pool)
report time and KV bytes read / time next to the device copy bandwidth measured in the same run; prefill chunks report
attention TFLOP/s next to a measured bf16 matmul rate. ``--tune`` also times a few kernel tilings on chosen shapes.
``--kv-fp8`` times every decode shape again over an FP8 (float8_e4m3fn) copy of the same pool, in the same process,
and every prefill chunk in-step over it (Pallas and jax-triton).
Every time is the median of several back-to-back batches of calls (dispatch overlapped, as in a serving loop).
``--replay FILE.npz`` times instead one decode step an engine ran (recorded by ``profile_step.py --dump-attention``,
scripts/attention_replay.py): as recorded, changed one thing at a time toward the synthetic step, and the synthetic
step of its batch and mean context, each a decode-table row; then the kernel's output against the reference.

    python scripts/bench_kernels.py --tune          # logs bench_kernels.{txt,json} to $OUT when set
    python scripts/bench_kernels.py --batches 64 --contexts 8192 --kv-fp8 --no-reference --no-stock
    python scripts/bench_kernels.py --replay step_b32.npz     # a step profile_step.py --dump-attention recorded
    python scripts/bench_kernels.py --smoke         # CPU dry run of the script: tiny shapes, interpret mode
    python scripts/bench_kernels.py --smoke --replay step.npz  # the replay on the CPU (interpret mode, no in-step)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from attention_replay import RecordedStep, describe, variants
from bench_common import describe_ceilings, device_ceilings, random_block_tables

from pallas_kernels import KernelConfig, default_config, ragged_paged_attention, ref_ragged_paged_attention
from pallas_kernels.kv_quant import FP8_DTYPE, is_fp8, quantize
from pallas_kernels.triton_prefill import PrefillConfig, prefill_attention

NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM = 32, 8, 128
DTYPE = jnp.bfloat16
IN_STEP_LAYERS = 32  # kernel calls per timed function "as the step runs them" (Llama-3-8B's layers)
# --tune's grids. Decode: kv_block x (num_warps, num_stages) x num_splits. Prefill: q_block x kv_block x the same.
TUNE_KV_BLOCKS = (32, 64, 128)
TUNE_WARPS_STAGES = ((2, 2), (4, 1), (4, 2), (4, 3), (8, 2), (8, 3))
TUNE_SPLITS = (1, 2, 4, 8, 16, 32, 64)  # past TUNE_MAX_DECODE_PROGRAMS only small batches try the larger ones
TUNE_MIN_DECODE_KV_BLOCK = 64  # smaller decode tiles lost on every H200 shape tuned (2026-12-03)
# An FP8 pool's 128-key tile is 16 KiB, half a bf16 tile's bytes (H200 2026-12-06: its kernel read 2.06 TB/s of e4m3
# at 64 x 8k where the bf16 pool's moved 4.26): its decode grid also tries 256-key tiles (32 KiB)
TUNE_FP8_DECODE_KV_BLOCKS = (64, 128, 256)
TUNE_MAX_DECODE_PROGRAMS = 1024  # decode splits past this many programs (8 per SM on an H200) are not tried
TUNE_Q_BLOCKS = (16, 32)
# The jax-triton prefill kernel's tilings: (block_m, block_n, num_warps, num_stages, heads_first, pack_gqa).
TUNE_PREFILL = ((128, 64, 8, 3, False, False), (128, 128, 8, 2, False, False), (128, 64, 4, 3, False, False),
                (128, 64, 4, 4, False, False), (128, 128, 4, 2, False, False), (128, 128, 4, 3, False, False),
                (64, 64, 4, 3, False, False), (128, 128, 8, 3, False, False), (128, 128, 8, 2, True, False),
                (64, 64, 4, 3, True, False), (128, 128, 8, 2, True, True), (64, 64, 4, 3, True, True),
                (128, 64, 4, 3, True, True))  # fmt: skip


def timeit(fn: Callable[[], object], budget_s: float = 0.05, reps: int = 5) -> float:
    """Median seconds per call over `reps` batches of back-to-back calls, each batch about `budget_s` long."""
    jax.block_until_ready(fn())  # compile and warm up
    start = time.perf_counter()
    jax.block_until_ready(fn())
    once = time.perf_counter() - start
    calls = max(1, min(200, int(budget_s / max(once, 1e-6))))
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()  # one device runs its calls in order: the last done means all are (and only it stays alive)
        jax.block_until_ready(out)
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def random_pool(
    num_pages: int,
    page_size: int,
    num_kv_heads: int = NUM_KV_HEADS,
    head_dim: int = HEAD_DIM,
    dtype=DTYPE,
    seed: int = 0,
) -> jax.Array:  # [2, Hkv, P, page_size, D]
    """1024 random pages tiled over the pool (a full-size jax.random draw can pass 2**32 elements)."""
    tile = jax.random.normal(jax.random.key(seed), (2, num_kv_heads, 1024, page_size, head_dim), dtype)
    reps = -(-num_pages // 1024)
    return jax.jit(lambda t: jnp.tile(t, (1, 1, reps, 1, 1))[:, :, :num_pages])(tile)


class Pool:
    """One KV pool (bf16 unless ``dtype``), allocated once, whose pages every shape draws from (at random, or in
    order with ``scattered=False``); with ``fp8`` also its float8_e4m3fn copy (scale 1: the random values sit well
    inside e4m3's range). Llama-3-8B's heads unless given (``--replay`` gives a recorded model's)."""

    def __init__(
        self,
        num_tokens: int,
        page_size: int,
        fp8: bool = False,
        scattered: bool = True,
        heads: tuple[int, int, int] = (NUM_Q_HEADS, NUM_KV_HEADS, HEAD_DIM),  # (query heads, KV heads, head_dim)
        dtype=DTYPE,
    ) -> None:
        self.page_size = page_size
        self.num_pages = 1 + -(-num_tokens // page_size)
        self.heads = heads
        self.kv = random_pool(self.num_pages, page_size, heads[1], heads[2], dtype)  # [2, Hkv, P, page_size, D]
        self.kv_fp8 = jax.jit(lambda kv: quantize(kv, FP8_DTYPE))(self.kv) if fp8 else None  # same shape, 1 byte
        self.rng = np.random.default_rng(0)
        self.scattered = scattered
        self.next_page = 0  # in-order pages: where the next step's begin, so steps (layers) do not share pages

    def step(self, q_lens: list[int], kv_lens: list[int]) -> tuple[jax.Array, ...]:
        """(q, kv_pages, kv_lens, block_tables, query_start_loc) for one step; tables padded to the longest context."""
        width = -(-max(kv_lens) // self.page_size)
        tables = random_block_tables(self.rng, self.num_pages, self.page_size, kv_lens, width, self.scattered)
        if not self.scattered:  # pages 1, 2, ... shifted past the previous step's, as a per-layer pool would be
            used = tables > 0
            tables[used] = 1 + (tables[used] - 1 + self.next_page) % (self.num_pages - 1)
            self.next_page += int(used.sum())
        q = jax.random.normal(jax.random.key(1), (sum(q_lens), self.heads[0], self.heads[2]), self.kv.dtype)
        qsl = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
        return q, self.kv, jnp.asarray(kv_lens, jnp.int32), jnp.asarray(tables), jnp.asarray(qsl)


def kernel_fn(
    step: tuple[jax.Array, ...], config: KernelConfig | None = None, interpret: bool = False, **kw: Any
) -> Callable[[], jax.Array]:
    """One kernel call; ``kw``: the kernel's other keyword arguments (``sm_scale`` defaults to head_dim ** -0.5)."""
    kw = {"sm_scale": step[0].shape[-1] ** -0.5} | kw
    f = jax.jit(lambda *a: ragged_paged_attention(*a, config=config, interpret=interpret, **kw))
    return lambda: f(*step)


def in_step_fn(
    pool: Pool,
    q_lens: list[int],
    kv_lens: list[int],
    layers: int = IN_STEP_LAYERS,
    fp8: bool = False,
    config: KernelConfig | PrefillConfig | None = None,
    triton: bool = False,
) -> Callable[[], jax.Array]:
    """``layers`` kernel calls in one jitted function, each over its own random pages and fed the previous output,
    as a model step runs them (one launch stream, no host in between); time / layers is the per-call figure.
    ``triton`` (or a ``PrefillConfig``) times the jax-triton prefill kernel, else the Pallas kernel."""
    steps = [pool.step(q_lens, kv_lens) for _ in range(layers)]
    q, kv, lens, _, qsl = steps[0]
    kv = pool.kv_fp8 if fp8 else kv
    tables = [s[3] for s in steps]
    kernel = prefill_attention if triton or isinstance(config, PrefillConfig) else ragged_paged_attention
    return chain_fn(kernel, q, [kv], lens, tables, qsl, sm_scale=q.shape[-1] ** -0.5, config=config)


def chain_fn(
    kernel: Callable[..., jax.Array],
    q: jax.Array,  # [T, Hq, D]
    pools: list[jax.Array],  # each [2, Hkv, P, page_size, D]
    lens: jax.Array,  # i32[S]
    tables: list[jax.Array],  # each i32[S, W]
    qsl: jax.Array,  # i32[S + 1]
    **kw: Any,
) -> Callable[[], jax.Array]:
    """``len(tables)`` kernel calls in one jitted function, call i over ``tables[i]`` and ``pools[i % len(pools)]``,
    each fed the previous call's output: one launch stream, no host in between."""

    @jax.jit
    def run(q: jax.Array, pools: list[jax.Array], lens: jax.Array, tables: list[jax.Array], qsl: jax.Array):
        for i, t in enumerate(tables):
            q = kernel(q, pools[i % len(pools)], lens, t, qsl, **kw)
        return q

    return lambda: run(q, pools, lens, tables, qsl)


def triton_fn(step: tuple[jax.Array, ...], config: PrefillConfig | None = None) -> Callable[[], jax.Array]:
    f = jax.jit(lambda *a: prefill_attention(*a, sm_scale=HEAD_DIM**-0.5, config=config))
    return lambda: f(*step)


def has_jax_triton() -> bool:
    try:
        import jax_triton  # noqa: F401
    except ImportError:
        return False
    return True


def reference_fn(step: tuple[jax.Array, ...]) -> Callable[[], jax.Array]:
    f = jax.jit(lambda *a: ref_ragged_paged_attention(*a, sm_scale=HEAD_DIM**-0.5))
    return lambda: f(*step)


def stock_fn(
    step: tuple[jax.Array, ...], k_pages: jax.Array, v_pages: jax.Array, interpret: bool
) -> Callable[[], jax.Array] | None:
    """JAX's stock Pallas decode kernel (Triton backend) on the same pages, with its default tiling."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from jax.experimental.pallas.ops.gpu.paged_attention import paged_attention
    q, _, kv_lens, tables, _ = step
    if tables.shape[1] % 16:  # its default k_splits=16 must divide pages_per_sequence
        return None
    f = jax.jit(lambda q, k, v, t, n: paged_attention(q * HEAD_DIM**-0.5, k, v, t, n, interpret=interpret))
    return lambda: f(q, k_pages, v_pages, tables, kv_lens)  # pages as arguments: closed over, they would be constants


def config_of(step: tuple[jax.Array, ...]) -> KernelConfig:
    """The tiling the kernel picks for a step's shapes when given none."""
    q, kv, _, tables, qsl = step
    tokens, q_heads, head_dim = q.shape
    return default_config(
        tokens, len(qsl) - 1, q_heads, kv.shape[1], kv.shape[3], tables.shape[1], head_dim, q.dtype.itemsize
    )


def decode_bytes(batch: int, ctx: int) -> int:
    """KV bytes one decode step reads: K and V of every context token, bf16."""
    return batch * ctx * NUM_KV_HEADS * HEAD_DIM * 2 * 2


def prefill_flops(chunk: int, prefix: int) -> int:
    """FLOPs of one chunk's causal attention after `prefix` tokens: QK^T and PV over the keys each row sees."""
    return 4 * NUM_Q_HEADS * HEAD_DIM * sum(prefix + i + 1 for i in range(chunk))


@dataclasses.dataclass(frozen=True)
class Shapes:
    """What one run times: the full grid, or tiny shapes for --smoke (which ignores --batches and --contexts)."""

    batches: list[int]
    contexts: list[int]
    chunks: tuple[tuple[int, int], ...]  # (chunk, prefix) of each prefill row
    tune_shapes: tuple[tuple[int, int], ...]  # (batch, context) of each decode tiling case
    tune_chunks: tuple[tuple[int, int], ...]  # (chunk, prefix) of each prefill tiling case
    # (decodes, their context, a fresh chunk) of each mixed tiling case: a serving step, 32 streams' decodes beside a
    # prompt's chunk filling the 512-token bucket
    tune_mixed: tuple[tuple[int, int, int], ...]

    @classmethod
    def of(cls, args: argparse.Namespace) -> Shapes:
        if args.smoke:
            return cls([1, 2], [256], ((16, 0), (16, 64)), ((1, 256), (2, 256)), ((16, 0),), ((2, 64, 14),))
        return cls(
            [int(b) for b in args.batches.split(",")],
            [int(c) for c in args.contexts.split(",")],
            ((512, 0), (512, 4096), (2048, 0), (2048, 4096)),
            args.tune_shapes,
            ((2048, 0), (2048, 4096)),
            ((32, 1024, 480),),
        )


class TuneCase(NamedTuple):
    name: str
    step: tuple[jax.Array, ...]
    lens: tuple[list[int], list[int]]  # (q_lens, kv_lens): tilings are timed in-step, as the step runs them
    work: int  # per call: KV bytes read (decode) or attention FLOPs (prefill); 0: no one rate (mixed), the time alone
    unit: str  # the rate's unit, for work / seconds
    configs: list[KernelConfig]
    fp8: bool = False  # over the pool's float8_e4m3fn copy


def decode_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """``32x2048,64x512`` -> ((32, 2048), (64, 512)); anything else is an argparse error naming the bad shape."""
    shapes = []
    for shape in text.split(","):
        batch, _, context = shape.partition("x")
        if not (batch.isdigit() and context.isdigit() and int(batch) > 0 and int(context) > 0):
            raise argparse.ArgumentTypeError(f"{shape!r} is not BATCHxCONTEXT with positive integers (e.g. 32x2048)")
        shapes.append((int(batch), int(context)))
    return tuple(shapes)


def comma_choices(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma list of ``allowed`` names; any other name is an error naming it and the choices."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(text.split(","))
        for name in names:
            if name not in allowed:
                raise argparse.ArgumentTypeError(f"{name!r} is not one of {', '.join(allowed)}")
        return names

    return parse


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,32,64,128,256")
    parser.add_argument("--contexts", default="1024,2048,4096,8192")
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument(
        "--page-order",
        choices=("random", "in-order"),
        default="random",
        help="pages of each sequence scattered at random over the pool, or handed out in order (a fresh engine)",
    )
    parser.add_argument(
        "--pool-gb", type=float, default=0.0, help="make the pool at least this big (an engine's is ~3 GB a layer)"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) reference path")
    parser.add_argument("--no-stock", action="store_true", help="skip JAX's stock paged_attention")
    parser.add_argument(
        "--tune", action="store_true", help="also time a grid of tilings on a few decode and prefill shapes"
    )
    parser.add_argument(
        "--tune-shapes",
        type=decode_shapes,
        default="32x2048,64x2048,32x4096",
        help="decode shapes --tune times, as BATCHxCONTEXT,...",
    )
    parser.add_argument("--tune-kinds", type=comma_choices(("decode", "decode-fp8", "prefill", "mixed")),
                        default="decode,prefill",
                        help="which shapes --tune times (decode, decode-fp8: FP8 pool, prefill, mixed)")  # fmt: skip
    parser.add_argument("--tune-kernels", type=comma_choices(("pallas", "triton")), default="pallas,triton",
                        help="whose tilings --tune times on chunks (pallas, triton)")  # fmt: skip
    parser.add_argument("--tune-only", action="store_true", help="only the tilings (no decode / prefill tables)")
    parser.add_argument("--deadline-s", type=float, default=1e9, help="skip the remaining tilings after this long")
    parser.add_argument(
        "--kv-fp8", action="store_true", help="also time each decode shape and prefill chunk over an FP8 pool"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes in interpret mode (CPU dry run)")
    parser.add_argument(
        "--replay",
        type=Path,
        metavar="FILE.npz",
        help="only time the decode step profile_step.py --dump-attention recorded: as recorded, changed one thing "
        "at a time toward the synthetic step, and the synthetic step of its batch and mean context",
    )
    parser.add_argument(
        "--replay-pool-gb",
        type=float,
        default=40.0,
        help="--replay: at most this many GB of recorded-size pools for the in-step calls to cycle over (the "
        "engine has one per layer; one shared pool would serve repeated pages from L2)",
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    return parser.parse_args()


def bench_decode(
    args: argparse.Namespace, shapes: Shapes, pool: Pool, copy_bw: float, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """The decode table: one row per context and batch size (none with --tune-only)."""
    k_pages, v_pages = (None, None) if args.no_stock else (pool.kv[0], pool.kv[1])
    rows = []
    for ctx in [] if args.tune_only else shapes.contexts:
        for batch in shapes.batches:
            rows.append(time_decode(args, pool, batch, ctx, k_pages, v_pages))
            say(decode_line(rows[-1], copy_bw))
            if args.kv_fp8:
                say(fp8_line(rows[-1], copy_bw))
    return rows


def time_decode(
    args: argparse.Namespace, pool: Pool, batch: int, ctx: int, k_pages: jax.Array | None, v_pages: jax.Array | None
) -> dict[str, Any]:
    """Seconds per call of the kernel, the stock kernel and the reference on one decode shape (None: not run)."""
    step = pool.step([1] * batch, [ctx] * batch)
    row: dict[str, Any] = {"batch": batch, "context": ctx, "kv_bytes": decode_bytes(batch, ctx)}
    row["config"] = dataclasses.asdict(config_of(step))
    row["kernel_s"] = timeit(kernel_fn(step, interpret=args.smoke))
    row["in_step_s"] = None if args.smoke else timeit(in_step_fn(pool, [1] * batch, [ctx] * batch)) / IN_STEP_LAYERS
    stock = None if args.no_stock else stock_fn(step, k_pages, v_pages, args.smoke)
    row["stock_s"] = timeit(stock) if stock else None
    row["reference_s"] = None if args.no_reference else timeit(reference_fn(step), reps=3)
    if args.kv_fp8:  # the same shape and tiling over the FP8 copy of the pool
        fp8_step = (step[0], pool.kv_fp8, *step[2:])
        row["fp8_kernel_s"] = timeit(kernel_fn(fp8_step, interpret=args.smoke))
        row["fp8_in_step_s"] = (
            None if args.smoke else timeit(in_step_fn(pool, [1] * batch, [ctx] * batch, fp8=True)) / IN_STEP_LAYERS
        )
    return row


def decode_line(row: dict[str, Any], copy_bw: float) -> str:
    """One decode row of the table; the kernel's read rate also as a share of the device's copy bandwidth."""
    kv_bytes, k_s, cfg = row["kv_bytes"], row["kernel_s"], row["config"]
    speedup = f"{row['stock_s'] / k_s:7.2f}" if row["stock_s"] else f"{'-':>7}"
    in_step = row["in_step_s"]
    step_cell = f"{'-':>8} {'-':>5}"
    if in_step is not None:
        step_cell = f"{in_step * 1e6:8.1f} {100 * kv_bytes / in_step / copy_bw:5.0f}"
    return (
        f"{row['batch']:5d} {row['context']:5d} | {k_s * 1e6:9.1f} {kv_bytes / k_s / 1e12:5.2f} "
        f"{100 * kv_bytes / k_s / copy_bw:5.0f} | {step_cell} | {rate_cell(row['stock_s'], kv_bytes)} | "
        f"{rate_cell(row['reference_s'], kv_bytes)} | "
        f"{speedup} q{cfg['q_block']}/kv{cfg['kv_block']}/s{cfg['num_splits']}/w{cfg['num_warps']}"
    )


def fp8_line(row: dict[str, Any], copy_bw: float) -> str:
    """The FP8 pool's times under the bf16 row: speed-up over bf16, its read rate (half the bytes) against copy."""
    kv_bytes, fp8_s, in_step = row["kv_bytes"] // 2, row["fp8_kernel_s"], row["fp8_in_step_s"]
    line = (
        f"{'':>5} {'fp8':>5} | {fp8_s * 1e6:9.1f} {kv_bytes / fp8_s / 1e12:5.2f} "
        f"{100 * kv_bytes / fp8_s / copy_bw:5.0f} | x{row['kernel_s'] / fp8_s:.2f} vs the bf16 pool"
    )
    if in_step is not None:
        line += f"; in-step {in_step * 1e6:.1f} us, x{row['in_step_s'] / in_step:.2f}"
    return line


def rate_cell(seconds: float | None, kv_bytes: int) -> str:
    """Microseconds and TB/s of a path, or dashes where it did not run."""
    return f"{'-':>8} {'-':>5}" if seconds is None else f"{seconds * 1e6:8.1f} {kv_bytes / seconds / 1e12:5.2f}"


def bench_prefill(
    args: argparse.Namespace, shapes: Shapes, pool: Pool, mm: float, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """The prefill table: one row per chunk of one sequence (none with --tune-only), its rate against matmul's."""
    prefill = []
    for chunk, prefix in [] if args.tune_only else shapes.chunks:
        step = pool.step([chunk], [prefix + chunk])
        flops = prefill_flops(chunk, prefix)
        seconds = timeit(kernel_fn(step, interpret=args.smoke))
        with_triton = has_jax_triton() and not args.smoke
        triton_s = timeit(triton_fn(step)) if with_triton else None
        lens = ([chunk], [prefix + chunk])
        in_step_s = None if args.smoke else timeit(in_step_fn(pool, *lens)) / IN_STEP_LAYERS
        triton_in_step_s = timeit(in_step_fn(pool, *lens, triton=True)) / IN_STEP_LAYERS if with_triton else None
        ref_s = None if args.no_reference else timeit(reference_fn(step), reps=3)
        cfg = config_of(step)
        row = {"chunk": chunk, "prefix": prefix, "kernel_s": seconds, "triton_s": triton_s, "reference_s": ref_s}
        prefill.append(row | {"in_step_s": in_step_s, "triton_in_step_s": triton_in_step_s, "flops": flops})
        ref_cell = "-" if ref_s is None else f"{ref_s * 1e6:.1f} us"
        say(
            f"chunk {chunk:5d} prefix {prefix:5d} | pallas {flops_cell(seconds, flops, mm)} in-step "
            f"{flops_cell(in_step_s, flops, mm)} | jax-triton {flops_cell(triton_s, flops, mm)} in-step "
            f"{flops_cell(triton_in_step_s, flops, mm)} | ref {ref_cell} | pallas q{cfg.q_block}/kv{cfg.kv_block}"
            f"/s{cfg.num_splits}/w{cfg.num_warps}"
        )
        if args.kv_fp8 and not args.smoke:  # the same chunk in-step over the FP8 copy of the pool
            fp8_s = timeit(in_step_fn(pool, *lens, fp8=True)) / IN_STEP_LAYERS
            triton_fp8_s = (
                timeit(in_step_fn(pool, *lens, fp8=True, triton=True)) / IN_STEP_LAYERS if with_triton else None
            )
            prefill[-1] |= {"fp8_in_step_s": fp8_s, "triton_fp8_in_step_s": triton_fp8_s}
            say(
                f"{'fp8 pool':>25} | pallas in-step {flops_cell(fp8_s, flops, mm)} | jax-triton in-step "
                f"{flops_cell(triton_fp8_s, flops, mm)}"
            )
    return prefill


def flops_cell(seconds: float | None, flops: int, mm: float) -> str:
    """Microseconds, TFLOP/s and share of the matmul ceiling of a path, or a dash where it did not run."""
    if seconds is None:
        return f"{'-':>28}"
    return f"{seconds * 1e6:8.1f} us {flops / seconds / 1e12:6.1f} TF {100 * flops / seconds / mm:3.0f}%"


def bench_tilings(
    args: argparse.Namespace, shapes: Shapes, pool: Pool, started: float, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """--tune: every tiling of every case, until --deadline-s after the run started."""
    if not (args.tune or args.tune_only):
        return []
    say("tilings: shape q_block kv_block warps stages splits -> us, TB/s (decode) or TFLOP/s (prefill)")
    tuning = []
    with_triton = "triton" in args.tune_kernels and has_jax_triton() and not args.smoke
    for case in tune_cases(shapes, pool, args.tune_kinds, with_triton, with_pallas="pallas" in args.tune_kernels):
        tuning += time_tilings(case, pool, args, started, say)
    return tuning


def tune_cases(
    shapes: Shapes, pool: Pool, kinds: Collection[str], with_triton: bool, with_pallas: bool = True
) -> list[TuneCase]:
    """Decode shapes try every split count, prefill chunks every q_block, both over the same kv_block x warps grid;
    chunks and mixed steps also the jax-triton kernel's tilings. ``with_pallas`` False: the Pallas kernel's default
    tiling alone beside them (its grid takes minutes a shape)."""
    grid = [(kb, w, st) for kb in TUNE_KV_BLOCKS for w, st in TUNE_WARPS_STAGES]
    decode_grids = {
        False: [(kb, w, st) for kb, w, st in grid if kb >= TUNE_MIN_DECODE_KV_BLOCK],
        True: [(kb, w, st) for kb in TUNE_FP8_DECODE_KV_BLOCKS for w, st in TUNE_WARPS_STAGES],
    }
    cases = []
    decode_pools = [fp8 for fp8, kind in ((False, "decode"), (True, "decode-fp8")) if kind in kinds]
    for fp8, (batch, ctx) in itertools.product(decode_pools, shapes.tune_shapes):  # decode: the KV read is the work
        step = pool.step([1] * batch, [ctx] * batch)
        step = (step[0], pool.kv_fp8, *step[2:]) if fp8 else step
        default = config_of(step)  # first, so the best is read against it
        splits = [n for n in TUNE_SPLITS if n == 1 or batch * NUM_KV_HEADS * n <= TUNE_MAX_DECODE_PROGRAMS]
        configs = [
            default,
            *(c for kb, w, st in decode_grids[fp8] for n in splits if (c := KernelConfig(1, kb, n, w, st)) != default),
        ]
        lens = ([1] * batch, [ctx] * batch)
        name, kv_bytes = f"decode {batch}x{ctx}" + " fp8" * fp8, decode_bytes(batch, ctx) // (1 + fp8)  # e4m3: 1 byte
        cases.append(TuneCase(name, step, lens, kv_bytes, "TB/s", configs, fp8))
    triton = [PrefillConfig(*tiling) for tiling in TUNE_PREFILL] if with_triton else []
    for chunk, prefix in shapes.tune_chunks if "prefill" in kinds else ():  # prefill: the attention FLOPs are the work
        lens = ([chunk], [prefix + chunk])
        step = pool.step(*lens)
        pallas = [KernelConfig(qb, kb, 1, w, st) for qb in TUNE_Q_BLOCKS for kb, w, st in grid]
        configs = (pallas if with_pallas else [config_of(step)]) + triton
        cases.append(
            TuneCase(f"prefill {chunk}+{prefix}", step, lens, prefill_flops(chunk, prefix), "TFLOP/s", configs)
        )
    for decodes, ctx, chunk in shapes.tune_mixed if "mixed" in kinds else ():  # the time is the figure
        lens = ([1] * decodes + [chunk], [ctx] * decodes + [chunk])
        step = pool.step(*lens)
        configs = [config_of(step), *triton]
        cases.append(TuneCase(f"mixed {decodes}x{ctx}+{chunk}", step, lens, 0, "", configs))
    return cases


def time_tilings(
    case: TuneCase, pool: Pool, args: argparse.Namespace, started: float, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """One case's tilings, then the fastest beside the default config."""
    timed = []
    best = None
    for cfg in case.configs:
        if time.perf_counter() - started > args.deadline_s:
            say(f"  deadline of {args.deadline_s:.0f} s reached; remaining tilings skipped")
            break
        label = f"  {case.name:>18} {tiling_label(cfg)}"
        try:
            calls = 1 if args.smoke else IN_STEP_LAYERS
            seconds = timeit(tiling_fn(case, cfg, pool, args), reps=3) / calls
        except Exception as e:  # a tiling that does not compile (e.g. out of shared memory) is skipped
            say(f"{label} -> {type(e).__name__}: {str(e)[:120]}")
            continue
        timed.append({"shape": case.name, "kernel": type(cfg).__name__, **dataclasses.asdict(cfg), "kernel_s": seconds})
        say(f"{label} -> {seconds * 1e6:8.1f} us{rate(case, seconds)}")
        best = min(best or (seconds, cfg), (seconds, cfg), key=lambda b: b[0])
    if best:
        say(
            f"  best {case.name}: {best[0] * 1e6:.1f} us{rate(case, best[0])} with {best[1]}; "
            f"default {config_of(case.step)}"
        )
    return timed


def rate(case: TuneCase, seconds: float) -> str:
    """`` 123.45 TFLOP/s``: the case's work over the time, in tera-units; nothing for a case of no one rate."""
    return f" {case.work / seconds / 1e12:6.2f} {case.unit}" if case.work else ""


def tiling_fn(
    case: TuneCase, cfg: KernelConfig | PrefillConfig, pool: Pool, args: argparse.Namespace
) -> Callable[[], jax.Array]:
    """Tilings are timed as the step runs them: one call alone is mostly launch time (40-80 us on an H200 where 32
    decode calls in one program take 6-25 us each); --smoke keeps to one call (interpret mode is slow)."""
    if not args.smoke:
        return in_step_fn(pool, *case.lens, fp8=case.fp8, config=cfg)
    if isinstance(cfg, PrefillConfig):
        return triton_fn(case.step, cfg)
    return kernel_fn(case.step, cfg, args.smoke)


def tiling_label(cfg: KernelConfig | PrefillConfig) -> str:
    if isinstance(cfg, PrefillConfig):
        order = (" heads-first" if cfg.heads_first else "") + (" packed-gqa" if cfg.pack_gqa else "")
        return f"jax-triton m{cfg.block_m} n{cfg.block_n} w{cfg.num_warps} st{cfg.num_stages}{order}"
    return f"pallas q{cfg.q_block} kv{cfg.kv_block} w{cfg.num_warps} st{cfg.num_stages} s{cfg.num_splits}"


def bench_replay(args: argparse.Namespace, copy_bw: float, say: Callable[[str], None]) -> dict[str, Any]:
    """--replay: the recorded kernel call (scripts/attention_replay.py) as recorded, then each variant, then the
    synthetic step of the same batch and mean context; one decode-table row each, the variant named after it."""
    rec = RecordedStep.load(args.replay)
    for line in describe(rec):
        say(line)
    (tokens, q_heads, head_dim), q_dtype = rec.call["q"]
    kv_shape, kv_dtype = rec.call["kv_pages"]
    kw = {k: v for k, v in rec.call["kwargs"].items() if k in ("sm_scale", "soft_cap", "sliding_window")}
    if len(rec.info["calls"]) > 1:
        say(f"  the layers call the kernel {len(rec.info['calls'])} ways (sliding windows?); replayed as the first")
    pool_bytes = math.prod(kv_shape) * jnp.dtype(kv_dtype).itemsize
    num_pools = max(1, min(IN_STEP_LAYERS, rec.info["num_layers"], int(args.replay_pool_gb * 1e9 // pool_bytes)))
    pools = [replay_pool(kv_shape, kv_dtype, seed) for seed in range(num_pools)]
    say(f"  in-step calls cycle over {num_pools} pools of {pool_bytes / 1e9:.3f} GB each (the engine: one per layer)")
    q = jax.random.normal(jax.random.key(1), (tokens, q_heads, head_dim), jnp.dtype(q_dtype))  # [T, Hq, D]
    say(decode_header())
    rows, check = [], None
    for v in variants(rec, np.random.default_rng(0)):
        step = (q[: v.num_tokens], pools[0], *map(jnp.asarray, (v.kv_lens, v.block_tables, v.query_start_loc)))
        calls = chain_fn(ragged_paged_attention, step[0], pools[:1] if v.one_pool else pools, step[2],
                         [step[3]] * IN_STEP_LAYERS, step[4], **kw)  # fmt: skip
        rows.append(replay_row(v.name, step, v.kv_lens, calls, kw, args))
        say(f"{decode_line(rows[-1], copy_bw)}  {v.name}")
        if check is None:  # the recorded step: the kernel's output against the reference on the same inputs
            check = replay_check(step, kw, args.smoke)
            if rows[0]["config"] != rec.info["kernel_config"]:
                say(f"  warning: replayed tiling {rows[0]['config']}, recorded {rec.info['kernel_config']}")
    batch, context = rows[0]["batch"], rows[0]["context"]
    pool = Pool((rec.num_pages - 1) * rec.page_size, rec.page_size, is_fp8(jnp.dtype(kv_dtype)),
                heads=(q_heads, kv_shape[1], head_dim), dtype=jnp.dtype(q_dtype))  # fmt: skip
    step = pool.step([1] * batch, [context] * batch)
    fp8 = is_fp8(jnp.dtype(kv_dtype))
    step = (step[0], pool.kv_fp8, *step[2:]) if fp8 else step
    calls = in_step_fn(pool, [1] * batch, [context] * batch, fp8=fp8)
    name = "synthetic: bench_kernels' own step (equal lengths, one pool, fresh random pages per call)"
    rows.append(replay_row(name, step, np.asarray(step[2]), calls, {}, args))
    say(f"{decode_line(rows[-1], copy_bw)}  {name}")
    say(f"kernel vs reference on the recorded step: max error {check['error']:.2e} of max |ref| "
        f"(tolerance {check['tolerance']:.0e}): {'ok' if check['ok'] else 'MISMATCH'}")  # fmt: skip
    return {"info": rec.info, "pools": num_pools, "rows": rows, "check": check}


def replay_pool(shape: list[int], dtype: str, seed: int) -> jax.Array:
    """A random pool of a recorded per-layer shape and dtype (FP8: quantized from bf16, scale 1)."""
    _, kv_heads, num_pages, page_size, head_dim = shape
    fp8 = is_fp8(jnp.dtype(dtype))
    kv = random_pool(num_pages, page_size, kv_heads, head_dim, DTYPE if fp8 else jnp.dtype(dtype), seed)
    return jax.jit(lambda kv: quantize(kv, FP8_DTYPE))(kv) if fp8 else kv


def replay_row(
    name: str,
    step: tuple[jax.Array, ...],
    kv_lens: np.ndarray,
    in_step: Callable[[], jax.Array],
    kw: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """A decode-table row (time_decode's keys) for one replayed step: one call alone, and in-step as the decode
    table times it (--smoke: the call alone, interpreted)."""
    q, kv = step[:2]
    real = kv_lens[kv_lens > 0]
    row: dict[str, Any] = {"variant": name, "batch": len(real), "context": round(float(real.mean()))}
    row["kv_bytes"] = int(real.sum()) * 2 * kv.shape[1] * kv.shape[4] * kv.dtype.itemsize
    row["config"] = dataclasses.asdict(config_of(step))
    row["kernel_s"] = timeit(kernel_fn(step, interpret=args.smoke, **kw))
    row["in_step_s"] = None if args.smoke else timeit(in_step) / IN_STEP_LAYERS
    return row | {"stock_s": None, "reference_s": None}


def replay_check(step: tuple[jax.Array, ...], kw: dict[str, Any], interpret: bool) -> dict[str, Any]:
    """The kernel's output on a step against the float32 reference, with tests/test_kernels.py's tolerance."""
    q, kv, *rest = step
    out = np.asarray(kernel_fn(step, interpret=interpret, **kw)().astype(jnp.float32))
    ref = np.asarray(ref_ragged_paged_attention(q.astype(jnp.float32), kv.astype(jnp.float32), *rest, **kw))
    error = float(np.abs(out - ref).max() / np.abs(ref).max())
    tolerance = 1e-2 if q.dtype == jnp.bfloat16 else 1e-5
    return {"error": error, "tolerance": tolerance, "ok": bool(np.isfinite(out).all() and error <= tolerance)}


def decode_header() -> str:
    return (
        f"{'batch':>5} {'ctx':>5} | {'kernel us':>9} {'TB/s':>5} {'%copy':>5} | {'in-step':>8} {'%copy':>5} | "
        f"{'stock us':>8} {'TB/s':>5} | "
        f"{'ref us':>8} {'TB/s':>5} | {'x stock':>7} config"
    )


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    shapes = Shapes.of(args)
    lines: list[str] = []
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)
        if args.out:  # rewritten as we go, so a run cut short still leaves its table
            (args.out / "bench_kernels.txt").write_text("\n".join(lines) + "\n")

    say(f"{jax.devices()[0].device_kind} | jax {jax.__version__} | {datetime.date.today()} | bench_kernels")
    ceilings = device_ceilings("bfloat16", small=args.smoke)
    copy_bw, mm = ceilings["copy_gbps_dev0"] * 1e9, ceilings["matmul_tflops_dev0"] * 1e12
    say(describe_ceilings(ceilings) + "; every % below is of these measured ceilings")
    if args.replay:
        replay = bench_replay(args, copy_bw, say)
        if args.out:
            result = {"header": lines[0], "ceilings": ceilings, "replay": replay}
            (args.out / "bench_kernels.json").write_text(json.dumps(result, indent=1))
        return
    say(f"decode: Hq={NUM_Q_HEADS} Hkv={NUM_KV_HEADS} D={HEAD_DIM} bf16 page_size={args.page_size}")
    say(decode_header())
    tokens = max(shapes.batches) * max(shapes.contexts) + max(c + p for c, p in shapes.chunks)
    tokens = max(tokens, int(args.pool_gb * 1e9) // (2 * NUM_KV_HEADS * HEAD_DIM * jnp.dtype(DTYPE).itemsize))
    fp8 = args.kv_fp8 or ((args.tune or args.tune_only) and "decode-fp8" in args.tune_kinds)
    pool = Pool(tokens, args.page_size, fp8, scattered=args.page_order == "random")
    rows = bench_decode(args, shapes, pool, copy_bw, say)
    say("prefill chunks (one sequence; TFLOP/s counts causal QK^T and PV)")
    prefill = bench_prefill(args, shapes, pool, mm, say)
    tuning = bench_tilings(args, shapes, pool, started, say)
    if args.out:
        result = {"header": lines[0], "ceilings": ceilings}
        result |= {"decode": rows, "prefill": prefill, "tuning": tuning}
        (args.out / "bench_kernels.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

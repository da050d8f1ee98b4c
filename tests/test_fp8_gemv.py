"""The jax-triton FP8-weight matmul: its host logic on the CPU, and the whole entry point with its kernel in Triton's
interpreter.

jax-triton launches compiled Triton only on a CUDA device, so CI runs ``fp8_matmul`` under jit with
``tests/fake_jax_triton.py`` standing in for jax-triton (``tests/fp8_gemv_worker.py``, one subprocess for all
cases): float32 activations on fresh random inputs (each row at its own scale) against float64 products. The
interpreter runs "dot_fp8"'s e4m3 ``tl.dot`` (it widens both operands to float16, exactly, and multiplies in
float32), but rounds float32 -> e4m3 wrongly (triton-lang/triton issue 8322) and truncates float32 -> bf16, so the
worker mends both casts to the GPU's rounding first. Numerics in bf16 and speed on the GPU are
``scripts/bench_fp8_gemv.py``'s (``--check``).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
import typing
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_utils import TINY_CONFIG, run_worker

from jllm.config import ConfigError, Fp8KernelCompute, load_config
from jllm.loader import load_model
from jllm.parallel import make_mesh
from jllm.quantization import FP8, QuantScheme, quantize_rows
from pallas_kernels import fp8_gemv
from pallas_kernels.fp8_gemv import amax_block, compile_for_cuda
from pallas_kernels.fp8_gemv_spec import (
    COMPUTE,
    GemvConfig,
    check_shapes,
    default_gemv_config,
    pays_off,
    ref_quantize_rows,
    supports,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))  # as `python scripts/bench_fp8_gemv.py`
bench = importlib.import_module("bench_fp8_gemv")

# Relative (Frobenius) error against float64 of float32 activations times e4m3 weights accumulated in float32: "fma"
# multiplies in float32 (measured ~3e-7); "dot_f16" rounds the activations to float16 first (2^-11 an element).
# "dot_fp8" rounds them to e4m3 (3 mantissa bits: at most 2^-4 an element, 2.4-3.0e-2 measured over a product), so
# against the unquantized product its error must lie between DOT_FP8_ROUNDED (it did round) and 2^-4. Against
# ``ref_fp8_matmul`` (the activations rounded as the mode must) only float32 accumulation order is left (measured
# < 1e-7): one e4m3 element rounded the other way would move its row by ~1/(8 sqrt(K)) > 3e-3.
RTOL = {"fma": 1e-5, "dot_f16": 2e-3, "dot_fp8": 2**-4}
RTOL_EXACT = 1e-5
DOT_FP8_ROUNDED = 5e-3
W8A8 = "dot_fp8"


def w8a8(
    seed: int, lead: list[int], k: int, out: list[int], w_kmajor: bool = False, zero_rows: tuple = (), **config: Any
) -> dict:
    """A "dot_fp8" case of ``fp8_matmul`` (16-row tiles unless ``config`` says otherwise)."""
    config = {"block_m": 16, **config, "compute": W8A8}
    return dict(seed=seed, lead=lead, k=k, out=out, w_kmajor=w_kmajor, zero_rows=list(zero_rows), config=config)


CASES = [
    # one row (a batch-1 decode) in "fma", the kernel's own scale and write
    dict(seed=0, lead=[1], k=256, out=[128], config=dict(block_n=64, block_k=32, split_k=1)),
    # rows past a 16-row tile (two row blocks, the second masked), split-K partial sums added in XLA
    dict(
        seed=1,
        lead=[20],
        k=512,
        out=[192],
        config=dict(block_m=16, block_n=64, block_k=64, split_k=4, compute="dot_f16"),
    ),
    # leading batch dims and a 2-D output (a fused projection's [in, heads, head_dim] kernel)
    dict(
        seed=2,
        lead=[2, 3],
        k=256,
        out=[4, 32],
        config=dict(block_m=16, block_n=32, block_k=32, split_k=2, compute="dot_f16"),
    ),
    # the default tilings: "fma" for one row, "dot_f16" (f16 operands: a looser bound) for more
    dict(seed=3, lead=[1], k=1024, out=[256]),
    dict(seed=4, lead=[5], k=1024, out=[256]),
    dict(seed=5, lead=[3], k=512, out=[128], config=dict(block_m=1, block_n=64, block_k=64, split_k=2)),
    # the widening modes read [N, K] weights too
    dict(seed=6, lead=[1], k=256, out=[128], w_kmajor=True, config=dict(block_n=64, block_k=64, split_k=2)),
    dict(seed=7, lead=[3], k=256, out=[64], w_kmajor=True, config=dict(block_m=16, block_n=32, compute="dot_f16")),
    # "dot_fp8" (W8A8): rows 1, 5, 16, 33; one split and several; [K, N] and [N, K] weights; plain and swapped MMAs
    w8a8(8, [1], 256, [128], block_n=32, block_k=64, swap_ab=True),
    w8a8(9, [1], 512, [64], block_n=64, block_k=64, split_k=4),
    w8a8(10, [5], 512, [64], w_kmajor=True, block_n=32, block_k=32, split_k=2),
    # zero rows (scale 1, output 0) among 16, four splits
    w8a8(11, [16], 256, [64], zero_rows=[3, 7], block_n=32, block_k=32, split_k=4, swap_ab=True),
    # 33 rows in one 64-row tile (31 masked), a zero row, the row absmax read in 8 steps of 128
    w8a8(12, [33], 1024, [64], w_kmajor=True, zero_rows=[32], block_m=64, block_n=32, block_k=32, swap_ab=True),
    # 33 rows in three 16-row tiles, two splits
    w8a8(13, [33], 256, [64], block_n=64, block_k=64, split_k=2),
    # leading dims and a 2-D output, its [*out, K] transpose passed
    w8a8(14, [2, 3], 256, [4, 32], w_kmajor=True, block_n=32, block_k=64, split_k=2, swap_ab=True),
    # the engine's path: QuantScheme picks the kernel in "dot_fp8" with its default tiling
    dict(seed=15, lead=[5], k=1024, out=[256], scheme=dict(fp8_kernel_max_tokens=16, fp8_kernel_compute=W8A8)),
    # scripts/bench_fp8_gemv.py --check's path on a small shape: every variant it checks, kernels interpreted
    dict(bench=[256, 256], rows=[1, 33]),
]  # fmt: skip


@pytest.fixture(scope="module")
def interpreted() -> list[dict]:
    return run_worker("fp8_gemv_worker.py", CASES)


MATMULS = [i for i, case in enumerate(CASES) if "bench" not in case]


@pytest.mark.slow
@pytest.mark.parametrize("index", MATMULS)
def test_interpreted_matmul_matches_float64(interpreted: list[dict], index: int) -> None:
    result = interpreted[index]
    case = result["case"]
    assert result["shape"] == [*case["lead"], *case["out"]]
    assert result["finite"] and result["zero_rows_zero"]
    compute = result["compute"]  # the case's config's, or the default tiling's
    assert result["rel_err"] < RTOL[compute], result
    assert result["rel_err_exact"] < RTOL_EXACT, result  # against ref_fp8_matmul in the same mode
    if compute == W8A8:
        assert result["rel_err"] > DOT_FP8_ROUNDED, result  # the activations were rounded to e4m3


def test_the_reference_quantizes_rows_as_the_engine_does() -> None:
    """``ref_fp8_matmul``'s e4m3 rows (the kernel's arithmetic: times ``1 / scale``) against the engine's XLA path
    (``quantize_rows``: divided by the scale), on rows of different magnitudes and a zero row."""
    rng = np.random.default_rng(0)  # NumPy's draws: JAX's compiled a program per shape
    x = rng.standard_normal((16, 2048), np.float32) * np.exp(4 * rng.standard_normal((16, 1), np.float32))
    x[5] = 0
    x = jnp.asarray(x.astype(jnp.bfloat16))
    (got, got_scale), (want, want_scale) = ref_quantize_rows(x), quantize_rows(x)
    assert jnp.array_equal(got_scale, want_scale) and got_scale[5, 0] == 1
    assert jnp.array_equal(got.astype(jnp.float32), want.astype(jnp.float32))


@pytest.mark.parametrize(("m", "k", "n"), [(1, 4096, 6144), (1, 4096, 4096), (32, 4096, 28672), (8, 14336, 4096)])
def test_default_tiling_fits_llama3_8b_and_fills_the_sms(m: int, k: int, n: int) -> None:
    cfg = default_gemv_config(m, k, n)
    check_shapes(m, k, n, cfg)
    assert (cfg.compute, cfg.block_m) == ("fma", 1) if m == 1 else cfg.block_m >= min(64, max(16, m))
    assert n // cfg.block_n * cfg.split_k >= 3 * 132  # three or more programs per SM of an H200
    assert k // (cfg.block_k * cfg.split_k) >= 4  # each program streams several tiles


def test_shapes_the_kernel_cannot_take_are_refused_by_name() -> None:
    cfg = GemvConfig(block_n=128, block_k=128, split_k=2)
    assert not pays_off(1, 2048, 4096) and pays_off(1, 4096, 4096)  # weights under o_proj's size stay in XLA
    assert pays_off(1, 2048, 4096, "dot_fp8")  # ... unless the kernel is W8A8 (MIN_WEIGHT_ELEMENTS per mode)
    with pytest.raises(ValueError, match="output width 100"):
        check_shapes(1, 512, 100, cfg)
    with pytest.raises(ValueError, match="input width 384"):
        check_shapes(1, 384, 128, cfg)
    assert not supports(1, 384, 128, cfg) and supports(1, 512, 128, cfg)
    with pytest.raises(ValueError, match="block_n=48"):
        GemvConfig(block_n=48)
    with pytest.raises(ValueError, match="block_m=16 must be 1 with compute='fma'"):
        GemvConfig(block_m=16)
    with pytest.raises(ValueError, match="compute='dot'"):
        GemvConfig(compute="dot")


@pytest.mark.parametrize(("m", "k", "n"), [(1, 4096, 6144), (1, 4096, 4096), (8, 4096, 28672), (48, 14336, 4096)])
def test_the_w8a8_tiling_swaps_to_the_fp8_mma_and_fills_the_sms(m: int, k: int, n: int) -> None:
    cfg = default_gemv_config(m, k, n, "dot_fp8")
    check_shapes(m, k, n, cfg)
    assert (cfg.compute, cfg.swap_ab, cfg.block_m) == ("dot_fp8", True, 16 if m <= 16 else 64)
    assert n // cfg.block_n * cfg.split_k >= 3 * 132 and k // (cfg.block_k * cfg.split_k) >= 4
    # the row-absmax pass reads whole [block_m, amax_block] slices of each row, at most 8192 elements a step
    block = amax_block(k, cfg)
    assert k % block == 0 and block >= cfg.block_k and block * cfg.block_m <= 8192 and block & (block - 1) == 0


def test_the_config_key_names_every_compute_mode_and_checks_it() -> None:
    assert typing.get_args(Fp8KernelCompute) == COMPUTE
    assert load_config(fp8_kernel_compute="dot_fp8", fp8_kernel_max_tokens=64).model.fp8_kernel_compute == "dot_fp8"
    with pytest.raises(ConfigError, match="fp8_kernel_compute='dot' is not allowed: expected 'fma' or 'dot_f16'"):
        load_config(fp8_kernel_compute="dot")
    with pytest.raises(ValueError, match="fp8_kernel_compute='w8a8' is not one of fma, dot_f16, dot_fp8"):
        QuantScheme("fp8", fp8_kernel_compute="w8a8")
    with pytest.raises(ValueError, match="swap_ab=True needs compute='dot_fp8'"):
        GemvConfig(block_m=16, block_n=64, block_k=64, compute="dot_f16", swap_ab=True)
    with pytest.raises(ValueError, match="block_k=16 must be >= 32 with compute='dot_fp8'"):
        GemvConfig(block_m=16, block_n=64, block_k=16, compute="dot_fp8")


@pytest.mark.parametrize(
    ("rows", "shape", "max_tokens", "compute", "taken"),
    [
        (1, (4096, 6144), 1, None, "fma"),  # batch-1 decode, QKV-sized: the kernel
        (1, (4096, 2, 14336), 1, None, "fma"),  # a fused [in, 2, mlp] gate-up kernel counts its whole width
        (2, (4096, 6144), 1, None, None),  # more rows than fp8_kernel_max_tokens: XLA
        (1, (4096, 4096), 1, None, "fma"),  # o_proj-sized: the kernel too (H100 2026-12-07)
        (1, (2048, 4096), 1, None, None),  # smaller: XLA's fused-convert dot
        (1, (4096, 6144), None, "dot_fp8", None),  # not enabled (CPU, tensor parallel, or the key set to null)
        (1, (2048, 4096), 1, "dot_fp8", "dot_fp8"),  # W8A8 takes every weight size
        (32, (14336, 4096), 64, "dot_fp8", "dot_fp8"),  # a batch-32 decode
        (8, (4096, 6144), 8, "dot_f16", "dot_f16"),
    ],
)
def test_the_fp8_matmul_takes_the_kernel_only_where_it_pays(
    monkeypatch, rows, shape, max_tokens, compute, taken
) -> None:  # fmt: skip
    calls = []

    def spy(x: jax.Array, q: jax.Array, scale: jax.Array, config: GemvConfig, w_kmajor: bool) -> jax.Array:
        assert w_kmajor  # the engine's quantized kernels are [*out, in]
        calls.append((x.shape, (q.shape[-1], *q.shape[:-1]), config.compute))
        return jnp.zeros((*x.shape[:-1], *q.shape[:-1]), x.dtype)

    monkeypatch.setattr(fp8_gemv, "fp8_matmul", spy)
    scheme = QuantScheme("fp8", None, fp8_kernel_max_tokens=max_tokens, fp8_kernel_compute=compute)
    q = jax.ShapeDtypeStruct((*shape[1:], shape[0]), FP8)  # shape is [in, *out]; stored input dimension last
    x = jax.ShapeDtypeStruct((rows, shape[0]), jnp.bfloat16)
    out = jax.eval_shape(scheme.matmul, x, q, jax.ShapeDtypeStruct(shape[1:], jnp.float32))
    assert out.shape == (rows, *shape[1:])
    assert calls == ([((rows, shape[0]), shape, taken)] if taken else [])


def test_the_loader_enables_the_kernel_on_one_cuda_device_only(tmp_path: Path) -> None:
    model = tmp_path / "tiny"  # config.json alone: enough for dummy weights
    model.mkdir()
    (model / "config.json").write_text(json.dumps({**TINY_CONFIG, "architectures": ["LlamaForCausalLM"]}))
    loaded = load_model(model, mesh=make_mesh(1), load_format="dummy", quantization="fp8", fp8_kernel_compute="dot_fp8")
    assert loaded.args.quant.fp8_kernel_max_tokens is None  # a CPU here: XLA's dot
    assert loaded.args.quant.fp8_kernel_compute == "dot_fp8"  # carried, for where the kernel runs
    with pytest.raises(ConfigError, match="fp8_kernel_max_tokens=0 is not allowed: must be >= 1"):
        load_config(fp8_kernel_max_tokens=0)


@pytest.mark.slow
def test_the_bench_check_runs_every_variant_within_its_bound(interpreted: list[dict]) -> None:
    rows = next(r for r in interpreted if "bench" in r["case"])["rows"]
    for m in (1, 33):
        assert {r["variant"] for r in rows if r["rows"] == m} == {v.name for v in bench.check_variants(m, 256, 256)}
    for row in rows:
        assert "error" not in row and row["rel_err"] < bench.CHECK_BOUND and row["max_err"] < 4 * bench.CHECK_BOUND
    assert all(r["variant"].startswith(("triton", "pallas")) == (r["config"] is not None) for r in rows)


def test_the_bench_checks_w8a8_on_both_layouts_swapped_and_not() -> None:
    variants = bench.check_variants(32, 4096, 28672)
    assert len({v.name for v in variants}) == len(variants)
    w8a8 = {(v.weights, v.config.swap_ab) for v in variants if v.reference == W8A8 and v.config is not None}
    assert w8a8 == {("fp8", True), ("fp8", False), ("fp8_t", True), ("fp8_t", False)}


@pytest.mark.parametrize(("m", "shape"), [(1, "gate_up"), (32, "down")])
def test_the_tune_grid_tries_each_knob_before_pairs_of_them(m: int, shape: str) -> None:
    k, n = bench.SHAPES[shape]
    timed = bench.default_variants(m, k, n)
    grid = bench.tune_grid(m, k, n, [W8A8], timed)
    assert len(grid) > 500 and all(supports(m, k, n, v.config) and v.tuned for v in grid)
    assert not {(v.config, v.weights) for v in timed} & {(v.config, v.weights) for v in grid}
    default = default_gemv_config(m, k, n, W8A8)

    def changed(v: bench.Variant) -> set[str]:
        fields = {f for f, value in dataclasses.asdict(v.config).items() if getattr(default, f) != value}
        return fields | ({"layout"} if v.weights == "fp8_t" else set())

    ones = [changed(v) for v in grid if len(changed(v)) == 1]
    assert [changed(v) for v in grid[: len(ones)]] == ones  # one knob at a time first, then pairs, ...
    knobs = {"swap_ab", "block_m", "block_n", "block_k", "split_k", "num_warps", "num_stages"}
    assert set().union(*ones) == knobs  # (the [N, K] layout alone is a default variant, timed already)
    assert any(changed(v) == {"layout", "swap_ab"} for v in grid)


def test_the_step_table_sums_four_shapes_of_32_layers_at_each_variants_best() -> None:
    rows = [
        dict(rows=1, variant=variant, shape=shape, us=us)
        for shape in bench.SHAPES
        for variant, us in (("bf16 XLA", 10.0), ("triton dot_fp8 tuned", 6.0), ("triton dot_fp8 tuned", 5.0))
    ] + [dict(rows=1, variant="triton dot_fp8 kmajor", shape="qkv", us=1.0)]  # one shape only: no total
    table = bench.step_table(rows, [1])
    assert {t["variant"]: t["step_ms"] for t in table} == {
        "bf16 XLA": 32 * 40 / 1e3,
        "triton dot_fp8 tuned": 32 * 20 / 1e3,
    }


def test_the_bench_refuses_an_unknown_compute_mode_by_name(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--tune", "--tune-compute", "dot_fp8,dot_bf16"])
    assert "--tune-compute: unknown ['dot_bf16']" in capsys.readouterr().err


@pytest.mark.slow  # two compiles for sm_90 (~5 s)
def test_the_default_w8a8_tiling_compiles_to_an_fp8_wgmma_without_widening() -> None:
    """What ``default_gemv_config``'s swap rests on, with this machine's Triton and no GPU: swapped, the e4m3
    ``tl.dot`` of one row is a wgmma on e4m3 operands, nothing widened ([N, K] weights: nothing transposed in
    registers either); unswapped at 16 rows it is ``mma.sync`` on operands widened to float16."""
    inspector = importlib.import_module("inspect_fp8_gemv")
    m, (k, n) = 1, bench.SHAPES["o_proj"]
    cfg = default_gemv_config(m, k, n, W8A8)
    swapped = inspector.summarise(compile_for_cuda(m, k, n, cfg, w_kmajor=True))
    assert swapped["mma"] == ["wgmma.mma_async.sync.aligned.m64n16k32.f32.e4m3.e4m3"], swapped
    assert swapped["widen"] == 0 and swapped["permute"] == 0 and swapped["quantize"] > 0 and swapped["cp_async"] > 0
    plain = inspector.summarise(compile_for_cuda(m, k, n, dataclasses.replace(cfg, swap_ab=False)))
    assert plain["mma"] and all(".f16.f16." in mma for mma in plain["mma"]) and plain["widen"] > 0, plain


@pytest.mark.slow  # a dozen small XLA compiles (~5 s)
def test_the_bench_times_the_xla_variants_and_their_errors_on_the_cpu() -> None:
    """The timing path of ``bench_fp8_gemv.measure`` (the kernel's rows need a GPU: here they are error rows)."""
    w = bench.Weights(256, 128, layers=2)
    variants = bench.default_variants(1, 256, 128)
    rows = bench.measure("small", w, variants, 1, bench.parse_args(["--layers", "2"]), bw=1000.0)
    xla = [r for r in rows if r["config"] is None]
    assert [r["variant"] for r in xla] == list(bench.XLA) and len(rows) == len(variants)
    for r in xla:
        assert r["us"] > 0 and r["gbps"] > 0 and r["pct_copy"] == pytest.approx(100 * r["gbps"] / 1000.0)
        assert r["rel_err"] < bench.CHECK_BOUND, r
    assert all("error" in r or r["rel_err"] < bench.CHECK_BOUND for r in rows if r["config"] is not None)

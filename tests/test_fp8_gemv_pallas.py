"""The Pallas (Triton backend) one-row FP8-weight matmul, ``pallas_kernels.fp8_gemv_pallas``, on the CPU.

The kernel runs in Pallas' interpreter (``interpret=True``) against ``ref_fp8_matmul`` (float32 at full precision)
on fresh random inputs: activation rows at their own magnitudes, weight columns at their own (so the per-column
scales span ~e^+-3, none 1). Tolerances, as relative Frobenius errors over the whole output: float32 activations and
output leave only float32 accumulation order, < 1e-5 (as ``test_fp8_gemv``'s RTOL_EXACT); a bf16 output adds its
own rounding (2^-9 an element), < 4e-3 (``bench_fp8_gemv.CHECK_BOUND``), and every element within 1e-2 of the
output's largest magnitude. The kernel's lowering for an H200 (sm_90) runs here too, for an abstract GPU device;
compiling it to PTX, its numerics on a GPU and its speed are ``scripts/bench_fp8_gemv.py``'s (``--check``).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_utils import TINY_CONFIG

from jllm.config import ConfigError, load_config
from jllm.loader import load_model
from jllm.parallel import make_mesh
from jllm.quantization import QuantScheme, resolve_scheme
from pallas_kernels import fp8_gemv, fp8_gemv_pallas, fp8_gemv_spec
from pallas_kernels.fp8_gemv_pallas import fp8_matmul_pallas
from pallas_kernels.fp8_gemv_spec import GemvConfig, default_gemv_config, ref_fp8_matmul

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))  # as `python scripts/bench_fp8_gemv.py`

RTOL_F32 = 1e-5
RTOL_BF16 = 4e-3
MAX_ERR_BF16 = 1e-2


def random_case(
    seed: int, lead: tuple[int, ...], k: int, out: tuple[int, ...], dtype: jnp.dtype
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """x [*lead, K] in ``dtype`` with each row at its own scale; the engine's quantized weight ``[*out, K]`` e4m3 and
    its per-column scales, from columns at their own magnitudes. Drawn and cast by NumPy: JAX's draws compiled a
    program per shape, a third of each case's time (2026-12-07)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*lead, k), np.float32) * np.exp(rng.standard_normal((*lead, 1), np.float32))
    w = rng.standard_normal((k, *out), np.float32) * np.float32(0.05) * np.exp(rng.standard_normal(out, np.float32))
    q, scale = QuantScheme("fp8").quantize(jnp.asarray(w))  # [*out, K], f32[*out]
    return jnp.asarray(x.astype(dtype)), q, scale


def rel_err(got: jax.Array, ref: jax.Array) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


CASES = [
    # (lead, K, out, config): None = default_gemv_config's "fma" tiling
    ((1,), 256, (128,), GemvConfig(block_n=64, block_k=64, split_k=1)),  # the kernel's own scale and write
    ((1,), 512, (192,), GemvConfig(block_n=32, block_k=128, split_k=4)),  # split-K partials summed in XLA
    ((1,), 384, (64,), GemvConfig(block_n=64, block_k=32, split_k=3)),  # K = 384: 4 steps a split, 3 splits
    ((1,), 1024, (256,), None),  # the default tiling (split 2 here: each split keeps 4 steps)
    ((2, 3), 256, (4, 32), GemvConfig(block_n=16, block_k=32, split_k=2)),  # 6 rows, a [heads, head_dim] output
]


# every case in float32; in bf16 one that casts in the kernel (one split) and one that casts in XLA (split-K). An
# interpreted case compiles for 1-3 s: the fast subset keeps one split, split-K, several rows, and a bf16 output
FAST = {(0, "float32"), (1, "float32"), (4, "float32"), (0, "bfloat16")}
DTYPE_CASES = [
    pytest.param(*CASES[i], dtype, marks=() if (i, jnp.dtype(dtype).name) in FAST else pytest.mark.slow)
    for i, dtype in [(i, jnp.float32) for i in range(len(CASES))] + [(0, jnp.bfloat16), (1, jnp.bfloat16)]
]


@pytest.mark.parametrize(("lead", "k", "out", "config", "dtype"), DTYPE_CASES)
def test_the_pallas_fma_kernel_matches_the_float32_reference(lead, k, out, config, dtype) -> None:
    x, q, scale = random_case(len(CASES) * k + len(lead), lead, k, out, dtype)
    assert float(scale.min()) < 0.5 * float(scale.max())  # scales that differ, none forced to 1
    got = jax.jit(lambda x, q, s: fp8_matmul_pallas(x, q, s, config, interpret=True))(x, q, scale)
    assert got.shape == (*lead, *out) and got.dtype == dtype
    ref = ref_fp8_matmul(x, q, scale, "fma", w_kmajor=True)  # f32[*lead, *out]
    assert np.isfinite(np.asarray(got, np.float32)).all()
    if dtype == jnp.float32:
        assert rel_err(got, ref) < RTOL_F32
    else:
        assert rel_err(got, ref) < RTOL_BF16
        assert float(jnp.abs(got.astype(jnp.float32) - ref).max()) < MAX_ERR_BF16 * float(jnp.abs(ref).max())


def test_the_pallas_kernel_refuses_what_it_cannot_take_by_name() -> None:
    x, q, scale = random_case(0, (1,), 384, (128,), jnp.bfloat16)
    cfg = GemvConfig(block_n=64, block_k=128, split_k=2)
    with pytest.raises(ValueError, match=r"input width 384 is not a multiple of block_k \* split_k = 256"):
        fp8_matmul_pallas(x, q, scale, cfg, interpret=True)
    with pytest.raises(ValueError, match="output width 128 is not a multiple of block_n=256"):
        fp8_matmul_pallas(x, q, scale, GemvConfig(block_n=256, block_k=128), interpret=True)
    with pytest.raises(ValueError, match="compute='dot_f16': the Pallas kernel multiplies in 'fma' only"):
        fp8_matmul_pallas(x, q, scale, GemvConfig(block_m=16, compute="dot_f16"), interpret=True)
    with pytest.raises(ValueError, match="w's dtype bfloat16 must be float8_e4m3fn"):
        fp8_matmul_pallas(x, q.astype(jnp.bfloat16), scale, interpret=True)
    with pytest.raises(ValueError, match=r"x's last dimension 128 must be w's input dimension \(its last\), 384"):
        fp8_matmul_pallas(x[..., :128], q, scale, interpret=True)
    with pytest.raises(ValueError, match=r"scale's shape \(64,\) must be w's output dimensions \(128,\)"):
        fp8_matmul_pallas(x, q, scale[:64], interpret=True)


@pytest.mark.parametrize(("k", "n", "split_k"), [(4096, 6144, 8), (14336, 4096, 1)])
def test_the_pallas_kernel_lowers_to_xla_native_triton_for_an_h200(k: int, n: int, split_k: int) -> None:
    """With no GPU: an abstract H200 makes Pallas lower the kernel to Triton IR for sm_90, under XLA's own Triton
    target (``__gpu$xla.gpu.triton``, which XLA's GPU compiler emits as a kernel of its own), not an FFI target such
    as jax-triton's ``triton_kernel_call_ffi``; its grid is (column blocks, splits, rows)."""
    text = lower_for_h200(k, n, GemvConfig(split_k=split_k))
    calls = re.findall(r"custom_call @(\S+)\(", text)
    assert calls == ["__gpu$xla.gpu.triton"], calls
    grid = tuple(int(g) for g in re.findall(r"grid_[xyz] = (\d+)", text))
    assert grid == (n // GemvConfig().block_n, split_k, 1)


@pytest.mark.parametrize(
    ("rows", "max_tokens", "compute", "backend", "jax_triton", "taken"),
    [
        (1, 1, None, "pallas", False, "pallas"),  # batch-1 decode: "fma", the Pallas kernel, no jax-triton needed
        (4, 4, "fma", "pallas", False, "pallas"),  # "fma" asked for at 4 rows: a grid axis of the Pallas kernel
        (4, 4, None, "pallas", True, "dot_f16"),  # more rows default to "dot_f16": jax-triton's
        (4, 4, None, "pallas", False, None),  # ... and XLA's dot without jax-triton
        (1, 1, "dot_fp8", "pallas", True, "dot_fp8"),  # W8A8 stays jax-triton's
        (1, 1, None, "triton", True, "fma"),  # the default backend: jax-triton's "fma"
        (1, None, None, "pallas", False, None),  # not enabled (CPU, tensor parallel)
    ],
)
def test_the_scheme_picks_the_pallas_kernel_for_fma_when_configured(
    monkeypatch, rows, max_tokens, compute, backend, jax_triton, taken
) -> None:  # fmt: skip
    calls = []

    def pallas_spy(x, q, scale, config, interpret=False):
        calls.append(("pallas", config.compute))
        return jnp.zeros((*x.shape[:-1], *q.shape[:-1]), x.dtype)

    def triton_spy(x, q, scale, config, w_kmajor):
        calls.append((config.compute,))
        return jnp.zeros((*x.shape[:-1], *q.shape[:-1]), x.dtype)

    monkeypatch.setattr(fp8_gemv_pallas, "fp8_matmul_pallas", pallas_spy)
    monkeypatch.setattr(fp8_gemv, "fp8_matmul", triton_spy)
    monkeypatch.setattr("pallas_kernels.has_jax_triton", lambda: jax_triton)
    scheme = QuantScheme("fp8", None, max_tokens, compute, backend)
    k, n = 4096, 6144  # QKV-sized: past MIN_WEIGHT_ELEMENTS
    x, q = jax.ShapeDtypeStruct((rows, k), jnp.bfloat16), jax.ShapeDtypeStruct((n, k), jnp.float8_e4m3fn)
    out = jax.eval_shape(scheme.matmul, x, q, jax.ShapeDtypeStruct((n,), jnp.float32))
    assert out.shape == (rows, n)
    want = {None: [], "pallas": [("pallas", "fma")]}.get(taken, [(taken,)])
    assert calls == want


def test_the_scheme_runs_the_pallas_kernel_interpreted_against_the_reference(monkeypatch) -> None:
    """The engine's whole path, ``QuantScheme.matmul`` under jit, into the interpreted kernel (its size threshold
    lowered: a QKV-sized weight takes ~20 s to interpret)."""
    monkeypatch.setitem(fp8_gemv_spec.MIN_WEIGHT_ELEMENTS, "fma", 0)
    scheme = QuantScheme("fp8", None, 1, None, "pallas", fp8_kernel_interpret=True)
    x, q, scale = random_case(7, (1,), 1024, (2, 64), jnp.bfloat16)  # a fused [2, mlp] gate-up-like output
    assert scheme.fp8_kernel(x, q) == "pallas"
    assert default_gemv_config(1, 1024, 128).split_k > 1  # partial sums added in XLA after the kernel
    got = jax.jit(scheme.matmul)(x, q, scale)
    ref = ref_fp8_matmul(x, q, scale, "fma", w_kmajor=True)
    assert got.shape == (1, 2, 64) and got.dtype == jnp.bfloat16
    assert rel_err(got, ref) < RTOL_BF16


def test_the_pallas_path_imports_neither_triton_nor_jax_triton() -> None:
    """Where the GPU image lacks the ``gpu`` extra's jax-triton (and with it Triton's Python package), the pallas
    backend still runs: its kernel, the shared tiling and the scheme's choice import neither."""
    code = (
        "import sys, jllm.quantization, pallas_kernels.fp8_gemv_pallas, pallas_kernels.fp8_gemv_spec; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('triton', 'jax_triton')))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "[]"


def test_the_backend_key_is_checked_and_reaches_the_scheme() -> None:
    assert load_config().model.fp8_kernel_backend == "triton"  # until a GPU has timed the Pallas kernel
    assert load_config(fp8_kernel_backend="pallas").model.fp8_kernel_backend == "pallas"
    with pytest.raises(ConfigError, match="fp8_kernel_backend='mosaic' is not allowed"):
        load_config(fp8_kernel_backend="mosaic")
    with pytest.raises(ValueError, match="fp8_kernel_backend='cuda' is not one of triton, pallas"):
        QuantScheme("fp8", fp8_kernel_backend="cuda")
    assert resolve_scheme("fp8", {}, 512, 1, None, "pallas").fp8_kernel_backend == "pallas"


@pytest.mark.slow  # a dummy tiny model quantized at load (~10 s on a busy CPU)
def test_the_loader_passes_the_backend_and_keeps_xla_off_gpus(tmp_path: Path) -> None:
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({**TINY_CONFIG, "architectures": ["LlamaForCausalLM"]}))
    loaded = load_model(
        model, mesh=make_mesh(1), load_format="dummy", quantization="fp8", fp8_kernel_backend="pallas"
    )  # fmt: skip
    assert loaded.args.quant.fp8_kernel_backend == "pallas"
    assert loaded.args.quant.fp8_kernel_max_tokens is None  # a CPU here: XLA's dot


def test_the_bench_times_the_pallas_kernel_beside_jax_triton() -> None:
    """``scripts/bench_fp8_gemv.py``: the Pallas kernel is a default variant at one row (beside jax-triton's "fma" on
    the same [N, K] weights and tiling), a --check variant at more rows, and a --tune mode."""
    bench = importlib.import_module("bench_fp8_gemv")
    k, n = bench.SHAPES["qkv"]
    one = {v.name: v for v in bench.default_variants(1, k, n)}
    assert one["pallas fma"].config == one["triton default kmajor"].config == default_gemv_config(1, k, n)
    assert one["pallas fma"].weights == "fp8_t" and "pallas fma" not in {
        v.name for v in bench.default_variants(8, k, n)
    }
    assert sum(v.backend == "pallas" for v in bench.check_variants(33, k, n)) == 1
    grid = bench.tune_grid(1, k, n, ["pallas"], list(one.values()))
    assert grid and all(v.name == "pallas fma tuned" and v.weights == "fp8_t" for v in grid)
    assert bench.parse_args(["--tune", "--tune-compute", "fma,pallas"]).tune_compute == ["fma", "pallas"]


@pytest.mark.slow  # an interpreted compile (~3 s)
def test_the_bench_checks_the_pallas_kernel_within_its_bound_on_the_cpu() -> None:
    """The --check path's row for the Pallas kernel, interpreted on the CPU: no error, within ``CHECK_BOUND``."""
    bench = importlib.import_module("bench_fp8_gemv")
    w = bench.Weights(256, 128, layers=2)
    args = bench.parse_args(["--layers", "2"])
    (row,) = bench.measure("small", w, [bench.pallas_kernel(default_gemv_config(1, 256, 128))], 1, args, None)
    assert "error" not in row and row["rel_err"] < bench.CHECK_BOUND, row


def lower_for_h200(k: int, n: int, config: GemvConfig) -> str:
    """The one-row kernel's program lowered for an abstract H200 (no GPU needed), as StableHLO text."""
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="cuda")
    args = (
        jax.ShapeDtypeStruct((1, k), jnp.bfloat16),
        jax.ShapeDtypeStruct((n, k), jnp.float8_e4m3fn),
        jax.ShapeDtypeStruct((n,), jnp.float32),
    )
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)):
        program = jax.jit(lambda x, q, s: fp8_matmul_pallas(x, q, s, config)).trace(*args)
        return program.lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.slow  # two compiles for sm_90 (~5 s)
def test_the_pallas_kernel_compiles_to_the_jax_triton_kernels_instructions(tmp_path, h200_lowering) -> None:
    """With this machine's Triton (3.8; XLA compiles with the Triton it bundles) and no GPU: the IR Pallas emits
    compiles for sm_90 to the jax-triton "fma" kernel's arithmetic on the same [N, K] weights and tiling, instruction
    for instruction: 16-byte weight loads, paired e4m3 -> f16 converts, float32 FMAs, the warp-shuffle sum; only the
    address arithmetic differs."""
    import triton
    from triton.backends.compiler import GPUTarget

    k, n = bench_shapes()["qkv"]
    cfg = default_gemv_config(1, k, n)
    path = tmp_path / "fp8_gemv_pallas.ttir"
    lower_for_h200(k, n, cfg)
    (module,) = h200_lowering  # the Triton IR Pallas emitted (conftest's fixture)
    path.write_text(module)
    options = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    pallas = triton.compile(str(path), target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
    jax_triton = fp8_gemv.compile_for_cuda(1, k, n, cfg, w_kmajor=True).asm["ptx"]
    maths = ("ld.global.v4.b32", "cvt.rn.f16x2.e4m3x2", "cvt.f32.f16", "fma.rn.f32", "add.f32", "shfl.sync.bfly.b32")
    counts = [{op: len(re.findall(rf"\b{re.escape(op)}\b", ptx)) for op in maths} for ptx in (pallas, jax_triton)]
    assert counts[0] == counts[1] and all(counts[0].values()), counts


def bench_shapes() -> dict[str, tuple[int, int]]:
    return importlib.import_module("bench_fp8_gemv").SHAPES

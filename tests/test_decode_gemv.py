"""A decode step's matmul with its norm, SwiGLU or residual folded in, ``pallas_kernels.decode_gemv``, on the CPU.

The kernel runs in Pallas' interpreter (``interpret=True``) against ``ref_decode_matmul`` (float32 throughout) on
fresh random inputs, each activation row at its own magnitude (so the norm's per-row factor matters). Tolerances, as
relative Frobenius errors over the output: bf16 inputs and output leave the GEMM input's rounding to bf16 (``x * w``,
as XLA's path rounds it) and the output's (2^-9 an element): < 1e-2; float32 inputs leave accumulation order: < 1e-5.
Its lowering for an H200 runs here too (an abstract GPU device); its speed is ``scripts/bench_decode_gemv.py``'s.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_utils import TINY_CONFIG, jllm_logits, relative_error

from jllm.config import DECODE_GEMV_MAX_ROWS, ConfigError, load_config
from jllm.loader import load_model
from jllm.models import decode_matmuls
from jllm.parallel import make_mesh
from pallas_kernels.decode_gemv import (
    TILE_ROWS,
    DecodeGemvConfig,
    decode_matmul,
    default_config,
    ref_decode_matmul,
    supports,
)  # fmt: skip

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))  # as `python scripts/bench_...py`

RTOL_BF16 = 1e-2
RTOL_F32 = 1e-5


def random_case(seed: int, m: int, k: int, n: int, mode: str, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array, dict]:
    """x [M, K] with each row at its own scale, w [K, N] (swiglu: [K, 2, N]), and the mode's keyword inputs. Drawn
    and cast by NumPy: JAX's draws compiled a program per shape, half of each case's time (2026-12-07)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k), np.float32) * np.exp(rng.standard_normal((m, 1), np.float32))
    w = rng.standard_normal((k, 2, n) if mode == "swiglu" else (k, n), np.float32) / np.float32(k**0.5)
    extra: dict = {}
    if mode in ("norm", "swiglu"):
        extra["norm_weight"] = jnp.asarray((1.0 + 0.2 * rng.standard_normal(k, np.float32)).astype(dtype))
        extra["eps"] = 1e-5
    if mode == "swiglu":
        extra["swiglu"] = True
    if mode == "residual":
        extra["residual"] = jnp.asarray(rng.standard_normal((m, n), np.float32).astype(dtype))
    return jnp.asarray(x.astype(dtype)), jnp.asarray(w.astype(dtype)), extra


def rel_err(got: jax.Array, ref: jax.Array) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("mode", ["plain", "norm", "swiglu", "residual"])
@pytest.mark.parametrize(("m", "k", "n", "config"), [
    (1, 256, 128, DecodeGemvConfig(block_n=32, block_k=64)),
    (16, 128, 256, None),
    (3, 512, 64, DecodeGemvConfig(block_n=16, block_k=64, split_k=4)),  # float32 partials, summed after
    (2, 256, 128, DecodeGemvConfig(block_n=64, block_k=64, split_k=2, swap_ab=True)),  # the weights as the MMA's A
])  # fmt: skip
def test_the_kernel_matches_the_float32_reference(mode: str, m: int, k: int, n: int, config) -> None:
    if mode == "swiglu" and config is not None and config.split_k > 1:
        config = dataclasses.replace(config, split_k=1)  # SwiGLU needs whole sums
    x, w, extra = random_case(m * k + n, m, k, n, mode, jnp.bfloat16)
    got = decode_matmul(x, w, config=config, interpret=True, **extra)
    assert got.shape == (m, n) and got.dtype == jnp.bfloat16
    assert rel_err(got, ref_decode_matmul(x, w, **extra)) < RTOL_BF16


@pytest.mark.parametrize("mode", ["norm", "swiglu", "residual"])
def test_float32_inputs_leave_only_accumulation_order(mode: str) -> None:
    x, w, extra = random_case(7, 3, 256, 64, mode, jnp.float32)
    got = decode_matmul(x, w, config=DecodeGemvConfig(block_n=32, block_k=64), interpret=True, **extra)
    assert got.dtype == jnp.float32
    assert rel_err(got, ref_decode_matmul(x, w, **extra)) < RTOL_F32


def test_rows_past_m_are_neither_read_nor_written() -> None:
    """A one-row call reads row 0 alone: the same row inside a larger x gives the same output row."""
    x, w, extra = random_case(3, 4, 128, 64, "norm", jnp.bfloat16)
    one = decode_matmul(x[:1], w, interpret=True, **extra)
    four = decode_matmul(x, w, interpret=True, **extra)
    np.testing.assert_array_equal(np.asarray(one[0], np.float32), np.asarray(four[0], np.float32))


def test_the_kernel_refuses_what_it_cannot_take_by_name() -> None:
    x, w, _ = random_case(1, 2, 128, 64, "plain", jnp.bfloat16)
    with pytest.raises(ValueError, match=r"w must be \[K=64, N\], got shape \(128, 64\)"):
        decode_matmul(x[:, :64], w, interpret=True)
    with pytest.raises(ValueError, match=r"with swiglu, w must be gate-up's \[K=128, 2, F\]"):
        decode_matmul(x, w, swiglu=True, interpret=True)
    with pytest.raises(ValueError, match=r"residual must be \[M=2, N=64\], got shape \(1, 64\)"):
        decode_matmul(x, w, residual=x[:1, :64], interpret=True)
    with pytest.raises(ValueError, match=r"norm_weight must be \[K=128\]"):
        decode_matmul(x, w, norm_weight=w[0], interpret=True)
    with pytest.raises(ValueError, match=r"takes 1..16 rows .* got M=17"):
        decode_matmul(jnp.zeros((17, 128), jnp.bfloat16), w, interpret=True)
    with pytest.raises(ValueError, match=r"block_n=48 must be a power of two"):
        DecodeGemvConfig(block_n=48)
    with pytest.raises(ValueError, match=r"swiglu needs whole sums: split_k=2 must be 1"):
        decode_matmul(x, w.reshape(128, 2, 32), swiglu=True, config=DecodeGemvConfig(16, 16, split_k=2), interpret=True)


def test_the_default_tiling_is_the_h100_sweeps_and_divides_the_shapes() -> None:
    """Llama-3-8B's four one-row matmuls take the tilings the H100 sweep found fastest (2026-12-07): 128-column blocks
    for gate-up, 64 stepping 256 inputs for QKV, 4 splits of 128 columns for o_proj and down (never with SwiGLU),
    the weights as the MMA's A side; every tiling divides its shape."""
    expected = {(4096, 6144): (64, 256, 1), (4096, 4096): (128, 64, 4), (4096, 14336): (128, 64, 1),
                (14336, 4096): (128, 64, 4)}  # fmt: skip
    for (k, n), (block_n, block_k, split) in expected.items():
        cfg = default_config(k, n)
        tiling = (cfg.block_n, cfg.block_k, cfg.split_k, cfg.swap_ab, cfg.num_stages)
        assert tiling == (block_n, block_k, split, True, 3)
        assert supports(1, k, n, cfg) and supports(16, k, n, cfg) and not supports(17, k, n, cfg)
    assert default_config(4096, 4096, swiglu=True).split_k == 1
    for k, n in [(64, 96), (96, 64), (576, 1536), (1536, 576), (80, 48)]:  # the tests' and small models' widths
        cfg = default_config(k, n)
        assert supports(1, k, n, cfg) and (cfg.split_k & (cfg.split_k - 1)) == 0


@pytest.mark.parametrize("mode", ["norm", "swiglu", "residual"])
def test_the_kernel_lowers_to_xla_native_triton_for_an_h200(mode: str) -> None:
    """With no GPU: an abstract H200 makes Pallas lower the kernel to Triton IR under XLA's own Triton target (a
    kernel XLA emits itself, inside its command buffers), one program per column block."""
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="cuda")
    x, w, extra = random_case(0, 1, 4096, 1024, mode, jnp.bfloat16)
    static = {key: value for key, value in extra.items() if not isinstance(value, jax.Array)}
    arrays, abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), ((x, w), {
        key: value for key, value in extra.items() if isinstance(value, jax.Array)
    }))  # fmt: skip
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)):
        program = jax.jit(lambda x, w, kw: decode_matmul(x, w, **kw, **static)).trace(*arrays, abstract)
        text = program.lower(lowering_platforms=("cuda",)).as_text()
    assert re.findall(r"custom_call @(\S+)\(", text) == ["__gpu$xla.gpu.triton"]
    grid = tuple(int(g) for g in re.findall(r"grid_[xyz] = (\d+)", text))
    assert grid[0] == 1024 // default_config(4096, 1024).block_n


@pytest.mark.slow  # interpreted kernels over two layers and the tilings (~11 s)
def test_the_bench_runs_both_paths_and_tunes_on_the_cpu(tmp_path: Path) -> None:
    """The benchmark's dry run (interpreted kernels): both paths agree with the float32 layers, tilings are timed."""
    bench = importlib.import_module("bench_decode_gemv")
    out = tmp_path / "gemv.json"
    bench.main(["--hidden", "64", "--qkv", "96", "--intermediate", "128", "--layers", "2", "--rows", "1",
                "--tune", "--tune-budget-s", "0", "--json", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert [s["path"] for s in result["steps"]] == ["xla", "pallas default", "pallas tuned"]
    assert all(s["ms"] > 0 and s["rel_err"] < RTOL_BF16 for s in result["steps"])
    assert {r["kind"] for r in result["tuning"]} == set(bench.KINDS) and all("us" in r for r in result["tuning"])
    assert [r["config"] for r in result["tuning"]][:2] == ["xla", dataclasses.asdict(default_config(64, 96))]


def tiny_model(tmp_path: Path, **kwargs: Any) -> Any:
    """The tests' tiny Llama with dummy weights (float32; seed 0, so every call loads the same weights)."""
    model = tmp_path / "tiny"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({**TINY_CONFIG, "architectures": ["LlamaForCausalLM"]}))
    return load_model(model, mesh=make_mesh(1), load_format="dummy", **kwargs)


@pytest.mark.slow  # a tiny model traced three times, the kernels interpreted (~8 s)
def test_a_small_step_runs_qkv_and_gate_up_in_the_kernel_with_the_same_logits(tmp_path: Path, monkeypatch) -> None:
    """``decode_gemv_max_tokens``: a step of at most that many tokens calls the kernel for each layer's QKV (its
    norm folded in) and gate-up (norm and SwiGLU folded in), and gives XLA's path's logits (float32: accumulation
    order apart); a longer step keeps XLA's matmuls."""
    calls = []
    kernel = decode_matmuls.decode_matmul
    monkeypatch.setattr(
        decode_matmuls, "decode_matmul", lambda *a, **kw: calls.append(kw.get("swiglu", False)) or kernel(*a, **kw)
    )
    tokens = [3, 17, 101, 5, 9, 44, 12, 150]
    want = jllm_logits(tiny_model(tmp_path), tokens)
    assert calls == []
    loaded = tiny_model(tmp_path, decode_gemv_max_tokens=8)
    assert loaded.args.decode_gemv_max_tokens == 8
    got = jllm_logits(loaded, tokens)
    assert calls == [False, True]  # traced once: the layers share one trace (decoder._decoder_layer)
    assert relative_error(got, want) < RTOL_F32
    calls.clear()
    jllm_logits(loaded, [*tokens, 7])  # 9 tokens: XLA's path
    assert calls == []


def test_the_setting_is_refused_where_the_kernel_cannot_run(tmp_path: Path) -> None:
    assert DECODE_GEMV_MAX_ROWS == TILE_ROWS
    assert load_config().model.decode_gemv_max_tokens is None  # until a GPU has timed it
    with pytest.raises(ConfigError, match=r"decode_gemv_max_tokens.*between 1 and 16"):
        load_config(decode_gemv_max_tokens=32)
    with pytest.raises(ConfigError, match=r"decode_gemv_max_tokens.*unquantized weights only"):
        load_config(decode_gemv_max_tokens=1, quantization="fp8")
    with pytest.raises(ValueError, match=r"decode_gemv_max_tokens=1 runs on one device over unquantized weights"):
        tiny_model(tmp_path, decode_gemv_max_tokens=1, quantization="int8")


def kernel_ptx(cfg: DecodeGemvConfig, tmp_path: Path, h200_lowering: list[str]) -> str:
    """The PTX this machine's Triton makes of the IR Pallas emits for QKV with its norm, for an H200 (sm_90); XLA
    compiles that IR with the Triton it bundles."""
    import triton
    from triton.backends.compiler import GPUTarget

    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="cuda")
    shapes = [jax.ShapeDtypeStruct(s, jnp.bfloat16) for s in ((1, 4096), (4096, 6144), (4096,))]
    h200_lowering.clear()
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)):
        program = jax.jit(lambda x, w, g: decode_matmul(x, w, norm_weight=g, config=cfg)).trace(*shapes)
        program.lower(lowering_platforms=("cuda",))
    path = tmp_path / "decode_gemv.ttir"
    (module,) = h200_lowering
    path.write_text(module)
    options = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return triton.compile(str(path), target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]


@pytest.mark.slow  # two compiles for sm_90 (~5 s)
def test_the_swapped_tiling_runs_hoppers_wgmma_and_both_pipeline_the_weights(tmp_path: Path, h200_lowering) -> None:
    """``swap_ab`` (the weight tile as the MMA's A side, as XLA's autotuned one-row GEMMs) compiles to wgmma; the
    row-side tiling to mma.sync; both load the weights with asynchronous copies (Triton's software pipelining)."""
    patterns = {"wgmma": r"wgmma\.mma_async", "mma": r"\bmma\.sync", "cp_async": r"cp\.async\.c[ag]"}
    counts = {}
    for swap in (False, True):
        ptx = kernel_ptx(DecodeGemvConfig(64, 64, 4, 3, swap_ab=swap), tmp_path, h200_lowering)
        counts[swap] = {op: len(re.findall(pattern, ptx)) for op, pattern in patterns.items()}
    assert counts[True]["wgmma"] and not counts[True]["mma"] and counts[True]["cp_async"], counts
    assert counts[False]["mma"] and not counts[False]["wgmma"] and counts[False]["cp_async"], counts

"""The jax-triton FP8-weight matmul: its host logic on the CPU, and the whole entry point with its kernel in Triton's
interpreter.

jax-triton launches compiled Triton only on a CUDA device, so CI runs ``fp8_matmul`` under jit with
``tests/fake_jax_triton.py`` standing in for jax-triton (``tests/fp8_gemv_worker.py``, one subprocess for all
cases): float32 activations on fresh random inputs against a float64 product with the dequantized weights. Its
numerics in bf16 and its speed on the GPU are ``scripts/bench_fp8_gemv.py``'s.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from model_utils import TINY_CONFIG, run_worker

from jllm.config import ConfigError, load_config
from jllm.loader import load_model
from jllm.parallel import make_mesh
from jllm.quantization import FP8, QuantScheme
from pallas_kernels import fp8_gemv
from pallas_kernels.fp8_gemv import GemvConfig, check_shapes, default_gemv_config, pays_off, supports

# Relative (Frobenius) error against float64 of float32 activations times e4m3 weights accumulated in float32: "fma"
# multiplies in float32 (measured ~3e-7); "dot_f16" rounds the activations to float16 first (2^-11 an element)
RTOL = {"fma": 1e-5, "dot_f16": 2e-3}
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
]


@pytest.fixture(scope="module")
def interpreted() -> list[dict]:
    return run_worker("fp8_gemv_worker.py", CASES)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(CASES)))
def test_interpreted_matmul_matches_float64(interpreted: list[dict], index: int) -> None:
    result = interpreted[index]
    case = result["case"]
    assert result["shape"] == [*case["lead"], *case["out"]]
    assert result["finite"]
    compute = (case.get("config") or {}).get("compute", "fma" if case["lead"] == [1] else "dot_f16")
    assert result["rel_err"] < RTOL[compute], result


@pytest.mark.parametrize(("m", "k", "n"), [(1, 4096, 6144), (1, 4096, 4096), (32, 4096, 28672), (8, 14336, 4096)])
def test_default_tiling_fits_llama3_8b_and_fills_the_sms(m: int, k: int, n: int) -> None:
    cfg = default_gemv_config(m, k, n)
    check_shapes(m, k, n, cfg)
    assert (cfg.compute, cfg.block_m) == ("fma", 1) if m == 1 else cfg.block_m >= min(64, max(16, m))
    assert n // cfg.block_n * cfg.split_k >= 3 * 132  # three or more programs per SM of an H200
    assert k // (cfg.block_k * cfg.split_k) >= 4  # each program streams several tiles


def test_shapes_the_kernel_cannot_take_are_refused_by_name() -> None:
    cfg = GemvConfig(block_n=128, block_k=128, split_k=2)
    assert not pays_off(1, 4096, 4096) and pays_off(1, 4096, 6144)  # o_proj-sized weights stay in XLA
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


@pytest.mark.parametrize(
    ("rows", "shape", "max_tokens", "taken"),
    [
        (1, (4096, 6144), 1, True),  # batch-1 decode, QKV-sized: the kernel
        (1, (4096, 2, 14336), 1, True),  # a fused [in, 2, mlp] gate-up kernel counts its whole width
        (2, (4096, 6144), 1, False),  # more rows than fp8_kernel_max_tokens: XLA
        (1, (4096, 4096), 1, False),  # o_proj-sized: XLA was faster
        (1, (4096, 6144), None, False),  # not enabled (CPU, tensor parallel, or the key set to null)
    ],
)
def test_the_fp8_matmul_takes_the_kernel_only_where_it_pays(monkeypatch, rows, shape, max_tokens, taken) -> None:
    calls = []

    def spy(x: jax.Array, q: jax.Array, scale: jax.Array) -> jax.Array:
        calls.append((x.shape, q.shape))
        return jnp.zeros((*x.shape[:-1], *q.shape[1:]), x.dtype)

    monkeypatch.setattr(fp8_gemv, "fp8_matmul", spy)
    scheme = QuantScheme("fp8", fp8_dot_min_tokens=None, fp8_kernel_max_tokens=max_tokens)
    q = jax.ShapeDtypeStruct(shape, FP8)
    x = jax.ShapeDtypeStruct((rows, shape[0]), jnp.bfloat16)
    out = jax.eval_shape(scheme.matmul, x, q, jax.ShapeDtypeStruct(shape[1:], jnp.float32))
    assert out.shape == (rows, *shape[1:])
    assert calls == ([((rows, shape[0]), shape)] if taken else [])


def test_the_loader_enables_the_kernel_on_one_cuda_device_only(tmp_path: Path) -> None:
    model = tmp_path / "tiny"  # config.json alone: enough for dummy weights
    model.mkdir()
    (model / "config.json").write_text(json.dumps({**TINY_CONFIG, "architectures": ["LlamaForCausalLM"]}))
    loaded = load_model(model, mesh=make_mesh(1), load_format="dummy", quantization="fp8")
    assert loaded.args.quant.fp8_kernel_max_tokens is None  # a CPU here: XLA's dot
    with pytest.raises(ConfigError, match="fp8_kernel_max_tokens=0 is not allowed: must be >= 1"):
        load_config(fp8_kernel_max_tokens=0)

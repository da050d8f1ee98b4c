"""``pallas_kernels.triton_call``'s lowering swap on the CPU: a legacy ``triton_kernel_call`` becomes the FFI call
``triton_kernel_call_ffi`` with the same proto bytes, operands, results and aliases (what command buffers capture on
the GPU, where the kernels' numerics are checked by ``scripts/check_kernels.py`` and ``bench_fp8_gemv.py --check``).
The legacy op here is emitted the way jax-triton 0.3.1 emits it (``jax.ffi.ffi_lowering(..., api_version=2)``)."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import jax
import jax.extend.core
import jax.numpy as jnp
import pytest
from jax.interpreters import mlir

from pallas_kernels.triton_call import FFI_TARGET, LEGACY_TARGET, lower_as_ffi

ROOT = Path(__file__).resolve().parents[1]

PROTO = b"\x78\x9ckernel-call proto\x00\xff"  # opaque bytes, zero and high bytes included


def _primitive(name: str, legacy_target: str, aliases: dict[int, int]) -> jax.extend.core.Primitive:
    """A primitive of two f32 operands and one result like the first, lowered on the CPU by ``lower_as_ffi`` over
    a legacy rule that emits ``legacy_target``."""
    prim = jax.extend.core.Primitive(name)
    prim.def_abstract_eval(lambda x, y, **_: jax.core.ShapedArray(x.shape, x.dtype))
    legacy = jax.ffi.ffi_lowering(
        legacy_target, api_version=2, backend_config=PROTO, operand_output_aliases=aliases or None
    )
    mlir.register_lowering(prim, functools.partial(lower_as_ffi, lambda ctx, *a, **p: legacy(ctx, *a)), "cpu")
    return prim


def _lowered_text(prim: jax.extend.core.Primitive, aliases: dict[int, int]) -> str:
    x, y = jnp.ones((4, 8), jnp.float32), jnp.zeros((8,), jnp.float32)
    params = {"input_output_aliases": tuple(aliases.items())}
    return jax.jit(lambda a, b: prim.bind(a, b, **params) * 2).lower(x, y).as_text()


@pytest.mark.parametrize("aliases", [{}, {0: 0}])
def test_legacy_triton_call_is_lowered_as_the_ffi_call_with_the_same_proto(aliases: dict[int, int]) -> None:
    prim = _primitive(f"legacy_to_ffi_{len(aliases)}", LEGACY_TARGET, aliases)
    text = _lowered_text(prim, aliases)
    calls = [line for line in text.splitlines() if "stablehlo.custom_call" in line]
    assert len(calls) == 1, text
    (call,) = calls
    assert f"@{FFI_TARGET}(" in call and f"@{LEGACY_TARGET}(" not in call
    # the proto travels as the typed call's `opaque` attribute, byte for byte (MLIR escapes bytes as \XX)
    escaped = "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:02X}" for b in PROTO)
    assert f'opaque = "{escaped}"' in call, call
    assert "(tensor<4x8xf32>, tensor<8xf32>) -> tensor<4x8xf32>" in call
    assert ("output_operand_aliases" in call) == bool(aliases)
    assert "stablehlo.multiply" in text  # the program around the call is untouched


def test_an_unexpected_legacy_target_is_refused() -> None:
    prim = _primitive("not_triton", "some_other_call", {})
    with pytest.raises(ValueError, match="expected jax-triton to emit the custom call 'triton_kernel_call'"):
        _lowered_text(prim, {})


@pytest.mark.slow
def test_triton_s_specializer_is_initialised_without_importing_torch_which_stays_importable() -> None:
    """Triton 3.6's specializer imports torch on its first call (seen by hand with its wheel, 2026-12-05; the suite's
    Triton 3.8 no longer does); initialised with the import refused, it answers for jax-triton's argument stand-ins
    (an object with ``data_ptr``) and a constant with no torch imported, and torch imports as usual after."""
    code = (
        "import sys, types\n"
        "from pallas_kernels.triton_call import init_specializer_without_torch\n"
        "init_specializer_without_torch()\n"
        "from triton._C.libtriton import native_specialize_impl\n"
        "from triton.backends.compiler import BaseBackend\n"
        "pointer = types.SimpleNamespace(data_ptr=lambda: 16, dtype='bf16')\n"
        "print(native_specialize_impl(BaseBackend, pointer, False, True, True), 'torch' in sys.modules)\n"
        "print(native_specialize_impl(BaseBackend, 1, False, True, True), 'torch' in sys.modules)\n"
        "import torch\n"
        "print(isinstance(torch.zeros(1), torch.Tensor))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["('*bf16', 'D') False", "('constexpr', 1) False", "True"], proc.stdout

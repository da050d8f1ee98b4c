"""A stand-in for ``jax_triton.triton_call`` that runs the kernel in Triton's interpreter on torch CPU tensors.

jax-triton launches compiled Triton only on a CUDA device; with this module installed as ``jax_triton`` (and
``TRITON_INTERPRET=1`` set before Triton is imported) a kernel's JAX entry point runs whole on the CPU, under jit
too (``jax.pure_callback``): its host
logic (shapes, grid, constexprs, the XLA work around the call) and the kernel's own code. Outputs start as NaN, so
an element the kernel should write and does not shows up, unless the call names them in ``zeroed_outputs`` (then
zero, as jax-triton zeroes them before the launch). ``exact_float_casts`` mends the interpreter's float32 ->
e4m3 and -> bf16 rounding.
"""

from __future__ import annotations

import types
from typing import Any

import jax
import jax.extend.core
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import torch
import triton.language as tl
from triton._C.libtriton import ir
from triton.runtime import interpreter

# dtypes numpy holds only through ml_dtypes: moved between numpy and torch as raw bits of the same width
_RAW_BITS = {
    jnp.dtype(jnp.float8_e4m3fn): (np.uint8, torch.float8_e4m3fn, torch.uint8),
    jnp.dtype(jnp.bfloat16): (np.int16, torch.bfloat16, torch.int16),
}


def _to_torch(a: np.ndarray) -> torch.Tensor:
    host = np.asarray(a)
    if host.dtype in _RAW_BITS:
        raw, dtype, _ = _RAW_BITS[host.dtype]
        return torch.from_numpy(host.view(raw).copy()).view(dtype)
    return torch.from_numpy(host.copy())


def _to_numpy(t: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    if dtype in _RAW_BITS:
        return t.view(_RAW_BITS[dtype][2]).numpy().view(dtype)
    return t.numpy()


def _never_lowered(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the fake's primitive is never bound, so never lowered")


# what pallas_kernels.triton_call re-registers for CUDA (jax-triton's primitive and its lowering): a primitive that
# nothing binds, since the fake's triton_call runs the kernel through a callback instead
triton_lib = types.SimpleNamespace(
    triton_kernel_call_p=jax.extend.core.Primitive("fake_triton_kernel_call"),
    triton_kernel_call_lowering=_never_lowered,
    get_cuda_backend=None,
)


def triton_call(
    *args: jax.Array,
    kernel: Any,
    out_shape: jax.ShapeDtypeStruct,
    grid: tuple[int, ...],
    num_warps: int = 4,
    num_stages: int = 3,
    name: str = "",
    zeroed_outputs: tuple[int, ...] = (),
    **params: Any,
) -> jax.Array:
    del num_warps, num_stages, name  # compile options: the interpreter has none

    def launch(*host_args: np.ndarray) -> np.ndarray:
        dtype = jnp.dtype(out_shape.dtype)
        out = _to_torch(np.full(out_shape.shape, 0.0 if 0 in zeroed_outputs else np.nan, dtype))
        kernel[grid](*(_to_torch(a) for a in host_args), out, **params)
        return _to_numpy(out, dtype)

    return jax.pure_callback(launch, out_shape, *args)


def exact_float_casts() -> None:
    """Makes the interpreter round float32 down to e4m3 and bf16 as a GPU does (``cvt.rn.satfinite.e4m3x2.f32``,
    ``cvt.rn.bf16.f32``): to nearest even, e4m3 saturating at +-448. Triton's own interpreter (3.8 here) rounds
    float32 -> e4m3 ties away from zero and drops the carry when rounding overflows the mantissa of an odd exponent
    (1.97 -> 1.0, 126.2 -> 64.0; triton-lang/triton issue 8322, fixes not merged), and truncates float32 -> bf16.
    Other casts are left as they are."""
    e4m3_cast = interpreter.InterpreterBuilder.create_fp_to_fp
    plain_cast = interpreter.InterpreterBuilder.cast_impl
    top = float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max)

    def create_fp_to_fp(self: Any, src: Any, dst_type: Any, rounding_mode: Any) -> Any:
        to_e4m3 = dst_type.scalar == tl.float8e4nv and src.dtype.scalar == tl.float32
        if not to_e4m3 or rounding_mode != ir.ROUNDING_MODE.RTNE:
            return e4m3_cast(self, src, dst_type, rounding_mode)
        data = np.clip(src.data, -top, top).astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
        return interpreter.TensorHandle(data, dst_type.scalar)

    def cast_impl(self: Any, src: Any, dst_type: Any) -> Any:
        if src.dtype.scalar != tl.float32 or dst_type.scalar != tl.bfloat16:
            return plain_cast(self, src, dst_type)
        return interpreter.TensorHandle(src.data.astype(ml_dtypes.bfloat16).view(np.uint16), dst_type.scalar)

    interpreter.InterpreterBuilder.create_fp_to_fp = create_fp_to_fp
    interpreter.InterpreterBuilder.cast_impl = cast_impl

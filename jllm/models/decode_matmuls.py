"""Which of a decode step's matmuls run ``pallas_kernels.decode_gemv`` (``decode_gemv_max_tokens``), and how.

A ``Linear`` built with ``decode_kernel_rows`` (the attention's QKV and a gated MLP's gate-up: the two matmuls an
RMSNorm feeds) multiplies steps of at most that many rows in the kernel, the norm folded in, and with SwiGLU the
activation too: the norm's reduction and the SwiGLU stop being kernels of their own (three of a Llama layer's eight
small fusions in a one-token step). Other shapes, other norms, biases, LoRA and quantized weights keep XLA's path.
Off a GPU the kernel runs in Pallas' interpreter (the tests). One device only: the loader refuses it under tensor
parallelism (the kernel call has no sharding rule).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

import jax

from jllm.attention import kernels_interpreted
from pallas_kernels.decode_gemv import decode_matmul, supports


def takes(linear: Any, norm: Any, x: jax.Array, *, swiglu: bool = False) -> bool:
    """Whether ``linear(norm(x))`` (``norm`` a ``layers.RMSNorm`` or None) runs in the kernel: a linear built for it,
    a step of at most its rows, an RMS norm with a weight of its own (Gemma's ``1 + w`` keeps XLA's path), and shapes
    the kernel's tiling divides."""
    rows = getattr(linear, "decode_kernel_rows", None)
    if rows is None or x.ndim != 2 or x.shape[0] > rows:
        return False
    if norm is not None and (getattr(norm, "weight", None) is None or getattr(norm, "unit_offset", True)):
        return False
    w = linear.kernel
    width = w.shape[-1] if swiglu else w.size // w.shape[0]
    return (not swiglu or w.shape[1:2] == (2,)) and supports(x.shape[0], w.shape[0], width, swiglu=swiglu)


def normed_matmul(linear: Any, norm: Any, x: jax.Array, *, swiglu: bool = False) -> jax.Array:
    """``linear(norm(x))`` ``[T, *out]`` (with ``swiglu``: ``silu(gate) * up`` ``[T, F]`` of gate-up's ``[K, 2, F]``)
    in one kernel; ``takes`` must have said yes."""
    w = linear.kernel[...]
    interpret = kernels_interpreted()
    normed = {} if norm is None else {"norm_weight": norm.weight[...], "eps": norm.eps}
    if swiglu:
        return decode_matmul(x, w, swiglu=True, interpret=interpret, **normed)
    y = decode_matmul(x, w.reshape(w.shape[0], -1), interpret=interpret, **normed)
    return y.reshape(x.shape[0], *w.shape[1:])

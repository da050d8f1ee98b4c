"""Quantized linear weights: the schemes (``quantization: int8 | fp8``), per-output-channel quantization, the
quantized matmuls, and which stored checkpoint formats are read as stored.

- ``int8``: weight-only, symmetric, one float32 scale per output channel; ``y = (x @ q.astype(dtype)) * scale``
  (the convert sits in the matmul's operand, where XLA fuses it). The portable scheme: runs everywhere.
- ``fp8``: ``float8_e4m3fn`` weights with one float32 scale per output channel (a checkpoint's per-tensor scale is
  repeated over its rows, which is exact). Steps of at least ``fp8_dot_min_tokens`` tokens quantize the activations
  too, per token (``absmax / 448``), and multiply FP8 x FP8 into float32 (``dot_general`` of two e4m3 operands:
  cuBLASLt's FP8 GEMM on Hopper, an upcast on the CPU); smaller steps (decodes) convert the weights to the
  activation dtype and multiply there: on one CUDA device with jax-triton, steps of at most ``fp8_kernel_max_tokens``
  tokens in ``pallas_kernels.fp8_gemv``, which widens the weights in registers (XLA's fused convert streams e4m3
  weights slower than cuBLAS streams bf16 ones) or, with ``fp8_kernel_compute: dot_fp8``, quantizes the activations
  per token as above and multiplies e4m3 x e4m3 on the FP8 tensor cores (W8A8 for decodes too); elsewhere in XLA's
  dot. With ``fp8_kernel_backend: pallas`` the one-row "fma" mode runs the same arithmetic as a Pallas kernel
  instead (``pallas_kernels.fp8_gemv_pallas``: lowered by XLA itself, no jax-triton needed; 9 % slower in an H200
  step). The step's token count is static, so each shape bucket compiles one mode.

Scales multiply after the matmul: ``x @ (q * s) == (x @ q) * s`` for a per-output-channel ``s``. Quantized kernels
are stored input dimension last, ``q [*out, in]`` (as HF checkpoints store weights): an FP8 GEMM wants both operands
K-major, and with ``[in, *out]`` kernels XLA's FP8 x FP8 prefill matmul ran at 447-522 TFLOP/s against 634-654 on
an H200 (512 rows, Llama-3-8B's QKV and o_proj, 2026-12-03; bf16 406-414).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import jax
import jax.numpy as jnp

from jllm.config import Fp8KernelBackend, Fp8KernelCompute

SCHEMES = ("int8", "fp8")
FP8 = jnp.float8_e4m3fn
FP8_MAX = 448.0  # the largest finite e4m3fn value
INT8_MAX = 127.0
# Stored checkpoint formats read as stored (anything else quantized is refused at load, by name)
SUPPORTED_STORED = (
    "quant_method 'fp8' with per-tensor weight scales and dynamic activations",
    "quant_method 'compressed-tensors' with float8 weights (strategy 'tensor' or 'channel') and dynamic or no "
    "activation quantization",
    "quant_method 'mxfp4' for gpt-oss's experts (dequantized to the model dtype at load)",
)


@dataclasses.dataclass(frozen=True)
class QuantScheme:
    """How a model's decoder linears are quantized; static, so it is part of every compiled program's structure."""

    name: str  # one of SCHEMES
    fp8_dot_min_tokens: int | None = 32  # fp8: FP8 x FP8 for steps of at least this many tokens; None = never
    # fp8 weight-only steps of at most this many tokens multiply in an FP8-weight kernel (the loader sets it only for
    # one CUDA device, with jax-triton or the pallas backend); None = XLA's dot with the weights widened
    fp8_kernel_max_tokens: int | None = None
    # how the kernel multiplies (pallas_kernels.fp8_gemv_spec.COMPUTE); None = its default per row count
    fp8_kernel_compute: str | None = None
    # which kernel multiplies in "fma" (one row): "triton" (pallas_kernels.fp8_gemv, jax-triton) or "pallas"
    # (pallas_kernels.fp8_gemv_pallas, lowered by XLA itself); the other modes are jax-triton's either way
    fp8_kernel_backend: str = "triton"
    # the Pallas kernel in Pallas' interpreter: the CPU tests' hook, not an engine key
    fp8_kernel_interpret: bool = False

    def __post_init__(self) -> None:
        if self.name not in SCHEMES:
            raise ValueError(f"quantization={self.name!r} is not supported; choose one of {', '.join(SCHEMES)}")
        computes = typing.get_args(Fp8KernelCompute)
        if self.fp8_kernel_compute not in (None, *computes):
            raise ValueError(f"fp8_kernel_compute={self.fp8_kernel_compute!r} is not one of {', '.join(computes)}")
        backends = typing.get_args(Fp8KernelBackend)
        if self.fp8_kernel_backend not in backends:
            raise ValueError(f"fp8_kernel_backend={self.fp8_kernel_backend!r} is not one of {', '.join(backends)}")

    @property
    def weight_dtype(self) -> Any:
        return jnp.int8 if self.name == "int8" else FP8

    def uses_fp8_dot(self, num_tokens: int) -> bool:
        """Whether a step of ``num_tokens`` tokens multiplies FP8 x FP8 (else weight-only)."""
        return self.name == "fp8" and self.fp8_dot_min_tokens is not None and num_tokens >= self.fp8_dot_min_tokens

    def uses_fp8_kernel(self, x: jax.Array, q: jax.Array) -> bool:
        """Whether ``x @ q`` runs in an FP8-weight kernel (else XLA's dot)."""
        return self.fp8_kernel(x, q) is not None

    def fp8_kernel(self, x: jax.Array, q: jax.Array) -> str | None:
        """Which kernel multiplies ``x @ q``: "pallas", "triton" (jax-triton) or None (XLA's dot). Under the pallas
        backend a mode the Pallas kernel lacks runs in jax-triton where it is installed (the loader enables the
        pallas backend without it)."""
        rows, k, n = x.size // x.shape[-1], q.shape[-1], q.size // q.shape[-1]
        if self.name != "fp8" or self.fp8_kernel_max_tokens is None or rows > self.fp8_kernel_max_tokens:
            return None
        from pallas_kernels.fp8_gemv_spec import default_gemv_config, pays_off

        if not pays_off(rows, k, n, self.fp8_kernel_compute):
            return None
        if self.fp8_kernel_backend == "triton":
            return "triton"
        if default_gemv_config(rows, k, n, self.fp8_kernel_compute).compute == "fma":
            return "pallas"
        from pallas_kernels import has_jax_triton

        return "triton" if has_jax_triton() else None

    def quantize(self, w: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``w [in, *out]`` -> (``q [*out, in]`` in ``weight_dtype``, float32 ``scale [*out]``), symmetric per
        output channel: each column's absmax maps to the format's largest value; the input dimension moves last."""
        top = INT8_MAX if self.name == "int8" else FP8_MAX
        absmax = jnp.max(jnp.abs(w.astype(jnp.float32)), axis=0)
        scale = jnp.where(absmax > 0, absmax / top, 1.0)
        scaled = w.astype(jnp.float32) / scale
        if self.name == "int8":
            q = jnp.clip(jnp.round(scaled), -INT8_MAX, INT8_MAX).astype(jnp.int8)
        else:
            q = jnp.clip(scaled, -FP8_MAX, FP8_MAX).astype(FP8)
        return jnp.moveaxis(q, 0, -1), scale

    def matmul(self, x: jax.Array, q: jax.Array, scale: jax.Array) -> jax.Array:
        """``x [..., in]`` times ``q * scale`` (``q [*out, in]``) in ``x``'s dtype, accumulated in float32."""
        if self.uses_fp8_dot(x.shape[0]):
            return fp8_dot(x, q, scale)
        kernel = self.fp8_kernel(x, q)
        if kernel is not None:
            from pallas_kernels.fp8_gemv_spec import default_gemv_config

            cfg = default_gemv_config(x.size // x.shape[-1], q.shape[-1], scale.size, self.fp8_kernel_compute)
            if kernel == "pallas":
                from pallas_kernels.fp8_gemv_pallas import fp8_matmul_pallas

                return fp8_matmul_pallas(x, q, scale, cfg, interpret=self.fp8_kernel_interpret)
            from pallas_kernels.fp8_gemv import fp8_matmul  # imports Triton: only where the loader enabled it

            return fp8_matmul(x, q, scale, cfg, w_kmajor=True)
        y = _contract(x, q.astype(x.dtype))
        return (y * scale).astype(x.dtype)


def _contract(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x [..., in]`` with ``w [*out, in]`` over ``in``, into float32 ``[..., *out]``."""
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (w.ndim - 1,)), ((), ())), preferred_element_type=jnp.float32)


def quantize_rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Dynamic per-token activation quantization: ``x [..., in]`` -> (e4m3 ``[..., in]``, float32 ``[..., 1]``)."""
    x32 = x.astype(jnp.float32)
    absmax = jnp.max(jnp.abs(x32), axis=-1, keepdims=True)
    scale = jnp.where(absmax > 0, absmax / FP8_MAX, 1.0)
    return jnp.clip(x32 / scale, -FP8_MAX, FP8_MAX).astype(FP8), scale


def fp8_dot(x: jax.Array, q: jax.Array, scale: jax.Array) -> jax.Array:
    """FP8 x FP8: activations quantized per token, one e4m3 dot into float32, both scales applied after."""
    xq, x_scale = quantize_rows(x)
    y = _contract(xq, q)  # [..., *out]
    x_scale = x_scale.reshape(*x_scale.shape[:-1], *(1,) * (q.ndim - 1))
    return (y * x_scale * scale).astype(x.dtype)


def stored_scheme(hf_config: dict[str, Any]) -> str | None:
    """The scheme a checkpoint's weights are stored in (``"fp8"``), or None for a float checkpoint; a quantized
    format jllm does not read fails here, naming it and what is supported."""
    qc = hf_config.get("quantization_config")
    if not qc:
        return None
    method = qc.get("quant_method")
    if method == "mxfp4" and "GptOssForCausalLM" in (hf_config.get("architectures") or []):
        return None  # its experts dequantized at load (jllm.models.families.gpt_oss): a float model
    if method == "fp8":
        _check_hf_fp8(qc)
    elif method == "bitnet":  # BitLinear: unpacked weights alone would not reproduce its int8 activations
        _refuse(
            "quant_method 'bitnet': BitNet's ternary weights (packed, or ternarized online from float ones: "
            f"quantization_mode {qc.get('quantization_mode', 'offline')!r}), multiplied with activations rounded to "
            "int8 per token; jllm serves BitNet's float layout, a checkpoint without quantization_config"
        )
    elif method == "compressed-tensors":
        if not qc.get("config_groups"):
            return None  # the KV cache's scales alone (a ``kv_cache_scheme``, ``jllm.kv_scales``): float weights
        for name, group in qc["config_groups"].items():
            _check_compressed_group(name, group)
    else:
        _refuse(f"quant_method {method!r}")
    return "fp8"


def _refuse(what: str) -> None:
    raise ValueError(
        f"the checkpoint's quantization_config ({what}) is not supported; supported: {'; '.join(SUPPORTED_STORED)}"
    )


def _check_hf_fp8(qc: dict[str, Any]) -> None:
    if qc.get("weight_block_size"):
        _refuse(f"quant_method 'fp8' with block-wise weight scales, weight_block_size={qc['weight_block_size']}")
    if qc.get("activation_scheme", "dynamic") != "dynamic":
        _refuse(f"quant_method 'fp8' with activation_scheme={qc['activation_scheme']!r} (static input_scale)")


def _check_compressed_group(name: str, group: dict[str, Any]) -> None:
    w = group.get("weights") or {}
    if (w.get("type"), w.get("num_bits")) != ("float", 8):
        _refuse(f"compressed-tensors group {name!r}: {w.get('type')} {w.get('num_bits')}-bit weights")
    if w.get("strategy") not in ("tensor", "channel"):
        _refuse(f"compressed-tensors group {name!r}: float8 weights with strategy {w.get('strategy')!r}")
    acts = group.get("input_activations")
    if acts and not acts.get("dynamic"):
        _refuse(f"compressed-tensors group {name!r}: static activation scales (input_scale)")


def resolve_scheme(
    requested: str | None,
    hf_config: dict[str, Any],
    fp8_dot_min_tokens: int | None = 32,
    fp8_kernel_max_tokens: int | None = None,
    fp8_kernel_compute: str | None = None,
    fp8_kernel_backend: str = "triton",
) -> QuantScheme | None:
    """The scheme to run: the one asked for, or the checkpoint's own (an FP8 checkpoint runs as fp8, as in vLLM)."""
    stored = stored_scheme(hf_config)
    if stored is not None and requested not in (None, stored):
        raise ValueError(
            f"quantization={requested!r} does not fit this checkpoint, which is stored as {stored}; "
            f"leave quantization unset or set it to {stored!r}"
        )
    name = requested or stored
    if name is None:
        return None
    return QuantScheme(name, fp8_dot_min_tokens, fp8_kernel_max_tokens, fp8_kernel_compute, fp8_kernel_backend)

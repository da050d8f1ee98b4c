"""Layers the decoder families share: linear (float, or quantized per ``jllm.quantization``), embedding, RMSNorm
(Llama's and Gemma's ``1 + w``), LayerNorm, the MLP (gated SwiGLU / GeGLU or plain; its activation stateless or
Apertus' learned xIELU; Gemma 3n's Gaussian top-k sparsity on the gate; BitNet's norm before ``down_proj``) and
Gemma 3n's low-rank residual block (``Laurel``), A.X-K2's RMSNorm gated by a low-rank projection of its output
(``GatedRMSNorm``), ModernBERT's prediction head and tied head's bias (``HeadTransform``, ``HeadBias``); the mixture
of experts lives in ``jllm.models.moe``.

Parameters are created as zeros with their logical axis names (``axes``); the loader builds models under
``nnx.eval_shape`` and fills in real, sharded values, so construction never allocates device memory.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jllm.models import decode_matmuls
from jllm.models.lora import LayerLoRA
from jllm.quantization import QuantScheme


@dataclasses.dataclass(frozen=True)
class StoredParts:
    """A fused projection kept grouped by head where its checkpoint keeps its parts apart: ours ``[..., groups,
    width]``, each group's parts side by side (so tensor parallelism, splitting the groups, gives each device whole
    heads of every part), the checkpoint's one axis of ``length`` with part p's group g at ``offset_p + g * w_p``
    (Qwen3.5's ``in_proj_qkv``: every q head, then every k, then every v). ``source``: the module whose tensor holds
    it, where not its own (Mamba2's B and C, read from its ``in_proj``)."""

    groups: int
    parts: tuple[tuple[int, int], ...]  # each part's (offset on the stored axis, width per group)
    length: int
    source: str | None = None

    def __post_init__(self) -> None:
        end = max(offset + self.groups * width for offset, width in self.parts)
        if end > self.length:
            raise ValueError(f"StoredParts {self.parts} x {self.groups} groups reach {end}, past length {self.length}")

    @property
    def width(self) -> int:
        return sum(width for _, width in self.parts)

    def indices(self) -> np.ndarray:
        """``[groups, width]`` int: where each of our columns lies on the stored axis."""
        return np.stack([np.concatenate([o + g * w + np.arange(w) for o, w in self.parts]) for g in range(self.groups)])


def param(
    shape: tuple[int, ...], dtype: jnp.dtype, axes: tuple[str | None, ...], stored: StoredParts | None = None
) -> nnx.Param:
    """A parameter tagged with logical axis names; ``jllm.parallel`` maps them to mesh axes. ``stored``: how the
    checkpoint lays out its last two axes, where otherwise than ours (the loader reads it so)."""
    assert len(shape) == len(axes), (shape, axes)
    if stored is None:
        return nnx.Param(jnp.zeros(shape, dtype), axes=axes)
    assert shape[-2:] == (stored.groups, stored.width), (shape, stored)
    return nnx.Param(jnp.zeros(shape, dtype), axes=axes, stored=stored)


class Linear(nnx.Module):
    """``y = x @ kernel (+ bias)`` with the kernel stored ``[in, *out]``: a fused projection keeps its parts as
    separate output axes (``[in, 2, mlp]`` for gate/up), so each device's shard holds whole parts.

    Quantized (``quant``), the kernel holds int8 or e4m3 values input dimension last, ``[*out, in]`` (the layout FP8
    GEMMs want, ``jllm.quantization``), and ``scale [*out]`` (float32) one scale per output channel, on the output
    axes' logical names, so tensor parallelism splits it with its columns. ``stored``: the checkpoint keeps the
    output axes ``[groups, width]`` as parts apart (``StoredParts``). ``decode_kernel_rows``: steps of at most that
    many rows may multiply in ``pallas_kernels.decode_gemv`` with the input's norm folded in
    (``jllm.models.decode_matmuls``; unquantized, bias-free kernels only)."""

    def __init__(
        self,
        d_in: int,
        d_out: int | tuple[int, ...],
        axes: tuple[str | None, ...],
        dtype: jnp.dtype,
        bias: bool = False,
        quant: QuantScheme | None = None,
        stored: StoredParts | None = None,
        decode_kernel_rows: int | None = None,
    ):
        out = (d_out,) if isinstance(d_out, int) else d_out
        if quant is None:
            self.kernel = param((d_in, *out), dtype, axes, stored)
        else:
            assert stored is None, "a quantized kernel is read as stored"
            self.kernel = param((*out, d_in), quant.weight_dtype, (*axes[1:], axes[0]))
        self.scale = None if quant is None else param(out, jnp.float32, axes[1:])
        self.bias = param(out, dtype, axes[1:], stored) if bias else None
        self.quant = quant
        self.decode_kernel_rows = decode_kernel_rows if quant is None and not bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.quant is None:
            y = jax.lax.dot_general(x, self.kernel[...], (((x.ndim - 1,), (0,)), ((), ())))
        else:
            y = self.quant.matmul(x, self.kernel[...], self.scale[...])
        return y + self.bias[...] if self.bias is not None else y


class Embedding(nnx.Module):
    """``scale`` multiplies the looked-up rows (Gemma's ``sqrt(hidden)``), rounded to the model dtype first as
    transformers does. ``axes``: the table's logical axes (a learned position table is not split by vocabulary)."""

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        dtype: jnp.dtype,
        scale: float | None = None,
        axes: tuple[str | None, str | None] = ("vocab", "embed"),
    ):
        self.embedding = param((vocab_size, dim), dtype, axes)
        self.scale = scale

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = jnp.take(self.embedding[...], ids, axis=0)
        return x if self.scale is None else x * jnp.asarray(self.scale, x.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied LM head: logits against the embedding table."""
        return x @ self.embedding[...].T


def sinusoidal_positions(positions: jax.Array, dim: int, shift: int = 1) -> jax.Array:
    """Fairseq's fixed position embeddings (XGLM), ``[T] -> [T, dim]`` float32: ``sin`` then ``cos`` of each
    position times ``dim // 2`` frequencies ``10000^(-i / (dim // 2 - shift))``, from 1 down to 1 / 10000 (``shift``
    1; CTRL's 0 stops one step short), a zero column more where ``dim`` is odd."""
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000) / (half - shift)))  # [half]
    angles = positions.astype(jnp.float32)[:, None] * freqs[None, :]  # [T, half]
    emb = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class RMSNorm(nnx.Module):
    """Llama's RMSNorm, or with ``unit_offset`` Gemma's, whose stored weight is the scale minus one; without
    ``weight`` NanoChat's, which scales by nothing; with ``float32_weight`` Gemma 4's, the weight applied in float32
    before the cast back (Llama's casts first)."""

    def __init__(
        self,
        dim: int,
        eps: float,
        dtype: jnp.dtype,
        unit_offset: bool = False,
        weight: bool = True,
        float32_weight: bool = False,
    ):
        self.weight = param((dim,), dtype, ("embed",)) if weight else None
        self.eps = eps
        self.unit_offset = unit_offset
        self.float32_weight = float32_weight or unit_offset

    def _inv_rms(self, x32: jax.Array) -> jax.Array:
        """``rsqrt(mean(x^2) + eps)`` per row, ``[..., 1]`` float32."""
        return jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)

    def factored(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The norm as (``x`` times its weight, in ``x``'s dtype; the per-row factor ``rsqrt(mean(x^2) + eps)``
        ``[..., 1]`` float32), so that a linear map of it is ``linear(x * w) * factor`` (``normed_linear``)."""
        x32 = x.astype(jnp.float32)
        factor = self._inv_rms(x32)
        if self.weight is None:
            return x, factor
        w32 = self.weight[...].astype(jnp.float32)
        return (x32 * (1.0 + w32 if self.unit_offset else w32)).astype(x.dtype), factor

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * self._inv_rms(x32)
        if self.weight is None:
            return x32.astype(x.dtype)
        if self.float32_weight:  # Gemma scales in float32, then casts: (x * (1 + w)).to(dtype), Gemma 4 (x * w)
            offset = 1.0 if self.unit_offset else 0.0
            return (x32 * (offset + self.weight[...].astype(jnp.float32))).astype(x.dtype)
        # Llama casts back before the weight: w * x.to(dtype)
        return self.weight[...] * x32.astype(x.dtype)


def normed_linear(norm: nnx.Module | None, linear: Linear, x: jax.Array) -> jax.Array:
    """``linear(norm(x))`` (``linear(x)`` without a norm). An RMS norm's per-row factor goes after the GEMM:
    ``(x * w) @ W * factor``, so the GEMM reads ``x * w``, which XLA computes in the fusion that made ``x`` (the
    residual add), and the factor joins the fusion that reads the GEMM's output: one small kernel less per norm,
    where the one-token decode step of a GPU is mostly small kernels besides its GEMMs (docs/benchmarks.md)."""
    if norm is None:
        return linear(x)
    if not isinstance(norm, RMSNorm) or linear.bias is not None:  # a bias must not be scaled
        return linear(norm(x))
    if decode_matmuls.takes(linear, norm, x):  # a few rows: the norm inside the matmul's kernel
        return decode_matmuls.normed_matmul(linear, norm, x)
    weighted, factor = norm.factored(x)
    y = linear(weighted)
    factor = factor.reshape(factor.shape + (1,) * (y.ndim - factor.ndim))  # [T, 1, ...] against y [T, *out]
    return (y.astype(jnp.float32) * factor).astype(y.dtype)


def l2_normed(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``x * rsqrt(sum(x^2) + eps)`` over the last axis, in float32, rounded to ``x``'s dtype: transformers'
    ``l2norm`` (FLA's: the gated DeltaNet's q and k) and nGPT's projection onto the unit sphere (Dory's
    ``DoryL2Norm``), both eps 1e-6."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def scaled(x: jax.Array, factor: float) -> jax.Array:
    """``x * factor`` in float32, rounded to ``x``'s dtype (torch's product of a tensor and a Python float: the
    factor not rounded to a bfloat16 first)."""
    return x if factor == 1 else (x.astype(jnp.float32) * factor).astype(x.dtype)


class GatedRMSNorm(nnx.Module):
    """RMSNorm, then its output times an input-dependent gate of its own (A.X-K2's ``AXK2GatedRMSNorm``, Megatron's
    ``GatedNormWrapper``): ``y * sigmoid(gate_up(silu(gate_down(y))))`` with ``y = norm(x)``, the gate of a low
    ``rank`` (the checkpoint's ``W_down`` / ``W_up``)."""

    def __init__(self, dim: int, eps: float, rank: int, dtype: jnp.dtype):
        self.norm = RMSNorm(dim, eps, dtype)
        self.gate_down = Linear(dim, rank, ("embed", None), dtype)
        self.gate_up = Linear(rank, dim, (None, "embed"), dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.norm(x)
        gate = jax.nn.sigmoid(self.gate_up(jax.nn.silu(self.gate_down(y))).astype(jnp.float32))
        return (y * gate).astype(y.dtype)  # the product in float32, as transformers'


class LayerNorm(nnx.Module):
    """``torch.nn.LayerNorm``, statistics in float32: with weight and bias, weight only (Cohere, StableLM's q/k
    norms) or neither (OLMo 1). ``heads`` (with the heads' logical axis) gives each head its own weight
    ``[heads, dim]`` over ``x [..., heads, dim]`` (StableLM's and Cohere's per-head q/k norms). With ``unit_offset``
    the stored weight is the scale minus one (Nemotron's LayerNorm1P)."""

    def __init__(
        self,
        dim: int,
        eps: float,
        dtype: jnp.dtype,
        weight: bool = True,
        bias: bool = True,
        heads: tuple[int, str] | None = None,
        unit_offset: bool = False,
    ):
        shape, axes = ((heads[0], dim), (heads[1], None)) if heads else ((dim,), ("embed",))
        self.weight = param(shape, dtype, axes) if weight else None
        self.bias = param(shape, dtype, axes) if bias else None
        self.eps = eps
        self.unit_offset = unit_offset

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * (self.weight[...].astype(jnp.float32) + (1.0 if self.unit_offset else 0.0))
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),  # squared ReLU (Nemotron, Arcee, Persimmon)
}


@dataclasses.dataclass(frozen=True)
class ClampedSwiGLU:
    """A SwiGLU whose gate is clipped above and up projection on both sides at ``limit``, in place of
    ``silu(gate) * up``, so that rare huge activations stay bounded: gpt-oss's experts (``alpha`` set) clip before the
    activation and take ``(up + 1) * gate * sigmoid(alpha * gate)``; Ling 3's (BailingHybrid's, ``alpha`` None) clip
    the gate after its silu and take ``silu(gate) * up``; DeepSeek-V4's (``gate_first``) clip it before."""

    limit: float
    alpha: float | None = None
    gate_first: bool = False

    def __call__(self, gate: jax.Array, up: jax.Array) -> jax.Array:
        up = jnp.clip(up, -self.limit, self.limit)
        if self.gate_first and self.alpha is None:
            return jax.nn.silu(jnp.minimum(gate, self.limit)) * up
        if self.alpha is None:
            return jnp.minimum(jax.nn.silu(gate), self.limit) * up
        gate = jnp.minimum(gate, self.limit)
        return (up + 1) * (gate * jax.nn.sigmoid(gate * self.alpha))


class XIELU(nnx.Module):
    """xIELU (Apertus): ``alpha_p x^2 + beta x`` for ``x > 0``, else ``alpha_n (expm1(min(x, eps)) - x) + beta x``,
    with ``alpha_p = softplus(a_p)`` and ``alpha_n = beta + softplus(a_n)`` learned per layer; transformers'
    Python path, in float32."""

    def __init__(self, dtype: jnp.dtype):
        self.alpha_p = param((1,), dtype, (None,))
        self.alpha_n = param((1,), dtype, (None,))
        self.beta = param((), dtype, ())
        self.eps = param((), dtype, ())

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        beta, eps = self.beta[...].astype(jnp.float32), self.eps[...].astype(jnp.float32)
        alpha_p = jax.nn.softplus(self.alpha_p[...].astype(jnp.float32))
        alpha_n = beta + jax.nn.softplus(self.alpha_n[...].astype(jnp.float32))
        positive = alpha_p * x32 * x32 + beta * x32
        negative = (jnp.expm1(jnp.minimum(x32, eps)) - x32) * alpha_n + beta * x32
        return jnp.where(x32 > 0, positive, negative).astype(x.dtype)


class MLP(nnx.Module):
    """The feed-forward block: gated (SwiGLU / GeGLU, ``down(act(gate(x)) * up(x))``, gate and up as one matmul: one
    weight read, one kernel launch) or plain (GPT-NeoX, Falcon: ``down(act(up(x)))``, with biases). The MLP axis of
    gate/up and the rows of down split across devices."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        dtype: jnp.dtype,
        act: str = "silu",
        gated: bool = True,
        bias: bool = False,
        quant: QuantScheme | None = None,
        sparsity: float = 0.0,
        multipliers: tuple[float, float] | None = None,
        glu: ClampedSwiGLU | None = None,
        sub_norm: nnx.Module | None = None,
        decode_kernel_rows: int | None = None,
    ):
        """``multipliers``: (gate, down), the gate's pre-activation and the output times these (Falcon-H1's muP);
        ``glu``: the gated activation in place of ``act(gate) * up`` (Ling 3's clipped shared expert); ``sub_norm``: a
        norm over the ``hidden`` activations before ``down_proj`` (BitNet's ``ffn_sub_norm``);
        ``decode_kernel_rows``: gate-up's (``Linear``), so that small steps run the norm, gate-up and SwiGLU in one
        kernel."""
        if sparsity and not (gated and 0.0 < sparsity < 1.0):
            raise ValueError(f"activation sparsity {sparsity} needs a gated MLP and a fraction in (0, 1)")
        if multipliers is not None and not gated:
            raise ValueError(f"MLP multipliers {multipliers} need a gated MLP (they scale its gate)")
        if glu is not None and not (gated and act == "silu"):
            raise ValueError(f"MLP glu {glu} needs a gated silu MLP, not act={act!r} gated={gated}")
        if gated:
            self.gate_up_proj = Linear(
                dim, (2, hidden), ("embed", None, "mlp"), dtype, bias=bias, quant=quant,
                decode_kernel_rows=decode_kernel_rows,
            )  # fmt: skip
        else:
            self.up_proj = Linear(dim, hidden, ("embed", "mlp"), dtype, bias=bias, quant=quant)
        self.down_proj = Linear(hidden, dim, ("mlp", "embed"), dtype, bias=bias, quant=quant)
        self.ffn_sub_norm = sub_norm
        self.act_fn = XIELU(dtype) if act == "xielu" else None  # an activation with parameters of its own
        self.act, self.gated, self.glu = act, gated, glu
        # Gemma 3n's sparse layers keep only the gate values above mean + std * this (the normal quantile of
        # ``sparsity``): about the top 1 - sparsity of each row, if the row is Gaussian
        self.sparsity_cutoff = statistics.NormalDist().inv_cdf(sparsity) if sparsity else None
        self.gate_scale, self.down_scale = multipliers or (1.0, 1.0)

    def __call__(self, x: jax.Array, norm: nnx.Module | None = None, lora: LayerLoRA | None = None) -> jax.Array:
        """The block over ``norm(x)`` (``x`` itself without a norm), through ``normed_linear``; ``lora``: each
        token's adapter deltas."""
        act = ACTIVATIONS[self.act] if self.act_fn is None else self.act_fn
        if self._swiglu_kernel(x, norm, lora):
            h = decode_matmuls.normed_matmul(self.gate_up_proj, norm, x, swiglu=True)  # [T, hidden]
        elif self.gated:
            gate_up = normed_linear(norm, self.gate_up_proj, x)  # [T, 2, hidden]
            if lora is not None:
                gate_up = gate_up + lora.delta("gate_up", x if norm is None else norm(x))
            gate = scaled(gate_up[:, 0], self.gate_scale)
            gate = gate if self.sparsity_cutoff is None else self._sparse(gate)
            h = act(gate) * gate_up[:, 1] if self.glu is None else self.glu(gate, gate_up[:, 1])
        else:
            up = normed_linear(norm, self.up_proj, x)  # [T, hidden]
            h = act(up if lora is None else up + lora.delta("up", x if norm is None else norm(x)))
        h = h if self.ffn_sub_norm is None else self.ffn_sub_norm(h)
        y = self.down_proj(h)
        return scaled(y if lora is None else y + lora.delta("down", h), self.down_scale)

    def _swiglu_kernel(self, x: jax.Array, norm: nnx.Module | None, lora: LayerLoRA | None) -> bool:
        """Whether gate-up and its SwiGLU (after the input's RMS norm, if any) run as one decode kernel: plain
        ``silu(gate) * up`` with no LoRA, sparsity or multiplier, a step the kernel takes."""
        plain = self.gated and self.act == "silu" and self.glu is None and self.sparsity_cutoff is None
        plain &= self.gate_scale == 1.0 and self.act_fn is None and lora is None
        rms = norm is None or isinstance(norm, RMSNorm)
        return plain and rms and decode_matmuls.takes(self.gate_up_proj, norm, x, swiglu=True)

    def _sparse(self, gate: jax.Array) -> jax.Array:
        """``relu(gate - (mean + std * cutoff))`` over each row's channels (transformers' ``_gaussian_topk``: the
        population std, statistics in float32); under tensor parallelism the row's statistics span the devices."""
        g32 = gate.astype(jnp.float32)
        mean, std = jnp.mean(g32, axis=-1, keepdims=True), jnp.std(g32, axis=-1, keepdims=True)
        return jax.nn.relu(g32 - (mean + std * self.sparsity_cutoff)).astype(gate.dtype)


class ResidualGate(nnx.Module):
    """Ergo's residual add: a block's output and the residual mixed by a learned weight per channel, ``sigmoid(w) *
    h + sqrt(1 + sigmoid(w)) * exp(-softplus(w) / 2) * x``, in float32 (its ``ErgoResidualGate``, whose weight
    transformers keeps in float32)."""

    def __init__(self, dim: int):
        self.weight = param((dim,), jnp.float32, ("embed",))

    def __call__(self, h: jax.Array, residual: jax.Array) -> jax.Array:
        w = self.weight[...]
        branch = jax.nn.sigmoid(w)
        kept = jnp.sqrt(1.0 + branch) * jnp.exp(-0.5 * jax.nn.softplus(w))
        return (branch * h.astype(jnp.float32) + kept * residual.astype(jnp.float32)).astype(residual.dtype)


class Laurel(nnx.Module):
    """Gemma 3n's learned augmented residual (LAuReL): ``x + norm(right(left(x)))``, a rank-``rank`` map beside the
    attention, over the attention's normed input. Tensors named as the checkpoint's (``laurel.linear_left``, ...);
    small, so replicated under tensor parallelism."""

    def __init__(self, dim: int, rank: int, dtype: jnp.dtype, norm: nnx.Module):
        self.linear_left = Linear(dim, rank, ("embed", None), dtype)
        self.linear_right = Linear(rank, dim, (None, "embed"), dtype)
        self.post_laurel_norm = norm

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.post_laurel_norm(self.linear_right(self.linear_left(x)))


class HeadTransform(nnx.Module):
    """ModernBERT's prediction head: ``norm(act(dense(x)))`` over the final states, before the LM head reads them
    (``ModelArgs.head_transform``). Small, so replicated under tensor parallelism."""

    def __init__(self, dim: int, act: str, bias: bool, norm: nnx.Module, dtype: jnp.dtype):
        self.dense = Linear(dim, dim, ("embed", None), dtype, bias=bias)
        self.act = act
        self.norm = norm

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(ACTIVATIONS[self.act](self.dense(x)))


class HeadBias(nnx.Module):
    """A bias on a tied LM head's logits ``[vocab]`` (ModernBERT's ``decoder.bias``), split by vocabulary as the
    embedding it is added beside."""

    def __init__(self, vocab_size: int, dtype: jnp.dtype):
        self.bias = param((vocab_size,), dtype, ("vocab",))

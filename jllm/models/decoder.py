"""The one decoder-only transformer every supported family runs as, driven by a ``ModelArgs`` description.

A family (``jllm.models.families``) is only what differs: attention kind (grouped-query, or DeepSeek's multi-head
latent attention, ``jllm.models.mla``), norm kind, where the norms are (q/k per head, with one weight or a weight
per head, or over all heads, Gemma's sandwich, OLMo 2's outputs-only), multipliers (Granite's residual and logits
scales), learned positions (OPT's two rows on) or rotary, residual layout (sequential, or GPT-NeoX / Falcon / Phi's
parallel attention + MLP), MLP kind (gated, plain, or a mixture of experts, with dense layers among them),
activation, biases (the LM head's too), q/k/v clipping, rotary fraction, layout and scaling, soft-caps, attention
sinks, per-layer sliding windows, Llama 4's per-layer q/k norms and query temperature, and the checkpoint's tensor
names. The maths they share lives here once.

Layers are a Python list, so ``jit`` unrolls them: on the H100 an unrolled decode step ran 2.7x faster than a
``lax.scan`` over stacked layers. Each layer runs through one nested ``jit`` (``_decoder_layer``), so a step program
traces and lowers a layer once per distinct layer kind (Gemma's sliding and global layers are two), not once per
layer; XLA inlines the calls, so the compiled program is the unrolled one.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.attention import AttentionMetadata, paged_attention
from jllm.models.layers import MLP, Embedding, LayerNorm, Linear, RMSNorm, normed_linear, param
from jllm.models.lora import LayerLoRA, LoRABatch
from jllm.models.mla import MLASpec, MLAttention
from jllm.models.moe import ClampedSwiGLU, GroupedRouting, SparseMoE
from jllm.models.rope import Rope
from jllm.parallel import KV_HEADS
from jllm.quantization import QuantScheme

# Llama's RMSNorm, Gemma's ``1 + w`` one; LayerNorm with weight and bias, weight only (Cohere), neither (OLMo 1), or
# weight and bias with the weight stored minus one (Nemotron's LayerNorm1P)
NORMS = ("rms", "rms_unit_offset", "layer", "layer_no_bias", "layer_no_affine", "layer_unit_offset")


@dataclasses.dataclass(frozen=True)
class WeightMap:
    """Where the checkpoint keeps each of our parameters.

    ``qkv``: the tensors our fused QKV is read from and their layout: "separate" (``q_proj``, ``k_proj``,
    ``v_proj``), "concat" (one tensor, all query rows, then K's, then V's: Phi-3) or "grouped" (one tensor, per KV
    head its query heads' rows, then its K's, then its V's: GPT-NeoX's per-head ``[q, k, v]``, Falcon). ``gate_up``
    likewise: "separate" (``gate_proj``, ``up_proj``) or "concat" (gate rows then up rows). ``rename``: our module
    name -> the checkpoint's, for every other module whose name differs (or a dotted run of modules: Granite's
    ``mlp.shared_expert`` is its layer's ``shared_mlp``; a name "" drops the level; a parameter's own name too:
    ERNIE's ``e_score_correction_bias``). A name holding ``{e}`` is one tensor per expert (Mixtral's
    ``experts.{e}.w1``) or per head (StableLM's ``q_layernorm.norms.{e}``), stacked on our parameter's leading
    axis; without it, each expert kernel is one stacked tensor (Granite MoE's ``input_linear``). ``reader``: the
    family's own for parameters its checkpoint lays out its own way, ``reader(index, path, shape, dtype)`` -> a slice
    reader (``jllm.safetensors_index.Reader``), or None where the names above say it (gpt-oss's stacked experts,
    gate and up interleaved, maybe in MXFP4).
    """

    qkv: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    qkv_layout: str = "separate"
    gate_up: tuple[str, ...] = ("gate_proj", "up_proj")
    rename: tuple[tuple[str, str], ...] = ()
    prefix: str = "model."  # before every tensor name but the untied LM head's
    head_prefix: str = ""  # before the untied LM head's (``language_model.`` in an image-text checkpoint)
    # a stored name's leading part read as another: transformers 5's in-memory names where a checkpoint keeps them
    # (``model.language_model.`` for the ``language_model.model.`` that transformers saves)
    aliases: tuple[tuple[str, str], ...] = ()
    conv1d: bool = (
        False  # the decoder's linear weights stored ``[in, out]`` as ours (GPT-2's ``Conv1D``), not ``[out, in]``
    )
    # the experts stored as bare parameters named as ours, ``[experts, in, out]`` (Llama 4's ``experts.gate_up_proj``)
    expert_params: bool = False
    reader: Callable[..., Any] | None = None


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What may differ between the layers of one model (Gemma alternates sliding and global layers)."""

    rope: Rope | None  # None: no rotary (GPT-BigCode's learned positions, Cohere2's global layers)
    sliding_window: int | None = None
    # in a mixture-of-experts model, this layer's MLP is a dense gated one this wide (ERNIE's first layer, DeepSeek's
    # first_k_dense_replace layers)
    dense_mlp_size: int | None = None
    qk_l2_norm: bool = False  # each query and key head RMS-normed without a weight after the rotary (Llama 4)
    # (floor_scale, attn_scale): queries times log1p(floor((position + shift) / floor_scale)) * attn_scale + 1 (Llama
    # 4's attn_temperature_tuning on its layers without rotary; Ministral 3's llama_4_scaling_beta on every layer)
    attn_temperature: tuple[float, float] | None = None
    attn_temperature_shift: float = 1.0  # Llama 4 counts positions from 1 there, Ministral 3 from 0


@dataclasses.dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    layers: tuple[LayerSpec, ...]  # one per layer
    norm: str = "rms"  # one of NORMS
    qk_norm: bool = False  # a norm over head_dim on each query and key head before the rotary (Qwen3, Gemma 3)
    qk_norm_all_heads: bool = False  # with qk_norm, over all heads' channels at once instead (OLMo 2, OLMoE)
    qk_norm_per_head: bool = False  # with qk_norm, each head its own weight [heads, head_dim] (StableLM, Cohere)
    qk_norm_kind: str | None = None  # the q/k norms' kind (one of NORMS) where it is not ``norm`` (StableLM's)
    qkv_clip: float | None = None  # q, k and v clipped to [-clip, clip] after the q/k norms (OLMo's clip_qkv)
    pre_norms: bool = True  # norms on the attention's and MLP's inputs; False: none there (OLMo 2)
    sandwich_norms: bool = False  # norms on the attention and MLP outputs, before the residual adds (Gemma, OLMo 2)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    mlp_act: str = "silu"
    mlp_gated: bool = True  # False: GPT-NeoX / Falcon's plain down(act(up(x)))
    # attention and MLP both read the layer's input and add to it together (GPT-NeoX, Falcon)
    parallel_residual: bool = False
    shared_input_norm: bool = False  # with parallel_residual, the MLP reads the attention's input norm (Falcon-7B)
    # > 0: a routed mixture of experts replaces the MLP (Mixtral, Qwen2/3-MoE); intermediate_size is each expert's
    num_experts: int = 0
    experts_per_token: int = 0
    experts_renormalize: bool = True  # the chosen experts' weights rescaled to sum to one (Qwen's norm_topk_prob)
    shared_expert_size: int = 0  # > 0: a dense SwiGLU beside the experts, this wide (Qwen2-MoE, DeepSeek)
    shared_expert_gated: bool = True  # the shared expert's output scaled by a sigmoid gate (Qwen2-MoE's)
    expert_routing: str = "softmax"  # one of moe.ROUTINGS
    router_eps: float = 0.0  # sparsemixer's jitter epsilon (Phi-3.5-MoE); the corrected softmax's floor (ERNIE)
    moe_routing: GroupedRouting | None = None  # DeepSeek's group-limited router in place of the softmax top-k
    mla: MLASpec | None = None  # multi-head latent attention (DeepSeek) in place of Attention; num_kv_heads is 1
    experts_bias: bool = False  # biases on the router and on each expert's projections (gpt-oss)
    experts_glu: ClampedSwiGLU | None = None  # the experts' activation in place of act(gate) * up (gpt-oss)
    attn_sinks: bool = False  # a learned logit per query head joins each row's softmax, with no value (gpt-oss)
    embed_scale: float | None = None  # Gemma: sqrt(hidden); Granite's embedding_multiplier
    sm_scale: float | None = None  # attention scale; None is head_dim ** -0.5
    residual_scale: float | None = None  # each block's output times this before its residual add (Granite)
    attn_softcap: float | None = None
    logits_divisor: float | None = None  # logits divided by this (Granite's logits_scaling), before a soft-cap
    # Llama 4's chunked attention on its rotary layers: jllm has none, so it serves contexts up to one chunk, where
    # chunked attention is causal attention (``max_context``)
    attention_chunk_size: int | None = None
    final_softcap: float | None = None
    lm_head_bias: bool = False  # an untied LM head with a bias (Phi, GPT-J)
    # a learned position embedding of max_position_embeddings rows added to the token's (GPT-BigCode's wpe)
    learned_positions: bool = False
    position_offset: int = 0  # learned positions: position p reads row p + offset of a table that much longer (OPT's 2)
    weights: WeightMap = WeightMap()
    dtype: Any = jnp.float32
    quant: QuantScheme | None = None  # the decoder layers' linear weights (embeddings, norms, LM head stay dtype)

    def __post_init__(self) -> None:
        for kind in (self.norm, self.qk_norm_kind or self.norm):
            if kind not in NORMS:
                raise ValueError(f"norm {kind!r} is not one of {', '.join(NORMS)}")
        if (self.qk_norm_all_heads or self.qk_norm_per_head) and not self.qk_norm:
            raise ValueError("qk_norm_all_heads and qk_norm_per_head need qk_norm: they say how the q/k norms are laid")
        if self.qk_norm_all_heads and self.qk_norm_per_head:
            raise ValueError("qk_norm_all_heads and qk_norm_per_head exclude each other")
        if self.qk_norm_per_head and not (self.qk_norm_kind or self.norm).startswith("layer"):
            raise ValueError("qk_norm_per_head is implemented for LayerNorms only (StableLM's and Cohere's q/k norms)")
        if self.lm_head_bias and self.tie_word_embeddings:
            raise ValueError("lm_head_bias needs an untied LM head (tie_word_embeddings=False)")
        if self.shared_input_norm and not self.parallel_residual:
            raise ValueError("shared_input_norm needs parallel_residual: a sequential MLP reads its own norm")
        if self.quant is not None and self.mla is not None:
            raise ValueError(
                f"quantization={self.quant.name!r} is not supported for multi-head latent attention (DeepSeek); "
                "leave quantization unset"
            )
        if self.quant is not None and self.num_experts:
            raise ValueError(
                f"quantization={self.quant.name!r} is not supported for mixture-of-experts models (their experts' "
                "grouped matmuls have no quantized form yet); leave quantization unset"
            )

    def make_mlp(self, spec: LayerSpec) -> nnx.Module:
        d, hidden, dt = self.hidden_size, self.intermediate_size, self.dtype
        if self.num_experts and spec.dense_mlp_size is None:
            return SparseMoE(
                d,
                hidden,
                self.num_experts,
                self.experts_per_token,
                dt,
                self.mlp_act,
                self.experts_renormalize,
                self.shared_expert_size,
                self.expert_routing,
                self.shared_expert_gated,
                self.router_eps,
                self.moe_routing,
                bias=self.experts_bias,
                glu=self.experts_glu,
            )
        return MLP(d, spec.dense_mlp_size or hidden, dt, self.mlp_act, self.mlp_gated, self.mlp_bias, self.quant)

    def make_norm(
        self, dim: int | None = None, kind: str | None = None, heads: tuple[int, str] | None = None
    ) -> nnx.Module:
        """A norm of ``kind`` (the model's ``norm`` by default) over ``dim`` channels (``hidden_size`` by default);
        ``heads``: (count, logical axis) for one weight per head (``LayerNorm``'s)."""
        dim, kind = dim or self.hidden_size, kind or self.norm
        if kind.startswith("layer"):
            affine, offset = kind != "layer_no_affine", kind == "layer_unit_offset"
            bias = kind in ("layer", "layer_unit_offset")
            return LayerNorm(dim, self.norm_eps, self.dtype, affine, bias, heads, unit_offset=offset)
        return RMSNorm(dim, self.norm_eps, self.dtype, unit_offset=kind == "rms_unit_offset")

    def make_qk_norms(self) -> tuple[nnx.Module, nnx.Module] | tuple[None, None]:
        """The q and k norms: over each head's ``head_dim`` channels with one weight for all heads (Qwen3, Gemma 3)
        or each head its own (``qk_norm_per_head``), or over all heads' channels at once (``qk_norm_all_heads``)."""
        if not self.qk_norm:
            return None, None
        hd, kind = self.head_dim, self.qk_norm_kind
        if self.qk_norm_all_heads:
            return self.make_norm(self.num_heads * hd, kind), self.make_norm(self.num_kv_heads * hd, kind)
        if self.qk_norm_per_head:
            q_heads, kv_heads = (self.num_heads, "q_heads"), (self.num_kv_heads, KV_HEADS)
            return self.make_norm(hd, kind, q_heads), self.make_norm(hd, kind, kv_heads)
        return self.make_norm(hd, kind), self.make_norm(hd, kind)

    @property
    def kv_pool_head_dim(self) -> int:
        """The width of a KV pool head: ``head_dim``, or the latent's (``MLASpec.latent_dim``)."""
        return self.head_dim if self.mla is None else self.mla.latent_dim

    @property
    def sliding_windows(self) -> list[int | None]:
        return [spec.sliding_window for spec in self.layers]

    @property
    def max_context(self) -> int:
        """The longest context the model is served with: its positions, or a shorter attention chunk."""
        return min(self.max_position_embeddings, self.attention_chunk_size or self.max_position_embeddings)

    @property
    def dense_mlp_sizes(self) -> set[int]:
        """The widths of the dense MLPs among a mixture of experts' layers (none in most)."""
        return {spec.dense_mlp_size for spec in self.layers if spec.dense_mlp_size is not None}


class Attention(nnx.Module):
    """Q, K and V come from one matmul whose kernel is laid out ``[hidden, kv_heads, group + 2, head_dim]``: for
    each KV head, its ``group`` query heads, then its K and its V. One weight read and one kernel instead of three
    (XLA turns the small K and V matmuls of a one-token step into slow reductions), and splitting the KV-head axis
    gives every device whole query groups with their K/V head."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        d, hd, dt = args.hidden_size, args.head_dim, args.dtype
        self.group = args.num_heads // args.num_kv_heads
        heads = (args.num_kv_heads, self.group + 2, hd)
        axes = ("embed", KV_HEADS, None, None)
        self.qkv_proj = Linear(d, heads, axes, dt, bias=args.qkv_bias, quant=args.quant)
        self.o_proj = Linear(args.num_heads * hd, d, ("q_heads", "embed"), dt, bias=args.o_bias, quant=args.quant)
        self.q_norm, self.k_norm = args.make_qk_norms()
        self.sinks = param((args.num_heads,), dt, ("q_heads",)) if args.attn_sinks else None
        self.args, self.spec = args, spec

    def __call__(
        self,
        x: jax.Array,
        norm: nnx.Module,
        positions: jax.Array,
        kv_pages: jax.Array,
        meta: AttentionMetadata,
        lora: LayerLoRA | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Attention over ``norm(x)`` (``x`` itself without a norm), each token's LoRA delta added (``lora``)."""
        a, g = self.args, self.group
        t = x.shape[0]
        qkv = normed_linear(norm, self.qkv_proj, x)  # [T, kv_heads, group + 2, head_dim]
        if lora is not None:
            qkv = qkv + lora.delta("qkv", x if norm is None else norm(x))
        q = qkv[:, :, :g].reshape(t, a.num_heads, a.head_dim)
        k, v = qkv[:, :, g], qkv[:, :, g + 1]
        if self.q_norm is not None and a.qk_norm_all_heads:  # [T, heads * head_dim] normed, then heads again
            q, k = self.q_norm(q.reshape(t, -1)).reshape(q.shape), self.k_norm(k.reshape(t, -1)).reshape(k.shape)
        elif self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if a.qkv_clip is not None:
            q, k, v = (jnp.clip(y, -a.qkv_clip, a.qkv_clip) for y in (q, k, v))
        if self.spec.rope is not None:
            q, k = self.spec.rope.apply(q, positions), self.spec.rope.apply(k, positions)
        if self.spec.qk_l2_norm:
            q, k = _unit_rms(q, a.norm_eps), _unit_rms(k, a.norm_eps)
        if self.spec.attn_temperature is not None:
            floor_scale, attn_scale = self.spec.attn_temperature
            shifted = positions.astype(jnp.float32) + self.spec.attn_temperature_shift
            scale = jnp.log1p(jnp.floor(shifted / floor_scale)) * attn_scale + 1.0
            q = (q * scale[:, None, None]).astype(q.dtype)
        out, kv_pages = paged_attention(
            q,
            k,
            v,
            kv_pages,
            meta,
            sm_scale=a.sm_scale or a.head_dim**-0.5,
            soft_cap=a.attn_softcap,
            sliding_window=self.spec.sliding_window,
            sinks=None if self.sinks is None else self.sinks[...],
        )
        out = out.reshape(t, a.num_heads * a.head_dim)
        y = self.o_proj(out)
        return (y if lora is None else y + lora.delta("o", out)), kv_pages


def _unit_rms(x: jax.Array, eps: float) -> jax.Array:
    """Llama 4's weightless RMSNorm over ``x``'s last axis, in float32."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


class DecoderLayer(nnx.Module):
    """Pre-norm residual blocks, one after the other, or with ``parallel_residual`` side by side on the same input:
    ``x + attn(norm1(x)) + mlp(norm2(x))``. With ``sandwich_norms`` each block's output is normed too before it is
    added; without ``pre_norms`` (OLMo 2) only the outputs are."""

    def __init__(self, args: ModelArgs, spec: LayerSpec):
        self.input_layernorm = args.make_norm() if args.pre_norms else None
        self.self_attn = Attention(args, spec) if args.mla is None else MLAttention(args, spec)
        # the MLP's input norm (Llama's name); none where it shares the attention's or the family has no input norms
        self.post_attention_layernorm = None if args.shared_input_norm or not args.pre_norms else args.make_norm()
        self.mlp = args.make_mlp(spec)
        self.attn_out_norm = args.make_norm() if args.sandwich_norms else None
        self.mlp_out_norm = args.make_norm() if args.sandwich_norms else None
        self.parallel_residual = args.parallel_residual
        self.residual_scale = args.residual_scale

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        kv_pages: jax.Array,
        meta: AttentionMetadata,
        lora: LayerLoRA | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """``lora``: the step's adapters (sequential residual and a dense gated MLP only: ``jllm.lora`` refuses the
        other families at load)."""
        attn_args = (x, self.input_layernorm, positions, kv_pages, meta)  # MLA's attention takes no LoRA
        h, kv_pages = self.self_attn(*attn_args) if lora is None else self.self_attn(*attn_args, lora)
        h = self._scaled(h if self.attn_out_norm is None else self.attn_out_norm(h))
        if self.parallel_residual:
            shared = self.post_attention_layernorm is None
            return x + (self._mlp(x, self.input_layernorm if shared else self.post_attention_layernorm) + h), kv_pages
        x = x + h
        return x + self._mlp(x, self.post_attention_layernorm, lora), kv_pages

    def _mlp(self, x: jax.Array, norm: nnx.Module, lora: LayerLoRA | None = None) -> jax.Array:
        """The MLP over ``norm(x)``: the dense one takes the norm itself (``normed_linear``), the router of a mixture
        of experts reads the normed states."""
        h = self.mlp(x, norm, lora) if isinstance(self.mlp, MLP) else self.mlp(x if norm is None else norm(x))
        return self._scaled(h if self.mlp_out_norm is None else self.mlp_out_norm(h))

    def _scaled(self, h: jax.Array) -> jax.Array:
        """A block's output as the residual adds it: times ``residual_scale`` where the family has one (in float32,
        as torch multiplies a tensor by a Python float, the scale not rounded to a bfloat16)."""
        return h if self.residual_scale is None else (h.astype(jnp.float32) * self.residual_scale).astype(h.dtype)


@functools.partial(jax.jit, static_argnums=0)
def _decoder_layer(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    x: jax.Array,
    positions: jax.Array,
    kv_pages: jax.Array,
    meta: Any,
    lora: LayerLoRA | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One layer as a pure function: layers of one kind share their graphdef and shapes, so JAX traces each kind
    once per step program. Tracing each of 30 layers (and its attention) anew took most of a warm start (CPU,
    2026-11-26)."""
    return nnx.merge(graphdef, state)(x, positions, kv_pages, meta, lora)


class CausalLM(nnx.Module):
    def __init__(self, args: ModelArgs):
        self.embed_tokens = Embedding(args.vocab_size, args.hidden_size, args.dtype, args.embed_scale)
        self.embed_positions = (
            Embedding(
                args.max_position_embeddings + args.position_offset, args.hidden_size, args.dtype, axes=(None, "embed")
            )
            if args.learned_positions
            else None
        )
        self.layers = nnx.List([DecoderLayer(args, spec) for spec in args.layers])
        self.norm = args.make_norm()
        self.lm_head = (
            None
            if args.tie_word_embeddings
            else Linear(args.hidden_size, args.vocab_size, ("embed", "vocab"), args.dtype, bias=args.lm_head_bias)
        )
        self.args = args

    def __call__(
        self,
        input_ids: jax.Array,  # [T] int32
        positions: jax.Array,  # [T] int32
        kv_caches: list[jax.Array],  # per layer [2, num_kv_heads, num_pages, page_size, kv_pool_head_dim]
        meta: AttentionMetadata,
        lora: LoRABatch | None = None,
    ) -> tuple[jax.Array, list[jax.Array]]:
        """Final hidden states ``[T, hidden]`` (normed) and the updated pool; ``lora``: each token's adapter."""
        states, new_caches = self._residual_stream(input_ids, positions, kv_caches, meta, lora)
        return self.norm(states[-1]), new_caches

    def hidden_states(
        self, input_ids: jax.Array, positions: jax.Array, kv_caches: list[jax.Array], meta: AttentionMetadata
    ) -> list[jax.Array]:
        """transformers' ``output_hidden_states``: ``num_layers + 1`` arrays ``[T, hidden]``, the embeddings, then
        each layer's output, the last one after the final norm (``jllm.pooling`` reads them; the pool is scratch)."""
        states, _ = self._residual_stream(input_ids, positions, kv_caches, meta)
        return [*states[:-1], self.norm(states[-1])]

    def _residual_stream(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        kv_caches: list[jax.Array],
        meta: AttentionMetadata,
        lora: LoRABatch | None = None,
    ) -> tuple[list[jax.Array], list[jax.Array]]:
        """The residual stream before the first layer and after each (not normed), and the updated pool."""
        x = self.embed_tokens(input_ids)
        if self.embed_positions is not None:
            x = x + self.embed_positions(positions + self.args.position_offset)
        states = [x]
        new_caches = []
        for i, (layer, kv_pages) in enumerate(zip(self.layers, kv_caches, strict=True)):
            layer_lora = None if lora is None else lora.layer(i, x.dtype)
            x, kv_pages = _decoder_layer(*nnx.split(layer), states[-1], positions, kv_pages, meta, layer_lora)
            states.append(x)
            new_caches.append(kv_pages)
        return states, new_caches

    def compute_logits(self, hidden: jax.Array) -> jax.Array:
        """``[N, hidden] -> [N, vocab]`` float32 logits (divided and soft-capped where the family says so)."""
        return self.logits_head()(hidden)

    def logits_head(self) -> LogitsHead:
        """A view of the parameters logits need (shared, not copied)."""
        return LogitsHead(self.embed_tokens, self.lm_head, self.args.logits_divisor, self.args.final_softcap)


class LogitsHead(nnx.Module):
    """The LM head (or the tied embedding) and the final soft-cap: all that logits read, apart from the layers, so
    the sampler and prompt-logprobs programs take one or two parameters instead of the whole model's. Tracing and
    lowering the default model's 40 such programs over every leaf (each merging the whole model) cost ~0.9 s more
    of a start-up (CPU, 2026-12-03)."""

    def __init__(
        self,
        embed_tokens: Embedding,
        lm_head: Linear | None,
        logits_divisor: float | None = None,
        final_softcap: float | None = None,
    ):
        self.embed_tokens = embed_tokens if lm_head is None else None
        self.lm_head = lm_head
        self.logits_divisor = logits_divisor
        self.final_softcap = final_softcap

    def __call__(self, hidden: jax.Array) -> jax.Array:
        """``[N, hidden] -> [N, vocab]`` float32 logits."""
        logits = self.embed_tokens.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
        logits = logits.astype(jnp.float32)
        if self.logits_divisor is not None:
            logits = logits / self.logits_divisor
        cap = self.final_softcap
        return logits if cap is None else cap * jnp.tanh(logits / cap)

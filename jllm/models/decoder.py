"""The one decoder-only transformer every supported family runs as, driven by a ``ModelArgs`` description
(``jllm.models.model_args``: what a family may change). The maths the families share lives here once.

Layers are a Python list, so ``jit`` unrolls them: on the H100 an unrolled decode step ran 2.7x faster than a
``lax.scan`` over stacked layers. Each layer runs through one nested ``jit`` (``_decoder_layer``), so a step program
traces and lowers a layer once per distinct layer kind (Gemma's sliding and global layers are two), not once per
layer; XLA inlines the calls, so the compiled program is the unrolled one.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.attention import AttentionMetadata, with_kernel_buffers
from jllm.models.altup import ACTIVE, AltUp, AltUpStreams
from jllm.models.attention_layer import Attention
from jllm.models.deepseek_v4 import V4Attention
from jllm.models.diff_attention import DiffAttention
from jllm.models.dynamic_mask import DynamicMaskAttention
from jllm.models.hyper_connections import make_hyper_connection
from jllm.models.layers import (
    MLP,
    Embedding,
    HeadBias,
    HeadTransform,
    Laurel,
    Linear,
    ResidualGate,
    param,
    scaled,
    sinusoidal_positions,
)
from jllm.models.looped import Looped
from jllm.models.lora import LayerLoRA, LoRABatch
from jllm.models.mla import MLAttention
from jllm.models.moa import MixtureOfAttention
from jllm.models.model_args import LayerSpec, ModelArgs
from jllm.models.ngpt import L2Norm, NGPTLayer, ScaledLMHead
from jllm.models.per_layer_inputs import LayerInput, PerLayerInputs
from jllm.models.zamba2 import SharedBlockCall, SharedTransformer


class DecoderLayer(nnx.Module):
    """Pre-norm residual blocks, one after the other, or with ``parallel_residual`` side by side on the same input:
    ``x + attn(norm1(x)) + mlp(norm2(x))``. With ``sandwich_norms`` each block's output is normed too before it is
    added (with ``moe_out_norm`` a mixture's alone); without ``pre_norms`` (OLMo 2) only the outputs are; a layer may
    lay its norms out its own way (``LayerSpec.norms``: OLMo-Hybrid's). A layer may hold one block alone
    (Nemotron-H's): a token mixer with no MLP (``LayerSpec.mlp`` False), or an MLP with no mixer (``LayerSpec.mixer``
    "none", its cache entry an empty state). MiniMax's blocks add to their normed inputs, scaled
    (``LayerSpec.normed_residual``). Gemma 3n's layer reads and writes AltUp's streams: its blocks run on the active
    stream's prediction, a LAuReL block beside the attention, and the streams are corrected from their output.
    Zamba2's hybrid layers invoke a shared transformer block first, its output added to the mixer's input
    (``LayerSpec.shared_block``: ``jllm.models.zamba2``). A layer may hand an array on to the next (the ``carry``):
    LongCat-Flash's layer pairs pass a mixture's output from the first to the second (``LayerSpec.moe_shortcut``);
    DeepSeek Sparse Attention's layers pass the selection they attended over, which GLM-5's layers without an
    indexer reuse (``LayerSpec.reuses_selection``). Qwen4-Exp's and DeepSeek-V4's layers read and write
    hyper-connection streams: each block's input a learned mix of them, its output added to each by a learned weight
    (``jllm.models.hyper_connections``); DeepSeek-V4's hash-routed mixtures read the token ids
    (``LayerSpec.hash_routed``). Falcon-H1's layers run attention beside their Mamba2 mixer
    (``LayerSpec.attention_beside``). RWKV's layers scale their output (``LayerSpec.output_scale``: its eval-mode
    halving every ``rescale_every`` blocks). GPT-1's layers norm the residual stream after each add instead
    (``ModelArgs.residual_norms``). Each residual add may weigh the residual per channel (Doge's) or mix it with the
    block's output by a learned gate (Ergo's)."""

    def __init__(self, args: ModelArgs, spec: LayerSpec, shared_blocks: list[SharedTransformer] | None = None):
        mixes = spec.mixer != "none"  # a layer of an MLP alone has none (Nemotron-H's MLP blocks)
        pre, post = args.pre_norms, args.sandwich_norms
        if spec.norms is not None:  # the layer's own layout (OLMo-Hybrid's recurrent layers)
            pre, post = spec.norms == "pre", spec.norms == "post"
        moe_layer = bool(args.num_experts) and spec.dense_mlp_size is None
        # gated: A.X-K2's, every layer; none on ModernBERT's first layer (``spec.input_norm``)
        self.input_layernorm = args.make_norm(gated=True) if pre and mixes and spec.input_norm else None
        # a recurrent layer's mixer (gated DeltaNet, Mamba2, short conv) in place of the attention, its cache entry a
        # state pool
        self.mixer = None if spec.mixer in ("attention", "none") else args.make_mixer(spec)
        if (self.mixer is not None and spec.attention_beside is None) or not mixes:
            self.self_attn = None
        elif args.attention_experts:
            self.self_attn = MixtureOfAttention(args, spec)
        elif spec.diff_lambda_init is not None:  # DiffLlama's
            self.self_attn = DiffAttention(args, spec)
        elif args.dynamic_mask_window:  # Doge's
            self.self_attn = DynamicMaskAttention(args, spec)
        elif args.v4_attention is not None:
            self.self_attn = V4Attention(args, spec)
        else:
            self.self_attn = Attention(args, spec) if args.mla is None else MLAttention(args, spec)
        # the MLP's input norm (Llama's name); none where it shares the attention's or the family has no input norms
        mlp_norm = spec.mlp and pre and not args.shared_input_norm
        self.post_attention_layernorm = args.make_norm(gated=moe_layer) if mlp_norm else None
        self.mlp = args.make_mlp(spec) if spec.mlp else None  # None: a token mixer alone (Nemotron-H's blocks)
        # GPT-1's norms of the residual stream after each add
        self.attn_residual_norm = args.make_norm() if args.residual_norms else None
        self.mlp_residual_norm = args.make_norm() if args.residual_norms else None
        self.attn_out_norm = args.make_norm() if post else None
        self.mlp_out_norm = args.make_norm() if post or (args.moe_out_norm and moe_layer) else None
        self.moe = args.make_moe_beside()  # Gemma 4's mixture beside the dense MLP, or None
        self.per_layer = LayerInput(args) if args.per_layer_input_size else None  # Gemma 4's and 3n's per-layer input
        self.altup = AltUp(args) if args.altup_streams else None  # Gemma 3n's streams
        rank = args.laurel_rank
        self.laurel = Laurel(args.hidden_size, rank, args.dtype, args.make_norm()) if rank else None  # Gemma 3n's
        # LongCat-Flash's mixture, run here on the MLP's normed input, its output added by the next layer
        self.shortcut_moe = args.make_moe(spec) if spec.moe_shortcut == "out" else None
        self.adds_shortcut = spec.moe_shortcut == "in"
        self.sparse = args.mla is not None and args.mla.indexer is not None  # DeepSeek Sparse Attention's selection
        self.layer_scalar = param((1,), args.dtype, (None,)) if args.layer_scalar else None
        residual = args.residual_weights  # Doge's weights on each block's residual
        self.input_residual = param((args.hidden_size,), args.dtype, ("embed",)) if residual else None
        self.post_attention_residual = param((args.hidden_size,), args.dtype, ("embed",)) if residual else None
        gates = args.residual_gates  # Ergo's gates on each block's residual add
        self.attention_residual_gate = ResidualGate(args.hidden_size) if gates else None
        self.feedforward_residual_gate = ResidualGate(args.hidden_size) if gates else None
        self.parallel_residual = args.parallel_residual
        self.residual_scale = args.residual_scale
        self.normed_residual = spec.normed_residual
        self.attention_beside = spec.attention_beside
        self.output_scale = spec.output_scale
        index = spec.shared_block
        self.shared_block = None if index is None else SharedBlockCall(args, shared_blocks[index])
        hyper = args.hyper_streams > 0  # Qwen4-Exp's or DeepSeek-V4's, around the mixer and around the MLP
        self.attn_hyper_connection = make_hyper_connection(args) if hyper else None
        self.mlp_hyper_connection = make_hyper_connection(args) if hyper else None

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        kv_pages: jax.Array,
        meta: AttentionMetadata,
        lora: LayerLoRA | None = None,
        per_layer_input: jax.Array | None = None,
        embeddings: jax.Array | None = None,
        carry: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """The layer's output, its cache entry, and what it hands the next layer: LongCat-Flash's mixture output
        ``[T, hidden]`` (added by the layer after), DeepSeek Sparse Attention's selection ``i32[T, index_topk]``
        (reused by a layer without an indexer), else None; ``carry``: the last layer's. ``lora``: the step's adapters
        (on the attention and a dense MLP, not a mixture of experts: ``jllm.lora.peft_files`` lets a family's adapters
        target only those); ``per_layer_input [T, width]``: this layer's own input (Gemma 4's PLE), added after its
        blocks, before its ``layer_scalar`` (a hash-routed layer's: the token ids ``[T]``). With AltUp (Gemma 3n)
        ``x`` is the streams ``[streams, T, hidden]``. ``embeddings``: the model's, which a Zamba2 hybrid layer's
        shared block reads."""
        if self.normed_residual is not None:  # MiniMax's (no LoRA: hybrid models refuse it)
            return *self._from_normed(x, positions, kv_pages, meta), None
        if self.attention_beside is not None:  # Falcon-H1's
            return *self._side_by_side(x, positions, kv_pages, meta), None
        if self.attn_hyper_connection is not None:  # Qwen4-Exp's, DeepSeek-V4's (no LoRA: peft_files serves neither)
            return *self._hyper(x, positions, kv_pages, meta, per_layer_input), None
        if self.shared_block is not None:  # Zamba2's hybrid layer: its entry the block's pages and the mixer's state
            pages, states = kv_pages
            added, pages = self.shared_block(x, embeddings, positions, pages, meta)
            h, states = self.mixer(x + added, self.input_layernorm, positions, states, meta)
            return x + h, (pages, states), None
        if self.altup is not None:  # Gemma 3n: the blocks on the active stream's prediction, every stream corrected
            predictions = self.altup.predict(x)
            h, kv_pages, _ = self._blocks(predictions[ACTIVE], positions, kv_pages, meta, lora)
            corrected = self.altup.correct(predictions, h)
            if self.per_layer is not None:  # added to every stream but the active one
                delta = self.per_layer.delta(self.altup.active_output(corrected), per_layer_input)
                corrected = corrected.at[1:].add(delta[None])
            return corrected, kv_pages, None
        x, kv_pages, carry = self._blocks(x, positions, kv_pages, meta, lora, carry)
        if self.per_layer is not None:
            x = self.per_layer(x, per_layer_input)
        x = x if self.layer_scalar is None else x * self.layer_scalar[...]
        return scaled(x, self.output_scale), kv_pages, carry  # RWKV's halving every rescale_every layers

    def _blocks(
        self,
        x: jax.Array,
        positions: jax.Array,
        kv_pages: jax.Array,
        meta: AttentionMetadata,
        lora: LayerLoRA | None,
        carry: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """The token mixer and the MLP over ``x [T, hidden]`` with their residuals (a LAuReL block's beside the
        attention: the two averaged, ``(x + attn + laurel(norm(x))) / sqrt(2)``), and the carry handed on:
        LongCat-Flash's shortcut mixture's output passed on or added, DeepSeek Sparse Attention's selection."""
        if self.mixer is None and self.self_attn is None:  # an MLP alone: its cache entry is an empty state
            return x + self._mlp(x, self.post_attention_layernorm, lora), kv_pages, None
        h, kv_pages, carry = self._mix((x, self.input_layernorm, positions, kv_pages, meta), lora, carry)
        if self.attn_residual_norm is not None:  # GPT-1's post-LN
            x = self.attn_residual_norm(x + h)
            return self.mlp_residual_norm(x + self._mlp(x, None, lora)), kv_pages, None
        h = self._scaled(h if self.attn_out_norm is None else self.attn_out_norm(h))
        if self.parallel_residual:
            shared = self.post_attention_layernorm is None
            mlp_norm = self.input_layernorm if shared else self.post_attention_layernorm
            return x + (self._mlp(x, mlp_norm, lora) + h), kv_pages, None
        if self.laurel is not None:
            laurel = self.laurel(self.input_layernorm(x))
            x = (x + h + laurel) / jnp.asarray(math.sqrt(2), x.dtype)
        else:
            x = _residual_add(x, h, self.input_residual, self.attention_residual_gate)
        if self.shortcut_moe is not None:
            carry = self.shortcut_moe(self.post_attention_layernorm(x))
        if self.mlp is not None:
            h = self._mlp(x, self.post_attention_layernorm, lora)
            x = _residual_add(x, h, self.post_attention_residual, self.feedforward_residual_gate)
        if self.adds_shortcut:
            x, carry = x + carry, None
        return x, kv_pages, carry

    def _mix(
        self, attn_args: tuple[Any, ...], lora: LayerLoRA | None, carry: jax.Array | None
    ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """The token mixer's output, its cache entry and the carry handed on (DeepSeek Sparse Attention's selection,
        or the one it reuses; else ``carry`` as it came)."""
        if self.mixer is not None:  # a recurrent layer (hybrid models take no LoRA: ``build`` refuses it)
            return *self.mixer(*attn_args), carry
        if self.sparse:
            return self.self_attn(*attn_args, carry)
        if isinstance(self.self_attn, MLAttention):  # MLA's attention takes no LoRA
            return *self.self_attn(*attn_args)[:2], carry
        return *(self.self_attn(*attn_args) if lora is None else self.self_attn(*attn_args, lora)), carry

    def _from_normed(
        self, x: jax.Array, positions: jax.Array, kv_pages: jax.Array, meta: AttentionMetadata
    ) -> tuple[jax.Array, jax.Array]:
        """MiniMax's layer: each block's residual is its normed input, ``h = norm(x); h * alpha + block(h) * beta``
        for the mixer, then for the MLP, each product rounded to the model's dtype before the sum, as torch's."""
        attn_alpha, attn_beta, mlp_alpha, mlp_beta = self.normed_residual
        h = self.input_layernorm(x)
        mixer = self.self_attn if self.mixer is None else self.mixer
        out, kv_pages = mixer(h, None, positions, kv_pages, meta)
        x = scaled(h, attn_alpha) + scaled(out, attn_beta)
        h = self.post_attention_layernorm(x)
        return scaled(h, mlp_alpha) + scaled(self._mlp(h, None), mlp_beta), kv_pages

    def _hyper(
        self,
        x: jax.Array,
        positions: jax.Array,
        kv_pages: Any,
        meta: AttentionMetadata,
        token_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """Qwen4-Exp's, DeepSeek-V4's and Hy4's layer over the streams ``x [T, streams, hidden]``: the mixer, then the
        MLP, each on its hyper-connection's mix (through the block's norm, where the family has one: DeepSeek-V4, Hy4)
        and added back into the streams; ``token_ids [T]``: a hash-routed mixture's."""
        mixer = self.self_attn if self.mixer is None else self.mixer
        h, weights = self.attn_hyper_connection(x)
        out, kv_pages = mixer(h, self.input_layernorm, positions, kv_pages, meta)[:2]  # MLA's: its selection too
        x = self.attn_hyper_connection.add(x, out, weights)
        h, weights = self.mlp_hyper_connection(x)
        norm = self.post_attention_layernorm
        out = self._mlp(h, norm) if token_ids is None else self.mlp(norm(h), token_ids)
        return self.mlp_hyper_connection.add(x, out, weights), kv_pages

    def _side_by_side(
        self, x: jax.Array, positions: jax.Array, kv_pages: tuple[jax.Array, Any], meta: AttentionMetadata
    ) -> tuple[jax.Array, tuple[jax.Array, Any]]:
        """Falcon-H1's layer: attention and the mixer over the same normed input, each's input and output times its
        multipliers, their sum into the residual, then the MLP; its entry ``(pages, state pool)``."""
        attn_in, attn_out, mixer_in, mixer_out = self.attention_beside
        pages, states = kv_pages
        h = self.input_layernorm(x)
        mixed, states = self.mixer(scaled(h, mixer_in), None, positions, states, meta)
        attended, pages = self.self_attn(scaled(h, attn_in), None, positions, pages, meta)
        x = x + (scaled(mixed, mixer_out) + scaled(attended, attn_out))
        return x + self._mlp(x, self.post_attention_layernorm), (pages, states)

    def _mlp(self, x: jax.Array, norm: nnx.Module, lora: LayerLoRA | None = None) -> jax.Array:
        """The MLP over ``norm(x)``: the dense one takes the norm itself (``normed_linear``), the router of a mixture
        of experts reads the normed states; a mixture beside the MLP (Gemma 4's) reads ``x`` itself."""
        h = self.mlp(x, norm, lora) if isinstance(self.mlp, MLP) else self.mlp(x if norm is None else norm(x))
        h = h if self.moe is None else self.moe(x, h)
        return self._scaled(h if self.mlp_out_norm is None else self.mlp_out_norm(h))

    def _scaled(self, h: jax.Array) -> jax.Array:
        """A block's output as the residual adds it: times ``residual_scale`` where the family has one (in float32,
        as torch multiplies a tensor by a Python float, the scale not rounded to a bfloat16)."""
        return h if self.residual_scale is None else scaled(h, self.residual_scale)


def _residual_add(x: jax.Array, h: jax.Array, weight: nnx.Param | None, gate: ResidualGate | None) -> jax.Array:
    """A block's output ``h`` added to the residual ``x``: ``x + h``, the residual times its learned weight per
    channel first (Doge's), or the two mixed by a learned gate (Ergo's)."""
    if gate is not None:
        return gate(h, x)
    return (x if weight is None else x * weight[...]) + h


@functools.partial(jax.jit, static_argnums=0)
def _decoder_layer(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    x: jax.Array,
    positions: jax.Array,
    kv_pages: jax.Array,
    meta: Any,
    lora: LayerLoRA | None = None,
    per_layer_input: jax.Array | None = None,
    embeddings: jax.Array | None = None,
    carry: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """One layer as a pure function: layers of one kind share their graphdef and shapes, so JAX traces each kind
    once per step program. Tracing each of 30 layers (and its attention) anew took most of a warm start (CPU,
    2026-11-26)."""
    return nnx.merge(graphdef, state)(x, positions, kv_pages, meta, lora, per_layer_input, embeddings, carry)


class CausalLM(nnx.Module):
    """The decoder's layers over the embeddings, then the final norm; a looped model's runs of a stored layer share
    its module (``jllm.models.looped``), Dory's layers are nGPT's (``jllm.models.ngpt``)."""

    def __init__(self, args: ModelArgs):
        self.embed_tokens = Embedding(args.vocab_size, args.hidden_size, args.dtype, args.embed_scale)
        self.embed_positions = (
            Embedding(
                args.max_position_embeddings + args.position_offset, args.hidden_size, args.dtype, axes=(None, "embed")
            )
            if args.learned_positions
            else None
        )
        self.embed_norm = args.make_norm() if args.embed_norm else None
        self.per_layer_inputs = PerLayerInputs(args) if args.per_layer_input_size else None  # Gemma 4's and 3n's PLE
        self.altup_streams = AltUpStreams(args) if args.altup_streams else None  # Gemma 3n's
        blocks = _shared_blocks(args)  # Zamba2's shared transformer blocks
        layers: list[DecoderLayer | NGPTLayer] = []
        for u, spec in enumerate(args.layers):  # a looped model's later invocations of a layer reuse its module
            owner = u if args.loop is None else args.loop.owner(u)
            if owner != u:
                layers.append(layers[owner])
            else:  # Dory's nGPT layers, or the decoder's
                layers.append(NGPTLayer(args, spec) if args.ngpt else DecoderLayer(args, spec, blocks))
        self.layers = nnx.List(layers)
        self.looped = None if args.loop is None else Looped(args.loop, args.hidden_size, args.dtype)
        # the hyper-connection streams mixed into one state: in place of the final norm (Qwen4-Exp), or before it
        # (DeepSeek-V4)
        hyper = args.hyper_streams > 0
        self.hyper_connection_mixer = make_hyper_connection(args, final=True) if hyper else None
        # GPT-1's last layer ends normed; nGPT's final norm is an L2 norm
        no_norm = (hyper and args.hyper_sinkhorn is None) or args.residual_norms
        self.norm = None if no_norm else L2Norm() if args.ngpt else args.make_norm()
        # A classifier has no LM head: its logits programs (never run, jllm.classify refuses generation) read the
        # embedding; its ``score`` head, replicated, is read on the host.
        self.lm_head = (
            None
            if args.tie_word_embeddings or args.num_labels is not None
            else ScaledLMHead(args.hidden_size, args.vocab_size, args.dtype, args.ngpt)
            if args.ngpt
            else Linear(
                args.hidden_size,
                args.head_vocab_size or args.vocab_size,
                ("embed", "vocab"),
                args.dtype,
                bias=args.lm_head_bias,
            )
        )
        self.score = (
            None if args.num_labels is None else Linear(args.hidden_size, args.num_labels, (None, None), args.dtype)
        )
        # ModernBERT's prediction head before the LM head, and its tied head's bias
        act, bias, dt = args.head_transform, args.head_transform_bias, args.dtype
        self.head_transform = None if act is None else HeadTransform(args.hidden_size, act, bias, args.make_norm(), dt)
        tied_bias = args.lm_head_bias and self.lm_head is None and args.num_labels is None
        self.head_bias = HeadBias(args.vocab_size, dt) if tied_bias else None
        self.args = args

    def __call__(
        self,
        input_ids: jax.Array,  # [T] int32
        positions: jax.Array,  # [T] int32
        # per layer [planes, num_kv_heads, num_pages, page_size, kv_pool_head_dim (zero-padded to the kernels' width:
        # attention.resolve_pool)], or a recurrent layer's state pool
        kv_caches: list[Any],
        meta: AttentionMetadata,
        lora: LoRABatch | None = None,
    ) -> tuple[jax.Array, list[Any]]:
        """Final hidden states ``[T, hidden]`` (normed) and the updated pool; ``lora``: each token's adapter."""
        states, new_caches = self._residual_stream(input_ids, positions, kv_caches, meta, lora)
        return self._final(states[-1]), new_caches

    def hidden_states(
        self, input_ids: jax.Array, positions: jax.Array, kv_caches: list[jax.Array], meta: AttentionMetadata
    ) -> list[jax.Array]:
        """transformers' ``output_hidden_states``: ``num_layers + 1`` arrays ``[T, hidden]``, the embeddings, then
        each layer's output, the last one after the final norm (``jllm.pooling`` reads them; the pool is scratch)."""
        states, _ = self._residual_stream(input_ids, positions, kv_caches, meta)
        return [*states[:-1], self._final(states[-1])]

    def _final(self, x: jax.Array) -> jax.Array:
        """The last layer's output normed (AltUp's streams collapsed to one first: Gemma 3n; the hyper-connection
        streams mixed into one: DeepSeek-V4), or Qwen4-Exp's streams mixed into one."""
        if self.hyper_connection_mixer is not None:
            mixed = self.hyper_connection_mixer(x)[0]
            return mixed if self.norm is None else self.norm(mixed)
        if self.norm is None:  # GPT-1's: its last layer ends normed
            return x
        return self.norm(x if self.altup_streams is None else self.altup_streams.collapse(x))

    def _residual_stream(
        self,
        input_ids: jax.Array,
        positions: jax.Array,
        kv_caches: list[jax.Array],
        meta: AttentionMetadata,
        lora: LoRABatch | None = None,
    ) -> tuple[list[jax.Array], list[jax.Array]]:
        """The residual stream before the first layer and after each (not normed; AltUp's ``[streams, T, hidden]``
        with Gemma 3n; the hyper-connections' ``[T, streams, hidden]`` with Qwen4-Exp), and the updated pool. A layer
        reading another's K/V (``LayerSpec.kv_source``) is given that layer's updated pages; its own entry (empty)
        passes through."""
        meta = with_kernel_buffers(meta, input_ids.shape[0])
        x = self.embed_tokens(input_ids)
        if self.embed_positions is not None:
            x = x + self.embed_positions(positions + self.args.position_offset)
        if self.args.sinusoidal_positions:
            table = sinusoidal_positions(positions + self.args.position_offset, x.shape[-1], self.args.sinusoid_shift)
            x = x + table.astype(x.dtype)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        per_layer = None if self.per_layer_inputs is None else self.per_layer_inputs(input_ids, x)  # [T, layers, w]
        states = [x if self.altup_streams is None else self.altup_streams.expand(x)]
        if self.args.hyper_streams:  # every hyper-connection stream starts as the embedding
            states = [jnp.broadcast_to(x[:, None], (x.shape[0], self.args.hyper_streams, x.shape[1]))]
        if self.looped is not None:  # the invocations in the family's order, the streams mixed between them
            return self._looped(states[0], positions, kv_caches, meta)
        new_caches = []
        carry = None  # a layer's to the next: LongCat-Flash's mixture output, DeepSeek Sparse Attention's selection
        for i, (layer, spec, kv_pages) in enumerate(zip(self.layers, self.args.layers, kv_caches, strict=True)):
            layer_lora = None if lora is None else lora.layer(i, x.dtype)
            pages = kv_pages if spec.kv_source is None else new_caches[spec.kv_source]
            extra = None if per_layer is None else per_layer[:, i]
            extra = input_ids if spec.hash_routed else extra  # DeepSeek-V4's hash-routed mixture reads the ids
            embeddings = None if layer.shared_block is None else states[0]  # Zamba2's shared blocks read them
            x, pages, carry = _decoder_layer(
                *nnx.split(layer), states[-1], positions, pages, meta, layer_lora, extra, embeddings, carry
            )
            states.append(x)
            new_caches.append(pages if spec.kv_source is None else kv_pages)
        return states, new_caches

    def _looped(
        self, x: jax.Array, positions: jax.Array, kv_caches: list[Any], meta: AttentionMetadata
    ) -> tuple[list[jax.Array], list[Any]]:
        """A looped model's stream: the embeddings and the last invocation's output (no per-layer states: the
        encoder refuses looped models), and every invocation's updated pages."""
        new_caches = list(kv_caches)

        def run(u: int, h: jax.Array) -> jax.Array:
            h, new_caches[u], _ = _decoder_layer(*nnx.split(self.layers[u]), h, positions, kv_caches[u], meta)
            return h

        return [x, self.looped(run, x)], new_caches

    def compute_logits(self, hidden: jax.Array) -> jax.Array:
        """``[N, hidden] -> [N, vocab]`` float32 logits (divided and soft-capped where the family says so)."""
        return self.logits_head()(hidden)

    def logits_head(self) -> LogitsHead:
        """A view of the parameters logits need (shared, not copied)."""
        a = self.args
        return LogitsHead(
            self.embed_tokens,
            self.lm_head,
            a.logits_divisor,
            a.final_softcap,
            a.vocab_size,
            self.head_transform,
            self.head_bias,
        )


def _shared_blocks(args: ModelArgs) -> list[SharedTransformer]:
    """Zamba2's shared transformer blocks (none for other models), each built once; the hybrid layers invoking one
    hold the same module, so its weights exist once. Their attention rotates as the first hybrid layer says."""
    if args.shared_blocks is None:
        return []
    spec = next(spec for spec in args.layers if spec.shared_block is not None)
    width = 2 * args.hidden_size
    return [SharedTransformer(args, Attention(args, spec, width)) for _ in range(args.shared_blocks.num_blocks)]


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
        vocab_size: int | None = None,
        transform: HeadTransform | None = None,
        tied_bias: HeadBias | None = None,
    ):
        """``transform``: what the final states go through first (ModernBERT's prediction head); ``tied_bias``: the
        bias on a tied head's logits."""
        self.transform = transform
        self.tied_bias = tied_bias
        self.embed_tokens = embed_tokens if lm_head is None else None
        self.lm_head = lm_head
        self.logits_divisor = logits_divisor
        self.final_softcap = final_softcap
        self.vocab_size = vocab_size  # the logits' width: a pruned head's (``ModelArgs.head_vocab_size``) padded to it

    def __call__(self, hidden: jax.Array) -> jax.Array:
        """``[N, hidden] -> [N, vocab]`` float32 logits."""
        hidden = hidden if self.transform is None else self.transform(hidden)
        logits = self.embed_tokens.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
        logits = logits if self.tied_bias is None else logits + self.tied_bias.bias[...]
        logits = logits.astype(jnp.float32)
        if self.logits_divisor is not None:
            logits = logits / self.logits_divisor
        cap = self.final_softcap
        logits = logits if cap is None else cap * jnp.tanh(logits / cap)
        pruned = (self.vocab_size or logits.shape[-1]) - logits.shape[-1]  # ids past a pruned head: never produced
        return logits if not pruned else jnp.pad(logits, ((0, 0), (0, pruned)), constant_values=-jnp.inf)

"""Zamba2's shared transformer blocks (Zyphra): ``num_mem_blocks`` attention + MLP blocks whose weights every hybrid
layer of the model reuses, the ``i``-th hybrid layer invoking block ``i % num_mem_blocks`` (Zamba v1: one block, no
adapters).

A hybrid layer (``LayerSpec.shared_block``) runs its block over the residual stream beside the model's embeddings,
``concat(x, embeddings)`` (``2 hidden`` wide), through an RMSNorm, attention whose heads are ``2 hidden / heads``
wide (scores scaled by ``(head_dim / 2) ** -0.5``), an RMSNorm and a gated MLP, with no residual of their own; its
own ``linear`` maps the result to what is added to the layer's Mamba2 input (before the mixer's norm, not to the
residual: ``x + mamba(norm(x + linear(block(x, embeddings))))``, transformers' ``Zamba2HybridLayer``). Each
invocation has its own adapters (transformers' ``*_adapter_list`` entries, LoRA without a scale): a low-rank term
added to gate/up, and to q, k and v with ``use_shared_attention_adapter``. They reach the shared ``Attention`` and
``MLP`` through the hook serving LoRA uses (``delta``), so neither is copied here.

The block's attention is a distinct attention layer at each invocation (its own inputs), so each hybrid layer keeps
its own KV pages beside its Mamba2 state: its cache entry is ``(pages, state pool)`` (``KVCacheSpec.with_pages``).
The weights are shared as one NNX module referenced from every layer that invokes it: the model's state holds them
once, under the first hybrid layer that invokes the block (where the checkpoint stores them too).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.models.layers import MLP, Linear
from jllm.parallel import KV_HEADS

if TYPE_CHECKING:
    from jllm.attention import AttentionMetadata
    from jllm.models.model_args import ModelArgs


@dataclasses.dataclass(frozen=True)
class SharedBlockSpec:
    """Zamba2Config's shared-block settings."""

    num_blocks: int  # num_mem_blocks
    adapter_rank: int  # 0: no adapters (Zamba v1's one block)
    attention_adapters: bool  # use_shared_attention_adapter: adapters on q, k and v too (on gate/up with a rank)

    def __post_init__(self) -> None:
        if self.num_blocks < 1 or self.adapter_rank < 0 or (self.attention_adapters and not self.adapter_rank):
            raise ValueError(
                f"Zamba2 num_mem_blocks={self.num_blocks} must be at least 1 and adapter_rank={self.adapter_rank} at "
                "least 1 with adapters (0: none, Zamba v1's)"
            )


class SharedTransformer(nnx.Module):
    """transformers' ``Zamba2AttentionDecoderLayer``: the weights one shared block holds. ``attention`` is the
    decoder's ``Attention`` reading ``2 hidden`` channels (built by the decoder, which owns that class)."""

    def __init__(self, args: ModelArgs, attention: nnx.Module):
        self.input_layernorm = args.make_norm(2 * args.hidden_size)
        self.self_attn = attention
        self.pre_ff_layernorm = args.make_norm()
        self.feed_forward = MLP(args.hidden_size, args.intermediate_size, args.dtype, args.mlp_act, True, args.mlp_bias)

    def __call__(
        self,
        x: jax.Array,
        embeddings: jax.Array,
        positions: jax.Array,
        pages: jax.Array,
        meta: AttentionMetadata,
        adapters: SharedBlockCall,
    ) -> tuple[jax.Array, jax.Array]:
        """``x``, ``embeddings`` ``[T, hidden]`` -> the block's output ``[T, hidden]`` and the layer's pages."""
        h = jnp.concatenate([x, embeddings], axis=-1)  # [T, 2 hidden]
        h, pages = self.self_attn(h, self.input_layernorm, positions, pages, meta, adapters)
        return self.feed_forward(h, self.pre_ff_layernorm, adapters), pages


class LowRank(nnx.Module):
    """One adapter: ``x @ lora_a @ lora_b`` (transformers' ``nn.Sequential`` of two bias-free linears), its output
    split as the projection it adds to (``axes``)."""

    def __init__(self, dim: int, rank: int, out: int, axes: tuple[str | None, ...], dtype: jnp.dtype):
        self.lora_a = Linear(dim, rank, ("embed", None), dtype)
        self.lora_b = Linear(rank, out, (None, *axes), dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.lora_b(self.lora_a(x))


class GateUpAdapter(nnx.Module):
    """The MLP's adapter, its output ``[2, mlp]`` as the fused ``gate_up_proj``'s (so read and split as it is)."""

    def __init__(self, dim: int, rank: int, hidden: int, dtype: jnp.dtype):
        self.lora_a = Linear(dim, rank, ("embed", None), dtype)
        self.gate_up_proj = Linear(rank, (2, hidden), (None, None, "mlp"), dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.gate_up_proj(self.lora_a(x))


class SharedBlockCall(nnx.Module):
    """One hybrid layer's invocation of a shared block: the block (shared), this invocation's adapters and its
    ``linear``. ``__call__``: what the layer adds to its Mamba2 input."""

    def __init__(self, args: ModelArgs, block: SharedTransformer):
        d, dt, spec = args.hidden_size, args.dtype, args.shared_blocks
        self.shared_transformer = block
        hd, rank = args.head_dim, spec.adapter_rank
        if spec.attention_adapters:  # each reads the block's normed 2 hidden channels
            self.q_adapter = LowRank(2 * d, rank, args.num_heads * hd, ("q_heads",), dt)
            self.k_adapter = LowRank(2 * d, rank, args.num_kv_heads * hd, (KV_HEADS,), dt)
            self.v_adapter = LowRank(2 * d, rank, args.num_kv_heads * hd, (KV_HEADS,), dt)
        else:
            self.q_adapter = self.k_adapter = self.v_adapter = None
        self.gate_up_adapter = GateUpAdapter(d, rank, args.intermediate_size, dt) if rank else None
        self.linear = Linear(d, d, ("embed", None), dt)
        self.group, self.head_dim = args.num_heads // args.num_kv_heads, hd

    def __call__(
        self, x: jax.Array, embeddings: jax.Array, positions: jax.Array, pages: jax.Array, meta: AttentionMetadata
    ) -> tuple[jax.Array, jax.Array]:
        y, pages = self.shared_transformer(x, embeddings, positions, pages, meta, self)
        return self.linear(y), pages

    def delta(self, target: str, x: jax.Array) -> jax.Array | int:
        """The LoRA hook the shared ``Attention`` and ``MLP`` call (``jllm.models.lora.LayerLoRA.delta``'s shape):
        ``qkv`` ``[T, kv_heads, group + 2, head_dim]``, ``gate_up`` ``[T, 2, mlp]``; nothing on ``o`` or
        ``down``."""
        if target == "gate_up":
            return 0 if self.gate_up_adapter is None else self.gate_up_adapter(x)
        if target != "qkv" or self.q_adapter is None:
            return 0
        t, hd = x.shape[0], self.head_dim
        q = self.q_adapter(x).reshape(t, -1, self.group, hd)  # [T, kv_heads, group, head_dim]
        k, v = (adapter(x).reshape(t, -1, 1, hd) for adapter in (self.k_adapter, self.v_adapter))
        return jnp.concatenate([q, k, v], axis=2)

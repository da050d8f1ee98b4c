"""DeepSeek Sparse Attention's lightning indexer (DeepSeek-V3.2, GLM-5): which earlier tokens each query attends to.

transformers' ``DeepseekV32Indexer``: a token's one indexer key (``wk``, a LayerNorm, the rotary on its first
``qk_rope_head_dim`` channels) is kept for every later query in a pool of its own beside the layer's latent pool
(``jllm.kv_cache``); a query's ``index_n_heads`` heads come from the attention's low-rank query residual (``wq_b``),
roped alike, and each head's weight from the token itself (``weights_proj``, in float32 as transformers keeps it).
A query scores each key it may see ``sum_h w_h * relu(q_h . k / sqrt(index_head_dim))`` and keeps the
``index_topk`` best (``jllm.attention.index_topk``); the latent attention then reads those alone
(``jllm.attention.sparse_latent_attention``). transformers' Hadamard rotation and FP8 scoring of the released
kernels are skipped, as there: the rotation keeps dot products, and FP8 is a precision shortcut.

Its weights are small and replicated under tensor parallelism (vLLM's ``ReplicatedLinear``s), so every device
selects the same tokens from its own copy of the key pool, and the attention's query heads split as without it.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from jllm.attention import AttentionMetadata, index_topk
from jllm.models.layers import LayerNorm, Linear
from jllm.models.rope import Rope

if TYPE_CHECKING:
    from jllm.models.model_args import ModelArgs

K_NORM_EPS = 1e-6  # transformers builds the indexer's k_norm as nn.LayerNorm(index_head_dim, eps=1e-6)


@dataclasses.dataclass(frozen=True)
class IndexerSpec:
    """The indexer's sizes (the config's ``index_n_heads``, ``index_head_dim``, ``index_topk``) and its rotary: the
    attention's frequencies on the first ``qk_rope_head_dim`` channels, half-split pairs (DeepSeek-V3.2) or
    interleaved ones (GLM-5)."""

    num_heads: int
    head_dim: int
    topk: int
    rope: Rope

    def __post_init__(self) -> None:
        for name in ("num_heads", "head_dim", "topk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"index_{name.replace('num_heads', 'n_heads')}={value!r} must be a positive int")
        if self.rope.rotary_dim > self.head_dim:
            raise ValueError(
                f"index_head_dim={self.head_dim} must hold the qk_rope_head_dim={self.rope.rotary_dim} channels the "
                "indexer rotates"
            )


class Indexer(nnx.Module):
    """transformers' ``DeepseekV32Indexer`` (module names as the checkpoint's)."""

    def __init__(self, args: ModelArgs, spec: IndexerSpec):
        d, dt = args.hidden_size, args.dtype
        self.wq_b = Linear(args.mla.q_lora_rank, spec.num_heads * spec.head_dim, (None, None), dt)
        self.wk = Linear(d, spec.head_dim, ("embed", None), dt)
        self.k_norm = LayerNorm(spec.head_dim, K_NORM_EPS, dt)
        self.weights_proj = Linear(d, spec.num_heads, ("embed", None), jnp.float32)  # float32, as transformers keeps it
        self.spec = spec

    def __call__(
        self,
        x: jax.Array,  # [T, hidden], the attention's normed input
        q_resid: jax.Array,  # [T, q_lora_rank], the attention's normed low-rank query
        positions: jax.Array,  # [T]
        index_pages: jax.Array,  # [1, num_kv_heads, num_pages, page_size, index_head_dim]
        meta: AttentionMetadata,
    ) -> tuple[jax.Array, jax.Array]:
        """Each token's selected key columns ``i32[T, K]`` (-1 for none) and the key pool with its keys written."""
        s, t = self.spec, x.shape[0]
        q = s.rope.apply(self.wq_b(q_resid).reshape(t, s.num_heads, s.head_dim), positions)  # [T, Hi, Di]
        k = s.rope.apply(self.k_norm(self.wk(x))[:, None], positions)  # [T, 1, Di]
        k = jnp.broadcast_to(k, (t, index_pages.shape[1], s.head_dim))  # the copies tensor parallelism keeps
        weights = self.weights_proj(x.astype(jnp.float32)) * s.num_heads**-0.5  # f32[T, Hi]
        return index_topk(q, k, weights, index_pages, meta, topk=s.topk, sm_scale=s.head_dim**-0.5)

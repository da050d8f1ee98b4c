"""Zamba2's shared blocks as the model holds them, without weights: each block's weights once in the model's state
(under the first hybrid layer that invokes it, where the checkpoint keeps them), every invocation's adapters its
own; each hybrid layer's cache entry its own pages beside its Mamba2 state; tensor parallelism splitting the shared
attention by heads, the MLP and its adapter by columns. Logits, chunked prefill and greedy runs against transformers
are tests/test_families.py's ``zamba2`` rows."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jllm.kv_cache import KVCacheSpec, allocate_kv_pool
from jllm.loader import abstract_model

# layers 1, 2 and 4 hybrid: blocks 0, 1, 0; 4 attention heads of 32 (over 2 x 64 channels), 8 Mamba2 heads
CONFIG = dict(
    architectures=["Zamba2ForCausalLM"],
    vocab_size=256,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=5,
    layers_block_type=["mamba", "hybrid", "hybrid", "mamba", "hybrid"],
    num_attention_heads=4,
    n_mamba_heads=8,
    mamba_d_state=16,
    num_mem_blocks=2,
    use_shared_attention_adapter=True,
    adapter_rank=8,
)


def test_shared_blocks_are_held_once_and_each_invocation_has_its_own_adapters():
    _, state, args, _ = abstract_model(CONFIG, jnp.float32)
    paths = ["/".join(map(str, path)) for path, _ in nnx.to_flat_state(state)]
    shared = {p.split("/shared_transformer/")[0] for p in paths if "/shared_transformer/" in p}
    assert shared == {"layers/1/shared_block", "layers/2/shared_block"}  # blocks 0 and 1, where first invoked
    adapters = {p.split("/shared_block/")[0] for p in paths if "_adapter/" in p}
    assert adapters == {"layers/1", "layers/2", "layers/4"}
    assert [spec.shared_block for spec in args.layers] == [None, 0, 1, None, 0]


def test_hybrid_layers_keep_pages_beside_their_mamba2_state():
    args = abstract_model(CONFIG, jnp.float32)[2]
    spec = KVCacheSpec.for_model(args, page_size=4, dtype=jnp.float32)
    assert (spec.num_layers, spec.with_pages, spec.num_kv_heads, spec.head_dim) == (3, (1, 2, 4), 4, 32)
    pool = allocate_kv_pool(spec, num_pages=3, num_state_slots=2)
    for i, entry in enumerate(pool):
        pages, states = entry if i in (1, 2, 4) else (None, entry)
        assert pages is None or pages.shape == (2, 4, 3, 4, 32)
        assert [x.shape for x in states] == [(2, 128, 3), (2, 32, 3), (2, 8, 16, 16)]  # conv x, conv B/C, SSM


def test_tensor_parallelism_splits_the_shared_block_by_heads_and_columns():
    _, state, _, _ = abstract_model(CONFIG, jnp.float32, tensor_parallel_size=4)
    axes = {
        "/".join(map(str, p)): v.axes
        for p, v in nnx.to_flat_state(state)
        if "layers/1/shared_block" in "/".join(map(str, p))
    }
    block = "layers/1/shared_block/"
    assert axes[block + "shared_transformer/self_attn/qkv_proj/kernel"][1] == "kv_heads"
    assert axes[block + "shared_transformer/feed_forward/gate_up_proj/kernel"][-1] == "mlp"
    assert axes[block + "q_adapter/lora_b/kernel"] == (None, "q_heads")
    assert axes[block + "k_adapter/lora_b/kernel"] == (None, "kv_heads")
    assert axes[block + "gate_up_adapter/gate_up_proj/kernel"] == (None, None, "mlp")
    assert np.all([a is None or a == "embed" for a in axes[block + "q_adapter/lora_a/kernel"]])

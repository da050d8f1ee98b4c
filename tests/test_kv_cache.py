"""KV pool sizing and allocation: page bytes, budgets, device-memory sizing and zero-filled sharded arrays."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jllm.kv_cache import (
    KVCacheSpec,
    allocate_kv_pool,
    attention_free_pages,
    num_pages_for_budget,
    num_pages_from_device_memory,
)
from jllm.models.registry import build_args

SPEC = KVCacheSpec(num_layers=4, num_kv_heads=2, head_dim=64, page_size=16, dtype="bfloat16")
PAGE = 4 * 2 * 2 * 16 * 64 * 2  # layers x K/V x heads x tokens x head_dim x bytes
# DeepSeek-V3's config.json (the keys its attention and pool read, and what its family reader checks)
DEEPSEEK_V3 = dict(
    architectures=["DeepseekV3ForCausalLM"],
    vocab_size=129280,
    hidden_size=7168,
    intermediate_size=18432,
    moe_intermediate_size=2048,
    num_hidden_layers=61,
    num_attention_heads=128,
    num_key_value_heads=128,
    n_shared_experts=1,
    n_routed_experts=256,
    num_experts_per_tok=8,
    n_group=8,
    topk_group=4,
    first_k_dense_replace=3,
    kv_lora_rank=512,
    q_lora_rank=1536,
    qk_rope_head_dim=64,
    qk_nope_head_dim=128,
    v_head_dim=128,
    max_position_embeddings=163840,
    rms_norm_eps=1e-6,
    rope_theta=10000,
)


@dataclass
class FakeDevice:
    """Stands in for a GPU: only what sizing reads."""

    stats: dict | None
    platform: str = "gpu"

    def memory_stats(self) -> dict | None:
        return self.stats


def test_spec_counts_bytes_per_page_over_all_layers_and_normalises_dtype() -> None:
    assert SPEC.bytes_per_page == PAGE
    assert SPEC.dtype == jnp.dtype(jnp.bfloat16)
    assert KVCacheSpec(1, 1, 8, 4, jnp.float32).bytes_per_page == 2 * 8 * 4 * 4
    assert SPEC.layer_shape(7) == (2, 2, 7, 16, 64)


def test_deepseek_v3_latent_pool_holds_one_576_wide_row_a_token_so_a_budget_holds_twice_the_pages() -> None:
    """Multi-head latent attention's pool stores ``[c_kv (512) || k_pe (64)]`` once per token and layer, as vLLM's
    MLA cache does: 1,152 bytes in bf16 against 2,304 when the row was written as K and again as V, so a 16 GiB
    budget holds 15,279 pages of 16 tokens instead of 7,639."""
    _, args = build_args(DEEPSEEK_V3, "bfloat16")
    latent = KVCacheSpec.for_model(args, 16, "bfloat16")
    assert latent.latent and latent.layer_shape(5) == (1, 1, 5, 16, 576)
    as_k_and_v = dataclasses.replace(latent, latent=False)  # the layout before: the row as K and as V
    tokens = 61 * 16  # layers x tokens a page
    assert [spec.bytes_per_page // tokens for spec in (latent, as_k_and_v)] == [576 * 2, 2 * 576 * 2]
    budget = 16 << 30
    assert [num_pages_for_budget(spec, budget) for spec in (latent, as_k_and_v)] == [15279, 7639]
    pool = allocate_kv_pool(dataclasses.replace(SPEC, latent=True), num_pages=3)
    assert [layer.shape for layer in pool] == [(1, 2, 3, 16, 64)] * SPEC.num_layers
    with pytest.raises(ValueError, match="x one latent row in bfloat16"):
        num_pages_for_budget(latent, latent.bytes_per_page)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"page_size": 0}, "page_size"), ({"num_kv_heads": -1}, "num_kv_heads"), ({"dtype": "int8"}, "floating")],
)
def test_spec_rejects_bad_fields(kwargs: dict, message: str) -> None:
    fields = dict(num_layers=2, num_kv_heads=2, head_dim=64, page_size=16, dtype="bfloat16") | kwargs
    with pytest.raises(ValueError, match=message):
        KVCacheSpec(**fields)


def test_budget_gives_whole_pages() -> None:
    assert num_pages_for_budget(SPEC, 10 * PAGE) == 10
    assert num_pages_for_budget(SPEC, 10 * PAGE + PAGE - 1) == 10


@pytest.mark.parametrize("budget", [0, PAGE, 2 * PAGE - 1, -5])
def test_too_small_budget_says_how_much_is_needed(budget: int) -> None:
    with pytest.raises(ValueError, match=f"at least 2 .*>= {2 * PAGE:,} bytes"):
        num_pages_for_budget(SPEC, budget)


def test_cpu_has_no_memory_stats_so_sizing_from_device_memory_asks_for_a_budget() -> None:
    with pytest.raises(RuntimeError, match="explicit number of pages or a KV byte budget"):
        num_pages_from_device_memory(SPEC, 0.9, params_bytes=0, devices=[FakeDevice(None, "cpu")])


def test_device_memory_sizing_takes_off_what_is_in_use_or_the_weights_whichever_is_larger() -> None:
    gpu = FakeDevice({"bytes_limit": 1000 * PAGE, "bytes_in_use": 100 * PAGE})
    # 0.5 * 1000 pages usable, 100 in use -> 400 pages.
    assert num_pages_from_device_memory(SPEC, 0.5, params_bytes=0, devices=[gpu]) == 400
    # Weights not loaded yet (bytes_in_use below them): they are reserved instead.
    assert num_pages_from_device_memory(SPEC, 0.5, params_bytes=300 * PAGE, devices=[gpu]) == 200


def test_device_memory_sizing_uses_the_tightest_device_and_counts_head_shards() -> None:
    roomy = FakeDevice({"bytes_limit": 1000 * PAGE, "bytes_in_use": 0})
    tight = FakeDevice({"bytes_limit": 1000 * PAGE, "bytes_in_use": 600 * PAGE})
    assert num_pages_from_device_memory(SPEC, 0.9, params_bytes=0, devices=[roomy, tight]) == 300
    # Two devices split every page's heads, so each page costs each device half.
    assert num_pages_from_device_memory(SPEC, 0.9, params_bytes=0, devices=[roomy, tight], kv_shards=2) == 600


def test_device_memory_sizing_rejects_bad_utilisation_and_full_devices() -> None:
    gpu = FakeDevice({"bytes_limit": 1000 * PAGE, "bytes_in_use": 0})
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        num_pages_from_device_memory(SPEC, 1.5, params_bytes=0, devices=[gpu])
    with pytest.raises(ValueError, match="no room for the KV pool"):
        num_pages_from_device_memory(SPEC, 0.5, params_bytes=499 * PAGE, devices=[gpu])


def test_pool_is_one_zero_filled_array_per_layer() -> None:
    pool = allocate_kv_pool(SPEC, num_pages=5)
    assert len(pool) == SPEC.num_layers
    for layer in pool:
        assert layer.shape == (2, 2, 5, 16, 64)
        assert layer.dtype == jnp.bfloat16
        assert not np.any(np.asarray(layer.astype(jnp.float32)))
    assert len({layer.unsafe_buffer_pointer() for layer in pool}) == SPEC.num_layers, "layers must not share memory"


def test_pool_is_created_with_the_given_sharding() -> None:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    pool = allocate_kv_pool(SPEC, num_pages=3, sharding=sharding)
    assert all(layer.sharding == sharding for layer in pool)


def test_attention_free_model_holds_state_pools_alone_and_pages_that_store_nothing() -> None:
    """Mamba (no attention): every layer a state pool, pages of no bytes, as many as let every sequence reach
    max_model_len once the state pools fit the budget."""
    config = dict(
        architectures=["MambaForCausalLM"], vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=3
    )
    args = build_args(config, jnp.bfloat16)[1]
    spec = KVCacheSpec.for_model(args, page_size=16, dtype=jnp.bfloat16)
    assert (spec.num_layers, spec.bytes_per_page, len(spec.states)) == (0, 0, 3)
    # per slot and layer: the conv window [128, 3] in bfloat16, the SSM state [128, 16] in float32
    assert spec.state_bytes(5) == 5 * 3 * (128 * 3 * 2 + 128 * 16 * 4)
    pool = allocate_kv_pool(spec, num_pages=attention_free_pages(0, 4, 100, 16), num_state_slots=5)
    assert [[x.shape for x in layer] for layer in pool] == [[(5, 128, 3), (5, 128, 16)]] * 3
    assert attention_free_pages(0, max_num_seqs=4, max_model_len=100, page_size=16) == 1 + 4 * 7
    with pytest.raises(ValueError, match="need 10 bytes more than the memory budget leaves; lower max_num_seqs"):
        attention_free_pages(-10, max_num_seqs=4, max_model_len=100, page_size=16)


def test_pool_needs_page_0_and_one_more() -> None:
    with pytest.raises(ValueError, match="num_pages=1"):
        allocate_kv_pool(SPEC, num_pages=1)


def test_pool_past_the_device_memory_is_refused_naming_the_settings() -> None:
    with pytest.raises(
        ValueError, match=r"KV pool of 10000000000 pages \(3\.28e\+05 GB\) does not fit .* lower num_pages"
    ):
        allocate_kv_pool(SPEC, num_pages=10**10)


def test_pool_shards_heads_across_devices() -> None:
    # Needs several CPU devices, which must be configured before JAX starts: run in a fresh interpreter.
    script = textwrap.dedent(
        """
        import jax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from jllm.kv_cache import KVCacheSpec, allocate_kv_pool
        mesh = Mesh(np.array(jax.devices()[:2]), ("tp",))
        spec = KVCacheSpec(num_layers=2, num_kv_heads=4, head_dim=8, page_size=4, dtype="float32")
        pool = allocate_kv_pool(spec, num_pages=3, sharding=NamedSharding(mesh, P(None, "tp")))
        for layer in pool:
            assert layer.shape == (2, 4, 3, 4, 8)
            shards = layer.addressable_shards
            assert len(shards) == 2 and all(s.data.shape == (2, 2, 3, 4, 8) for s in shards)
            assert {s.device for s in shards} == set(jax.devices()[:2])
            assert not np.any(np.asarray(layer))
        print("ok")
        """
    )
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr

"""DeepSeek-V4 against transformers: float32 logits within ``LOGITS_RTOL`` of its PyTorch forward on a prompt that
crosses the sliding window and many compression windows, and greedy ``LLM.generate`` (the 40-token prompt prefilled
in 16-token chunks beside the other prompts' decodes, its compressed entries recomputed from the pool each step)
equal to its ``generate``.

The tiny config has every layer kind (sliding; heavily compressed every 8 tokens; compressed sparse every 4, its
indexer keeping 4 entries of up to 22, by 8 heads: enough that no two entries' scores tie at zero, where every head's
ReLU is, and the choice among ties is arbitrary), a hash-routed first mixture and top-k routed ones, three
hyper-connection streams, two output groups and a small SwiGLU limit so the clamps bite. Rows live here, not in
``tests/test_families.py``'s ``FAMILIES`` (whose rows are seeded by their position).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_utils import hf_logits, jllm_chunked_logits, jllm_logits, relative_error
from test_families import (
    BASE,
    ENGINE_ARGS,
    LOGITS_RTOL,
    NEW_TOKENS,
    PROMPTS,
    WINDOW,
    FamilyDirs,
    hf_greedy,
    little_machine_code_optimization,  # noqa: F401 (the greedy row's fixture)
)

from jllm import LLM, SamplingParams
from jllm.kv_cache import KVCacheSpec
from jllm.loader import load_model
from jllm.models.registry import build_args
from jllm.parallel import make_mesh

DSV4 = dict(
    {k: v for k, v in BASE.items() if k not in ("intermediate_size", "num_key_value_heads")},
    moe_intermediate_size=32,
    num_hidden_layers=3,
    num_key_value_heads=1,
    q_lora_rank=24,
    partial_rotary_factor=0.5,
    n_routed_experts=4,
    num_experts_per_tok=2,
    layer_types=["sliding_attention", "heavily_compressed_attention", "compressed_sparse_attention"],
    mlp_layer_types=["hash_moe", "moe", "moe"],
    compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
    sliding_window=WINDOW,
    o_groups=2,
    o_lora_rank=8,
    index_n_heads=8,
    index_head_dim=8,
    index_topk=4,
    hc_mult=3,
    hc_sinkhorn_iters=5,
    swiglu_limit=2.0,
)
FAMILIES: dict[str, tuple[str, str | None, dict[str, Any], list[int]]] = {
    "deepseek_v4": ("DeepseekV4ForCausalLM", None, DSV4, []),
}


@pytest.fixture(scope="module")
def model_dir(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return FamilyDirs(tmp_path_factory.mktemp("families_dsv4"), default_model_dir, FAMILIES, {})["deepseek_v4"]


@pytest.mark.slow
def test_deepseek_v4_logits_match_transformers_across_the_window_whole_and_in_chunks(model_dir):
    ids = np.random.default_rng(7).integers(0, BASE["vocab_size"], 90).tolist()  # 5 windows of 16, 22 entries
    expected = hf_logits(model_dir, ids)
    loaded = load_model(model_dir, mesh=make_mesh(1), dtype="float32")
    got = jllm_logits(loaded, ids, page_size=16)
    assert relative_error(got, expected) < LOGITS_RTOL
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    # 7 tokens a step: windows of 4 and 8 tokens completed across steps, from rows earlier steps wrote
    assert relative_error(jllm_chunked_logits(loaded, ids, chunk=7), expected) < LOGITS_RTOL


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
def test_deepseek_v4_chunked_greedy_batch_equals_transformers_generate_and_again_from_the_prefix_cache(model_dir):
    llm = LLM(str(model_dir), **ENGINE_ARGS)
    greedy = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, greedy, use_tqdm=False)]
    assert got == hf_greedy(model_dir, PROMPTS, NEW_TOKENS)
    assert len({t for tokens in got for t in tokens}) > 3, "degenerate greedy output proves little"
    # the 40-token prompt's first 32 tokens now come from the prefix cache: its entries are read from cached rows
    again = llm.generate(PROMPTS, greedy, use_tqdm=False)
    assert again[2].num_cached_tokens == 32
    assert [o.outputs[0].token_ids for o in again] == got


@pytest.mark.slow
def test_deepseek_v4_fp8_kv_cache_is_refused_naming_it(model_dir):
    with pytest.raises(ValueError, match="kv_cache_dtype='fp8' is not supported for DeepSeek-V4's compressed layers"):
        LLM(str(model_dir), **ENGINE_ARGS, kv_cache_dtype="fp8")


def test_deepseek_v4_compressed_layers_keep_their_compressor_features_in_their_pool_rows():
    """A sliding layer's row is its K=V head; a heavily compressed layer's adds kv and gate (a head each) and the
    entry of the window it completes; a compressed sparse layer's two series of both, and its indexer's likewise."""
    config = {**DSV4, "architectures": ["DeepseekV4ForCausalLM"], "rope_parameters": _ropes()}
    spec = KVCacheSpec.for_model(build_args(config, np.float32)[1], 16, np.float32)
    hd, index = DSV4["head_dim"], DSV4["index_head_dim"]
    assert spec.pool_dims == ((1, hd), (1, hd + 3 * hd), (1, hd + 5 * hd + 5 * index))


def _ropes() -> dict[str, dict[str, Any]]:
    """The two rope kinds' parameters as transformers saves them in config.json."""
    return {
        kind: {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": 0.5}
        for kind, theta in (("main", 1e4), ("compress", 1.6e5))
    }

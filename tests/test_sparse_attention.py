"""DeepSeek Sparse Attention (DeepSeek-V3.2, GLM-5): the indexer's top-k selection and the attention over the
selected latent rows against NumPy oracles (and, selecting every key, the dense latent attention); the indexer key pool
beside the latent one (its shapes and bytes; none beside GLM-5's layers that reuse another's selection); GLM-5's
indexer layers as transformers' config lays them; the refusals at load; and DeepSeek-V3.2's and GLM-5's tiny
checkpoints (tests/test_families.py's, each query over its top 8 tokens; GLM-5's with shared layers) served with
prefix-cache hits and a chunked prefill beside decodes, their greedy tokens transformers'. Their logits (whole and in
chunks) and TP 2 rows are tests/test_families.py's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_utils import TINY_CONFIG, relative_error
from test_families import (
    DEEPSEEK,
    DSA_KEYS,
    ENGINE_ARGS,
    LOGITS_RTOL,
    FamilyDirs,
    hf_greedy,
    little_machine_code_optimization,  # noqa: F401 (the slow tests' fixture)
)
from test_pooling import hf_hidden_states

from jllm import LLM, SamplingParams
from jllm.attention import resolve_backend
from jllm.kv_cache import KVCacheSpec, allocate_kv_pool, num_pages_for_budget
from jllm.loader import abstract_model
from jllm.models.registry import build_args
from pallas_kernels.reference import ref_ragged_paged_attention
from pallas_kernels.sparse_reference import ref_index_topk, ref_sparse_latent_attention

PAGE_SIZE = 4
# A ragged step: a 20-token prefill, a decode, a 7-token chunk of a 37-token sequence; 4 padding rows
KV_LENS, Q_LENS = [20, 5, 37], [20, 1, 7]
NUM_TOKENS, NUM_PAGES, PAGES_PER_SEQ = 32, 40, 10
TOPK = 8
NEW_TOKENS = 12  # the 7-token prompt's last 11 steps select
V32_CONFIG = {**TINY_CONFIG, "architectures": ["DeepseekV32ForCausalLM"], **DEEPSEEK, **DSA_KEYS}
# GLM-5 with the indexer in layers 0 and 3 of 5; layers 1, 2 and 4 reuse the last one's selection
GLM5_SHARED = {**V32_CONFIG, "architectures": ["GlmMoeDsaForCausalLM"], "num_hidden_layers": 5}
GLM5_SHARED |= {"index_topk_freq": 3, "index_skip_topk_offset": 1}


@pytest.fixture(scope="module")
def family_dirs(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FamilyDirs:
    """tests/test_families.py's checkpoints (the same weights: each seed is its family's)."""
    return FamilyDirs(tmp_path_factory.mktemp("sparse_attention"), default_model_dir)


def ragged_step(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Block tables (each sequence's pages shuffled over the pool) and query starts of the step."""
    rng = np.random.default_rng(seed)
    tables = np.zeros((len(KV_LENS), PAGES_PER_SEQ), np.int32)
    pages = iter(rng.permutation(np.arange(1, NUM_PAGES)))
    for s, n in enumerate(KV_LENS):
        tables[s, : -(-n // PAGE_SIZE)] = [next(pages) for _ in range(-(-n // PAGE_SIZE))]
    return tables, np.concatenate([[0], np.cumsum(Q_LENS)]).astype(np.int32)


def visible_rows(tables: np.ndarray, qsl: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """(query row, sequence, the pool slots of the key columns it sees) for every real row of the step."""
    out = []
    for s, (kv_len, q_len) in enumerate(zip(KV_LENS, Q_LENS, strict=True)):
        for i in range(q_len):
            cols = np.arange(kv_len - q_len + i + 1)
            out.append((qsl[s] + i, s, tables[s, cols // PAGE_SIZE] * PAGE_SIZE + cols % PAGE_SIZE))
    return out


INDEX_TOPK = jax.jit(ref_index_topk, static_argnames=("topk", "sm_scale", "q_block"))
SPARSE_ATTENTION = jax.jit(ref_sparse_latent_attention, static_argnames=("sm_scale", "value_dim"))


@pytest.mark.slow  # compiles its programs: ~1-2 s each
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("q_block", [None, 2])
def test_indexer_keeps_each_rows_best_scoring_visible_keys(q_block):
    """Every row's selection: ``topk`` of the keys it sees (all where it sees fewer), none it does not, and no key
    left out scoring above one kept (scores as transformers' indexer sums them, in float64); padding rows select
    none. Across one-row items and blocks of rows, chunks of pages merged into the running top-k."""
    rng = np.random.default_rng(0)
    tables, qsl = ragged_step(0)
    index_q = rng.standard_normal((NUM_TOKENS, 4, 16)).astype(np.float32)
    weights = rng.standard_normal((NUM_TOKENS, 4)).astype(np.float32)
    pool = rng.standard_normal((1, 1, NUM_PAGES, PAGE_SIZE, 16)).astype(np.float32)
    kv_lens = np.asarray(KV_LENS, np.int32)
    got = np.asarray(
        INDEX_TOPK(index_q, weights, pool, kv_lens, tables, qsl, topk=TOPK, sm_scale=0.25, q_block=q_block)
    )
    assert got.shape == (NUM_TOKENS, TOPK) and (got[qsl[-1] :] == -1).all()
    keys = pool[0, 0].reshape(-1, 16).astype(np.float64)
    for row, _, slots in visible_rows(tables, qsl):
        per_head = np.maximum(index_q[row].astype(np.float64) @ keys[slots].T * 0.25, 0)  # [heads, keys]
        scores = weights[row].astype(np.float64) @ per_head
        kept = got[row][got[row] >= 0]
        assert len(set(kept)) == len(kept) == min(TOPK, len(slots)) and kept.max() < len(slots)
        dropped = np.setdiff1d(np.arange(len(slots)), kept)
        assert not len(dropped) or scores[dropped].max() <= scores[kept].min() + 1e-6


@pytest.mark.slow  # compiles its programs: ~1-2 s each
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_sparse_attention_is_a_softmax_over_the_selected_rows_alone(num_kv_heads):
    """Each query head's float32 output within 1e-5 of a float64 softmax over its selected latent rows (values
    their first 16 channels), GQA as the reference's; padding rows are zero."""
    rng = np.random.default_rng(1)
    tables, qsl = ragged_step(1)
    q = rng.standard_normal((NUM_TOKENS, 4, 24)).astype(np.float32)
    pool = rng.standard_normal((1, num_kv_heads, NUM_PAGES, PAGE_SIZE, 24)).astype(np.float32)
    selected = np.full((NUM_TOKENS, TOPK), -1, np.int32)
    for row, _, slots in visible_rows(tables, qsl):
        pick = rng.permutation(len(slots))[:TOPK]
        selected[row, : len(pick)] = pick
    got = np.asarray(SPARSE_ATTENTION(q, pool, selected, tables, qsl, sm_scale=0.3, value_dim=16))
    rows = pool[0].reshape(num_kv_heads, -1, 24).astype(np.float64)
    for row, _, slots in visible_rows(tables, qsl):
        chosen = slots[selected[row][selected[row] >= 0]]
        for h in range(4):
            k = rows[h // (4 // num_kv_heads), chosen]
            logits = k @ q[row, h] * 0.3
            p = np.exp(logits - logits.max())
            np.testing.assert_allclose(got[row, h], p @ k[:, :16] / p.sum(), atol=1e-5)
    assert not got[qsl[-1] :].any()


@pytest.mark.slow  # compiles its programs: ~1-2 s each
@pytest.mark.usefixtures("little_machine_code_optimization")
def test_selecting_at_least_every_key_is_dense_latent_attention():
    """With ``topk`` past every row's keys the selection is the whole causal context, and the sparse attention is
    the reference's dense latent attention."""
    rng = np.random.default_rng(2)
    tables, qsl = (jnp.asarray(x) for x in ragged_step(2))
    index_q, weights = rng.standard_normal((NUM_TOKENS, 4, 16)), rng.standard_normal((NUM_TOKENS, 4))
    index_pool = rng.standard_normal((1, 1, NUM_PAGES, PAGE_SIZE, 16))
    q, pool = rng.standard_normal((NUM_TOKENS, 4, 24)), rng.standard_normal((1, 1, NUM_PAGES, PAGE_SIZE, 24))
    f32 = (jnp.asarray(x, jnp.float32) for x in (index_q, weights, index_pool, q, pool))
    index_q, weights, index_pool, q, pool = f32
    kv_lens = jnp.asarray(KV_LENS, jnp.int32)
    everything = INDEX_TOPK(index_q, weights, index_pool, kv_lens, tables, qsl, topk=64, sm_scale=0.25)
    assert everything.shape == (NUM_TOKENS, PAGES_PER_SEQ * PAGE_SIZE)  # topk capped at a block table's keys
    sparse = SPARSE_ATTENTION(q, pool, everything, tables, qsl, sm_scale=0.3, value_dim=16)
    dense = ref_ragged_paged_attention(q, pool, kv_lens, tables, qsl, sm_scale=0.3, value_dim=16)
    np.testing.assert_allclose(np.asarray(sparse), np.asarray(dense), atol=2e-6)


def test_indexer_keys_have_a_pool_beside_each_layers_latent_one():
    """DeepSeek-V3.2's pool: per layer the pair (latent rows of 32 + 8 channels, indexer keys of 16) on the same
    pages, one copy per device at TP 2; a page's bytes count both, and a budget is sized by them."""
    for tp in (1, 2):
        _, _, args, _ = abstract_model(V32_CONFIG, np.float32, tp)
        spec = KVCacheSpec.for_model(args, 16, np.float32)
        assert (spec.layer_shape(4), spec.index_shape(4)) == ((1, tp, 4, 16, 40), (1, tp, 4, 16, 16))
        assert spec.bytes_per_page == 2 * tp * 16 * (40 + 16) * 4
    layers = allocate_kv_pool(spec, 3)
    assert [[x.shape for x in layer] for layer in layers] == [[(1, 2, 3, 16, 40), (1, 2, 3, 16, 16)]] * 2
    assert num_pages_for_budget(spec, 1 << 20) == (1 << 20) // (2 * 2 * 16 * (40 + 16) * 4)
    _, _, v3, _ = abstract_model({**V32_CONFIG, "architectures": ["DeepseekV3ForCausalLM"]}, np.float32)
    assert KVCacheSpec.for_model(v3, 16, np.float32).index_head_dim == 0  # V3's pool: the latent rows alone


def test_glm5_shared_layers_keep_no_indexer_keys():
    """GLM-5's layers that reuse another's selection have no indexer (as transformers builds them) and keep their
    latent pool alone: a page's bytes count the indexer keys of layers 0 and 3 only."""
    _, state, args, _ = abstract_model(GLM5_SHARED, np.float32)
    assert sorted({path[1] for path, _ in nnx.to_flat_state(state) if "indexer" in path}) == [0, 3]
    spec = KVCacheSpec.for_model(args, 16, np.float32)
    assert spec.unindexed == (1, 2, 4) and spec.bytes_per_page == 16 * (5 * 40 + 2 * 16) * 4
    entries = [tuple(x.shape for x in jax.tree.leaves(layer)) for layer in allocate_kv_pool(spec, 3)]
    latent, keys = (1, 1, 3, 16, 40), (1, 1, 3, 16, 16)
    assert entries == [(latent, keys), (latent,), (latent,), (latent, keys), (latent,)]
    with pytest.raises(ValueError, match=r"unindexed=\(5,\) must name layers with pages, beside an index_head_dim"):
        dataclasses.replace(spec, unindexed=(5,))


@pytest.mark.parametrize(
    "settings",
    [
        dict(num_hidden_layers=78, index_topk_freq=4, index_skip_topk_offset=3),  # the released GLM-5's
        dict(num_hidden_layers=6, index_topk_freq=2),  # offset 2 by default
        dict(num_hidden_layers=4, index_topk_pattern="FSFS"),
        dict(num_hidden_layers=3, index_topk_pattern=["full", "full", "shared"]),
        dict(num_hidden_layers=3),  # every layer full
    ],
)
def test_glm5_layers_reuse_a_selection_where_transformers_config_says(settings):
    """Which GLM-5 layers run an indexer and which reuse the last one's selection, from ``index_topk_freq`` /
    ``index_skip_topk_offset`` or ``index_topk_pattern``, as transformers' GlmMoeDsaConfig lays them out."""
    from transformers import GlmMoeDsaConfig

    expected = [kind == "shared" for kind in GlmMoeDsaConfig(**settings).indexer_types]
    _, args = build_args({**V32_CONFIG, "architectures": ["GlmMoeDsaForCausalLM"], **settings}, np.float32)
    assert [spec.reuses_selection for spec in args.layers] == expected


@pytest.mark.parametrize(
    "arch, change, message",
    [
        (
            "GlmMoeDsaForCausalLM",
            {"indexer_types": ["shared", "full"]},
            r"GLM-5 indexer_types\[0\]='shared' is not supported.*first layer must be 'full'",
        ),
        ("GlmMoeDsaForCausalLM", {"index_topk_pattern": "FX"}, r"GLM-5 indexer_types=\['full', 'X'\] is not supported"),
        ("GlmMoeDsaForCausalLM", {"indexer_types": ["full"]}, "GLM-5 indexer_types=.*num_hidden_layers=2"),
        ("DeepseekV32ForCausalLM", {"q_lora_rank": None}, "DeepSeek-V3.2 q_lora_rank=None is not supported"),
        ("DeepseekV32ForCausalLM", {"index_head_dim": 4}, "index_head_dim=4 must hold the qk_rope_head_dim=8"),
        ("DeepseekV32ForCausalLM", {"index_topk": 0}, "index_topk=0 must be a positive int"),
        ("DeepseekV32ForCausalLM", {"layer_types": ["full_attention"] * 2}, "layer_types=.*not supported"),
    ],
)
def test_unsupported_sparse_attention_options_are_refused_at_load_naming_the_key(arch, change, message):
    with pytest.raises(ValueError, match=message):
        build_args({**V32_CONFIG, "architectures": [arch], **change}, np.float32)


def test_kernel_backends_are_refused_for_sparse_attention():
    """Only the reference attends over the indexer's selection: "auto" picks it on a GPU too, a kernel is refused
    by name."""
    assert resolve_backend("auto", "cuda", 64, sparse=True) == "reference"
    for name in ("pallas", "triton-prefill"):
        with pytest.raises(ValueError, match=f"attention_backend='{name}' does not restrict.*DeepSeek Sparse"):
            resolve_backend(name, "cuda", 64, sparse=True)


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("name", ["deepseek_v32", "glm_moe_dsa"])
def test_serves_prefix_hits_chunks_and_hidden_states_as_transformers(family_dirs, name):
    """DeepSeek-V3.2, and GLM-5 with layers reusing another's selection, served with prefix caching: a first prompt
    leaves two full pages cached (latent rows and indexer keys); then two prompts sharing them, a 7-token one (dense
    latent attention until it holds more than 8 tokens) and a fresh 40-token one prefilled in chunks beside the
    others' decodes. Every prompt gets transformers' greedy tokens; the 40-token prompt's final hidden states
    (``LLM.encode``: a scratch pool of the same pools) are transformers' within LOGITS_RTOL."""
    model_dir = family_dirs[name]
    shared = list(range(200, 232))  # two pages of 16
    prompts = [
        shared + [9000, 12],
        shared + list(range(300, 308)),
        [1, 5, 77, 300, 9000, 12, 40],
        list(range(100, 140)),
    ]
    llm = LLM(str(model_dir), **ENGINE_ARGS)  # max_num_batched_tokens 16: the 40-token prompt is chunked
    llm.generate([shared + [5, 6, 7]], SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
    greedy = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    outputs = llm.generate(prompts, greedy, use_tqdm=False)
    assert [o.num_cached_tokens for o in outputs] == [32, 32, 0, 0]
    got = [o.outputs[0].token_ids for o in outputs]
    assert got == hf_greedy(model_dir, prompts, NEW_TOKENS)
    assert len({t for tokens in got for t in tokens}) > 3, "degenerate greedy output proves little"
    states = llm.encode([prompts[3]], layers=[-1], use_tqdm=False)[0].outputs.data[0]
    assert relative_error(states, hf_hidden_states(model_dir, [prompts[3]])[0][-1]) < LOGITS_RTOL

"""Every model family beyond Llama against transformers: tiny random-weight checkpoints built from a config.

For each family: full-sequence float32 logits within ``LOGITS_RTOL`` of transformers' PyTorch forward (sliding windows
shorter than the prompt, so both kinds of layer are exercised); greedy ``LLM.generate`` of 24 tokens for a batch of
three prompts (one longer than the window) identical to transformers' ``generate`` (up to a first divergence where
transformers' own top two logits are a near-tie: ``model_utils.assert_greedy_equal``); and, at tensor parallel 2 (and 4
for Phi-3, Falcon and Mixtral, which replicate their 2 KV heads there) on fake CPU devices (one subprocess,
``tests/tp_worker.py``), greedy tokens identical to transformers' (so to TP 1's) and prefill logits within
``LOGITS_RTOL`` of transformers'. Layouts a family's other options pick (NeoX's sequential residual, Falcon's one-norm,
multi-query and sequential layers, StableLM's sequential layout) are checked on their logits only (``VARIANTS``), and
the mixture of experts' grouped matmul against a per-token loop. Image-text checkpoints (``IMAGE_TEXT``: Gemma 3,
Mistral 3, Llama 4, LLaVA, Qwen-VL, GLM-V and others, each with a tiny vision tower) are loaded text-only and compared
with transformers' image-text model on text. Every checkpoint's norms and biases are random too (transformers
initialises them to ones and zeros).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from flax import nnx
from model_utils import (
    TINY_CONFIG,
    assert_greedy_equal,
    hf_logits,
    hf_model,
    jllm_chunked_logits,
    jllm_logits,
    relative_error,
    run_tp_worker,
    save_tiny_checkpoint,
)

from jllm import LLM, SamplingParams
from jllm.kv_cache import KVCacheSpec
from jllm.loader import abstract_model, load_model
from jllm.models.moe import ClampedSwiGLU, GroupedRouting, SparseMoE, grouped_top_k
from jllm.parallel import make_mesh
from jllm.quantization import QuantScheme

# Relative (Frobenius) error of float32 logits; measured 3e-7 .. 2e-6 (2026-12, transformers 5.x).
LOGITS_RTOL = 1e-5
# The gated-DeltaNet hybrids: transformers' float32 forward runs the chunked delta rule (triangular solves over
# chunks of 64), itself 3.7e-5 from its float64 forward on qwen3_next's 70-token prompt, where jllm's token-by-token
# recurrence is 7.9e-6 from it (2026-12-05): the reference's own error sets this bound
HYBRID_LOGITS_RTOL = 1e-4
HYBRIDS = {"qwen3_next", "qwen3_5", "qwen3_5_moe", "qwen3_5_image_text"}
# MiniMax: transformers' float32 forward is itself 1.8e-5 from its float64 one on the 70-token prompt, jllm's 2.1e-5
# (its lightning state's sums unnormed, residuals scaled up by the alphas; 2026-12-05)
HYBRIDS |= {"minimax"}
HYBRIDS |= {
    "qwen4_exp",
    "qwen4_exp_image_text",
}  # Qwen3.5-MoE's mixer (its bound), 1.4e-5 here (2026-12, its sigmoid gate)
# Families whose logits are checked over their prompt prefilled in chunks too, what a chunk reads of the earlier ones
# carried between steps: LFM2's conv state, Kimi Delta Attention's per-channel decay, MiniMax's lightning state
# (Qwen3-Next's and so OLMo-Hybrid's mixer: tests/test_hybrid.py), an attention-free model's conv window and SSM state
# alone (Mamba; its mixer's in tests/test_mamba.py), pure Mamba2's SSD state carried from chunk to chunk, Zamba2's
# hybrid layers' pages and state, DeepSeek-V3.2's indexer keys (each later chunk's rows select among them), Gemma 3n's
# KV-shared layers (they read the pages their source layers wrote in earlier chunks)
CHUNKED = {"lfm2", "kimi_linear", "bailing_hybrid", "minimax", "mamba", "mamba2", "zamba2", "deepseek_v32", "gemma3n"}
WINDOW = 16
# Ministral 3's YaRN and query scaling, the scaling's period (original_max_position_embeddings) short enough that the
# tests' prompts cross several
MINISTRAL3_ROPE = dict(
    rope_type="yarn",
    rope_theta=1e6,
    factor=4.0,
    original_max_position_embeddings=8,
    beta_fast=32.0,
    beta_slow=1.0,
    mscale=1.0,
    mscale_all_dim=1.0,
    llama_4_scaling_beta=0.1,
)
# The default model's tokenizer (49152 tokens) lets LLM serve the tiny models; a wide initializer keeps greedy
# decoding off a single repeated token.
BASE = dict(TINY_CONFIG, vocab_size=49152, head_dim=16, initializer_range=0.3, bos_token_id=1, eos_token_id=2)
BASE["pad_token_id"] = 0
GRANITE_MULTIPLIERS = dict(
    embedding_multiplier=12.0, attention_multiplier=0.1, residual_multiplier=0.22, logits_scaling=8.0
)
# What a gated-DeltaNet hybrid's config.json holds besides TINY_CONFIG (Qwen3-Next, Qwen3.5), and its mixture
DELTANET_KEYS = dict(
    num_hidden_layers=4,
    layer_types=["linear_attention", "full_attention"] * 2,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
)
# What a Mamba2 hybrid's config.json holds besides TINY_CONFIG (Bamba, Granite-4.0-H): 8 heads of 16 channels
# (expand 2), B and C in 2 groups, a state of 16, conv kernel 4; chunks of 32, so a 70-token prefill crosses two
MAMBA2_KEYS = dict(
    mamba_n_heads=8,
    mamba_d_head=16,
    mamba_n_groups=2,
    mamba_d_state=16,
    mamba_d_conv=4,
    mamba_expand=2,
    mamba_chunk_size=32,
)
# What a Mamba (v1) config.json holds besides TINY_CONFIG's sizes: no attention (its keys dropped), no position limit
MAMBA_KEYS = dict(
    num_attention_heads=None,
    num_key_value_heads=None,
    head_dim=None,
    intermediate_size=None,
    max_position_embeddings=None,
    tie_word_embeddings=False,
)
# What a Zamba2 config.json holds besides BASE (Zamba2Config's names; its attention heads' width is its own)
ZAMBA2_KEYS = dict(
    head_dim=None,
    num_key_value_heads=None,
    num_hidden_layers=3,
    layers_block_type=["mamba", "hybrid", "hybrid"],
    n_mamba_heads=8,
    mamba_ngroups=2,
    mamba_d_state=16,
    chunk_size=32,
    num_mem_blocks=1,
    use_shared_attention_adapter=True,
    adapter_rank=8,
    use_mem_rope=True,
    add_bias_linear=True,
    initializer_range=0.15,
)
# What a Falcon-H1 config.json holds besides BASE: MAMBA2_KEYS' mixer (its width mamba_d_ssm) and each multiplier
FALCON_H1_KEYS = dict(
    MAMBA2_KEYS,
    mamba_d_ssm=128,
    mamba_rms_norm=True,
    embedding_multiplier=1.5,
    lm_head_multiplier=0.5,
    key_multiplier=0.7,
    attention_in_multiplier=1.3,
    attention_out_multiplier=0.8,
    ssm_in_multiplier=0.9,
    ssm_out_multiplier=1.2,
    ssm_multipliers=[0.5, 1.5, 0.8, 1.2, 0.7],
    mlp_multipliers=[1.4, 0.6],
)
# What an LFM2 config.json holds besides TINY_CONFIG: which layers attend, the conv's kernel (transformers' names)
LFM2_KEYS = dict(num_hidden_layers=4, layer_types=["conv", "full_attention"] * 2, conv_L_cache=3)
QWEN_NEXT_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48)
# What Qwen4-Exp's config.json holds besides those: its hyper-connections, its QSA indexer (a budget of 72 tokens in
# blocks of 4: past the tests' 70-token prompt and the engine's 64-token context), its DeltaNet's sigmoid gate
QWEN4_KEYS = dict(
    layer_types=["linear_attention", "indexed_attention"] * 2,
    hc_count=3,
    hc_lowrank=8,
    indexer_n_heads=4,
    indexer_kv_heads=1,
    indexer_head_dim=16,
    indexer_budget=72,
    indexer_compress_ratio=4,
    output_gate_type="sigmoid",
)
# What a MiniMax config.json holds besides TINY_CONFIG: lightning layers 0 and 2, attention 1 and 3, 4 experts (top 2)
# in every layer, each block kind's residual factors apart from one (transformers' blocks of 16, so its reference
# prefill crosses several)
MINIMAX_KEYS = dict(
    num_hidden_layers=4,
    layer_types=["linear_attention", "full_attention"] * 2,
    num_local_experts=4,
    num_experts_per_tok=2,
    block_size=16,
    full_attn_alpha_factor=1.3,
    full_attn_beta_factor=0.7,
    linear_attn_alpha_factor=1.7,
    linear_attn_beta_factor=0.9,
    mlp_alpha_factor=1.1,
    mlp_beta_factor=1.2,
)
# What a DeepSeek config.json must hold besides TINY_CONFIG
GLM4_MOE_KEYS = dict(
    head_dim=16,
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    n_shared_experts=1,
    first_k_dense_replace=1,
)  # GLM-4.5 MoE's and GLM-4.5V's text model's expert sizes, small
DEEPSEEK_KEYS = dict(
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    n_routed_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
)
# DeepSeek's latent attention (pool head 32 + 8 wide) and experts in 4 groups of 2; one dense layer, then a mixture.
# Its attention expands to every query head, so num_key_value_heads stays the heads' count.
DEEPSEEK = dict(
    DEEPSEEK_KEYS,
    head_dim=None,  # transformers' is qk_rope_head_dim
    num_key_value_heads=None,
    n_shared_experts=2,
    first_k_dense_replace=1,
    n_group=4,
    topk_group=2,
)
# What every Gemma 4 row holds besides BASE: a sliding and a full layer, soft-capped logits, an untied head (tied, the
# random model only repeats its last prompt token), no per-layer inputs unless the row asks
GEMMA4 = dict(
    sliding_window=WINDOW,
    layer_types=["sliding_attention", "full_attention"],
    final_logit_softcapping=30.0,
    tie_word_embeddings=False,
    hidden_size_per_layer_input=0,
)
# DeepSeek Sparse Attention's indexer (DeepSeek-V3.2, GLM-5): each query's top 8 tokens, by 16 heads of 16 channels
# (enough heads that no two keys' scores tie at zero, where every head's ReLU is: the choice among ties is arbitrary)
DSA_KEYS = dict(q_lora_rank=24, index_topk=8, index_head_dim=16, index_n_heads=16)
# gemma-3n-E2B's layout in small: sliding and full layers, the last two reading the first two's K/V, per-layer inputs
# (from a table shorter than the vocabulary: ids past it read row 0), 4 AltUp streams, LAuReL blocks, the first two
# layers' MLPs sparse and wider than the last two's, soft-capped logits; untied (tied, a random model repeats)
GEMMA3N = dict(
    sliding_window=WINDOW,
    num_hidden_layers=4,
    layer_types=["sliding_attention", "full_attention"] * 2,
    num_kv_shared_layers=2,
    intermediate_size=[96, 96, 80, 80],
    activation_sparsity_pattern=[0.95, 0.95, 0.0, 0.0],
    hidden_size_per_layer_input=8,
    vocab_size_per_layer_input=40_000,
    altup_num_inputs=4,
    laurel_rank=8,
    final_logit_softcapping=30.0,
    tie_word_embeddings=False,
)
# name -> (architecture, config class or None for the architecture's, config overrides (None drops a BASE key), TP
# sizes to check). TP 4 (devices outnumber the 2 KV heads: replicated KV heads) where the checkpoint stores K and V
# its own way (Phi-3's fused qkv, Falcon's grouped fused tensor) and for the experts' split; replicated heads read from
# separate k/v projections tests/test_tensor_parallel.py shows (Llama at 4 and 8): each TP 4 engine here costs ~12 s.
# A None override of a key BASE lacks stays None (DeepSeek-V2-Lite's q_lora_rank). A row's random weights are seeded by
# its place here, so new rows go at the end: a row inserted earlier reseeds every row after it, and a greedy row's
# random model may then meet a near-tie (Zamba2's seed after one inserted row: transformers' top two logits 6e-4
# apart at the 23rd token, which jllm's float32 path ranks the other way; 2026-12-06).
FAMILIES: dict[str, tuple[str, str | None, dict[str, Any], list[int]]] = {
    "qwen3": ("Qwen3ForCausalLM", None, {}, [2]),
    "gemma": ("GemmaForCausalLM", None, dict(tie_word_embeddings=False), []),
    "gemma2": (
        "Gemma2ForCausalLM",
        None,
        dict(
            sliding_window=WINDOW,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            tie_word_embeddings=False,  # tied, the random model only repeats its last prompt token
        ),
        [],
    ),
    "gemma3": (
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        dict(
            sliding_window=WINDOW,
            query_pre_attn_scalar=24,
            tie_word_embeddings=False,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        ),
        [],
    ),
    # Gemma 4 (31B's layout): a sliding layer of 4 KV heads of 16, a full one of 2 KV heads of 32 (its own pages),
    # keys reused as values there (attention_k_eq_v), proportional rotary, soft-capped logits. TP 2 splits both kinds
    "gemma4": (
        "Gemma4ForCausalLM",
        "Gemma4TextConfig",
        dict(GEMMA4, num_key_value_heads=4, global_head_dim=32, num_global_key_value_heads=2, attention_k_eq_v=True),
        [2],
    ),
    # gemma-4-e2b's layout: one KV head, per-layer inputs, the last two layers reading the K/V of the first two
    # (no pages of their own) with double-wide MLPs
    "gemma4_e2b": (
        "Gemma4ForCausalLM",
        "Gemma4TextConfig",
        dict(
            GEMMA4,
            num_hidden_layers=4,
            layer_types=["sliding_attention", "full_attention"] * 2,
            num_key_value_heads=1,
            global_head_dim=32,
            hidden_size_per_layer_input=8,
            vocab_size_per_layer_input=49152,
            num_kv_shared_layers=2,
            use_double_wide_mlp=True,
        ),
        [],
    ),
    # gemma-4-26B-A4B's layout: the mixture beside every dense MLP, keys reused as values on the full layer
    "gemma4_moe": (
        "Gemma4ForCausalLM",
        "Gemma4TextConfig",
        dict(
            GEMMA4,
            global_head_dim=32,
            num_global_key_value_heads=1,
            attention_k_eq_v=True,
            enable_moe_block=True,
            num_experts=4,
            top_k_experts=2,
            moe_intermediate_size=32,
        ),
        [],
    ),
    # TP 2: the heads and MLPs split, AltUp's streams replicated, the sparse MLP's row statistics across devices
    "gemma3n": ("Gemma3nForCausalLM", "Gemma3nTextConfig", GEMMA3N, [2]),
    "phi3": (
        "Phi3ForCausalLM",
        None,
        dict(
            sliding_window=WINDOW,
            original_max_position_embeddings=128,  # max_position_embeddings 512: longrope's attention factor > 1
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 1e4,
                "partial_rotary_factor": 0.5,
                "short_factor": [1.0, 1.5, 2.0, 3.0],
                "long_factor": [2.0, 3.0, 4.0, 5.0],
            },
        ),
        [2],
    ),
    "gpt_neox": ("GPTNeoXForCausalLM", None, dict(rotary_pct=0.5, use_parallel_residual=True), []),
    "falcon": (  # Falcon-40B's layout: grouped KV heads, ln_attn / ln_mlp; with biases
        "FalconForCausalLM",
        None,
        dict(head_dim=None, new_decoder_architecture=True, num_kv_heads=2, ffn_hidden_size=96, bias=True),
        [2, 4],  # at 4, devices outnumber the 2 KV heads: replicated KV heads read from the grouped fused tensor
    ),
    "mixtral": ("MixtralForCausalLM", None, dict(num_local_experts=4, sliding_window=WINDOW), [2]),
    "qwen3_moe": (
        "Qwen3MoeForCausalLM",
        None,
        dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True),
        [],
    ),
    "qwen2_moe": (
        "Qwen2MoeForCausalLM",
        None,
        dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48),
        [],  # TP 2 matched transformers once by hand (2026-12-04); in the suite it would cost ~10 s
    ),
    "granite": (  # Granite 3's multipliers; with biases (o_proj's too) on attention and MLP
        "GraniteForCausalLM",
        None,
        dict(**GRANITE_MULTIPLIERS, attention_bias=True, mlp_bias=True),
        [],
    ),
    # TP 2: the q/k norms span both devices' heads, a reduction across the mesh no other family has
    "olmo2": ("Olmo2ForCausalLM", None, {}, [2]),
    # Phi-2's rotary fraction; q/k LayerNorms (no released Phi has them, transformers builds them)
    "phi": ("PhiForCausalLM", None, dict(partial_rotary_factor=0.4, qk_layernorm=True), []),
    # StableLM 2 12B's layout. TP 2: each device's heads take their own q/k norm weights, read per head
    "stablelm": (
        "StableLmForCausalLM",
        None,
        dict(use_qkv_bias=True, qk_layernorm=True, use_parallel_residual=True),
        [2],
    ),
    "starcoder2": ("Starcoder2ForCausalLM", None, dict(sliding_window=WINDOW, tie_word_embeddings=False), []),
    # Command R+'s per-head q/k norms (weights [heads, head_dim]); untied (tied, the random model repeats)
    "cohere": ("CohereForCausalLM", None, dict(use_qk_norm=True, tie_word_embeddings=False), []),
    # Command R7B's layout: a sliding layer with the rotary, a global one without
    "cohere2": (
        "Cohere2ForCausalLM",
        None,
        dict(sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=False),
        [],
    ),
    "olmo": ("OlmoForCausalLM", None, dict(clip_qkv=3.0), []),  # the clip cuts some of these q, k, v
    "gptj": ("GPTJForCausalLM", None, dict(rotary_dim=8, num_key_value_heads=None), []),
    # StarCoder 1's multi-query layout, learned positions; untied (tied, the random model repeats)
    "gpt_bigcode": ("GPTBigCodeForCausalLM", None, dict(n_inner=96, tie_word_embeddings=False), []),
    # Conv1D weights ([in, out]), multi-head c_attn of all queries, then K, then V; untied, as GPT-BigCode's. TP 2:
    # the only family whose sharded slices are read untransposed
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(n_inner=96, tie_word_embeddings=False), []),
    # learned positions, separate bias-free q/k/v, unscaled scores; a global layer, then a local one
    "gpt_neo": (
        "GPTNeoForCausalLM",
        None,
        dict(
            num_key_value_heads=None,
            attention_types=[[["global", "local"], 1]],
            window_size=WINDOW,
            tie_word_embeddings=False,
        ),
        [],
    ),
    # GPT-J's layout with the fused qkv_proj in four shards, two of the eight heads in each. TP 2: each device's
    # heads read from two of the shards
    "codegen": (
        "CodeGenForCausalLM",
        None,
        dict(num_attention_heads=8, num_key_value_heads=None, head_dim=None, rotary_dim=4, n_inner=96),
        [2],
    ),
    # ALiBi (the reference attention's linear bias), a LayerNorm on the embeddings, per-head fused query_key_value.
    # TP 2: the slopes split with the query heads
    "bloom": ("BloomForCausalLM", None, dict(num_key_value_heads=None, head_dim=None, tie_word_embeddings=False), [2]),
    # MPT's slopes, bias-free LayerNorms and linears, a clip_qkv that cuts
    "mpt": (
        "MptForCausalLM",
        None,
        dict(num_key_value_heads=None, head_dim=None, attn_config=dict(clip_qkv=3.0), tie_word_embeddings=False),
        [],
    ),
    # Falcon-RW's layout: ALiBi (Bloom's slopes over head_dim ** 0.5), sequential multi-head layers with biases
    "falcon_rw": (
        "FalconForCausalLM",
        None,
        dict(head_dim=None, alibi=True, multi_query=False, parallel_attn=False, bias=True, ffn_hidden_size=96),
        [],
    ),
    # fixed sinusoidal positions two rows on, embeddings times sqrt(d_model); untied (tied, the random model repeats)
    "xglm": (
        "XGLMForCausalLM",
        None,
        dict(num_key_value_heads=None, head_dim=None, ffn_dim=96, pad_token_id=1, tie_word_embeddings=False),
        [],
    ),
    # learned positions two rows on, embeddings times sqrt(hidden), the head named output_projection
    "biogpt": (
        "BioGptForCausalLM",
        None,
        dict(num_key_value_heads=None, head_dim=None, pad_token_id=1, tie_word_embeddings=False),
        [],
    ),
    # q/k RMSNorms after the rotary, whose NTK alpha (labelled "dynamic") stretches the base
    "hunyuan_dense": (
        "HunYuanDenseV1ForCausalLM",
        None,
        dict(rope_parameters={"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0, "rope_theta": 10000.0}),
        [],
    ),
    # Qwen2.5-VL's and Qwen3-VL's language models, text only: M-RoPE's sections (interleaved in Qwen3-VL) all read
    # the one position of a text token
    "qwen2_5_vl_image_text": (
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2_5_VLConfig",
        dict(rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, rope_theta=1e6),
        [],
    ),
    "qwen2_vl_image_text": (
        "Qwen2VLForConditionalGeneration",
        "Qwen2VLConfig",
        dict(rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        [],
    ),
    "qwen3_vl_image_text": (
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLConfig",
        dict(rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True}),
        [],
    ),
    # Qwen3-MoE's layers, the router always renormalised; the experts stacked per projection (saved as transformers 5
    # holds them, [experts, out, in]; the hub's [experts, in, out]: test_qwen3_vl_moe_hub_expert_layout_loads_the_same),
    # the text config's tie_word_embeddings (True by default) overruled by the outer one
    "qwen3_vl_moe_image_text": (
        "Qwen3VLMoeForConditionalGeneration",
        "Qwen3VLMoeConfig",
        dict(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=24,
            rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
        ),
        [2],  # each device's slice of the experts read from one bare [experts, out, in] tensor
    ),
    # HunYuan dense's attention with top-2 of 4 experts beside an ungated shared SwiGLU
    "hunyuan_moe": (
        "HunYuanMoEV1ForCausalLM",
        None,
        dict(
            num_experts=4,
            moe_topk=2,
            rope_parameters={"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0, "rope_theta": 10000.0},
        ),
        [],
    ),
    # Qwen3's attention with V3's router and mixture: layer 0 global and dense, layer 1 sliding and a mixture
    "dots1": (
        "Dots1ForCausalLM",
        None,
        dict(
            n_routed_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
            sliding_window=WINDOW,
            max_window_layers=1,
        ),
        [],
    ),
    # OLMo 2's layers with OLMoE's mixture (top-2 of 4, renormalised)
    "flex_olmo": ("FlexOlmoForCausalLM", None, dict(num_experts=4, num_experts_per_tok=2, norm_topk_prob=True), []),
    # GLM-4.1V's language model, text only: GLM-4's with M-RoPE on half of each head in neighbouring pairs
    "glm4v_image_text": (
        "Glm4vForConditionalGeneration",
        "Glm4vConfig",
        dict(
            head_dim=None,
            rope_parameters={
                "rope_type": "default",
                "mrope_section": [1, 1, 2],
                "partial_rotary_factor": 0.5,
                "rope_theta": 10000.0,
            },
        ),
        [],
    ),
    # GLM-4.5V's language model, text only: GLM-4.5's mixture with M-RoPE on half of each head, half-split
    "glm4v_moe_image_text": (
        "Glm4vMoeForConditionalGeneration",
        "Glm4vMoeConfig",
        dict(
            n_routed_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
            attention_bias=True,
            rope_parameters={
                "rope_type": "default",
                "mrope_section": [1, 1, 2],
                "partial_rotary_factor": 0.5,
                "rope_theta": 10000.0,
            },
        ),
        [],
    ),
    # fused Wqkv (GQA) clipped, bias-free LayerNorms, top-2 of 4 experts stored as one 2-D tensor per projection.
    # TP 2: each device's slice of every expert read row by row from the stored tensors
    "dbrx": (
        "DbrxForCausalLM",
        None,
        dict(
            d_model=64,
            n_heads=4,
            n_layers=2,
            max_seq_len=512,
            attn_config=dict(kv_n_heads=2, clip_qkv=3.0, rope_theta=10000.0),
            ffn_config=dict(ffn_hidden_size=32, moe_num_experts=4, moe_top_k=2),
        ),
        [2],
    ),
    # LLaVA-1.5's Llama and LLaVA-NeXT's Mistral, text only, under language_model.
    "llava_image_text": ("LlavaForConditionalGeneration", "LlavaConfig", dict(model_type="llama"), []),
    "llava_next_image_text": (
        "LlavaNextForConditionalGeneration",
        "LlavaNextConfig",
        dict(model_type="mistral", sliding_window=None),
        [],
    ),
    # Aya Vision's Cohere2 (a sliding layer with the rotary, a global one without), InternVL's Qwen2, and
    # Idefics3's and SmolVLM's Llama under model.text_model., text only
    "aya_vision_image_text": (
        "AyaVisionForConditionalGeneration",
        "AyaVisionConfig",
        dict(
            model_type="cohere2",
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
            tie_word_embeddings=False,
        ),
        [],
    ),
    "internvl_image_text": ("InternVLForConditionalGeneration", "InternVLConfig", dict(model_type="qwen2"), []),
    "idefics3_image_text": ("Idefics3ForConditionalGeneration", "Idefics3Config", dict(model_type="llama"), []),
    "smolvlm_image_text": ("SmolVLMForConditionalGeneration", "SmolVLMConfig", dict(model_type="llama"), []),
    "olmoe": ("OlmoeForCausalLM", None, dict(num_experts=4, num_experts_per_tok=2, clip_qkv=3.0), []),
    "granite_moe": ("GraniteMoeForCausalLM", None, dict(num_local_experts=4, **GRANITE_MULTIPLIERS), []),
    "granite_moe_shared": (  # TP 2: each device's slice of the experts read from one stacked [experts, out, in]
        "GraniteMoeSharedForCausalLM",
        None,
        dict(num_local_experts=4, shared_intermediate_size=48, **GRANITE_MULTIPLIERS),
        [2],
    ),
    "phimoe": (  # a wide sparsemixer window (router_jitter_noise) so its softmax weighs more than one expert
        "PhimoeForCausalLM",
        None,
        dict(
            num_local_experts=4,
            router_jitter_noise=0.3,
            attention_bias=True,
            lm_head_bias=True,
            sliding_window=WINDOW,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 1e4,
                "original_max_position_embeddings": 128,
                "short_factor": [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0],
                "long_factor": [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
                "short_mscale": 1.2,
                "long_mscale": 1.3,
            },
        ),
        [],
    ),
    # layer 0 dense, layer 1 the experts (moe_layer_start_index 1); the correction bias is random (perturbed)
    "ernie4_5_moe": (
        "Ernie4_5_MoeForCausalLM",
        None,
        dict(moe_num_experts=4, moe_k=2, moe_intermediate_size=32, moe_num_shared_experts=2, tie_word_embeddings=False),
        [],
    ),
    # layer 0: rotary (llama3 scaling), q/k L2 norms, a dense MLP; layer 1: no rotary, query temperature (a floor_scale
    # the prompts pass), top-1 of 4 experts scaling their inputs, and the shared expert. Chunks longer than the context
    "llama4": (
        "Llama4ForCausalLM",
        "Llama4TextConfig",
        dict(
            num_local_experts=4,
            intermediate_size_mlp=80,
            interleave_moe_layer_step=2,
            no_rope_layers=[1, 0],
            floor_scale=4,
            attn_scale=0.5,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 5e5,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        [2],  # each device's slice of the experts read from one bare [experts, in, out] tensor
    ),
    # V2-Lite's queries (no q_lora_rank), V2's group-limited softmax router
    "deepseek_v2": (
        "DeepseekV2ForCausalLM",
        None,
        dict(DEEPSEEK, q_lora_rank=None, topk_method="group_limited_greedy", routed_scaling_factor=1.5),
        [],
    ),
    # V3's low-rank queries, sigmoid router with a (random) choice bias, YaRN with both mscales. TP 2: the one
    # latent KV head replicated, the query heads split
    "deepseek_v3": (
        "DeepseekV3ForCausalLM",
        None,
        dict(
            DEEPSEEK,
            q_lora_rank=24,
            norm_topk_prob=True,
            routed_scaling_factor=2.5,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 1e4,
                "factor": 4.0,
                "original_max_position_embeddings": 128,
                "mscale": 1.0,
                "mscale_all_dim": 0.8,
            },
        ),
        [2],
    ),
    # LongCat-Flash: two layers, each two blocks of latent attention and a dense SwiGLU with the mixture on a shortcut
    # between them; 3 of 4 experts and 2 zero-computation ones, the router's (random) choice bias on softmax scores.
    # TP 2: the query heads, MLPs and experts split, the router and its zero experts replicated
    "longcat_flash": (
        "LongcatFlashForCausalLM",
        None,
        dict(
            num_hidden_layers=None,  # LongcatFlashConfig derives it: twice num_layers
            num_layers=2,
            kv_lora_rank=32,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=16,
            num_key_value_heads=None,
            head_dim=8,  # transformers' rotary width: qk_rope_head_dim's
            q_lora_rank=24,
            n_routed_experts=4,
            zero_expert_num=2,
            moe_topk=3,
            expert_ffn_hidden_size=24,
            routed_scaling_factor=2.0,
        ),
        [],
    ),
    # MiMo-V2-Flash: a full attention layer (2 KV heads) with a dense SwiGLU, then a sliding one (4 KV heads, attention
    # sinks) with V3's router (a random choice bias) over 4 experts; values 16 wide beside 24-wide queries and keys,
    # scaled; each layer type its rotary base on 8 of the 24 channels. TP 2: each layer's KV heads split, its sinks with
    # the query heads, the padded values read per device
    "mimo_v2_flash": (
        "MiMoV2FlashForCausalLM",
        None,
        dict(
            head_dim=24,
            v_head_dim=16,
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            sliding_window=WINDOW,
        ),
        [2],
    ),
    # gpt-oss: attention sinks, sliding and full layers, YaRN unrounded (truncate false), biased router and experts
    # (gate and up interleaved in one stored tensor), its clamped SwiGLU (a limit of 3 clamps some of these), 3 of 8
    # experts per token. TP 2: the sinks split with the query heads
    "gpt_oss": (
        "GptOssForCausalLM",
        None,
        dict(
            num_local_experts=8,
            num_experts_per_tok=3,
            sliding_window=WINDOW,
            swiglu_limit=3.0,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "rope_type": "yarn",
                "factor": 4.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
                "original_max_position_embeddings": 128,
                "rope_theta": 150000.0,
            },
        ),
        [2],
    ),
    # GLM-4.5's layout with q/k norms: V3's router and mixture on GQA, the rotary on half of each head (the default)
    "glm4_moe": (
        "Glm4MoeForCausalLM",
        None,
        dict(
            n_routed_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
            use_qk_norm=True,
            attention_bias=True,
        ),
        [],
    ),
    # every second layer without rotary (NoPE), and those sliding
    "smollm3": (
        "SmolLM3ForCausalLM",
        None,
        dict(no_rope_layer_interval=2, use_sliding_window=True, sliding_window=WINDOW, tie_word_embeddings=False),
        [],
    ),
    # Gemma 3's and Mistral 3's text models in image-text checkpoints (IMAGE_TEXT: the outer configs)
    "gemma3_image_text": (
        "Gemma3ForConditionalGeneration",
        "Gemma3Config",
        dict(
            model_type="gemma3_text",
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
            rope_scaling={"rope_type": "linear", "factor": 8.0},  # gemma-3-4b-it's: on the global layers only
            tie_word_embeddings=False,
        ),
        [],
    ),
    "gemma4_image_text": (
        "Gemma4ForConditionalGeneration",
        "Gemma4Config",
        dict(GEMMA4, model_type="gemma4_text", global_head_dim=32, hidden_size_per_layer_input=8),
        [],
    ),
    "mistral3_image_text": (
        "Mistral3ForConditionalGeneration",
        "Mistral3Config",
        dict(model_type="mistral", sliding_window=None, rope_theta=1e9),
        [],
    ),
    # half of each head rotated, in neighbouring pairs; q/k/v biases, fused gate_up_proj
    "glm": ("GlmForCausalLM", None, {}, []),
    # GLM with norms on the attention's and MLP's outputs too. TP 2: the fused gate_up split by column
    "glm4": ("Glm4ForCausalLM", None, dict(partial_rotary_factor=0.25), []),
    "helium": ("HeliumForCausalLM", None, dict(attention_bias=True, mlp_bias=True), []),
    "ernie4_5": ("Ernie4_5ForCausalLM", None, dict(use_bias=True, tie_word_embeddings=False), []),
    "seed_oss": ("SeedOssForCausalLM", None, dict(attention_out_bias=True), []),
    # squared ReLU, not gated
    "arcee": ("ArceeForCausalLM", None, dict(attention_bias=True), []),
    # OLMo 2 with a sliding layer; each layer type its own rope, the global one's scaled
    "olmo3": (
        "Olmo3ForCausalLM",
        None,
        dict(
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
            rope_theta=1e4,
            rope_scaling={"rope_type": "linear", "factor": 2.0},
        ),
        [],
    ),
    # output-only norms, per-head q/k norms; a sliding layer with the rotary, a global one without
    "exaone4": ("Exaone4ForCausalLM", None, dict(sliding_window=WINDOW, sliding_window_pattern=2), []),
    # LayerNorm1P (weight + 1, bias), squared ReLU, half of each head rotated
    "nemotron": ("NemotronForCausalLM", None, dict(attention_bias=True, mlp_bias=True), []),
    # per-head fused query_key_value, q/k LayerNorms with biases, squared ReLU
    "persimmon": ("PersimmonForCausalLM", None, dict(num_key_value_heads=None, head_dim=None), []),
    # learned positions two rows on, ReLU; untied (tied, the random model repeats)
    "opt": ("OPTForCausalLM", None, dict(ffn_dim=96, num_key_value_heads=None, tie_word_embeddings=False), []),
    # xIELU with its learned slopes (perturbed per layer); the default llama3-scaled rope
    "apertus": ("ApertusForCausalLM", None, {}, []),
    # Ministral 3's text model in an image-text checkpoint: YaRN, and queries scaled up every 8 positions
    "ministral3_image_text": (
        "Mistral3ForConditionalGeneration",
        "Mistral3Config",
        dict(model_type="ministral3", sliding_window=None, rope_parameters=MINISTRAL3_ROPE),
        [],
    ),
    # Llama 4 as the hub keeps Scout and Maverick: the text model above inside the image-text one
    "llama4_image_text": (
        "Llama4ForConditionalGeneration",
        "Llama4Config",
        dict(
            model_type="llama4_text",
            num_local_experts=4,
            intermediate_size_mlp=80,
            interleave_moe_layer_step=2,
            no_rope_layers=[1, 0],
            floor_scale=4,
            attn_scale=0.5,
            tie_word_embeddings=False,
        ),
        [],
    ),
    # Gemma 2 without the output norms: a sliding layer, a global one, both soft-caps
    "vaultgemma": (
        "VaultGemmaForCausalLM",
        None,
        dict(
            sliding_window=WINDOW,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            tie_word_embeddings=False,
        ),
        [],
    ),
    "ministral": (
        "MinistralForCausalLM",
        None,
        dict(sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"]),
        [],
    ),
    # CwmConfig's default layers (a global one, then a sliding one) and its llama3-scaled rope
    "cwm": ("CwmForCausalLM", None, dict(sliding_window=WINDOW, rope_parameters=None, mlp_bias=True), []),
    # weightless RMSNorms (the embeddings' too), the rotary turned the other way, q/k norms after it, soft-capped logits
    "nanochat": ("NanoChatForCausalLM", None, {}, []),
    # LayerNorms, a biased squared-ReLU MLP, biases on q, k, v and o
    "jais2": ("Jais2ForCausalLM", None, {}, []),
    # Granite's multipliers, logits multiplied, RMSNorms on the blocks' outputs
    "hyperclovax": (
        "HyperCLOVAXForCausalLM",
        None,
        dict(embedding_multiplier=12.0, residual_multiplier=0.22, logits_scaling=0.5, attention_bias=True),
        [],
    ),
    # Llama's attention with V3's mixture and router in every layer
    "solar_open": (
        "SolarOpenForCausalLM",
        None,
        dict(
            intermediate_size=None,
            n_routed_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            n_shared_experts=1,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
            attention_bias=True,
        ),
        [],
    ),
    # Granite with sinks: a global layer without rotary, a sliding one with it
    "granite_swa": (
        "GraniteSWAForCausalLM",
        None,
        dict(**GRANITE_MULTIPLIERS, sliding_window=WINDOW, layer_rope_theta=[0, 1e4], tie_word_embeddings=False),
        [],
    ),
    # Apertus with its LM head pruned to the first ids (output_vocab_size): the others' logits -inf, never sampled
    "apertus1p5": ("Apertus1p5TextForCausalLM", None, dict(output_vocab_size=32768, tie_word_embeddings=False), []),
    # V3's latent attention (low-rank queries, YaRN with both mscales) with dense SwiGLUs
    "youtu": (
        "YoutuForCausalLM",
        None,
        dict(
            kv_lora_rank=32,
            q_lora_rank=24,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=16,
            head_dim=None,
            num_key_value_heads=None,
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 1e4,
                "factor": 4.0,
                "original_max_position_embeddings": 128,
                "mscale": 1.0,
                "mscale_all_dim": 0.8,
            },
        ),
        [],
    ),
    # DeepSeek-V2's latent attention with the half-split rotary (longrope, MiniCPM3-4B's), dense SwiGLUs, muP's
    # embedding, residual and logits multipliers
    "minicpm3": (
        "MiniCPM3ForCausalLM",
        None,
        dict(
            kv_lora_rank=32,
            qk_nope_head_dim=16,
            qk_rope_head_dim=8,
            v_head_dim=16,
            head_dim=None,
            num_key_value_heads=None,
            q_lora_rank=24,
            scale_emb=4,
            scale_depth=1.4,
            dim_model_base=16,
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 1e4,
                "original_max_position_embeddings": 512,
                "short_factor": [1.0, 1.5, 2.0, 3.0],
                "long_factor": [2.0, 3.0, 4.0, 5.0],
            },
        ),
        [],
    ),
    # the rotary on half of each head (rotary_dim), RMSNorms over the whole q and k projections, top-2 of 8 experts by
    # sigmoid plus a (random) choice bias stored on the MoE block
    "minimax_m2": (
        "MiniMaxM2ForCausalLM",
        None,
        dict(num_local_experts=8, num_experts_per_tok=2, rotary_dim=8),
        [],
    ),
    # V3's latent attention and router; layer 0 dense, layer 1 a mixture (the default mlp_layer_types)
    "glm4_moe_lite": (
        "Glm4MoeLiteForCausalLM",
        None,
        dict(
            DEEPSEEK,
            q_lora_rank=24,
            first_k_dense_replace=None,
            routed_scaling_factor=2.5,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        ),
        [],
    ),
    # V3's latent attention, YaRN and Ministral 3's query scaling every 8 positions; a softmax router, no choice bias
    "mistral4": (
        "Mistral4ForCausalLM",
        None,
        dict(
            DEEPSEEK,
            qk_nope_head_dim=8,
            head_dim=16,
            q_lora_rank=24,
            n_group=1,
            topk_group=1,
            routed_scaling_factor=1.5,
            rope_parameters=dict(MINISTRAL3_ROPE, partial_rotary_factor=0.5),
        ),
        [],
    ),
    # EXAONE 4's attention (a sliding layer with the rotary, a global one without) in pre-norm layers; layer 0 dense,
    # layer 1 V3's mixture with a (random) choice bias stored on the MoE block
    "exaone_moe": (
        "ExaoneMoeForCausalLM",
        None,
        dict(
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            num_shared_experts=1,
            n_group=4,
            topk_group=2,
            sliding_window=WINDOW,
            sliding_window_pattern=2,
        ),
        [],
    ),
    # Command A MoE's layout: a global dense layer with the rotary (the prefix's pattern 1), then a sliding mixture
    # layer; softmax over the top-2 logits of 4 experts, averaged with the shared expert; Cohere's LayerNorms
    "cohere2_moe": (
        "Cohere2MoeForCausalLM",
        None,
        dict(
            num_experts=4,
            num_shared_experts=1,
            first_k_dense_replace=1,
            prefix_dense_intermediate_size=80,
            sliding_window=WINDOW,
            sliding_window_pattern=2,
            attention_bias=True,
            tie_word_embeddings=False,
        ),
        [],
    ),
    # each query head's rows then its output gate's in q_proj, biases on q/k/v/o; layer 0 dense, layer 1 V3's mixture
    # with a (random) choice bias, group-limited
    "minicpm5_moe": (
        "MiniCPM5MoeForCausalLM",
        None,
        dict(
            n_routed_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            n_group=4,
            topk_group=2,
            attention_bias=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        ),
        [],  # TP 2 (each device's heads of the gates) matched transformers once by hand (2026-12-05): ~26 s
    ),
    # a sliding dense layer with the rotary, a global mixture layer without; the attention's output gated per channel
    # by a sigmoid; sigmoid routing with a (random) choice bias, renormalised, times route_scale; embeddings times
    # sqrt(hidden)
    "afmoe": (
        "AfmoeForCausalLM",
        None,
        dict(
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            num_shared_experts=1,
            num_dense_layers=1,
            global_attn_every_n_layers=2,
            sliding_window=WINDOW,
            route_scale=2.5,
            mup_enabled=True,
        ),
        [],
    ),
    # a dense global layer (half of each head rotated), a sliding mixture layer (all of it, another base); the
    # attention's output times a softplus per channel; sigmoid routing with a (random) choice bias, scaled
    "laguna": (
        "LagunaForCausalLM",
        None,
        dict(
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            sliding_window=WINDOW,
            layer_types=["full_attention", "sliding_attention"],
            gating="per-element",
            moe_routed_scaling_factor=2.5,
            attention_bias=True,
        ),
        [],
    ),
    # a sliding layer with the rotary, a global one without; the router's (random) choice bias on its logits, the
    # sigmoid weights renormalised; norms around both blocks
    "kolibri1": (
        "Kolibri1ForCausalLM",
        None,
        dict(
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
            norm_topk_prob=True,
        ),
        [],
    ),
    # a sliding dense layer, a global mixture layer (another rotary base)
    "mellum": (
        "MellumForCausalLM",
        None,
        dict(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
            mlp_layer_types=["dense", "sparse"],
            attention_bias=True,
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 5e5},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        ),
        [],
    ),
    # a dense sliding layer with the rotary, a global mixture layer without; attention sinks; sigmoid routing
    # (renormalised) beside an ungated shared expert
    "flint": (
        "FlintForCausalLM",
        None,
        dict(
            num_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            mlp_only_layers=[0],
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
        ),
        [],
    ),
    # Apertus' attention; a dense layer, then sigmoid routing with a (random) choice bias, scaled, beside an ungated
    # shared expert
    "hy_v3": (
        "HYV3ForCausalLM",
        "HYV3Config",
        dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, num_shared_experts=2, attention_bias=True),
        [],
    ),
    # DeepSeek-V3 with a norm on the mixture's output: a dense layer, then a mixture layer in 4 groups of 2
    "axk1": (
        "AXK1ForCausalLM",
        None,
        dict(
            DEEPSEEK_KEYS,
            head_dim=None,
            num_key_value_heads=None,
            q_lora_rank=24,
            n_shared_experts=2,
            n_group=4,
            topk_group=2,
            mlp_layer_types=["dense", "sparse"],
        ),
        [],
    ),
    # gated-DeltaNet hybrids: recurrent layers 0 and 2 (2 key heads serving 4 value heads), full attention 1 and 3
    "qwen3_next": ("Qwen3NextForCausalLM", None, dict(DELTANET_KEYS, **QWEN_NEXT_MOE), []),
    "qwen3_5": ("Qwen3_5ForCausalLM", "Qwen3_5TextConfig", DELTANET_KEYS, []),
    "qwen3_5_moe": ("Qwen3_5MoeForCausalLM", "Qwen3_5MoeTextConfig", dict(DELTANET_KEYS, **QWEN_NEXT_MOE), []),
    "qwen3_5_image_text": ("Qwen3_5ForConditionalGeneration", "Qwen3_5Config", DELTANET_KEYS, []),
    # Qwen4-Exp: Qwen3.5-MoE's layers in 3 hyper-connection streams (mixers of rank 8), the DeltaNet's output gate a
    # sigmoid, the rotary over whole heads (its default); its QSA indexer's budget (72 tokens) past every context
    # here, where QSA keeps every token
    "qwen4_exp": ("Qwen4ExpForCausalLM", "Qwen4ExpTextConfig", dict(DELTANET_KEYS, **QWEN_NEXT_MOE, **QWEN4_KEYS), []),
    # a mixture of attention heads (each token's queries from 2 of 4 query experts over 2 shared KV heads) and of
    # SwiGLU experts, each with an output bias; untied (tied, the random model repeats)
    "jetmoe": (
        "JetMoeForCausalLM",
        None,
        dict(num_local_experts=4, num_experts_per_tok=2, kv_channels=16, head_dim=None, tie_word_embeddings=False),
        [],
    ),
    # Mamba2 hybrids: layer 0 a Mamba2 mixer, layer 1 attention (Bamba's rotating half its channels; Granite-4.0-H's
    # with no rotary, as released, its multipliers, a mixture beside the shared MLP, biased mixer projections)
    "bamba": ("BambaForCausalLM", None, dict(MAMBA2_KEYS, attn_layer_indices=[1]), []),
    "granite_moe_hybrid": (
        "GraniteMoeHybridForCausalLM",
        None,
        dict(
            MAMBA2_KEYS,
            **GRANITE_MULTIPLIERS,
            layer_types=["mamba", "attention"],
            num_local_experts=4,
            num_experts_per_tok=2,
            shared_intermediate_size=48,
            mamba_proj_bias=True,
            position_embedding_type="nope",
        ),
        [],
    ),
    # OLMo-Hybrid: gated DeltaNet layers 0 and 2 (pre-normed, beta doubled), OLMo 3's output-normed attention 1 and 3
    "olmo_hybrid": ("OlmoHybridForCausalLM", None, DELTANET_KEYS, []),
    # Kimi Linear: Kimi Delta Attention layers 0 and 2 (4 heads of 16, a decay per key channel), NoPE latent
    # attention 1 and 3; a dense first layer, then V3's mixture (4 groups of 2 experts, the best 2 groups) with a
    # shared expert
    "kimi_linear": (
        "KimiLinearForCausalLM",
        None,
        dict(
            DEEPSEEK_KEYS,
            head_dim=None,
            num_key_value_heads=None,
            num_hidden_layers=4,
            layer_types=["linear_attention", "full_attention"] * 2,
            mlp_layer_types=["dense", "sparse", "sparse", "sparse"],
            num_experts=8,  # KimiLinearConfig's name (n_routed_experts is not read)
            n_group=4,
            topk_group=2,
            linear_num_heads=4,
            linear_head_dim=16,
        ),
        [],
    ),
    # BailingHybrid (Ling 3): Kimi Delta Attention layers 0 and 2 (4 heads of 16, its bounded forget gate and output
    # gate one projection each), latent attention 1 and 3 with a sigmoid gate per head; a dense first layer, then
    # V3's mixture (4 groups of 2 experts, the best 2 groups) with a shared expert, their SwiGLUs clipped per layer
    # where the limit is not 0 (half the silu(gate) values reach 3 here: a limit of 3 or 4 clips many); the dense
    # layer's never (its limit of 1 ignored)
    "bailing_hybrid": (
        "BailingHybridForCausalLM",
        None,
        dict(
            {k: v for k, v in DEEPSEEK_KEYS.items() if k != "n_routed_experts"},
            num_experts=8,  # BailingHybridConfig's name (it refuses n_routed_experts)
            num_key_value_heads=4,
            num_hidden_layers=4,
            layer_group_size=2,
            first_k_dense_replace=1,
            n_group=4,
            topk_group=2,
            expert_swiglu_limit_list=[1.0, 4.0, 0, 3.0],
            share_expert_swiglu_limit_list=[1.0, 3.0, 4.0, 0],
        ),
        [],
    ),
    # MiniMax: lightning attention layers 0 and 2 (4 heads of 16), Mixtral's attention 1 and 3, Mixtral's mixture, the
    # residuals from the normed inputs, scaled
    "minimax": ("MiniMaxForCausalLM", None, MINIMAX_KEYS, []),
    # Nemotron 3: Nemotron-H's blocks with mixture ones (E): 8 squared-ReLU experts in 4 groups (the best 2) under V3's
    # biased sigmoid router, beside a squared-ReLU shared expert; the MLP block (-) dense
    "nemotron_h_moe": (
        "NemotronHForCausalLM",
        None,
        dict(
            num_hidden_layers=None,
            hybrid_override_pattern="ME*-E",
            mamba_num_heads=8,
            mamba_head_dim=16,
            n_groups=2,
            ssm_state_size=16,
            n_routed_experts=8,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            moe_shared_expert_intermediate_size=48,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
        ),
        [],
    ),
    # LFM2's short-conv layers 0 and 2 (B * x through a conv of kernel 3 with biases), attention 1 and 3; LFM2-MoE's
    # first layer dense, then a mixture under its biased sigmoid router
    "lfm2": ("Lfm2ForCausalLM", None, dict(LFM2_KEYS, conv_bias=True, tie_word_embeddings=False), []),
    "lfm2_moe": (
        "Lfm2MoeForCausalLM",
        None,
        dict(
            LFM2_KEYS,
            num_dense_layers=1,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            routed_scaling_factor=1.5,
            tie_word_embeddings=False,
        ),
        [],
    ),
    # Nemotron-H's blocks each one kind: Mamba2, squared-ReLU MLP, attention (no rotary), MLP, Mamba2 (the
    # pattern's length the layer count), biased mixer projections (its use_bias)
    "nemotron_h": (
        "NemotronHForCausalLM",
        None,
        dict(
            num_hidden_layers=None,
            hybrid_override_pattern="M-*-M",
            mamba_num_heads=8,
            mamba_head_dim=16,
            n_groups=2,
            ssm_state_size=16,
            conv_kernel=4,
            use_bias=True,
            chunk_size=32,
        ),
        [],
    ),
    # Mamba (v1): two blocks of a norm and a mixer alone (64 channels, a state of 16, a time step of rank 4, biased
    # projections), no attention and no position limit (the reader's default context); its LM head tied, as released
    "mamba": ("MambaForCausalLM", None, dict(MAMBA_KEYS, use_bias=True, tie_word_embeddings=True), []),
    # pure Mamba2: two blocks of a norm and a Mamba2 mixer alone (8 heads of 16 channels, B and C in 2 groups, a
    # state of 16, biased projections, chunks of 32: the 70-token prompt crosses two), no attention, its LM head
    # untied (Mamba2Config's default); a time step limit that clamps both ways (transformers clamps a prefill's time
    # steps, its chunked scan's, but not a decode's, where jllm clamps every step's: its row is logits only)
    "mamba2": (
        "Mamba2ForCausalLM",
        None,
        dict(
            MAMBA_KEYS,
            num_heads=8,
            head_dim=16,
            n_groups=2,
            state_size=16,
            chunk_size=32,
            use_bias=True,
            time_step_limit=(0.05, 2.0),
        ),
        [],
    ),
    # Zamba2: Mamba2 layers (8 heads of 16 channels, 2 groups, chunks of 32), layers 1 and 2 invoking the one shared
    # block (each invocation its own adapters and pages): attention over 128 channels in 4 heads of 32 with adapters
    # on q, k, v and rotary, a GeGLU MLP with its adapter, biased linears; a milder initialisation than BASE's (at
    # 0.3 transformers' own float32 logits are 8.7e-5 from its float64 ones, at 0.15 6.9e-7)
    "zamba2": ("Zamba2ForCausalLM", None, ZAMBA2_KEYS, []),
    # Zamba2 with two shared blocks invoked in turn (layers 0, 2, 3: blocks 0, 1, 0, the third invocation's adapters
    # stored in the first's lists), grouped KV heads (4 / 2), no adapters on the attention, no rotary, SiLU's MLP
    "zamba2_blocks": (
        "Zamba2ForCausalLM",
        None,
        dict(
            ZAMBA2_KEYS,
            num_hidden_layers=4,
            layers_block_type=["hybrid", "mamba", "hybrid", "hybrid"],
            num_mem_blocks=2,
            num_key_value_heads=2,
            use_shared_attention_adapter=False,
            use_mem_rope=False,
            hidden_act="silu",
        ),
        [],
    ),
    # FalconMamba: Mamba with weightless RMSNorms on the time step's input, B and C
    "falcon_mamba": ("FalconMambaForCausalLM", None, dict(MAMBA_KEYS, mixer_rms_eps=1e-5), []),
    # Jamba: attention (no rotary) at layers 1 and 3, Mamba mixers (their dt, B, C RMSNorms weighted) at 0 and 2;
    # mixtures at 0 and 3 (the top 2 of 4 experts' softmax, not renormalised), dense SwiGLUs at 1 and 2
    "jamba": (
        "JambaForCausalLM",
        None,
        dict(
            num_hidden_layers=4,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=3,
            expert_layer_offset=0,
            num_experts=4,
            num_experts_per_tok=2,
            mamba_d_state=8,
            mamba_proj_bias=True,
            tie_word_embeddings=False,
        ),
        [],
    ),
    # DeepSeek-V3.2: V3 with DeepSeek Sparse Attention, each query over its indexer's top 8 tokens (the rotary
    # half-split on the indexer's first 8 channels; YaRN with both mscales, its attention factor on the indexer's
    # rotary too): the prompts past 8 tokens select. TP 2: the indexer and its key pool replicated as the latent
    # ones are, the query heads split. tests/test_sparse_attention.py checks the rest (chunks, prefix hits).
    "deepseek_v32": (
        "DeepseekV32ForCausalLM",
        None,
        dict(
            DEEPSEEK,
            **DSA_KEYS,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 1e4,
                "factor": 4.0,
                "original_max_position_embeddings": 128,
                "mscale": 1.0,
                "mscale_all_dim": 0.8,
            },
        ),
        [2],
    ),
    # GLM-5: DeepSeek-V3.2's layers, the indexer's rotary pairs interleaved, in layers 0 and 1 alone (index_topk_freq
    # 3 from index_skip_topk_offset 2: full, full, shared, shared), layers 2 and 3 attending over layer 1's selection
    # and keeping no indexer keys. TP 2: the selection handed on replicated. tests/test_sparse_attention.py checks the
    # rest (chunks beside decodes, prefix hits).
    "glm_moe_dsa": (
        "GlmMoeDsaForCausalLM",
        None,
        dict(
            DEEPSEEK,
            **DSA_KEYS,
            num_hidden_layers=4,
            index_topk_freq=3,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        ),
        [],
    ),
    # A.X-K2: DeepSeek-V3.2's layers (the prompts past index_topk 8 select) with each head's query and output gate
    # from q_gate_proj, gated input norms (rank 4) and the mixture layer's gated MLP norm (the dense layer's plain),
    # routed without expert groups (A.X-K2-Light's); attention biases on
    "axk2": (
        "AXK2ForCausalLM",
        None,
        dict(
            DEEPSEEK_KEYS,
            **DSA_KEYS,
            head_dim=None,
            num_key_value_heads=None,
            n_shared_experts=2,
            gated_norm_rank=4,
            attention_bias=True,
            mlp_layer_types=["dense", "sparse"],
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
        ),
        [],
    ),
    # Falcon-H1: attention beside a Mamba2 mixer in both layers (Bamba's mixer sizes, 128 channels from mamba_d_ssm),
    # every muP multiplier away from 1, the mixer's gated norm applied before the gate (FalconH1Config's default)
    "falcon_h1": ("FalconH1ForCausalLM", None, FALCON_H1_KEYS, []),
    # Granite MoE SWA: Granite MoE Shared's mixture and shared MLP (transformers 5's tensor names) under Granite SWA's
    # sinks, a sliding layer with rotary at its own base, then a global one without
    "granite_moe_swa": (
        "GraniteMoeSWAForCausalLM",
        None,
        dict(
            **GRANITE_MULTIPLIERS,
            num_local_experts=4,
            shared_intermediate_size=48,
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention"],
            layer_rope_theta=[5e4, 0],
            tie_word_embeddings=False,
        ),
        [],
    ),
    # LFM3: LFM2's short convs (kernel 3, biased) beside sliding and full attention, each type its own rotary
    # (Lfm3Config's: the full layers' proportional over half the channel pairs), per-head output gates, norms on both
    # blocks' outputs; untied (tied, the random model repeats)
    "lfm3": (
        "Lfm3ForCausalLM",
        None,
        dict(
            num_hidden_layers=4,
            layer_types=["conv", "sliding_attention", "conv", "full_attention"],
            sliding_window=WINDOW,
            conv_L_cache=3,
            conv_bias=True,
            tie_word_embeddings=False,
        ),
        [],
    ),
    # Aria's text model: Llama's layers, top 2 of 4 experts (a softmax over the chosen logits) beside an ungated shared
    # SwiGLU twice as wide; the experts stored as transformers saves them (fc1 / fc2)
    "aria_text": (
        "AriaTextForCausalLM",
        None,
        dict(moe_num_experts=4, moe_topk=2, moe_num_shared_experts=2, tie_word_embeddings=False),
        [],
    ),
    # Qwen4-Exp as the hub keeps it: the image-text wrapper, its language model under model.language_model.
    "qwen4_exp_image_text": (
        "Qwen4ExpForConditionalGeneration",
        "Qwen4ExpConfig",
        dict(DELTANET_KEYS, **QWEN_NEXT_MOE, **QWEN4_KEYS),
        [],
    ),
}
MIXTURES = (
    "dbrx",
    "mimo_v2_flash",
    "longcat_flash",
    "gemma4_moe",
    "glm4v_moe_image_text",
    "flex_olmo",
    "dots1",
    "hunyuan_moe",
    "mixtral",
    "qwen3_moe",
    "qwen2_moe",
    "olmoe",
    "aria_text",
    "granite_moe",
    "granite_moe_shared",
    "granite_moe_hybrid",
    "granite_moe_swa",
    "phimoe",
    "ernie4_5_moe",
    "llama4",
    "deepseek_v2",
    "deepseek_v3",
    "glm4_moe",
    "gpt_oss",
    "minimax_m2",
    "glm4_moe_lite",
    "mistral4",
    "exaone_moe",
    "cohere2_moe",
    "minicpm5_moe",
    "afmoe",
    "laguna",
    "kolibri1",
    "mellum",
    "flint",
    "hy_v3",
    "axk1",
    "jetmoe",
    "qwen3_next",
    "qwen3_5_moe",
    "qwen4_exp",
    "lfm2_moe",
    "kimi_linear",
    "bailing_hybrid",
    "nemotron_h_moe",
    "minimax",
    "jamba",
    "deepseek_v32",
    "glm_moe_dsa",
)
# image-text checkpoints (loaded text-only): name -> the outer config, a tiny vision tower's included
PIXTRAL = dict(
    model_type="pixtral",
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=1,
    num_attention_heads=2,
    head_dim=16,
    image_size=28,
    patch_size=14,
)
CLIP = dict(
    model_type="clip_vision_model",
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=28,
    patch_size=14,
    projection_dim=32,
)
SIGLIP = dict(
    hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
)
QWEN_VISION = dict(depth=1, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64)
IMAGE_TEXT = {
    "gemma3_image_text": dict(
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
        mm_tokens_per_image=4,
        tie_word_embeddings=False,
    ),
    "gemma4_image_text": dict(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            patch_size=14,
        ),
        tie_word_embeddings=False,
    ),
    "llama4_image_text": dict(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            vision_output_dim=32,
            projector_input_dim=32,
            projector_output_dim=32,
        ),
        tie_word_embeddings=False,
    ),
    "mistral3_image_text": dict(vision_config=PIXTRAL, tie_word_embeddings=False),
    "qwen2_5_vl_image_text": dict(vision_config=dict(QWEN_VISION, fullatt_block_indexes=[0], window_size=28)),
    "qwen2_vl_image_text": dict(
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=14)
    ),
    "glm4v_image_text": dict(vision_config=dict(QWEN_VISION, patch_size=14, image_size=28), tie_word_embeddings=False),
    "glm4v_moe_image_text": dict(
        vision_config=dict(QWEN_VISION, patch_size=14, image_size=28), tie_word_embeddings=False
    ),
    "llava_image_text": dict(vision_config=CLIP, image_token_index=150),
    "llava_next_image_text": dict(vision_config=CLIP, image_token_index=150),
    "aya_vision_image_text": dict(
        vision_config=dict(SIGLIP, model_type="siglip_vision_model"), downsample_factor=2, tie_word_embeddings=False
    ),
    "internvl_image_text": dict(
        vision_config=dict(SIGLIP, image_size=[28, 28], patch_size=[14, 14]), tie_word_embeddings=False
    ),
    "idefics3_image_text": dict(vision_config=SIGLIP, scale_factor=1, tie_word_embeddings=False),
    "smolvlm_image_text": dict(vision_config=SIGLIP, scale_factor=1, tie_word_embeddings=False),
    "qwen3_vl_image_text": dict(
        vision_config=dict(QWEN_VISION, patch_size=16, deepstack_visual_indexes=[0], num_position_embeddings=16)
    ),
    "qwen3_vl_moe_image_text": dict(
        vision_config=dict(QWEN_VISION, patch_size=16, deepstack_visual_indexes=[0], num_position_embeddings=16)
    ),
    "ministral3_image_text": dict(vision_config=PIXTRAL, tie_word_embeddings=False),
    "qwen3_5_image_text": dict(vision_config=dict(QWEN_VISION, patch_size=16, num_position_embeddings=16)),
    "qwen4_exp_image_text": dict(vision_config=dict(QWEN_VISION, patch_size=16, num_position_embeddings=16)),
}
# Other layouts within a family, logits only: name -> (architecture, config overrides on TINY_CONFIG)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    # Ministral 3's text model saved on its own
    "ministral3_causal_lm": ("Ministral3ForCausalLM", dict(head_dim=16, rope_parameters=MINISTRAL3_ROPE)),
    "llama_attention_and_mlp_bias": ("LlamaForCausalLM", dict(attention_bias=True, mlp_bias=True)),  # o_proj's too
    # dynamic NTK: the plain rotary up to max_position_embeddings, the context's limit (had been refused)
    "llama_dynamic_rope": (
        "LlamaForCausalLM",
        dict(rope_parameters=dict(rope_type="dynamic", factor=4.0, rope_theta=10000.0), max_position_embeddings=48),
    ),
    # a tied head keeps its own bias (transformers ties lm_head.weight alone); had been refused
    "phi_tied_head_with_bias": ("PhiForCausalLM", dict(tie_word_embeddings=True)),
    "gptj_tied_head_with_bias": (
        "GPTJForCausalLM",
        dict(rotary_dim=8, num_key_value_heads=None, tie_word_embeddings=True),
    ),
    # Falcon-H1 without the mixer's norm (SiLU(z) gates its output alone: FalconH1Config's default), every linear
    # biased
    "falcon_h1_gate_only_biased": (
        "FalconH1ForCausalLM",
        dict(
            FALCON_H1_KEYS,
            mamba_rms_norm=False,
            mamba_proj_bias=True,
            projectors_bias=True,
            attention_bias=True,
            mlp_bias=True,
        ),
    ),
    # Granite-4.0-H with the shared MLP alone (no experts) and rotary attention, attention first
    "granite_moe_hybrid_dense_rope": (
        "GraniteMoeHybridForCausalLM",
        dict(
            MAMBA2_KEYS,
            layer_types=["attention", "mamba"],
            num_local_experts=0,
            shared_intermediate_size=48,
            position_embedding_type="rope",
        ),
    ),
    "gpt_neox_sequential_no_bias": (
        "GPTNeoXForCausalLM",
        dict(rotary_pct=0.25, use_parallel_residual=False, attention_bias=False),
    ),
    "falcon_grouped_one_norm": (  # Falcon-11B's layout: the MLP shares the attention's input norm
        "FalconForCausalLM",
        dict(new_decoder_architecture=True, num_kv_heads=2, num_ln_in_parallel_attn=1, ffn_hidden_size=96),
    ),
    "falcon_multi_query": ("FalconForCausalLM", dict(multi_query=True, parallel_attn=True, ffn_hidden_size=96)),
    "falcon_sequential_mha_bias": (
        "FalconForCausalLM",
        dict(multi_query=False, parallel_attn=False, bias=True, ffn_hidden_size=96),
    ),
    "gpt_bigcode_multi_head_unscaled": (
        "GPTBigCodeForCausalLM",
        dict(multi_query=False, scale_attn_weights=False, n_inner=96),
    ),
    # Cohere2-MoE with RMSNorms, the sigmoids of the top-2 logits renormalised, summed with the shared expert; a
    # sliding dense layer (the prefix's pattern 2), then a global mixture layer without the rotary
    "cohere2_moe_sigmoid_sum_rms": (
        "Cohere2MoeForCausalLM",
        dict(
            head_dim=16,
            num_experts=4,
            num_shared_experts=2,
            shared_expert_combination_strategy="sum",
            expert_selection_fn="sigmoid",
            rms_norm_eps=1e-6,
            first_k_dense_replace=1,
            prefix_dense_sliding_window_pattern=2,
            sliding_window_pattern=1,
            sliding_window=8,
            tie_word_embeddings=False,
        ),
    ),
    # Qwen3-MoE's and Qwen2-MoE's dense layers (a SwiGLU of intermediate_size; had been refused): every second layer
    # sparse (layer 0 dense), or the layers mlp_only_layers names dense
    "qwen3_moe_sparse_step_2": (
        "Qwen3MoeForCausalLM",
        dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=2),
    ),
    "qwen2_moe_mlp_only_layers": (
        "Qwen2MoeForCausalLM",
        dict(num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=48, mlp_only_layers=[1]),
    ),
    # transformers' DeepSeek-V2 never reads moe_layer_freq: experts in every layer from first_k_dense_replace on (the
    # reader had skipped every other one, DeepSeek's own rule, and missed their tensors)
    "deepseek_v2_moe_layer_freq": (
        "DeepseekV2ForCausalLM",
        dict(
            DEEPSEEK_KEYS,
            num_key_value_heads=None,
            q_lora_rank=None,
            n_shared_experts=1,
            num_hidden_layers=3,
            moe_layer_freq=2,
        ),
    ),
    # transformers' Gemma 2 (and 3) runs ACT2FN[hidden_activation]: "gelu" is the exact gelu there (had been refused)
    "gemma2_exact_gelu": (
        "Gemma2ForCausalLM",
        dict(head_dim=16, sliding_window=16, hidden_activation="gelu", tie_word_embeddings=False),
    ),
    # StableLM 2 1.6B's layout: sequential, q/k/v biases, no q/k norms
    "stablelm_sequential_qkv_bias": ("StableLmForCausalLM", dict(use_qkv_bias=True)),
    # Laguna's default gate: one softplus factor per head
    "laguna_per_head_gate": (
        "LagunaForCausalLM",
        dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, gating=True),
    ),
}
PROMPTS = [[1, 5, 77, 300, 9000, 12, 40], [1, 2000, 3000, 4000], list(range(100, 140))]  # the last > WINDOW
NEW_TOKENS = 24
# Per prompt: the 40-token prompt samples its first token 3 steps after the short ones (its prefill chunks), so these
# decode 3 more tokens and the three finish on one step. Had they stopped together, the 40-token prompt's last 3
# decodes would have run alone, in a (1 token, 1 sequence) bucket whose forward and 1-row sampler compiled only for
# them: two programs per LLM, ~1.5 CPU s a row here (2026-12-07)
BATCH_NEW_TOKENS = [NEW_TOKENS + 3, NEW_TOKENS + 3, NEW_TOKENS]
TP_NEW_TOKENS = [15, 15, 12]  # tests/tp_worker.py's GREEDY max_tokens, the same lead
GREEDY_BATCH = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in BATCH_NEW_TOKENS]
# Two step buckets (16 tokens x 1 / 4 sequences): the 40-token prompt is prefilled in chunks beside the decodes.
# Programs compiled on first use: greedy decoding needs the forwards and one sampler, not warm-up's dozen programs.
ENGINE_ARGS = dict(
    dtype="float32", max_model_len=64, max_num_batched_tokens=16, max_num_seqs=4, num_pages=40, compile_at_start=False
)


class FamilyDirs(dict[str, Path]):
    """Each family's tiny checkpoint, written on first use: ``-k`` on one family writes only its own. Another test
    file passes its own ``families`` and ``image_text`` rows (``FAMILIES``' and ``IMAGE_TEXT``'s form), each seeded by
    its position there."""

    def __init__(
        self,
        root: Path,
        tokenizer_dir: Path,
        families: dict[str, tuple[str, str | None, dict[str, Any], list[int]]] | None = None,
        image_text: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.root, self.tokenizer_dir = root, tokenizer_dir
        self.families = FAMILIES if families is None else families
        self.image_text = IMAGE_TEXT if image_text is None else image_text

    def __missing__(self, name: str) -> Path:
        arch, config_cls, overrides, _ = self.families[name]
        config = {k: v for k, v in {**BASE, **overrides}.items() if v is not None or k not in BASE}
        if name in self.image_text:  # the text model's config nested in the image-text one's
            config = dict(self.image_text[name], text_config=config)
        seed = list(self.families).index(name)
        out = save_tiny_checkpoint(
            arch, config, self.root / name, seed=seed, config_cls_name=config_cls, perturb_constants=True
        )
        for file in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(self.tokenizer_dir / file, out / file)
        self[name] = out
        return out


@pytest.fixture(scope="module")
def family_dirs(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FamilyDirs:
    return FamilyDirs(tmp_path_factory.mktemp("families"), default_model_dir)


@pytest.fixture
def little_machine_code_optimization() -> Iterator[None]:
    """JAX's ``jax_disable_most_optimizations`` for a test: LLVM's passes at level 0 on the machine code XLA:CPU
    emits, the HLO (its fusions, the ops it runs) optimized as before. A tiny model's logits program compiles once
    and runs once, so compiling was most of a logits row's time: 30 rows' CPU seconds 97 -> 68 (Gemma 4's 3.9 -> 2.7,
    2026-12-07, cold cache). Every row passes at its unchanged bound: LLVM's levels keep IEEE float semantics (no
    reassociation without fast-math, which XLA:CPU leaves off). The greedy rows too: each bucket's forward compiles
    once for a few steps (12 rows' CPU seconds 127 -> 118 with their shared fixtures, 2026-12-08; all 45 rows'
    tokens still transformers')."""
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def assert_logits_match_transformers(model_dir: Path, rtol: float = LOGITS_RTOL) -> None:
    """A 70-token prompt's float32 logits, prefilled in one step, within ``rtol`` of transformers' and with its
    argmax: the logits row of the family files that keep their own rows (``FamilyDirs``' ``families``)."""
    ids = np.random.default_rng(7).integers(0, BASE["vocab_size"], 70).tolist()
    expected = hf_logits(model_dir, ids)
    got = jllm_logits(load_model(model_dir, mesh=make_mesh(1), dtype="float32"), ids, page_size=16)
    assert relative_error(got, expected) < rtol
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_match_transformers(family_dirs, name):
    model_dir = family_dirs[name]
    assert (model_dir / "model.safetensors.index.json").is_file(), "the test must exercise a sharded checkpoint"
    ids = np.random.default_rng(7).integers(0, BASE["vocab_size"], 70).tolist()
    expected = hf_logits(model_dir, ids)
    loaded = load_model(model_dir, mesh=make_mesh(1), dtype="float32")
    got = jllm_logits(loaded, ids, page_size=16)
    got, pruned = got[:, : expected.shape[1]], got[:, expected.shape[1] :]  # ids past a pruned LM head (Apertus 1.5)
    assert np.all(pruned == -np.inf), "ids past a pruned LM head must never be produced"
    rtol = HYBRID_LOGITS_RTOL if name in HYBRIDS else LOGITS_RTOL
    assert relative_error(got, expected) < rtol
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    if name in CHUNKED:  # the prompt again, 32 tokens a step, each continuing from the pool the last left
        assert relative_error(jllm_chunked_logits(loaded, ids, chunk=32), expected) < rtol


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_logits_match_transformers(tmp_path, name):
    arch, overrides = VARIANTS[name]
    config = dict(TINY_CONFIG, initializer_range=0.3, **overrides)
    model_dir = save_tiny_checkpoint(arch, config, tmp_path / name, perturb_constants=True)
    ids = np.random.default_rng(8).integers(0, TINY_CONFIG["vocab_size"], 40).tolist()
    expected = hf_logits(model_dir, ids)
    got = jllm_logits(load_model(model_dir, mesh=make_mesh(1), dtype="float32"), ids, page_size=16)
    assert relative_error(got, expected) < LOGITS_RTOL
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.slow
def test_gpt2_saved_as_the_hub_keeps_it_loads_without_the_transformer_prefix(tmp_path):
    """GPT-2's own checkpoints were saved from the base model: ``h.0.attn.c_attn.weight``, no ``transformer.``, one
    file, a tied head; transformers reads them through ``base_model_prefix``, and so does the loader."""
    from safetensors.numpy import load_file, save_file

    config = dict(TINY_CONFIG, n_inner=96, initializer_range=0.3)
    model_dir = save_tiny_checkpoint("GPT2LMHeadModel", config, tmp_path / "gpt2", config_cls_name="GPT2Config")
    tensors = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors |= {k.removeprefix("transformer."): v for k, v in load_file(shard).items()}
        shard.unlink()
    (model_dir / "model.safetensors.index.json").unlink()
    assert "lm_head.weight" not in tensors and "h.0.attn.c_attn.weight" in tensors
    save_file(tensors, model_dir / "model.safetensors")
    ids = np.random.default_rng(9).integers(0, TINY_CONFIG["vocab_size"], 40).tolist()
    expected = hf_logits(model_dir, ids)
    got = jllm_logits(load_model(model_dir, mesh=make_mesh(1), dtype="float32"), ids, page_size=16)
    assert relative_error(got, expected) < LOGITS_RTOL


@pytest.mark.slow
def test_gpt2_reorder_and_upcast_attn_is_the_plain_attention_in_float32(tmp_path):
    """``reorder_and_upcast_attn`` (Stanford CRFM's Mistral GPT-2 runs) only moves the score scale into the product and
    upcasts the softmax; transformers' eager path, the only one that reads it, gives the plain attention's logits."""
    import torch
    import transformers

    config = dict(TINY_CONFIG, n_inner=96, initializer_range=0.3, tie_word_embeddings=False)
    config["reorder_and_upcast_attn"] = True
    model_dir = save_tiny_checkpoint("GPT2LMHeadModel", config, tmp_path / "gpt2", config_cls_name="GPT2Config")
    ids = np.random.default_rng(9).integers(0, TINY_CONFIG["vocab_size"], 40).tolist()
    model = transformers.GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        expected = model.eval()(torch.tensor([ids])).logits[0].numpy()
    got = jllm_logits(load_model(model_dir, mesh=make_mesh(1), dtype="float32"), ids, page_size=16)
    assert relative_error(got, expected) < LOGITS_RTOL
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.slow
def test_image_text_checkpoint_saved_with_transformers_5_names_loads_the_same(family_dirs, tmp_path):
    """transformers saves an image-text model's language model as ``language_model.model.*`` (as the hub keeps
    them); its in-memory names (``model.language_model.*``, ``lm_head.weight``), which other tools save, read alike."""
    from safetensors.numpy import load_file, save_file

    saved = family_dirs["mistral3_image_text"]
    renamed = tmp_path / "renamed"
    shutil.copytree(saved, renamed)
    tensors = {}
    for shard in sorted(renamed.glob("*.safetensors")):
        tensors |= load_file(shard)
        shard.unlink()
    (renamed / "model.safetensors.index.json").unlink()
    assert "language_model.lm_head.weight" in tensors and "language_model.model.norm.weight" in tensors
    moved = {k.replace("language_model.model.", "model.language_model.", 1): v for k, v in tensors.items()}
    save_file(
        {k.replace("language_model.lm_head.", "lm_head.", 1): v for k, v in moved.items()},
        renamed / "model.safetensors",
    )
    ids = PROMPTS[2]
    expected = jllm_logits(load_model(saved, mesh=make_mesh(1), dtype="float32"), ids)
    np.testing.assert_array_equal(jllm_logits(load_model(renamed, mesh=make_mesh(1), dtype="float32"), ids), expected)


def test_falcon_h1_layers_keep_pages_beside_their_mamba2_state_both_split_by_heads():
    """Every Falcon-H1 layer runs attention beside its mixer: its cache entry is its own pages beside its Mamba2
    state, and tensor parallelism splits the attention by KV heads and the mixer by its heads."""
    config = {**BASE, **FALCON_H1_KEYS, "architectures": ["FalconH1ForCausalLM"]}
    _, state, args, _ = abstract_model(config, jax.numpy.float32, tensor_parallel_size=2)
    spec = KVCacheSpec.for_model(args, page_size=4, dtype=jax.numpy.float32)
    assert (spec.num_layers, spec.with_pages, spec.num_kv_heads, spec.head_dim) == (2, (0, 1), 2, 16)
    axes = {"/".join(map(str, p)): v.axes for p, v in nnx.to_flat_state(state)}
    assert axes["layers/1/self_attn/qkv_proj/kernel"][1] == "kv_heads"
    assert axes["layers/1/mixer/in_proj/kernel"][1] == axes["layers/1/mixer/out_proj/kernel"][0] == "recurrent_heads"


def test_mamba2_embedding_under_its_older_name_reads_the_same(tmp_path):
    """Older Mamba2 checkpoints name the embedding ``backbone.embedding`` (transformers' load hook renames it): the
    embedding reads from it."""
    from contextlib import ExitStack

    from safetensors.numpy import save_file

    from jllm.models.families.mamba import mamba2
    from jllm.safetensors_index import SafetensorsIndex

    config = dict(vocab_size=6, hidden_size=4, num_hidden_layers=1, num_heads=2, head_dim=4, n_groups=1)
    weights = mamba2(config, np.float32).weights
    table = np.arange(24, dtype=np.float32).reshape(6, 4)
    save_file({"backbone.embedding.weight": table}, tmp_path / "model.safetensors")
    with ExitStack() as stack:
        index = SafetensorsIndex(tmp_path, stack, weights)
        read = index.param_reader(("embed_tokens", "embedding"), (6, 4), np.float32, 1)
        np.testing.assert_array_equal(read((slice(None), slice(None))), table)


@pytest.mark.slow
def test_olmo_hybrid_saved_with_in_memory_names_loads_the_same(family_dirs, tmp_path):
    """transformers saves OLMo-Hybrid as released (``attention_layer_norm``, ``feedforward_layer_norm``, the convs of
    q, k and v apart) and renames on load; its in-memory names (``input_layernorm``, ``post_attention_layernorm``,
    one ``conv1d``), which other tools save, read alike."""
    from safetensors.numpy import load_file, save_file

    saved = family_dirs["olmo_hybrid"]
    renamed = tmp_path / "renamed"
    shutil.copytree(saved, renamed)
    tensors = {}
    for shard in sorted(renamed.glob("*.safetensors")):
        tensors |= load_file(shard)
        shard.unlink()
    (renamed / "model.safetensors.index.json").unlink()
    moved = {}
    for name, value in tensors.items():
        name = name.replace("attention_layer_norm", "input_layernorm")
        moved[name.replace("feedforward_layer_norm", "post_attention_layernorm")] = value
    for conv in [name for name in moved if name.endswith("q_conv1d.weight")]:
        parts = [moved.pop(conv.replace("q_conv1d", f"{p}_conv1d")) for p in "qkv"]
        moved[conv.replace("q_conv1d", "conv1d")] = np.concatenate(parts)
    assert (
        "model.layers.1.post_attention_layernorm.weight" in moved
        and "model.layers.0.linear_attn.conv1d.weight" in moved
    )
    save_file(moved, renamed / "model.safetensors")
    expected, got = (jax.tree.leaves(nnx.state(load_model(d, mesh=make_mesh(1)).model)) for d in (saved, renamed))
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_qwen3_vl_moe_hub_expert_layout_loads_the_same(family_dirs, tmp_path):
    """transformers 5 holds and saves Qwen3-VL-MoE's stacked experts ``[experts, out, in]``; the hub keeps them
    ``[experts, in, out]`` (``gate_up_proj [experts, hidden, 2 * moe]``, ``down_proj [experts, moe, hidden]``), which
    transformers transposes on load. Both read to the same parameters."""
    from safetensors.numpy import load_file, save_file

    saved = family_dirs["qwen3_vl_moe_image_text"]
    hub = tmp_path / "hub"
    shutil.copytree(saved, hub)
    tensors = {}
    for shard in sorted(hub.glob("*.safetensors")):
        tensors |= load_file(shard)
        shard.unlink()
    (hub / "model.safetensors.index.json").unlink()
    experts = [name for name in tensors if name.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    assert len(experts) == 4 and tensors[experts[0]].shape[1] != tensors[experts[0]].shape[2]
    save_file(
        {k: np.ascontiguousarray(v.swapaxes(1, 2)) if k in experts else v for k, v in tensors.items()},
        hub / "model.safetensors",
    )
    expected, got = (jax.tree.leaves(nnx.state(load_model(d, mesh=make_mesh(1)).model)) for d in (saved, hub))
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "renormalize, routing, gpt_oss",
    [(True, "softmax", False), (False, "softmax", False), (False, "sigmoid_input", False), (True, "softmax", True)],
)
def test_mixture_of_experts_equals_a_loop_over_tokens(renormalize, routing, gpt_oss):
    """The grouped matmul over tokens sorted by expert against each token's own top-2 experts, one at a time, their
    weights renormalised (Mixtral, Qwen's norm_topk_prob, gpt-oss's softmax over the chosen logits) or not, or
    (Llama 4) each expert's input scaled by the sigmoid of its logit; gpt-oss's with biases on the router and each
    expert's projections and its clamped SwiGLU (a limit of 1 clamps many)."""
    dim, hidden, experts, t = 16, 24, 6, 40
    glu = ClampedSwiGLU(1.0, alpha=1.702) if gpt_oss else None
    moe = SparseMoE(
        dim, hidden, experts, 2, np.float32, renormalize=renormalize, routing=routing, bias=gpt_oss, glu=glu
    )
    rng = np.random.default_rng(3)
    router = rng.normal(size=(dim, experts)).astype(np.float32)
    gate_up = rng.normal(size=(experts, dim, 2, hidden)).astype(np.float32) / 4
    down = rng.normal(size=(experts, hidden, dim)).astype(np.float32) / 4
    biases = [rng.normal(size=shape).astype(np.float32) for shape in ((experts,), (experts, 2, hidden), (experts, dim))]
    router_bias, gate_up_bias, down_bias = biases if gpt_oss else (np.zeros_like(b) for b in biases)
    moe.gate.kernel.set_value(router)
    moe.experts.gate_up_proj.kernel.set_value(gate_up)
    moe.experts.down_proj.kernel.set_value(down)
    if gpt_oss:
        moe.gate.bias.set_value(router_bias)
        moe.experts.gate_up_proj.bias.set_value(gate_up_bias)
        moe.experts.down_proj.bias.set_value(down_bias)
    x = rng.normal(size=(t, dim)).astype(np.float32)

    expected = np.zeros_like(x)
    used = set()
    for i in range(t):
        logits = x[i] @ router + router_bias
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        top = np.argsort(-probs)[:2]
        used.update(top.tolist())
        for e, w in zip(top, probs[top] / probs[top].sum() if renormalize else probs[top], strict=True):
            xi, w = (x[i] / (1 + np.exp(-logits[e])), 1.0) if routing == "sigmoid_input" else (x[i], w)
            g, u = xi @ gate_up[e, :, 0] + gate_up_bias[e, 0], xi @ gate_up[e, :, 1] + gate_up_bias[e, 1]
            if gpt_oss:  # transformers' GptOssExperts._apply_gate
                g, u = np.minimum(g, 1.0), np.clip(u, -1.0, 1.0)
                h = (u + 1) * g / (1 + np.exp(-1.702 * g))
            else:
                h = (g / (1 + np.exp(-g))) * u
            expected[i] += w * (h @ down[e] + down_bias[e])
    assert len(used) >= 5, f"the batch should spread over the experts, used {sorted(used)}"
    assert relative_error(np.asarray(jax.jit(moe)(x)), expected) < 1e-5


def test_lfm2_refuses_quantization_by_name():
    config = {**TINY_CONFIG, "architectures": ["Lfm2ForCausalLM"], "layer_types": ["conv", "full_attention"]}
    with pytest.raises(ValueError, match="quantization='int8' is not supported for LFM2's short-conv hybrids"):
        abstract_model(config, np.float32, 1, QuantScheme("int8"))


def test_plain_experts_equal_a_loop_over_tokens():
    """Nemotron 3's experts and shared expert, not gated (``down(relu(up(x))^2)``), under the softmax top-2: the
    grouped matmul against each token's own experts, one at a time."""
    dim, hidden, experts, t = 16, 24, 6, 40
    moe = SparseMoE(dim, hidden, experts, 2, np.float32, act="relu2", shared_hidden=20, shared_gated=False, gated=False)
    rng = np.random.default_rng(4)
    router = rng.normal(size=(dim, experts)).astype(np.float32)
    up, down = rng.normal(size=(experts, dim, hidden)) / 4, rng.normal(size=(experts, hidden, dim)) / 4
    shared_up, shared_down = rng.normal(size=(dim, 20)) / 4, rng.normal(size=(20, dim)) / 4
    moe.gate.kernel.set_value(router)
    moe.experts.up_proj.kernel.set_value(up.astype(np.float32))
    moe.experts.down_proj.kernel.set_value(down.astype(np.float32))
    moe.shared_expert.up_proj.kernel.set_value(shared_up.astype(np.float32))
    moe.shared_expert.down_proj.kernel.set_value(shared_down.astype(np.float32))
    x = rng.normal(size=(t, dim)).astype(np.float32)

    expected = np.maximum(x @ shared_up, 0) ** 2 @ shared_down
    for i in range(t):
        logits = x[i] @ router
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        top = np.argsort(-probs)[:2]
        for e, w in zip(top, probs[top] / probs[top].sum(), strict=True):
            expected[i] += w * (np.maximum(x[i] @ up[e], 0) ** 2 @ down[e])
    assert relative_error(np.asarray(jax.jit(moe)(x)), expected) < 1e-5


@pytest.mark.slow  # importing torch and transformers' modeling costs ~5 s of CPU
@pytest.mark.parametrize(
    "model_type, settings, routing",
    [
        ("deepseek_v2", dict(topk_method="greedy"), GroupedRouting("softmax", scale=2.5)),
        ("deepseek_v2", dict(topk_method="group_limited_greedy"), GroupedRouting("softmax", 4, 2, scale=2.5)),
        ("deepseek_v3", dict(norm_topk_prob=True), GroupedRouting("sigmoid", 4, 2, scale=2.5)),
        ("deepseek_v3", dict(norm_topk_prob=False), GroupedRouting("sigmoid", 4, 2, scale=2.5)),
    ],
)
def test_deepseek_routing_chooses_and_weighs_as_transformers_gate(model_type, settings, routing):
    """``grouped_top_k`` against transformers' own router module on random inputs: the same experts per token (4 of
    16, in 4 groups of which the best 2 may be chosen from) with the same weights; V3's random choice bias moves the
    choice, not the weights."""
    import importlib

    import torch
    import transformers

    dim, experts, t, v3 = 8, 16, 64, model_type == "deepseek_v3"
    arch = "DeepseekV3" if v3 else "DeepseekV2"
    config = getattr(transformers, f"{arch}Config")(
        hidden_size=dim,
        num_attention_heads=1,
        n_routed_experts=experts,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        **settings,
    )
    modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    gate = getattr(modeling, f"{arch}TopkRouter")(config)
    rng = np.random.default_rng(5)
    weight = rng.normal(size=(experts, dim)).astype(np.float32)
    x = rng.normal(size=(t, dim)).astype(np.float32)
    bias = (0.3 * rng.normal(size=experts)).astype(np.float32) if v3 else None
    with torch.no_grad():
        gate.weight.copy_(torch.from_numpy(weight))
        if v3:
            gate.e_score_correction_bias.copy_(torch.from_numpy(bias))
        _, hf_weights, hf_chosen = (y.numpy() for y in gate(torch.from_numpy(x)))

    renormalize = bool(settings.get("norm_topk_prob"))
    chosen, weights = (np.asarray(y) for y in grouped_top_k(x @ weight.T, 4, routing, renormalize, bias))
    order, hf_order = np.argsort(chosen, axis=-1), np.argsort(hf_chosen, axis=-1)  # torch's top-k is unsorted
    np.testing.assert_array_equal(np.take_along_axis(chosen, order, -1), np.take_along_axis(hf_chosen, hf_order, -1))
    got, expected = np.take_along_axis(weights, order, -1), np.take_along_axis(hf_weights, hf_order, -1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)  # float32 logits from two matmuls
    if routing.num_groups > 1:  # the group limit decides some tokens' experts: a plain top-k would pick others
        plain = np.sort(np.argsort(-(x @ weight.T + (0 if bias is None else bias)), axis=-1)[:, :4], axis=-1)
        assert (plain != np.sort(chosen, axis=-1)).any(axis=-1).sum() >= 5


def test_deepseek_pool_keeps_one_latent_head_per_device():
    """The pool of DeepSeek's latent attention: one head of kv_lora_rank + qk_rope_head_dim channels (32 + 8 here)
    per token, copied to each device at TP 2, whatever the query heads; its dense first layer and mixtures."""
    config = {**TINY_CONFIG, "architectures": ["DeepseekV3ForCausalLM"], **DEEPSEEK_KEYS, "first_k_dense_replace": 1}
    for tp in (1, 2):
        _, _, args, replicas = abstract_model(config, np.float32, tp)
        assert replicas == tp and KVCacheSpec.for_model(args, 16, np.float32).layer_shape(4) == (1, tp, 4, 16, 40)
    assert [spec.dense_mlp_size for spec in args.layers] == [TINY_CONFIG["intermediate_size"], None]


def hf_experts_used(model_dir: Path, prompts: list[list[int]]) -> list[set[int]]:
    """Per layer with a router, the experts of the best router logits for any token of ``prompts`` (as many as the
    config's experts per token, whatever its family names them: read through jllm's reader)."""
    import torch

    from jllm.models.registry import build_args

    model = hf_model(model_dir)
    top_k = build_args(json.loads((model_dir / "config.json").read_text()), np.float32)[1].experts_per_token
    used: dict[int, set[int]] = {}
    with torch.no_grad():
        for ids in prompts:
            for layer, logits in enumerate(model(torch.tensor([ids]), output_router_logits=True).router_logits):
                used.setdefault(layer, set()).update(torch.topk(logits, top_k).indices.flatten().tolist())
    assert used, "the model recorded no router logits"
    return list(used.values())


def hf_greedy(model_dir: Path, prompts: list[list[int]], new_tokens: int | list[int]) -> list[list[int]]:
    """transformers' greedy ``generate`` of each prompt alone (no padding), never stopping early; ``new_tokens`` for
    every prompt or one count per prompt."""
    import torch

    model = hf_model(model_dir)
    counts = [new_tokens] * len(prompts) if isinstance(new_tokens, int) else new_tokens
    out = []
    for ids, new_tokens in zip(prompts, counts, strict=True):
        seq = model.generate(
            torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        out.append(seq[0, len(ids) :].tolist())
    return out


@pytest.fixture(scope="module")
def hf_tokens(family_dirs) -> Callable[[str], list[list[int]]]:
    """transformers' greedy tokens for ``PROMPTS`` per family, computed once for the greedy and the TP tests."""
    found: dict[str, list[list[int]]] = {}

    def get(name: str) -> list[list[int]]:
        if name not in found:
            found[name] = hf_greedy(family_dirs[name], PROMPTS, BATCH_NEW_TOKENS)
        return found[name]

    return get


# Families whose decoder runs nothing another family's greedy row does not (a config read its own way, a known norm
# or MLP in another place): their logits rows check them, and the suite stays inside its time budget (~10 s a row).
LOGITS_ONLY: set[str] = {
    "vaultgemma",
    "ministral",
    "cwm",
    "jais2",
    "hyperclovax",
    "solar_open",
    "granite_swa",
    "youtu",
}
LOGITS_ONLY |= {"minimax_m2", "glm4_moe_lite", "exaone_moe"}  # V3's router on OLMo 2's, DeepSeek's, EXAONE 4's layers
LOGITS_ONLY |= {"cohere2_moe"}  # Cohere2's layers, a softmax mixture (its average a factor on the logits row's path)
LOGITS_ONLY |= {"minicpm3", "laguna", "mellum", "hy_v3", "axk1"}
LOGITS_ONLY |= {"granite_moe_hybrid"}  # Granite MoE Shared's layers (their greedy row) around Bamba's Mamba2 mixer
# Qwen3-Next's greedy batch (chunked prefill beside decodes, preemption, n > 1) is tests/test_hybrid.py's; Qwen3.5's
# mixer and mixture are Qwen3-Next's, their projections laid out their own way
LOGITS_ONLY |= {"qwen3_next", "qwen3_5", "qwen3_5_moe"}
# OLMo-Hybrid: Qwen3.5's mixer (beta doubled) and OLMo 3's attention, its layers' two norm layouts on its logits row
LOGITS_ONLY |= {"olmo_hybrid"}
# Kimi Linear (its KDA state across steps is its chunked-prefill row's) and Nemotron 3 (its plain experts checked
# against a loop too): their greedy batches equal transformers' by hand (2026-12-05), 38 s and 12 s a row here
LOGITS_ONLY |= {"kimi_linear", "nemotron_h_moe"}
# BailingHybrid: Kimi Linear's mixer (its bounded forget gate across steps: its chunked-prefill row) and latent
# attention, gated per head; its greedy batch equals transformers' (by hand, 2026-12: 41 s a row on a loaded 2-core
# machine)
LOGITS_ONLY |= {"bailing_hybrid"}
# Qwen4-Exp: Qwen3.5-MoE's layers (their state across steps: tests/test_hybrid.py) in hyper-connection streams, which
# keep nothing across steps; its greedy batch and its 32-token chunked prefill's logits equal transformers' (by hand,
# 2026-12: 47 s and 44 s a row on a loaded 2-core machine)
LOGITS_ONLY |= {"qwen4_exp", "qwen4_exp_image_text"}
# DeepSeek-V3.2's and GLM-5's greedy batches are tests/test_sparse_attention.py's (prefix hits, chunks beside decodes)
LOGITS_ONLY |= {"deepseek_v32", "glm_moe_dsa"}
LOGITS_ONLY |= {"axk2"}  # DeepSeek-V3.2's layers (their greedy rows) with gates that keep nothing across steps
# Aria's text model: Llama's layers and a softmax mixture beside an ungated shared expert (Llama 4's greedy row runs
# one); its greedy batch equals transformers' by hand (2026-12)
LOGITS_ONLY |= {"aria_text"}
LOGITS_ONLY |= {"lfm2_moe"}  # LFM2's layers (their greedy row) with DeepSeek-V3's biased sigmoid router
LOGITS_ONLY |= {"falcon_mamba"}  # Mamba's blocks (their greedy row) with weightless norms in the mixer
# Jamba: Mamba's mixer (its greedy row), plain attention and a softmax mixture; its greedy batch equals transformers'
# by hand (2026-12-05, 12 s a row here), its engine's tokens at TP 2 equal TP 1's (tests/test_hybrid_tp.py)
LOGITS_ONLY |= {"jamba"}
# Gemma 4's sliding and full layers with pages of their own shapes and k_eq_v: greedy through the engine at TP 2 (its
# TP row, against transformers' tokens); gemma4_e2b's and gemma4_moe's greedy rows run its decoder at TP 1
LOGITS_ONLY |= {"gemma4"}
# pure Mamba2: Zamba2's and Bamba's greedy rows run its mixer (unclamped), Mamba's the attention-free engine; Zamba2's
# two blocks invoked in turn: its one block's greedy row runs the same layers
LOGITS_ONLY |= {"mamba2", "zamba2_blocks"}
# MiMo-V2-Flash's padded values and per-layer sinks and KV heads: greedy through the engine at TP 2 (its TP row,
# against transformers' tokens, a prompt prefilled in chunks beside decodes)
LOGITS_ONLY |= {"mimo_v2_flash"}
# Families whose decoder differs from one with a greedy row only in what does not depend on a token's position or on
# the pages of earlier steps (a norm, an MLP, a mixture's router or experts, biases, multipliers, a config read its
# own way): their 70-token logits row checks that; greedy decoding runs the same paged decode path as the row named.
# Cut to keep the suite inside its time budget (2026-12-06).
# Qwen 3's row; then GLM-4's, GPT-NeoX's, Cohere2's and GPT-2's; then Mixtral's, Llama 4's and DeepSeek-V3's:
LOGITS_ONLY |= {"gemma", "olmo", "olmo2", "helium", "seed_oss", "arcee", "apertus", "ernie4_5", "hunyuan_dense"}
LOGITS_ONLY |= {"granite", "nemotron", "glm", "phi", "stablelm", "cohere", "gpt_bigcode"}
LOGITS_ONLY |= {"qwen3_moe", "qwen2_moe", "olmoe", "phimoe", "dbrx", "flex_olmo", "granite_moe", "granite_moe_shared"}
LOGITS_ONLY |= {"gemma4_moe", "hunyuan_moe", "dots1", "ernie4_5_moe", "glm4_moe", "minicpm5_moe", "flint", "afmoe"}
# An image-text checkpoint's text model runs a decoder that has its own row here; its logits row checks the reading.
GREEDY_FAMILIES = [name for name in FAMILIES if name not in IMAGE_TEXT and name not in LOGITS_ONLY]


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("name", GREEDY_FAMILIES)
def test_greedy_batch_equals_transformers_generate(family_dirs, hf_tokens, name):
    llm = LLM(str(family_dirs[name]), **ENGINE_ARGS)
    assert llm.engine.runner.num_compilations == 0  # compile_at_start=False: nothing compiled before the first step
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY_BATCH, use_tqdm=False)]
    assert_greedy_equal(family_dirs[name], PROMPTS, got, hf_tokens(name))
    # each bucket's forward and the greedy sampler, compiled on first use: none of warm-up's other programs
    assert {kind for kind, _, _ in llm.engine.runner.compiled_programs()} == {"forward", "sampler_0_greedy"}
    assert len({t for tokens in got for t in tokens}) > 3, "degenerate greedy output proves little"
    if name in MIXTURES:  # the batch's tokens go to different experts in every layer
        assert all(len(used) >= 3 for used in hf_experts_used(family_dirs[name], PROMPTS))


@pytest.mark.slow
def test_deepseek_latent_pool_prefix_hits_beside_decodes_keep_transformers_tokens(family_dirs):
    """DeepSeek-V3's latent pool, prefix caching on: a first prompt leaves two full pages cached; then three prompts
    sharing them and a fresh 40-token one run as one batch, the fresh prompt's prefill chunks beside the others'
    decodes. Each of the three reads the cached latent rows (32 tokens) and every prompt gets transformers' greedy
    tokens."""
    model_dir = family_dirs["deepseek_v3"]
    shared = list(range(200, 232))  # two pages of 16
    prompts = [shared + [9000, 12], shared + list(range(300, 308)), shared + [77], list(range(100, 140))]
    llm = LLM(str(model_dir), **ENGINE_ARGS)  # max_num_batched_tokens 16: the 40-token prompt is chunked
    greedy = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    llm.generate([shared + [5, 6, 7]], greedy, use_tqdm=False)
    outputs = llm.generate(prompts, greedy, use_tqdm=False)
    assert [o.num_cached_tokens for o in outputs] == [32, 32, 32, 0]
    assert [o.outputs[0].token_ids for o in outputs] == hf_greedy(model_dir, prompts, NEW_TOKENS)


# Tensor-parallel runs cover each distinct sharding path once: standard GQA, sliding windows, fused projections,
# parallel residuals, MQA's replicated KV head (at TP 4 too), mixtures (their stacked or fused experts sliced per
# device), per-head norm weights and CodeGen's shards read per device, norms over all heads, ALiBi's split slopes,
# latent attention, sinks. Families whose layers shared those paths (Gemma 2, GPT-2, GLM-4; Phi-3 and Mixtral at
# TP 4) left this list to keep the suite in its time budget (2026-12-05), as did Gemma 3, GPT-NeoX, LongCat-Flash
# and GLM-5 (2026-12-06: sliding windows, parallel residuals, latent attention and the indexer are other rows').
TP_FAMILIES = [name for name, (*_, sizes) in FAMILIES.items() if sizes]


@pytest.fixture(scope="module")
def tp_found(request: pytest.FixtureRequest, family_dirs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """tests/tp_worker.py's greedy runs and prefill logits at their TP sizes, on 8 fake CPU devices, of the families
    whose TP test is selected: one subprocess for all of them (JAX starts once), none for a family ``-k`` leaves out."""
    selected = [
        item.callspec.params["name"]
        for item in request.session.items
        if getattr(item, "function", None) is test_tensor_parallel_matches_transformers
    ]
    tmp = tmp_path_factory.mktemp("families_tp")
    spec = {
        "families": {name: [str(family_dirs[name]), FAMILIES[name][3]] for name in selected},
        "cache_dir": str(tmp / "jllm_cache"),
    }
    return run_tp_worker(spec, tmp, timeout=1500)["generate"]


@pytest.mark.slow
@pytest.mark.parametrize("name", TP_FAMILIES)
def test_tensor_parallel_matches_transformers(tp_found, hf_tokens, family_dirs, name):
    runs = tp_found[name]
    sizes = FAMILIES[name][3]
    assert sorted(runs) == sorted(map(str, sizes))
    expected_tokens = [tokens[:n] for tokens, n in zip(hf_tokens(name), TP_NEW_TOKENS, strict=True)]
    expected_logits = hf_logits(family_dirs[name], PROMPTS[2])
    for tp in map(str, sizes):
        assert runs[tp]["tokens"] == expected_tokens, f"{name} at TP={tp}"
        assert relative_error(np.load(runs[tp]["logits_file"]), expected_logits) < LOGITS_RTOL, f"{name} TP={tp}"


@pytest.mark.parametrize(
    "arch, change, message",
    [
        ("Gemma2ForCausalLM", {"hidden_activation": "relu"}, "'relu'.*supported"),
        # DeepseekV2Config's default top-k is None (transformers' router fails on it): named, not a TypeError
        ("DeepseekV2ForCausalLM", {}, "DeepSeek-V2 num_experts_per_tok=None must be between 1 and"),
        # EmbeddingGemma's encoder attends both ways in transformers' Gemma and Gemma 3 (had been read as causal)
        ("GemmaForCausalLM", {"use_bidirectional_attention": True}, "Gemma use_bidirectional_attention=True"),
        ("Gemma3ForCausalLM", {"use_bidirectional_attention": True}, "Gemma 3 use_bidirectional_attention=True"),
        ("Gemma4ForCausalLM", {"use_bidirectional_attention": "all"}, "use_bidirectional_attention='all'.*supported"),
        (
            "Gemma4ForConditionalGeneration",
            {"text_config": {"use_bidirectional_attention": "all"}},
            "use_bidirectional_attention='all'.*supported",
        ),
        ("Gemma4ForCausalLM", {"num_kv_shared_layers": 2}, "num_kv_shared_layers=2 leaves no earlier layer"),
        ("Gemma3nForCausalLM", {"num_kv_shared_layers": 2}, "Gemma 3n num_kv_shared_layers=2 leaves no earlier layer"),
        ("Gemma3nForCausalLM", {"altup_active_idx": 1}, r"altup_active_idx=1 is not supported \(supported: 0\)"),
        ("Gemma3nForCausalLM", {"altup_num_inputs": 1}, "Gemma 3n altup_num_inputs=1 is not supported"),
        ("Gemma3nForCausalLM", {"laurel_rank": 0}, "Gemma 3n laurel_rank=0 is not supported"),
        ("Gemma3nForCausalLM", {"hidden_activation": "relu"}, "Gemma 3n hidden_activation 'relu' is not supported"),
        (
            "Gemma3nForCausalLM",
            {"intermediate_size": [96, 96, 96]},
            r"Gemma 3n intermediate_size lists 3 values; it needs one per layer \(num_hidden_layers=2\)",
        ),
        (
            "Gemma3nForConditionalGeneration",
            {"text_config": {"model_type": "gemma3n_text", "laurel_rank": 0}},
            "Gemma 3n laurel_rank=0 is not supported",
        ),
        (
            "Gemma4ForCausalLM",
            {"per_layer_config": {"1": {"intermediate_size": 8}}},
            r"per_layer_config layer 1 key\(s\) \['intermediate_size'\] are not supported",
        ),
        ("Phi3ForCausalLM", {"rope_scaling": {"rope_type": "ntk", "factor": 2.0}}, "'ntk'.*supported.*yarn"),
        ("NoSuchModelForCausalLM", {}, "NoSuchModelForCausalLM.*supported.*Gemma2ForCausalLM"),
        ("AXK2ForCausalLM", {**DEEPSEEK_KEYS, "q_lora_rank": None}, "A.X-K2 q_lora_rank=None is not supported"),
        ("BeamForCausalLM", {}, "'BeamForCausalLM' is not supported: Beam .* by their depth"),
        ("ZayaForCausalLM", {}, "'ZayaForCausalLM' is not supported: ZAYA .* Compressed Convolutional Attention"),
        ("BltForCausalLM", {}, "'BltForCausalLM' is not supported: BLT .* entropy model"),
        (
            "NemotronHForCausalLM",
            {"hybrid_override_pattern": "M*E", "moe_latent_size": 16},
            "Nemotron-H moe_latent_size=16 is not supported",
        ),
        (
            "NemotronHForCausalLM",
            {"hybrid_override_pattern": "M-*", "sliding_window": 8},
            "Nemotron-H sliding_window=8 is not supported",
        ),
        (
            "FalconH1ForCausalLM",
            {**FALCON_H1_KEYS, "projectors_bias": True},
            "Falcon-H1 mamba_proj_bias=False with projectors_bias=True is not supported",
        ),
        (
            "Mamba2ForCausalLM",
            {"num_heads": 8, "head_dim": 16, "norm_before_gate": True},
            "Mamba2 norm_before_gate=True is not supported",
        ),
        ("Zamba2ForCausalLM", {}, r"Zamba2 layers_block_type=None is not supported \(supported: one of"),
        (
            "Zamba2ForCausalLM",
            {"layers_block_type": ["hybrid", "mamba"], "use_long_context": True},
            "Zamba2 use_long_context=True is not supported",
        ),
        (
            "Zamba2ForCausalLM",
            {"layers_block_type": ["hybrid", "mamba"], "use_shared_mlp_adapter": False},
            "Zamba2 use_shared_mlp_adapter=False is not supported",
        ),
        (
            "Zamba2ForCausalLM",
            {"layers_block_type": ["hybrid", "mamba"], "use_shared_attention_adapter": True},
            "Zamba2 num_key_value_heads=2 with use_shared_attention_adapter is not supported",
        ),
        (
            "Mamba2ForCausalLM",
            {"num_heads": 8, "head_dim": 8},
            r"Mamba2 expand=2 x hidden_size=64 must equal num_heads=8 x head_dim=8",
        ),
        (
            "JambaForCausalLM",
            {"attn_layer_offset": 9, "attn_layer_period": 8},
            r"Jamba attn_layer_offset=9 and attn_layer_period=8 are not supported \(supported: 0 <= offset < period\)",
        ),
        ("JambaForCausalLM", {"mamba_dt_rank": 0}, "Jamba mamba_dt_rank=0 is not supported"),
        ("MambaForCausalLM", {"hidden_act": "tanh"}, "Mamba hidden_act 'tanh' is not supported"),
        ("GraniteMoeHybridForCausalLM", {}, r"Granite-4.0-H with no attention layer \(layers \['mamba2', 'mamba2'\]\)"),
        ("BambaForCausalLM", {}, "Bamba with no attention layer .* is not supported: the KV pool is sized in pages"),
        (
            "GraniteMoeHybridForCausalLM",
            {"layer_types": ["mamba", "sliding_attention"]},
            "Granite-4.0-H layer_types entry 'sliding_attention' is not supported",
        ),
        (
            "GraniteMoeHybridForCausalLM",
            {"layer_types": ["mamba", "attention"], "position_embedding_type": "alibi"},
            "Granite-4.0-H position_embedding_type='alibi' is not supported",
        ),
        (
            "BambaForCausalLM",
            {**MAMBA2_KEYS, "attn_layer_indices": [1], "mamba_n_groups": 3},
            "Mamba2 n_groups=3 must divide its 8 heads",
        ),
        (
            "BambaForCausalLM",
            {**MAMBA2_KEYS, "attn_layer_indices": [1], "time_step_limit": [0.0]},
            r"Bamba time_step_limit=\[0.0\] is not supported.*two numbers",
        ),
        ("Lfm2ForCausalLM", {"layer_types": ["conv", "conv"]}, "LFM2 with no attention layer .* is not supported"),
        (
            "Lfm3ForCausalLM",
            {"layer_types": ["conv", "linear_attention"]},
            "LFM3 layer_types=.* must name each of the 2 layers as one of 'full_attention', 'sliding_attention'",
        ),
        ("OlmoHybridForCausalLM", {"attention_bias": True}, "OLMo-Hybrid attention_bias=True is not supported"),
        ("KimiLinearForCausalLM", {"hidden_act": "gelu"}, "Kimi Linear hidden_act='gelu' is not supported.*'silu'"),
        (
            "Lfm2MoeForCausalLM",
            {"num_experts": 4, "num_experts_per_tok": 2, "use_expert_bias": False},
            "LFM2-MoE use_expert_bias=False is not supported",
        ),
        (
            "BloomForCausalLM",
            {"n_head": 4, "n_layer": 2, "apply_residual_connection_post_layernorm": True},
            "Bloom apply_residual_connection_post_layernorm=True is not supported",
        ),
        (
            "MptForCausalLM",
            {"d_model": 64, "n_heads": 4, "n_layers": 2, "attn_config": {"qk_ln": True}},
            "MPT attn_config.qk_ln=True is not supported.*False",
        ),
        ("GPTBigCodeForCausalLM", {"add_cross_attention": True}, "add_cross_attention=True is not supported"),
        ("GPT2LMHeadModel", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True is not"),
        (
            "GPTNeoForCausalLM",
            {"num_heads": 4, "num_layers": 2, "attention_types": [[["global", "local"], 2]]},
            "GPT-Neo attention_types=.*not supported.*num_layers=2 layers",
        ),
        (
            "CodeGenForCausalLM",
            {"n_embd": 64, "n_head": 2, "n_layer": 2, "rotary_dim": 8},
            "CodeGen n_head=2 is not supported.*multiple of 4",
        ),
        (
            "XGLMForCausalLM",
            {"d_model": 64, "attention_heads": 4, "num_layers": 2, "ffn_dim": 96, "pad_token_id": 5},
            "XGLM pad_token_id=5 is not supported.*0 or 1",
        ),
        ("HunYuanDenseV1ForCausalLM", {"use_cla": True}, "HunYuan use_cla=True is not supported.*False"),
        (
            "HunYuanMoEV1ForCausalLM",
            {"num_experts": 4, "moe_topk": [2, 1]},
            r"HunYuan MoE moe_topk=\[2, 1\] is not supported.*one value for every layer",
        ),
        (
            "HunYuanMoEV1ForCausalLM",
            {"num_experts": 4, "moe_topk": 2, "num_shared_expert": [2, 2]},
            r"HunYuan MoE num_shared_expert=\[2, 2\] is not supported.*1",
        ),
        (
            "DbrxForCausalLM",
            {"d_model": 64, "n_heads": 4, "n_layers": 2, "ffn_config": {"moe_normalize_expert_weights": 2.0}},
            "DBRX ffn_config.moe_normalize_expert_weights=2.0 is not supported",
        ),
        ("Starcoder2ForCausalLM", {"hidden_act": "relu6"}, "StarCoder2 hidden_act 'relu6'.*supported.*gelu"),
        ("CohereForCausalLM", {"logit_scale": None}, "Cohere logit_scale=None is not supported"),
        (
            "GPTJForCausalLM",
            {"n_embd": 64, "n_head": 4, "n_layer": 2, "rotary_dim": None},
            "GPT-J rotary_dim=None is not supported.*even number",
        ),
        ("OlmoeForCausalLM", {"num_experts": 4, "num_experts_per_tok": 5}, "num_experts_per_tok=5.*num_experts=4"),
        ("HeliumForCausalLM", {"head_dim": 32}, r"Helium num_attention_heads \* head_dim = 128 is not.*hidden_size=64"),
        ("OPTForCausalLM", {"word_embed_proj_dim": 32}, "OPT word_embed_proj_dim=32 is not supported.*64"),
        ("OPTForCausalLM", {"do_layer_norm_before": False}, "OPT do_layer_norm_before=False is not supported.*True"),
        ("Exaone4ForCausalLM", {"sliding_window_pattern": "LLLG"}, "sliding_window_pattern='LLLG' without layer_types"),
        (
            "Gemma3ForConditionalGeneration",
            {"text_config": {**TINY_CONFIG, "final_logit_softcapping": 30.0}},
            "final_logit_softcapping=30.0 is not supported.*null",
        ),
        (
            "LlavaForConditionalGeneration",
            {"text_config": {**TINY_CONFIG, "model_type": "gemma"}},
            "LLaVA text_config model_type 'gemma' is not supported.*'llama', 'mistral', 'qwen2'",
        ),
        (
            "Mistral3ForConditionalGeneration",
            {"text_config": {**TINY_CONFIG, "model_type": "llama"}},
            "Mistral 3 text_config model_type 'llama' is not supported.*'mistral', 'ministral3'",
        ),
        (
            "Ministral3ForCausalLM",
            {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}},
            "llama_4_scaling_beta=None, original_max_position_embeddings=None is not supported",
        ),
        ("GPTNeoXForCausalLM", {"hidden_act": "relu6"}, "hidden_act 'relu6'.*supported.*gelu"),
        ("LlamaForCausalLM", {"hidden_act": "relu6"}, "hidden_act 'relu6'.*supported.*silu"),
        ("MixtralForCausalLM", {"num_local_experts": 4, "rope_scaling": {"rope_type": "ntk"}}, "'ntk'.*"),
        ("MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 5}, "num_experts_per_tok=5"),
        (
            "GptOssForCausalLM",
            {"num_local_experts": 4, "quantization_config": {"quant_method": "awq"}},
            "quant_method 'awq'.*not supported.*'mxfp4' for gpt-oss",
        ),
        ("LongcatFlashForCausalLM", {"zero_expert_type": "zero"}, "LongCat-Flash zero_expert_type='zero' is not"),
        ("LongcatFlashForCausalLM", {"router_bias": True}, "LongCat-Flash router_bias=True is not supported"),
        ("LongcatFlashForCausalLM", {"mla_scale_q_lora": False}, "LongCat-Flash mla_scale_q_lora=False is not"),
        ("LongcatFlashForCausalLM", {"head_dim": 16}, "LongCat-Flash head_dim=16.*head_dim=qk_rope_head_dim=64"),
        ("LongcatFlashForCausalLM", {"moe_topk": 0}, "LongCat-Flash moe_topk=0 must be between 1 and"),
        ("MiMoV2FlashForCausalLM", {"swa_num_key_value_heads": 2}, "MiMo-V2-Flash swa_num_key_value_heads=2 is not"),
        ("MiMoV2FlashForCausalLM", {"add_full_attention_sink_bias": True}, "add_full_attention_sink_bias=True is not"),
        (
            "MiMoV2FlashForCausalLM",
            {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}},
            "MiMo-V2-Flash rope_parameters=.* is not supported.*one default rope per layer type",
        ),
        ("GraniteMoeForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 5}, "num_experts_per_tok=5"),
        ("PhimoeForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 3}, "num_experts_per_tok=3.*picks two"),
        ("Ernie4_5_MoeForCausalLM", {"use_bias": True}, "use_bias=True is not supported.*use_bias=False"),
        (
            "DeepseekV2ForCausalLM",
            {**DEEPSEEK_KEYS, "topk_method": "noaux_tc"},
            "topk_method='noaux_tc' is not.*greedy",
        ),
        ("DeepseekV2ForCausalLM", {**DEEPSEEK_KEYS, "norm_topk_prob": True}, "V2 norm_topk_prob=True is not supported"),
        ("DeepseekV3ForCausalLM", {**DEEPSEEK_KEYS, "scoring_func": "softmax"}, "scoring_func='softmax'.*'sigmoid'"),
        (
            "Mistral4ForCausalLM",
            {**DEEPSEEK_KEYS, "head_dim": 24, "n_group": 4, "topk_group": 2},
            "Mistral 4 n_group=4 is not supported.*1",
        ),
        (
            "Mistral4ForCausalLM",
            {**DEEPSEEK_KEYS, "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.25}},
            "Mistral 4 rotary width.*= 4 is not supported.*qk_rope_head_dim=8",
        ),
        (
            "Glm4MoeLiteForCausalLM",
            {**DEEPSEEK_KEYS, "mlp_layer_types": ["dense", "moe"]},
            "GLM-4.7-Flash mlp_layer_types entry 'moe' is not supported",
        ),
        (
            "ExaoneMoeForCausalLM",
            {"num_experts": 4, "sliding_window_pattern": "LLLG"},
            "sliding_window_pattern='LLLG' without layer_types",
        ),
        (
            "Cohere2MoeForCausalLM",
            {"num_experts": 4, "expert_selection_fn": "relu"},
            "Cohere2-MoE expert_selection_fn='relu' is not supported.*softmax, sigmoid",
        ),
        (
            "Cohere2MoeForCausalLM",
            {"num_experts": 4, "shared_expert_combination_strategy": "max"},
            "Cohere2-MoE shared_expert_combination_strategy='max' is not supported.*sum, average",
        ),
        (
            "MiniCPM5MoeForCausalLM",
            {**DEEPSEEK_KEYS, "use_gated_attention": False},
            "MiniCPM5-MoE use_gated_attention=False is not supported",
        ),
        (  # DeepSeek-V3's own checkpoint: FP8 weights with 128 x 128 block scales
            "DeepseekV3ForCausalLM",
            {**DEEPSEEK_KEYS, "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}},
            r"weight_block_size=\[128, 128\].*not supported",
        ),
        (
            "GraniteSWAForCausalLM",
            {"layer_rope_theta": [1e4]},
            r"Granite SWA layer_rope_theta=\[10000.0\] is not supported.*num_hidden_layers=2 entries",
        ),
        (
            "GraniteMoeSWAForCausalLM",
            {"layer_types": ["full_attention"]},
            r"Granite MoE SWA layer_types=\['full_attention'\] is not supported.*num_hidden_layers=2 entries",
        ),
        (
            "Apertus1p5TextForCausalLM",
            {"output_vocab_size": 100, "tie_word_embeddings": True},
            "Apertus 1.5 output_vocab_size=100 is not supported with tie_word_embeddings=True",
        ),
        ("LagunaForCausalLM", {"num_attention_heads_per_layer": [4, 8]}, "num_attention_heads_per_layer=\\[4, 8\\]"),
        ("LagunaForCausalLM", {"moe_router_logit_softcapping": 30.0}, "moe_router_logit_softcapping=30.0 is not"),
        ("HYV3ForCausalLM", {"num_experts": 4, "num_experts_per_tok": 2, "mlp_bias": True}, "Hy3 mlp_bias=True is not"),
        ("JetMoeForCausalLM", {"num_local_experts": 4, "rms_norm_eps": 1e-5}, "JetMoE rms_norm_eps=1e-05 is not"),
        ("MiniMaxForCausalLM", {"rotary_dim": 8}, "MiniMax rotary_dim=8 is not supported for MiniMaxForCausalLM"),
        ("MiniMaxForCausalLM", {"sliding_window": 8}, "MiniMax sliding_window=8 is not supported"),
        ("MiniMaxForCausalLM", {"hidden_act": "gelu"}, "MiniMax hidden_act='gelu' is not supported"),
        (
            "MiniMaxForCausalLM",
            {"layer_types": ["linear_attention"] * 2},
            "MiniMax with no attention layer .* is not supported",
        ),
        ("MiniMaxText01ForCausalLM", {"postnorm": False}, "MiniMaxText01 postnorm=False is not supported"),
        (
            "BailingHybridForCausalLM",
            {"expert_swiglu_limit_list": [0, 7.0, 7.0]},
            r"BailingHybrid expert_swiglu_limit_list has 3 limits; it needs one per layer \(2\)",
        ),
        ("BailingHybridForCausalLM", {"hidden_act": "gelu"}, "BailingHybrid hidden_act='gelu' is not supported"),
        ("AriaTextForCausalLM", {"mlp_bias": True}, "Aria mlp_bias=True is not supported"),
        ("AriaTextForCausalLM", {"hidden_act": "gelu"}, "Aria hidden_act='gelu' is not supported"),
        ("Qwen4ExpForCausalLM", {**QWEN4_KEYS, "ple_layer_ids": [1]}, r"ple_layer_ids=\[1\] is not supported"),
        ("Qwen4ExpForCausalLM", {**QWEN4_KEYS, "indexer_budget": None}, "Qwen4-Exp needs .* indexer_budget unset"),
        ("Qwen4ExpForCausalLM", {**QWEN4_KEYS, "output_gate_type": "gelu"}, "output_gate_type='gelu' is not supported"),
        ("Qwen4ExpForCausalLM", {**QWEN4_KEYS, "hc_count": 1}, "Qwen4-Exp hc_count=1 is not supported"),
        ("MiniMaxText01ForCausalLM", {"shared_intermediate_size": 32}, "shared_intermediate_size=32 is not supported"),
        (
            "MiniMaxText01ForCausalLM",
            {"num_attention_heads": 6, "head_dim": 16},
            "MiniMaxText01 num_attention_heads=6 is not supported",
        ),
    ],
)
def test_unsupported_architecture_or_option_is_refused_at_load_naming_it(tmp_path, arch, change, message):
    config = {**TINY_CONFIG, "architectures": [arch], **change}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_model(tmp_path, mesh=make_mesh(1), load_format="dummy")


def test_longcat_flash_hidden_states_are_refused_naming_the_family():
    """jllm runs each LongCat-Flash layer as two, so a layer index of transformers' ``output_hidden_states`` names
    none of its layers: the encoder refuses the model rather than return another layer's states."""
    from types import SimpleNamespace

    from jllm.errors import InputError
    from jllm.models.registry import build_args
    from jllm.pooling import Encoder

    arch, _, overrides, _ = FAMILIES["longcat_flash"]
    config = {k: v for k, v in {**BASE, **overrides, "architectures": [arch]}.items() if v is not None}
    args = build_args(config, np.float32)[1]
    assert [spec.moe_shortcut for spec in args.layers] == ["out", "in"] * 2
    with pytest.raises(InputError, match="not supported for LongCat-Flash"):
        Encoder(SimpleNamespace(loaded=SimpleNamespace(args=args)), max_model_len=64)


@pytest.mark.slow  # transformers' import: ~2.7 s, none in the fast tier
def test_mimo_v2_flash_hub_config_reads_as_transformers_reads_it():
    """The hub's config leaves the layer kinds and ropes to MiMoV2FlashConfig's defaults, stores a null
    ``routed_scaling_factor`` and the SGLang code's ``sliding_window_size``: read as transformers reads them."""
    from transformers import MiMoV2FlashConfig

    from jllm.models.families.sliding_moe import mimo_v2_flash

    config = dict(TINY_CONFIG, num_hidden_layers=12, routed_scaling_factor=None, sliding_window_size=128)
    hf = MiMoV2FlashConfig(**config)
    args = mimo_v2_flash(config, np.float32)
    sliding = [kind == "sliding_attention" for kind in hf.layer_types]
    assert sliding == [False] + [True] * 4 + [False] + [True] * 5 + [False]  # full: the first and every sixth
    assert [spec.sliding_window for spec in args.layers] == [hf.sliding_window if s else None for s in sliding]
    assert hf.sliding_window == 129
    sinks_and_kv_heads = [(spec.sinks, spec.num_kv_heads) for spec in args.layers]
    assert sinks_and_kv_heads == [(s, 2 * TINY_CONFIG["num_key_value_heads"] if s else None) for s in sliding]
    assert [spec.dense_mlp_size is None for spec in args.layers] == [k == "sparse" for k in hf.mlp_layer_types]
    for spec, s in zip(args.layers, sliding, strict=True):
        params = hf.rope_parameters["sliding_attention" if s else "full_attention"]
        assert (spec.rope.rotary_dim, spec.rope.theta) == (int(192 * 0.334), params["rope_theta"])
    assert args.moe_routing.scale == hf.routed_scaling_factor == 1.0
    assert (args.head_dim, args.v_head_dim, args.value_scale) == (192, 128, hf.attention_value_scale)


@pytest.mark.slow  # two engines on dummy weights: ~10 s
def test_llama4_context_is_one_attention_chunk_and_longer_is_refused(default_model_dir, tmp_path):
    """jllm has no chunked attention: a Llama 4 is served with at most ``attention_chunk_size`` tokens of context
    (there chunked attention is causal attention), by default exactly that, and a longer ``max_model_len`` is
    refused naming the chunk."""
    config = dict(BASE, architectures=["Llama4ForCausalLM"], num_local_experts=4, attention_chunk_size=32)
    (tmp_path / "config.json").write_text(json.dumps(config))
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / file, tmp_path / file)
    args = dict(ENGINE_ARGS, load_format="dummy", max_model_len=None)
    assert LLM(str(tmp_path), **args).engine.max_model_len == 32
    with pytest.raises(ValueError, match="max_model_len=64 exceeds the model's attention_chunk_size=32.*<= 32"):
        LLM(str(tmp_path), **dict(args, max_model_len=64))


def test_qwen4_exp_context_is_its_qsa_budget_and_longer_is_refused_naming_it():
    """jllm has no QSA block-sparse attention: a Qwen4-Exp is served with at most ``indexer_budget`` tokens of context
    (there every query keeps every token, so QSA is causal attention), and the error ``build`` raises for a longer
    ``max_model_len`` (Llama 4's test runs it) names the budget."""
    from jllm.models.registry import build_args

    config = {**BASE, **DELTANET_KEYS, **QWEN_NEXT_MOE, **QWEN4_KEYS, "indexer_budget": 32}
    args = build_args({**config, "architectures": ["Qwen4ExpForCausalLM"]}, np.float32)[1]
    assert args.max_context == 32
    assert args.context_limit.startswith("the model's indexer_budget=32: jllm has no QSA block-sparse attention")
    llama = build_args({**BASE, "architectures": ["LlamaForCausalLM"]}, np.float32)[1]
    assert llama.max_context == BASE["max_position_embeddings"]  # neither limit: the positions


@pytest.mark.parametrize("start, end, interval", [(1, -1, 1), (0, 4, 2), (2, 3, 1)])
def test_ernie_mixture_layers_are_the_ones_transformers_builds(start, end, interval):
    """ERNIE 4.5 MoE's experts sit in every ``moe_layer_interval``-th layer from ``moe_layer_start_index`` to
    ``moe_layer_end_index`` (-1: the last); the other layers are dense SwiGLUs of ``intermediate_size``."""
    import transformers

    from jllm.models.families.mixtures import ernie4_5_moe

    sizes = dict(moe_num_experts=4, moe_k=2, moe_intermediate_size=32, num_hidden_layers=6)
    layout = dict(moe_layer_start_index=start, moe_layer_end_index=end, moe_layer_interval=interval)
    model = transformers.Ernie4_5_MoeModel(transformers.Ernie4_5_MoeConfig(**TINY_CONFIG | sizes | layout))
    expected = [None if hasattr(layer.mlp, "experts") else 96 for layer in model.layers]
    assert None in expected and 96 in expected
    assert [spec.dense_mlp_size for spec in ernie4_5_moe(TINY_CONFIG | sizes | layout, np.float32).layers] == expected


def test_pythia_config_names_read_as_transformers_5_writes_them():
    """Hub Pythia configs say ``rotary_pct`` / ``rotary_emb_base``; transformers 5 saves ``rope_parameters``."""
    from jllm.models.families.layer_norm import gpt_neox

    common = dict(TINY_CONFIG, architectures=["GPTNeoXForCausalLM"])
    old = gpt_neox(dict(common, rotary_pct=0.5, rotary_emb_base=500.0), np.float32)
    new = gpt_neox(dict(common, rope_parameters={"rope_theta": 500.0, "partial_rotary_factor": 0.5}), np.float32)
    assert old == new
    assert old.layers[0].rope.rotary_dim == 8 and old.layers[0].rope.theta == 500.0
    assert gpt_neox(common, np.float32).layers[0].rope.rotary_dim == 4  # rotary_pct defaults to 0.25


# llava-1.5-7b-hf's text_config: transformers 4.x saved an image-text config's text config as its differences from
# the text config class's defaults, so the sizes are LlamaConfig's (4096 wide, 32 layers)
LLAVA_15_TEXT = {"model_type": "llama", "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "vocab_size": 32064}
LLAVA_NEXT_MISTRAL_TEXT = {
    "model_type": "mistral",
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 1e6,
    "sliding_window": None,
    "vocab_size": 32064,
}


@pytest.mark.slow  # transformers' import: ~2.7 s
@pytest.mark.parametrize(
    "arch, text",
    [
        ("LlavaForConditionalGeneration", LLAVA_15_TEXT),
        ("LlavaNextForConditionalGeneration", LLAVA_NEXT_MISTRAL_TEXT),
        ("Idefics3ForConditionalGeneration", {"model_type": "llama"}),
        ("InternVLForConditionalGeneration", {"model_type": "qwen2"}),
        ("InternVLForConditionalGeneration", {"model_type": "qwen3"}),
        ("AyaVisionForConditionalGeneration", {"model_type": "cohere2"}),
        ("Qwen2VLForConditionalGeneration", {}),
        ("Qwen3VLForConditionalGeneration", {}),
        ("Glm4vForConditionalGeneration", {}),
        ("Llama4ForConditionalGeneration", {"model_type": "llama4_text"}),
        ("Emu3ForConditionalGeneration", {"model_type": "emu3_text_model"}),
        ("MllamaForConditionalGeneration", {"model_type": "mllama_text_model"}),
        ("LlamaForCausalLM", None),
        ("MistralForCausalLM", None),
        ("Qwen2ForCausalLM", None),
        ("Qwen3ForCausalLM", None),
        ("Cohere2ForCausalLM", None),
        ("Llama4ForCausalLM", None),
    ],
)
def test_sizes_a_config_leaves_out_read_as_transformers_defaults(arch, text):
    """A config naming no sizes (an image-text one's ``text_config``; None: a causal LM's config.json) reads as the
    config transformers builds from it: llava-1.5-7b-hf's had failed to load (a KeyError on num_attention_heads)."""
    import transformers

    from jllm.models.registry import build_args

    config_cls = getattr(transformers, arch).config_class
    written = (config_cls() if text is None else config_cls(text_config=dict(text))).to_dict()
    left_out = {} if text is None else {"text_config": text}
    expected = build_args({**written, "architectures": [arch]}, np.float32)[1]
    assert build_args({**left_out, "architectures": [arch]}, np.float32)[1] == expected


@pytest.mark.parametrize("arch", ["GPTJForCausalLM", "CodeGenForCausalLM"])
def test_gptj_rotary_dim_left_out_is_64_as_transformers_defaults_it(arch):
    """GPTJConfig's and CodeGenConfig's ``rotary_dim`` is 64 where config.json has none (it had been refused as
    None); a null one is still refused (transformers would rotate ``n_embd`` channels of each head)."""
    from jllm.models.registry import build_args

    config = dict(architectures=[arch], vocab_size=160, n_embd=256, n_head=4, n_layer=2)
    assert build_args(config, np.float32)[1].layers[0].rope.rotary_dim == 64
    with pytest.raises(ValueError, match="rotary_dim=None is not supported"):
        build_args({**config, "rotary_dim": None}, np.float32)


def test_gemma_config_defaults_read_as_transformers_reads_them():
    """Gemma 1's hub configs say ``hidden_act: gelu``, which transformers runs as the tanh approximation; a config
    without ``tie_word_embeddings`` ties the head (the tests' checkpoints untie it: tied, a random model repeats)."""
    from jllm.models.families.gemma import gemma

    args = gemma(dict(TINY_CONFIG, hidden_act="gelu"), np.float32)
    assert args.mlp_act == "gelu_tanh" and args.tie_word_embeddings


# Families whose readers take transformers' config defaults for the keys a config.json leaves out (beyond the sizes):
# architecture -> keys both configs name besides TINY_CONFIG (sizes of experts and dense layers; Phi-3's original
# context, which its default rope keeps unread; CTRL's own names for the sizes)
CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "Gemma2ForCausalLM": {},
    "VaultGemmaForCausalLM": {},
    "MistralForCausalLM": {},
    "MinistralForCausalLM": {},
    "Olmo2ForCausalLM": {},
    "Phi3ForCausalLM": {"original_max_position_embeddings": 4096},
    "Phi4MultimodalForCausalLM": {},
    "HunYuanDenseV1ForCausalLM": {},
    "HunYuanMoEV1ForCausalLM": {},
    "CohereForCausalLM": {},
    "MixtralForCausalLM": {},
    "OlmoeForCausalLM": {},
    "FlexOlmoForCausalLM": {},
    "PhimoeForCausalLM": {},
    "DiffLlamaForCausalLM": {},
    "MllamaForCausalLM": {},
    "Glm4MoeForCausalLM": dict(GLM4_MOE_KEYS),
    "GptOssForCausalLM": {"num_local_experts": 4, "head_dim": 16},
    "GraniteSWAForCausalLM": {},
    # five layers: the last indexed (every fifth by default), the first two dense
    "Kolibri1_1ForCausalLM": {"num_hidden_layers": 5, "num_experts": 4, "num_experts_per_tok": 2, "index_num_heads": 2},
    "CTRLLMHeadModel": {"n_embd": 64, "n_head": 4, "n_layer": 2, "dff": 96, "n_positions": 512},
    "DeepseekV2ForCausalLM": {"num_experts_per_tok": 2},
    "DeepseekV3ForCausalLM": {},
    # the families built on V3's latent attention: their latent and expert sizes named
    "AXK1ForCausalLM": dict(DEEPSEEK_KEYS),
    "GlmMoeDsaForCausalLM": dict(DEEPSEEK_KEYS),
    "HYV4ForCausalLM": {},
    "Glm4MoeLiteForCausalLM": dict(DEEPSEEK_KEYS),
    "YoutuForCausalLM": dict(DEEPSEEK_KEYS),
    # image-text configs: these are their text configs' keys
    "Qwen2VLForConditionalGeneration": {},
    "Qwen2_5_VLForConditionalGeneration": {},
    "Qwen3VLForConditionalGeneration": {"head_dim": 16},
    "Qwen3VLMoeForConditionalGeneration": dict(
        head_dim=16, num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=32
    ),
    "Glm4vMoeForConditionalGeneration": dict(GLM4_MOE_KEYS),
    "MllamaForConditionalGeneration": {},
}


@pytest.mark.slow  # transformers' import: ~2.7 s
@pytest.mark.parametrize("arch", list(CONFIG_DEFAULTS))
def test_keys_a_config_leaves_out_read_as_transformers_defaults(arch):
    """A config.json with only the sizes reads as the config transformers builds from it, every default written out.
    Leaving such keys out of a tiny checkpoint's config.json had put its logits off transformers': a Gemma 2's
    soft-caps, query scalar and window 0.31, Phi-MoE's and Cohere's rope base 0.99 and 0.46, an RMSNorm's eps 1.7e-5
    (OLMo 2) to 1.7e-4 (gpt-oss); Mixtral's expert count a KeyError, Granite SWA's tied head a missing tensor; the
    Qwen2-VL and Qwen3-VL text configs' rope bases 0.95 and 0.58, GLM-4.5V's q/k/v biases (left unread) 0.63,
    DeepSeek-V3's expert groups, weight scale and shared expert 0.55, DeepSeek-V2's two shared experts (unread) 0.56,
    A.X-K1's shared expert (unread) 0.053."""
    import transformers

    from jllm.models.registry import build_args

    config_cls = getattr(transformers, arch).config_class
    config = {**TINY_CONFIG, **CONFIG_DEFAULTS[arch]}
    if "text_config" in config_cls.sub_configs:  # an image-text config: the sizes are its text model's
        written, config = config_cls(text_config=config).to_dict(), {"text_config": config}
    else:
        written = config_cls(**config).to_dict()
    left_out = build_args({**config, "architectures": [arch]}, np.float32)[1]
    assert left_out == build_args({**written, "architectures": [arch]}, np.float32)[1]


@pytest.mark.parametrize("arch", ["Gemma2ForCausalLM", "Gemma3ForCausalLM", "VaultGemmaForCausalLM"])
@pytest.mark.parametrize(
    "keys, act",
    [
        ({"hidden_activation": "gelu"}, "gelu"),
        ({"hidden_activation": "gelu_pytorch_tanh"}, "gelu_tanh"),
        ({"hidden_act": "gelu"}, "gelu_tanh"),  # a key transformers' Gemma 2 and 3 never read
        ({}, "gelu_tanh"),
    ],
)
def test_gemma2_and_3_activation_is_transformers_act2fn_of_hidden_activation(arch, keys, act):
    """Gemma 2's and 3's MLP runs ``ACT2FN[hidden_activation]``: the exact gelu under ``"gelu"`` (it had been
    refused), and ``hidden_act`` is not read (Gemma 1's key, whose ``"gelu"`` means the tanh approximation)."""
    from jllm.models.registry import build_args

    args = build_args({**TINY_CONFIG, "head_dim": 16, **keys, "architectures": [arch]}, np.float32)[1]
    assert args.mlp_act == act


@pytest.mark.slow
def test_gemma3_attn_logit_softcapping_is_not_applied_as_in_transformers(tmp_path):
    """transformers' Gemma 3 keeps ``attn_logit_softcapping`` in its config but never passes it to its attention (Gemma
    2 does); capping the scores had put a tiny checkpoint's logits 2.6e-4 off. Float32 logits within
    ``LOGITS_RTOL``."""
    config = dict(TINY_CONFIG, head_dim=16, sliding_window=8, attn_logit_softcapping=6.0, initializer_range=0.3)
    model_dir = save_tiny_checkpoint(
        "Gemma3ForCausalLM", config, tmp_path, config_cls_name="Gemma3TextConfig", perturb_constants=True
    )
    ids = np.random.default_rng(8).integers(0, TINY_CONFIG["vocab_size"], 24).tolist()
    got = jllm_logits(load_model(model_dir, mesh=make_mesh(1), dtype="float32"), ids)
    assert relative_error(got, hf_logits(model_dir, ids)) < LOGITS_RTOL


@pytest.mark.parametrize(
    "arch, change, layout",
    [
        ("Olmo2ForCausalLM", {}, "over all KV heads"),
        ("OlmoeForCausalLM", {"num_experts": 4, "num_experts_per_tok": 2}, "over all KV heads"),
        ("StableLmForCausalLM", {"qk_layernorm": True}, "per KV head"),
        ("CohereForCausalLM", {"use_qk_norm": True}, "per KV head"),
    ],
)
def test_k_norm_weights_refuse_replicated_kv_heads_naming_the_sizes(arch, change, layout):
    """OLMo 2's and OLMoE's k norm spans all KV heads' channels, StableLM's and Cohere's have a weight per KV head;
    copies of a KV head would not match the checkpoint's weight."""
    from jllm.loader import abstract_model

    config = dict(TINY_CONFIG, architectures=[arch], **change)
    abstract_model(config, np.float32, tensor_parallel_size=2)
    with pytest.raises(ValueError, match=f"tensor_parallel_size=4 would replicate the model's 2 KV heads.*{layout}"):
        abstract_model(config, np.float32, tensor_parallel_size=4)


def test_gemma4_layers_read_from_per_layer_config_or_hub_keys_as_transformers_lays_them():
    """gemma-4-e2b's hub keys (``global_head_dim``; 35 layers, the last 20 reading earlier layers' K/V, double-wide
    MLPs) and 31B's (``num_global_key_value_heads`` with ``attention_k_eq_v``) give each layer the head width, KV heads,
    K/V source and MLP width transformers' Gemma4TextConfig gives it; a saved config's ``per_layer_config`` too."""
    from transformers import Gemma4TextConfig

    from jllm.models.families.gemma4 import gemma4_text

    e2b = dict(
        hidden_size=1536,
        intermediate_size=6144,
        num_hidden_layers=35,
        num_key_value_heads=1,
        global_head_dim=512,
        num_kv_shared_layers=20,
        use_double_wide_mlp=True,
        layer_types=(["sliding_attention"] * 4 + ["full_attention"]) * 7,
    )
    b31 = dict(
        hidden_size=5376,
        intermediate_size=21504,
        num_hidden_layers=12,
        num_attention_heads=32,
        num_key_value_heads=16,
        num_global_key_value_heads=4,
        attention_k_eq_v=True,
        hidden_size_per_layer_input=0,
    )
    saved = Gemma4TextConfig(**b31).to_dict()  # per_layer_config, no global_head_dim
    for cfg in (e2b, b31, saved):
        hf = Gemma4TextConfig(**{k: v for k, v in cfg.items() if k not in ("model_type", "transformers_version")})
        args = gemma4_text(cfg, np.float32)
        modes = hf.kv_sharing_modes
        for i, spec in enumerate(args.layers):
            layer = hf.per_layer_config[i]
            assert args.layer_heads(spec) == (layer.num_key_value_heads, layer.head_dim), i
            assert (spec.kv_source is not None) == (modes[i] == "reuse"), i
            if spec.kv_source is not None:  # the last layer of its kind that stores its K/V
                assert modes[spec.kv_source] == "store" and hf.layer_types[spec.kv_source] == hf.layer_types[i]
            wide = hf.use_double_wide_mlp and modes[i] == "reuse"
            assert spec.dense_mlp_size == hf.intermediate_size * (2 if wide else 1), i
            assert spec.k_eq_v == (hf.attention_k_eq_v and hf.layer_types[i] == "full_attention" and not spec.kv_source)
    assert sum(s.kv_source is not None for s in gemma4_text(e2b, np.float32).layers) == 20


def test_gemma4_tensor_parallel_divides_every_layers_kv_heads_or_is_refused():
    """31B's layout: 16 KV heads on sliding layers, 4 on full ones; sizes dividing both split them, larger ones would
    replicate only the full layers' heads, which is refused naming the counts and the sizes allowed."""
    from jllm.loader import abstract_model

    config = dict(FAMILIES["gemma4"][2], **{k: v for k, v in BASE.items() if k not in FAMILIES["gemma4"][2]})
    config = dict(config, architectures=["Gemma4ForCausalLM"], vocab_size=160)
    abstract_model(config, np.float32, tensor_parallel_size=2)
    with pytest.raises(ValueError, match=r"tensor_parallel_size=4 does not divide every layer's KV heads \[2, 4\]"):
        abstract_model(config, np.float32, tensor_parallel_size=4)


def test_gemma3_image_text_hub_config_takes_gemma3_text_defaults():
    """gemma-3-4b-it's ``text_config`` names five keys; the rest are Gemma3TextConfig's defaults (8 heads of 256, 4
    KV heads, window 4096, every sixth layer global, query_pre_attn_scalar 256, a tied head), its linear scaling the
    global layers' alone."""
    from jllm.models.families.multimodal import gemma3

    text = dict(
        hidden_size=2560,
        intermediate_size=10240,
        model_type="gemma3_text",
        num_hidden_layers=34,
        rope_scaling={"factor": 8.0, "rope_type": "linear"},
        sliding_window=1024,
    )
    args = gemma3({"architectures": ["Gemma3ForConditionalGeneration"], "text_config": text}, np.float32)
    assert (args.num_heads, args.num_kv_heads, args.head_dim, args.vocab_size) == (8, 4, 256, 262_208)
    assert args.sm_scale == 256**-0.5 and args.tie_word_embeddings and args.final_softcap is None
    assert [i for i, spec in enumerate(args.layers) if spec.sliding_window is None] == [5, 11, 17, 23, 29]
    assert args.layers[0].sliding_window == 1024 and dict(args.layers[0].rope.scaling)["rope_type"] == "default"
    assert dict(args.layers[5].rope.scaling)["rope_type"] == "linear" and args.layers[5].rope.theta == 1e6
    assert args.weights.prefix == "language_model.model." and args.weights.head_prefix == "language_model."


def test_smollm3_default_layers_drop_the_rotary_in_every_fourth():
    """SmolLM3-3B's configs list ``no_rope_layers``; without it every fourth layer has no rotary (transformers'
    ``no_rope_layer_interval`` 4), and only under ``use_sliding_window`` do those NoPE layers slide."""
    from jllm.models.families.llama import smollm3

    config = dict(TINY_CONFIG, num_hidden_layers=8, sliding_window=16)
    assert [spec.rope is None for spec in smollm3(config, np.float32).layers] == [False, False, False, True] * 2
    assert all(spec.sliding_window is None for spec in smollm3(config, np.float32).layers)
    sliding = smollm3(dict(config, use_sliding_window=True), np.float32).layers
    assert [spec.sliding_window for spec in sliding] == [None, None, None, 16] * 2
    assert sliding[0].rope.theta == 2e6


def test_olmo3_older_rope_keys_scale_only_the_global_layers_as_transformers_reads_them():
    """An OLMo 3 config with ``rope_theta`` and ``rope_scaling`` (not per layer type): transformers 5 gives them to the
    global layers and keeps the sliding ones at base 5e5, unscaled."""
    from jllm.models.families.llama import olmo3

    config = dict(TINY_CONFIG, rope_theta=1234.0, rope_scaling={"rope_type": "linear", "factor": 2.0})
    sliding, full = (spec.rope for spec in olmo3(dict(config, num_hidden_layers=4), np.float32).layers[2:])
    assert (full.theta, dict(full.scaling)["rope_type"]) == (1234.0, "linear")
    assert (sliding.theta, dict(sliding.scaling)["rope_type"]) == (5e5, "default")


def test_phi_and_stablelm_rotary_fractions_default_as_transformers_reads_them():
    """Phi's configs without ``partial_rotary_factor`` rotate half of each head, StableLM's a quarter (transformers'
    defaults); hub configs name it at the top level, transformers 5 inside ``rope_parameters``."""
    from jllm.models.families.layer_norm import phi, stablelm

    assert phi(TINY_CONFIG, np.float32).layers[0].rope.rotary_dim == 8  # head_dim 16
    assert stablelm(TINY_CONFIG, np.float32).layers[0].rope.rotary_dim == 4
    hub = phi(dict(TINY_CONFIG, partial_rotary_factor=0.4, rope_theta=500.0), np.float32).layers[0].rope
    new = phi(dict(TINY_CONFIG, rope_parameters={"rope_theta": 500.0, "partial_rotary_factor": 0.4}), np.float32)
    assert hub == new.layers[0].rope and hub.rotary_dim == 6


@pytest.mark.parametrize("heads", [4, 6, 12, 32, 40])
def test_alibi_slopes_are_transformers_for_any_head_count(heads):
    """Bloom's (and Falcon-RW's) and MPT's slopes, heads a power of two or not (the extra heads' interleaved
    series), against the biases transformers builds (each head's bias one slope per position), to float32's rounding."""
    import torch
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor
    from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

    from jllm.models.families.common import bloom_slopes, mpt_slopes

    bloom = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), heads, torch.float32)[:, 0, 1]  # position 1
    ulp = np.finfo(np.float32).eps  # torch's float32 pow rounds some powers the other way
    np.testing.assert_allclose(np.float32(bloom_slopes(heads)), bloom.numpy(), rtol=ulp, atol=0)
    for bias_max in (8, 16):
        mpt = -build_mpt_alibi_tensor(heads, 2, bias_max)[:, 0, 0]  # position -1
        np.testing.assert_allclose(np.float32(mpt_slopes(heads, bias_max)), mpt.numpy(), rtol=ulp, atol=0)


def test_qwen2_5_vl_hub_config_reads_as_transformers_5_writes_it():
    """The hub's Qwen2.5-VL configs keep the language model's keys at the top level beside ``vision_config``, its
    M-RoPE in ``rope_scaling`` (type "mrope"); transformers 5 writes them in ``text_config`` with
    ``rope_parameters``. Both read as Qwen2 with the plain rotary at their ``rope_theta``, tied as the top says."""
    from jllm.models.families.multimodal import qwen2_5_vl

    text = dict(TINY_CONFIG, rope_theta=1e6, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
    outer = dict(architectures=["Qwen2_5_VLForConditionalGeneration"], tie_word_embeddings=True, vision_config={})
    params = {"mrope_section": [2, 3, 3], "rope_theta": 1e6, "rope_type": "default", "type": "mrope"}
    nested = dict(TINY_CONFIG, rope_parameters=params)
    hub, new = qwen2_5_vl({**outer, **text}, np.float32), qwen2_5_vl({**outer, "text_config": nested}, np.float32)
    assert hub == new and hub.tie_word_embeddings and hub.qkv_bias
    assert hub.layers[0].rope.theta == 1e6 and dict(hub.layers[0].rope.scaling) == {"rope_type": "default"}


def test_hunyuan_moe_per_layer_lists_read_as_one_value():
    """Hunyuan-A13B's config gives ``moe_topk``, ``moe_intermediate_size`` and ``num_shared_expert`` per layer, all
    alike: read as the single values transformers builds."""
    from jllm.models.families.mixtures import hunyuan_moe

    config = dict(TINY_CONFIG, num_experts=4, moe_topk=2)
    lists = dict(config, moe_topk=[2, 2], moe_intermediate_size=[96, 96], num_shared_expert=[1, 1])
    assert hunyuan_moe(lists, np.float32) == hunyuan_moe(config, np.float32)
    assert hunyuan_moe(config, np.float32).experts_per_token == 2


def test_dots1_layers_without_layer_types_slide_as_transformers_says():
    """A dots.llm1 config without ``layer_types`` (the hub's): the layers from ``max_window_layers`` on slide, as
    Dots1Config lays them out; ``first_k_dense_replace`` layers are dense."""
    import transformers

    from jllm.models.families.deepseek import dots1

    config = dict(TINY_CONFIG, num_hidden_layers=4, sliding_window=16, max_window_layers=2, first_k_dense_replace=1)
    config |= dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)
    kinds = transformers.Dots1Config(**config).layer_types
    args = dots1(config, np.float32)
    assert [spec.sliding_window for spec in args.layers] == [16 if k == "sliding_attention" else None for k in kinds]
    assert kinds == ["full_attention"] * 2 + ["sliding_attention"] * 2
    assert [spec.dense_mlp_size for spec in args.layers] == [96, None, None, None]


def test_mpt_hub_architecture_name_reads_as_transformers_name():
    """MosaicML's hub configs name ``MPTForCausalLM`` (their own code's class); transformers' is ``MptForCausalLM``."""
    from jllm.models.registry import resolve_architecture

    assert resolve_architecture({"architectures": ["MPTForCausalLM"]}) is resolve_architecture(
        {"architectures": ["MptForCausalLM"]}
    )


@pytest.mark.parametrize(
    "arch, config_cls, settings",
    [
        ("Glm4MoeLiteForCausalLM", "Glm4MoeLiteConfig", dict(DEEPSEEK_KEYS, first_k_dense_replace=3)),
        (
            "ExaoneMoeForCausalLM",
            "ExaoneMoeConfig",
            dict(num_experts=8, num_experts_per_tok=2, first_k_dense_replace=2),
        ),
        ("MiniCPM5MoeForCausalLM", "MiniCPM5MoeConfig", dict(DEEPSEEK_KEYS, first_k_dense_replace=2)),
        ("AXK1ForCausalLM", "AXK1Config", dict(DEEPSEEK_KEYS, first_k_dense_replace=1, moe_layer_freq=2)),
        (
            "Cohere2MoeForCausalLM",
            "Cohere2MoeConfig",
            dict(num_experts=4, first_k_dense_replace=2, prefix_dense_sliding_window_pattern=2, sliding_window=16),
        ),
    ],
)
def test_moe_layer_kinds_without_their_lists_read_as_transformers_lays_them(arch, config_cls, settings):
    """Configs without ``mlp_layer_types`` (or Cohere2-MoE's ``layer_types``), as the hub's may be: each layer dense
    or a mixture, sliding or global, as the family's transformers config lays them out (GLM-4.7-Flash ignores
    ``first_k_dense_replace``, the others read it; Cohere2-MoE pops it)."""
    import transformers

    from jllm.models.registry import build_args

    config = dict(TINY_CONFIG, num_hidden_layers=5, **settings)
    hf = getattr(transformers, config_cls)(**config)
    args = build_args({**config, "architectures": [arch]}, np.float32)[1]
    assert [spec.dense_mlp_size is None for spec in args.layers] == [t == "sparse" for t in hf.mlp_layer_types]
    if hasattr(hf, "layer_types") and hf.layer_types:
        window = config.get("sliding_window", hf.sliding_window)
        assert args.sliding_windows == [window if t == "sliding_attention" else None for t in hf.layer_types]


@pytest.mark.parametrize("arch", ["Qwen2ForCausalLM", "Qwen3ForCausalLM"])
@pytest.mark.parametrize(
    "settings",
    [
        dict(use_sliding_window=True, max_window_layers=2),
        dict(use_sliding_window=True),  # max_window_layers 28 by default: no layer slides
        dict(use_sliding_window=False, layer_types=["sliding_attention"] * 5),
    ],
)
def test_qwen_sliding_layers_without_layer_types_read_as_transformers_lays_them(arch, settings):
    """Hub Qwen2 / Qwen3 configs carry no ``layer_types``: under ``use_sliding_window`` only the layers from
    ``max_window_layers`` on slide (every layer had slid), and without it none does (its window dropped)."""
    import transformers

    from jllm.models.registry import build_args

    config = dict(TINY_CONFIG, num_hidden_layers=5, sliding_window=16, **settings)
    hf = getattr(transformers, arch.replace("ForCausalLM", "Config"))(**config)
    args = build_args({**config, "architectures": [arch]}, np.float32)[1]
    assert args.sliding_windows == [hf.sliding_window if t == "sliding_attention" else None for t in hf.layer_types]


@pytest.mark.parametrize(
    "arch, settings",
    [
        ("LlamaForCausalLM", {}),
        ("MistralForCausalLM", {}),
        ("Qwen2ForCausalLM", {}),
        ("Qwen3ForCausalLM", {}),
        ("GraniteForCausalLM", {}),
        ("Olmo2ForCausalLM", {}),
        ("MixtralForCausalLM", dict(num_local_experts=4)),
        ("Qwen3MoeForCausalLM", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)),
        ("Gemma2ForCausalLM", dict(head_dim=16)),
        ("Starcoder2ForCausalLM", {}),
        ("OlmoeForCausalLM", dict(num_experts=4, num_experts_per_tok=2)),
        ("OlmoForCausalLM", {}),
        ("SmolLM3ForCausalLM", dict(pad_token_id=0)),
        ("HunYuanDenseV1ForCausalLM", dict(head_dim=16)),
        ("Ernie4_5ForCausalLM", dict(head_dim=16)),
        ("Phi3ForCausalLM", dict(pad_token_id=0)),  # these two read the factor
        ("StableLmForCausalLM", {}),
    ],
)
@pytest.mark.parametrize("where", ["top level", "rope_parameters"])
def test_partial_rotary_factor_turns_the_channels_transformers_rotary_turns(arch, settings, where):
    """transformers' Llama-like rotary embeddings never read ``partial_rotary_factor``, so their default rope turns
    the whole head whatever a config says; jllm had turned only the factor's share there (logits ~1.2 off). Phi-3's
    and StableLM's read it. Each layer's rotary width and frequencies against transformers' ``rotary_emb``."""
    import transformers

    from jllm.models.registry import build_args

    rope = {"partial_rotary_factor": 0.5}
    if where == "rope_parameters":
        rope = {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}}
    config = getattr(transformers, arch.replace("ForCausalLM", "Config"))(**TINY_CONFIG, **settings, **rope)
    model = getattr(transformers, arch)(config)
    inv_freq = next(m.inv_freq for name, m in model.named_modules() if name.endswith("rotary_emb")).numpy()
    args = build_args({**config.to_dict(), "architectures": [arch]}, np.float32)[1]  # as config.json holds it
    for spec in args.layers:
        np.testing.assert_allclose(spec.rope.inv_freq(), inv_freq, rtol=1e-6)


def test_hf_activation_names_compute_transformers_act2fn():
    """Every ``hidden_act`` name the readers take computes what transformers' ``ACT2FN`` does under it (its aliases
    ``swish``, ``gelu_fast`` and ``gelu_python`` had been refused by name)."""
    import torch
    from transformers.activations import ACT2FN

    from jllm.models.families.common import HF_ACTIVATIONS
    from jllm.models.layers import ACTIVATIONS

    x = np.linspace(-6.0, 6.0, 101, dtype=np.float32)
    for name, ours in HF_ACTIVATIONS.items():
        if ours == "xielu":  # learned per layer: its module's own test
            continue
        expected = ACT2FN[name](torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(np.asarray(ACTIVATIONS[ours](x)), expected, rtol=1e-5, atol=1e-6, err_msg=name)


# Families whose transformers rotary never reads partial_rotary_factor (their default rope turns the whole head), and
# three that do (the last row)
PARTIAL_ROTARY_ROWS = [
    *("cohere", "cohere2", "cohere2_moe", "aya_vision_image_text", "gemma3n", "gemma4", "dots1", "dbrx"),
    *("ernie4_5_moe", "deepseek_v2", "longcat_flash", "llama4_image_text", "nanochat", "jais2", "granite_swa"),
    *("minicpm5_moe", "afmoe", "kolibri1", "flint", "hy_v3", "axk1", "axk2", "jetmoe", "lfm2", "zamba2"),
    *("falcon_h1", "aria_text", "mellum"),
    *("phi3", "stablelm", "glm"),
]


@pytest.mark.parametrize("name", PARTIAL_ROTARY_ROWS)
def test_partial_rotary_factor_is_read_only_where_transformers_rotary_reads_it(name):
    """A ``partial_rotary_factor`` of 0.5 beside a family's config: each layer's rope turns the channels
    transformers' text rotary embedding turns (its inverse frequencies). Most of these families' rotaries never read
    the factor; jllm had turned half the head there (logits 0.07-1.2 off), and refused it for Cohere's."""
    import transformers

    from jllm.models.registry import build_args

    arch, config_cls, overrides, _ = FAMILIES[name]
    config = {k: v for k, v in {**BASE, **overrides}.items() if v is not None or k not in BASE}
    config["partial_rotary_factor"] = 0.5
    if name in IMAGE_TEXT:
        config = dict(IMAGE_TEXT[name], text_config=config)
    hf_config = getattr(transformers, config_cls or arch.replace("ForCausalLM", "Config"))(**config)
    if name in IMAGE_TEXT:  # the config class of the image-text model
        hf_config = getattr(transformers, arch.replace("ForConditionalGeneration", "Config"))(**config)
    model = getattr(transformers, arch)(hf_config)
    theirs = [
        buffer.numpy()
        for module_name, module in model.named_modules()
        if module_name.endswith("rotary_emb") and "vision" not in module_name
        for buffer_name, buffer in module.named_buffers()
        if buffer_name.endswith("inv_freq") and not buffer_name.startswith("original")
    ]
    args = build_args({**hf_config.to_dict(), "architectures": [arch]}, np.float32)[1]
    ours = [spec.rope.inv_freq() for spec in args.layers if spec.rope is not None]
    assert theirs and ours
    for inv_freq in ours:
        assert any(f.shape == inv_freq.shape and np.allclose(f, inv_freq, rtol=1e-6) for f in theirs), (
            inv_freq.shape,
            [f.shape for f in theirs],
        )

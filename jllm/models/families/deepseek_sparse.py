"""DeepSeek-V3.2 (``DeepseekV32ForCausalLM``), GLM-5 (``GlmMoeDsaForCausalLM``) and A.X-K2 (``AXK2ForCausalLM``):
DeepSeek-V3's latent attention,
router and mixture (``jllm.models.families.deepseek``) with DeepSeek Sparse Attention, a lightning indexer choosing
the ``index_topk`` tokens each query attends to (``jllm.models.dsa``). The two differ in the indexer's rotary
(DeepSeek-V3.2's half-split pairs, GLM-5's interleaved), in their configs' defaults, and in where the indexers are:
in every DeepSeek-V3.2 layer; in GLM-5's "full" layers of ``indexer_types``, its "shared" ones having none and
reusing the last full layer's selection (``LayerSpec.reuses_selection``; DeepseekV32Config has no such keys). The
latent attention's rotary pairs are interleaved in all, whatever ``rope_interleave`` says (transformers reads none).
A.X-K2 is DeepSeek-V3.2 with its queries and an output gate from one projection (``MLASpec.q_gate``), gated input
norms (``ModelArgs.gated_norm_rank``) and, by default, a router without expert groups. Hy4 (``HYV4ForCausalLM``) is
served within its indexer's budget, where DeepSeek Sparse Attention keeps every token (its indexer not read).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jllm.models.dsa import IndexerSpec
from jllm.models.families.deepseek import deepseek_v3
from jllm.models.hyper_connections import SinkhornSpec
from jllm.models.layers import ClampedSwiGLU
from jllm.models.model_args import ModelArgs, WeightMap

# DeepseekV32Config's and GlmMoeDsaConfig's defaults for the keys a config.json may leave out (the hub's do)
V32_DEFAULTS = dict(
    n_group=8,
    topk_group=4,
    routed_scaling_factor=2.5,
    n_shared_experts=1,
    norm_topk_prob=True,
    rms_norm_eps=1e-6,
    max_position_embeddings=163840,
    q_lora_rank=1536,
    first_k_dense_replace=3,
    index_topk=2048,
    index_head_dim=128,
    index_n_heads=64,
)
GLM5_DEFAULTS = dict(
    V32_DEFAULTS,
    n_group=1,
    topk_group=1,
    rms_norm_eps=1e-5,
    max_position_embeddings=202752,
    q_lora_rank=2048,
    index_n_heads=32,
)
# AXK2Config's (its light release's: no expert groups, so n_group None)
AXK2_DEFAULTS = dict(
    V32_DEFAULTS,
    n_group=None,
    topk_group=None,
    max_position_embeddings=131072,
    q_lora_rank=384,
    first_k_dense_replace=1,
    index_n_heads=16,
    gated_norm_rank=16,
)
# HYV4Config's
HYV4_DEFAULTS = dict(
    vocab_size=120_832,
    hidden_size=2816,
    intermediate_size=6912,
    moe_intermediate_size=768,
    num_hidden_layers=34,
    num_attention_heads=32,
    max_position_embeddings=262_144,
    rms_norm_eps=1e-5,
    n_routed_experts=256,
    n_shared_experts=1,
    num_experts_per_tok=8,
    routed_scaling_factor=2.827,
    norm_topk_prob=True,
    n_group=1,
    topk_group=1,
    q_lora_rank=1536,
    kv_lora_rank=512,
    qk_nope_head_dim=192,
    qk_rope_head_dim=64,
    v_head_dim=256,
    index_topk=2048,
    hc_mult=4,
    hc_magnitude=2.0,
    hc_eps=1e-6,
    swiglu_limit=10.0,
)
# Hy4's stored names (transformers saves them so): ours -> theirs
HYV4_NAMES = (
    ("shared_expert", "shared_experts"),
    ("out_gate", "linear_gate"),
    ("sinks", "learnable_sink_param"),
    *(
        (f"{ours}.{leaf}", f"hc_pre.{theirs}.hc_{leaf if leaf != 'mix_scale' else 'scale'}")
        for ours, theirs in (("attn_hyper_connection", "hc_attn_layer"), ("mlp_hyper_connection", "hc_mlp_layer"))
        for leaf in ("fn", "base", "mix_scale")
    ),
    ("hyper_connection_mixer", "hc_pre.hc_head"),
    *((f"hc_{leaf}", f"hc_head_{leaf}") for leaf in ("fn", "base", "scale")),  # the final mix's own leaves
)
INDEXED = "indexed_attention"  # transformers' only layer type here: every layer runs DSA


def deepseek_v32(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """DeepSeek-V3.2 (-Exp): the indexer's rotary on half-split pairs."""
    return _sparse({**V32_DEFAULTS, **cfg}, dtype, "DeepSeek-V3.2", interleaved_index=False)


def glm_moe_dsa(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """GLM-5: the indexer's rotary on interleaved pairs; its "shared" layers (``indexer_types``, from
    ``index_topk_freq`` / ``index_skip_topk_offset`` or ``index_topk_pattern``) reuse the last full layer's
    selection."""
    cfg = {**GLM5_DEFAULTS, **cfg}
    kinds = _indexer_types(cfg)
    if len(kinds) != cfg["num_hidden_layers"] or any(kind not in ("full", "shared") for kind in kinds):
        raise ValueError(
            f"GLM-5 indexer_types={kinds!r} is not supported (supported: one of 'full', 'shared' per layer, "
            f"num_hidden_layers={cfg['num_hidden_layers']})"
        )
    if kinds[0] == "shared":
        raise ValueError(
            "GLM-5 indexer_types[0]='shared' is not supported: no earlier layer selects for it (transformers' "
            "forward raises too); the first layer must be 'full'"
        )
    args = _sparse(cfg, dtype, "GLM-5", interleaved_index=True)
    layers = [dataclasses.replace(s, reuses_selection=k == "shared") for s, k in zip(args.layers, kinds, strict=True)]
    return dataclasses.replace(args, layers=tuple(layers))


def axk2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """A.X-K2 (SK Telecom): DeepSeek-V3.2's layers (the indexer's rotary half-split) with ``q_gate_proj`` in place of
    ``q_b_proj`` (each head's query and its output's sigmoid gate from the normed low-rank query beside the unnormed
    one), every input norm and a mixture layer's MLP norm gated (``gated_norm_rank``), each layer dense or a mixture
    as ``mlp_layer_types`` says (else AXK2Config's rule from ``first_k_dense_replace`` and ``moe_layer_freq``)."""
    cfg = {**AXK2_DEFAULTS, **cfg}
    if cfg.get("mlp_layer_types") is None:
        first, freq = cfg["first_k_dense_replace"], cfg.get("moe_layer_freq", 1)
        cfg["mlp_layer_types"] = [
            "sparse" if i >= first and i % freq == 0 else "dense" for i in range(cfg["num_hidden_layers"])
        ]
    args = _sparse(cfg, dtype, "A.X-K2", interleaved_index=False)
    # the hub's names (transformers renames them on load): the fused query and gate stored as q_b_proj
    rename = (("q_gate_proj", "q_b_proj"), ("gate_down", "W_down"), ("gate_up", "W_up"))
    return dataclasses.replace(
        args,
        mla=dataclasses.replace(args.mla, q_gate=True),
        gated_norm_rank=cfg["gated_norm_rank"],
        weights=dataclasses.replace(args.weights, rename=(*args.weights.rename, *rename)),
    )


def hy_v4(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Hy4 (Tencent's HYV4): DeepSeek-V3's latent attention and router with a per-channel sigmoid output gate from a
    projection of the layer's input (``MLASpec.out_gate``) and attention sinks, ``hc_mult`` hyper-connection streams
    in DeepSeek-V4's form without its mixing matrix (``SinkhornSpec.comb`` off, post weights ``hc_magnitude *
    sigmoid + hc_eps``), routed experts' SwiGLU clamped at ``swiglu_limit`` (DeepSeek-V4's), dense layers where
    ``mlp_layer_types`` says (by default the first). Its DeepSeek Sparse Attention keeps a query's ``index_topk``
    best keys, every key it sees within that budget: jllm serves up to ``index_topk`` tokens
    (``ModelArgs.indexer_budget``), where it is causal attention, its indexers (rotary on their last channels, and
    cross-layer sharing: ``indexer_types``) never read. HYV4Config's defaults for what a config leaves out."""
    cfg = {**HYV4_DEFAULTS, **cfg}
    n = cfg["num_hidden_layers"]
    layer_types = cfg.get("layer_types") or [INDEXED] * n
    if any(kind != INDEXED for kind in layer_types):
        raise ValueError(f"Hy4 layer_types={layer_types!r} is not supported (supported: every layer {INDEXED!r})")
    mlp_types = cfg.get("mlp_layer_types") or ["dense"] * min(1, n) + ["sparse"] * max(n - 1, 0)
    v3 = deepseek_v3({**cfg, "rope_interleave": True, "head_dim": None}, dtype, "Hy4", mlp_types)
    glu = ClampedSwiGLU(float(cfg["swiglu_limit"]), gate_first=True)
    skipped = ((r"\.self_attn\.indexer\.", "Hy4's indexer: within index_topk every token is kept, so it never runs"),)
    return dataclasses.replace(
        v3,
        layers=tuple(dataclasses.replace(spec, experts_glu=glu) for spec in v3.layers),
        mla=dataclasses.replace(v3.mla, out_gate=True),
        attn_sinks=True,
        hyper_streams=cfg["hc_mult"],
        hyper_sinkhorn=SinkhornSpec(1, float(cfg["hc_eps"]), comb=False, post_scale=float(cfg["hc_magnitude"])),
        indexer_budget=cfg["index_topk"],
        sparse_attention=("Hy4 DeepSeek Sparse Attention", "index_topk"),
        weights=WeightMap(
            gate_up=("linear_gate", "up_proj"), rename=HYV4_NAMES, expert_params="out_in", skipped=skipped
        ),
    )


def _indexer_types(cfg: dict[str, Any]) -> list[str]:
    """GlmMoeDsaConfig's per-layer indexer kinds: ``indexer_types``, else from ``index_topk_pattern`` ("F" full, "S"
    shared), else every ``index_topk_freq``-th layer full from ``index_skip_topk_offset`` on (transformers' rule)."""
    if cfg.get("indexer_types") is not None:
        return list(cfg["indexer_types"])
    pattern = cfg.get("index_topk_pattern")
    if pattern is not None:
        return [{"F": "full", "S": "shared"}.get(c, c) for c in pattern] if isinstance(pattern, str) else list(pattern)
    freq, offset = max(cfg.get("index_topk_freq", 1), 1), cfg.get("index_skip_topk_offset", 2)
    return ["full" if max(i - offset + 1, 0) % freq == 0 else "shared" for i in range(cfg["num_hidden_layers"])]


def _sparse(cfg: dict[str, Any], dtype: Any, family: str, interleaved_index: bool) -> ModelArgs:
    """V3 (its router and layer kinds: ``mlp_layer_types``, else ``first_k_dense_replace`` dense layers first) with
    the indexer on its low-rank query."""
    if cfg.get("q_lora_rank") is None:
        raise ValueError(
            f"{family} q_lora_rank=None is not supported (supported: a rank; the indexer reads the low-rank query, "
            "and transformers builds no other)"
        )
    layer_types = cfg.get("layer_types") or [INDEXED] * cfg["num_hidden_layers"]
    if any(kind != INDEXED for kind in layer_types):
        raise ValueError(f"{family} layer_types={layer_types!r} is not supported (supported: every layer {INDEXED!r})")
    dense = min(cfg["first_k_dense_replace"], cfg["num_hidden_layers"])
    mlp_types = cfg.get("mlp_layer_types") or ["dense"] * dense + ["sparse"] * (cfg["num_hidden_layers"] - dense)
    v3 = deepseek_v3({**cfg, "rope_interleave": True}, dtype, family, mlp_types)
    rope = dataclasses.replace(v3.layers[0].rope, interleaved=interleaved_index)
    indexer = IndexerSpec(cfg["index_n_heads"], cfg["index_head_dim"], cfg["index_topk"], rope)
    return dataclasses.replace(v3, mla=dataclasses.replace(v3.mla, indexer=indexer))

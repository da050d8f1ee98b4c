"""DeepSeek-V3.2 (``DeepseekV32ForCausalLM``), GLM-5 (``GlmMoeDsaForCausalLM``) and A.X-K2 (``AXK2ForCausalLM``):
DeepSeek-V3's latent attention,
router and mixture (``jllm.models.families.deepseek``) with DeepSeek Sparse Attention, a lightning indexer choosing
the ``index_topk`` tokens each query attends to (``jllm.models.dsa``). The two differ in the indexer's rotary
(DeepSeek-V3.2's half-split pairs, GLM-5's interleaved), in their configs' defaults, and in where the indexers are:
in every DeepSeek-V3.2 layer; in GLM-5's "full" layers of ``indexer_types``, its "shared" ones having none and
reusing the last full layer's selection (``LayerSpec.reuses_selection``; DeepseekV32Config has no such keys). The
latent attention's rotary pairs are interleaved in all, whatever ``rope_interleave`` says (transformers reads none).
A.X-K2 is DeepSeek-V3.2 with its queries and an output gate from one projection (``MLASpec.q_gate``), gated input
norms (``ModelArgs.gated_norm_rank``) and, by default, a router without expert groups.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jllm.models.dsa import IndexerSpec
from jllm.models.families.deepseek import deepseek_v3
from jllm.models.model_args import ModelArgs

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

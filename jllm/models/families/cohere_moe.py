"""Cohere2-MoE (``Cohere2MoeForCausalLM``): Cohere2's parallel layers (attention and MLP off one norm, sliding layers
with the interleaved rotary, global ones without) with a routed mixture of SwiGLU experts, dense layers before it.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jllm.models.families.common import FULL, SLIDING, layer_windows, mixture_layers
from jllm.models.families.layer_norm import cohere_decoder
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.models.rope import Rope

# Cohere2MoeConfig's router rules (``jllm.models.moe.ROUTINGS`` of the same names), and its shared-expert
# combinations -> whether the shared and routed outputs are averaged
SELECTIONS = ("softmax", "sigmoid")
COMBINATIONS = {"sum": False, "average": True}


def cohere2_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Cohere2-MoE: per ``mlp_layer_types`` (by default the first ``first_k_dense_replace`` layers) a dense SwiGLU
    of ``prefix_dense_intermediate_size``, else the top ``num_experts_per_tok`` of ``num_experts`` SwiGLU experts of
    ``intermediate_size`` (a softmax over the chosen logits, or their sigmoids, renormalised where
    ``norm_topk_prob``) beside ``num_shared_experts`` experts' worth of one shared SwiGLU, summed or averaged
    (``shared_expert_combination_strategy``). Layer kinds per ``layer_types`` (by default every
    ``sliding_window_pattern``-th global, the dense layers every ``prefix_dense_sliding_window_pattern``-th); the dense
    layers take the rotary even when global where that pattern is 1. RMSNorms where ``rms_norm_eps`` is set, else
    Cohere's bias-free LayerNorms; heads ``head_dim`` wide."""
    defaults = dict(head_dim=128, sliding_window=4096, num_experts=8, num_experts_per_tok=2, num_shared_experts=0)
    cfg = {**defaults, "intermediate_size": 22528, "max_position_embeddings": 8192, **cfg}
    n, first_dense = cfg["num_hidden_layers"], cfg.get("first_k_dense_replace") or 0
    prefix_pattern, pattern = cfg.get("prefix_dense_sliding_window_pattern", 1), cfg.get("sliding_window_pattern", 4)
    kind = [SLIDING if (i + 1) % prefix_pattern else FULL for i in range(first_dense)]
    kind += [SLIDING if (i + 1) % pattern else FULL for i in range(n - first_dense)]
    mlp_types = cfg.get("mlp_layer_types") or ["dense" if i < first_dense else "sparse" for i in range(n)]
    selection = cfg.get("expert_selection_fn", "softmax")
    combination = cfg.get("shared_expert_combination_strategy", "average")
    for key, value, supported in (
        ("expert_selection_fn", selection, SELECTIONS),
        ("shared_expert_combination_strategy", combination, COMBINATIONS),
    ):
        if value not in supported:
            raise ValueError(f"Cohere2-MoE {key}={value!r} is not supported (supported: {', '.join(supported)})")
    experts, top_k = cfg["num_experts"], cfg["num_experts_per_tok"]
    if not 0 < top_k <= experts:
        raise ValueError(f"Cohere2-MoE num_experts_per_tok={top_k} must be between 1 and num_experts={experts}")
    rms = cfg.get("rms_norm_eps")
    cfg = {**cfg, "layer_norm_eps": rms if rms is not None else cfg.get("layer_norm_eps", 1e-5)}
    windows = layer_windows(cfg, kind)
    dense_width = cfg.get("prefix_dense_intermediate_size") or cfg["intermediate_size"]
    force_rope = prefix_pattern == 1

    def layers(rope: Rope) -> tuple[LayerSpec, ...]:
        # transformers rotates in the layers with a window, and in the dense ones where force_rope
        return tuple(
            LayerSpec(rope if w or (force_rope and not moe) else None, w, None if moe else dense_width)
            for w, moe in zip(windows, mixture_layers(mlp_types, n, "Cohere2-MoE"), strict=True)
        )

    args = cohere_decoder(
        cfg,
        dtype,
        "Cohere2-MoE",
        layers,
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=selection == "softmax" or bool(cfg.get("norm_topk_prob", True)),
        expert_routing=selection,
        shared_expert_size=cfg["intermediate_size"] * cfg["num_shared_experts"],
        shared_expert_gated=False,
        shared_expert_mean=COMBINATIONS[combination],
        weights=WeightMap(rename=(("experts", "experts.{e}"), ("shared_expert", "shared_experts"))),
    )
    return args if rms is None else dataclasses.replace(args, norm="rms")

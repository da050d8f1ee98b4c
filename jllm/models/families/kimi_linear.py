"""Kimi Linear (Moonshot's ``KimiLinearForCausalLM``): Kimi Delta Attention layers (``jllm.models.gated_deltanet``
with ``channel_decay``: the delta rule with a decay per key channel, its own short convs over q, k and v) beside
DeepSeek's latent attention without rotary (``jllm.models.mla``, its "rope" channels unrotated), by ``layer_types``;
DeepSeek-V3's mixture (a sigmoid router with its choice bias, ungated shared experts) or a dense SwiGLU by
``mlp_layer_types``. Its checkpoint keeps q, k, v and their convs apart and the routed experts as ``w1`` / ``w3`` /
``w2`` (``reader``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from jllm.models.families.common import FULL, activation, check_attends
from jllm.models.families.deepseek import latent_attention, v3_mixture
from jllm.models.families.stored_apart import read_qkv_apart, read_renamed
from jllm.models.gated_deltanet import DeltaNetSpec
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.safetensors_index import hf_names

LINEAR = "linear_attention"
# KimiLinearConfig's attribute_map: the names its config.json uses -> the standard ones
ALIASES = {
    "model_max_length": "max_position_embeddings",
    "moe_renormalize": "norm_topk_prob",
    "num_expert_group": "n_group",
    "num_experts": "n_routed_experts",
    "num_local_experts": "n_routed_experts",
    "num_experts_per_token": "num_experts_per_tok",
    "num_shared_experts": "n_shared_experts",
}
RENAME = (
    ("mixer", "self_attn"),
    ("in_proj_b", "b_proj"),
    ("out_proj", "o_proj"),
    ("mixer.norm.weight", "self_attn.o_norm.weight"),
    ("mlp", "block_sparse_moe"),
)


def kimi_linear(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Kimi Linear: the layer kinds from ``layer_types``, or an older config's ``linear_attn_config``
    (``full_attn_layers`` / ``kda_layers``, counted from 1), else every fourth layer from the fifth full attention;
    the KDA's ``linear_num_heads`` heads of ``linear_head_dim`` (keys and values alike); the first
    ``first_k_dense_replace`` layers dense where ``mlp_layer_types`` is absent."""
    cfg = {ALIASES.get(k, k): v for k, v in cfg.items()}
    linear = cfg.get("linear_attn_config") or {}
    n = cfg["num_hidden_layers"]
    types = cfg.get("layer_types")
    if types is None and "full_attn_layers" in linear and "kda_layers" in linear:
        types = [FULL if i + 1 in linear["full_attn_layers"] else LINEAR for i in range(n)]
    types = types or [FULL if i and i % 4 == 0 else LINEAR for i in range(n)]
    if len(types) != n or any(kind not in (FULL, LINEAR) for kind in types):
        raise ValueError(
            f"Kimi Linear layer_types={types!r} must name each of the {n} layers as {FULL!r} or {LINEAR!r}"
        )
    if (act := activation(cfg, "hidden_act", "silu", "Kimi Linear")) != "silu":
        raise ValueError(f"Kimi Linear hidden_act={act!r} is not supported (supported: 'silu', the KDA conv's)")
    defaults = dict(
        n_routed_experts=256,
        num_experts_per_tok=8,
        n_shared_experts=1,
        moe_intermediate_size=1024,
        routed_scaling_factor=2.446,
        rms_norm_eps=1e-5,
        max_position_embeddings=1_048_576,
    )
    cfg = {**defaults, **cfg}
    mlp_types = cfg.get("mlp_layer_types")
    mlp_types = mlp_types or ["dense" if i < cfg.get("first_k_dense_replace", 1) else "sparse" for i in range(n)]
    settings, _ = latent_attention(cfg, dtype, interleaved=False)  # no rotary: its rope is not used
    groups = (cfg.get("n_group") or 1, cfg.get("topk_group") or 1)
    renormalize = bool(cfg.get("norm_topk_prob", True))
    mixture, dense = v3_mixture(cfg, n, "Kimi Linear", "sigmoid", groups, renormalize, mlp_types)
    layers = tuple(
        LayerSpec(None, dense_mlp_size=size, mixer="attention" if kind == FULL else "gated_deltanet")
        for kind, size in zip(types, dense, strict=True)
    )
    check_attends(layers, "Kimi Linear")
    heads, head_dim = cfg.get("linear_num_heads", 32), cfg.get("linear_head_dim", 128)
    deltanet = DeltaNetSpec(
        num_k_heads=linear.get("num_heads", heads),
        num_v_heads=linear.get("num_heads", heads),
        head_k_dim=linear.get("head_dim", head_dim),
        head_v_dim=linear.get("head_dim", head_dim),
        conv_kernel=linear.get("short_conv_kernel_size", cfg.get("linear_conv_kernel_dim", 4)),
        fused_qkvz=False,
        channel_decay=True,
    )
    rename = (*RENAME, *mixture.pop("weights").rename)
    return ModelArgs(
        **{**settings, "intermediate_size": cfg["moe_intermediate_size"]},
        layers=layers,
        deltanet=deltanet,
        **mixture,
        weights=WeightMap(rename=rename, reader=reader),
    )


def reader(index: Any, path: tuple[Any, ...], shape: tuple[int, ...], dtype: Any) -> Any:
    """The routed experts' ``w1`` / ``w3`` / ``w2`` (the shared experts and dense MLPs keep ``gate_proj`` /
    ``up_proj`` / ``down_proj``); the KDA's ``A_log`` stored ``[1, 1, heads, 1]``, its q, k, v and convs apart; a
    dense MLP under ``mlp`` as well as under ``block_sparse_moe`` (which transformers saves). None: read as named."""
    keys = [str(p) for p in path]
    if "experts" in keys:
        experts = copy.copy(index)
        rename = (*index.weights.rename, ("down_proj", "w2"))
        experts.weights = dataclasses.replace(index.weights, gate_up=("w1", "w3"), rename=rename, reader=None)
        return experts.param_reader(path, shape, dtype, 1)
    if keys[-2:] == ["mixer", "A_log"]:
        stored = index.slice_reader(hf_names(path, index.weights)[0][0], (1, 1, *shape, 1), False, dtype)
        return lambda where: stored((slice(None), slice(None), *where, slice(None)))[0, 0, :, 0]
    return read_qkv_apart(index, path, shape, dtype) or read_renamed(index, path, shape, dtype, (("mlp", "mlp"),))

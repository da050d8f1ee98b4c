"""LongCat-Flash (``LongcatFlashForCausalLM``, meituan-longcat/LongCat-Flash-Chat): each of its ``num_layers`` layers
is two blocks of DeepSeek-V3's latent attention (queries always low-rank, interleaved rotary) and a dense SwiGLU,
with a mixture of experts on a shortcut: it reads the first block's normed MLP input and is added to the second
block's output. jllm runs each block as a layer of its own (``2 * num_layers``, a latent pool each), the mixture's
output passed from the first to the second (``LayerSpec.moe_shortcut``), and reads their tensors from the pair's
layer (``_paired_layer``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from jllm.models.families.common import activation
from jllm.models.families.deepseek import latent_attention
from jllm.models.mla import MLASpec
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.models.moe import GroupedRouting

# LongcatFlashConfig's defaults for the keys a config leaves out
DEFAULTS = dict(
    rope_theta=1e7,
    rms_norm_eps=1e-5,
    max_position_embeddings=131072,
    q_lora_rank=1536,
    kv_lora_rank=512,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    head_dim=64,
    v_head_dim=128,
    ffn_hidden_size=12288,
    expert_ffn_hidden_size=2048,
    n_routed_experts=512,
    zero_expert_num=256,
    moe_topk=12,
    routed_scaling_factor=6.0,
)
# the remote code's switches that transformers' LongCat-Flash has fixed on or off: key -> the value it implements
FIXED = dict(
    zero_expert_type="identity",
    router_bias=False,
    mla_scale_q_lora=True,
    mla_scale_kv_lora=True,
    norm_topk_prob=False,
    attention_method="MLA",
)
# our module (a block's) -> its name in the checkpoint's layer, with the block's index after it where there are two
BLOCK_MODULES = {
    "self_attn": "self_attn.{i}",
    "input_layernorm": "input_layernorm.{i}",
    "post_attention_layernorm": "post_attention_layernorm.{i}",
    "mlp": "mlps.{i}",  # the dense SwiGLU
    "shortcut_moe": "mlp",  # the mixture, one a layer
}


def longcat_flash(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """The mixture: a float32 softmax router over ``n_routed_experts`` SwiGLU experts of ``expert_ffn_hidden_size``
    and ``zero_expert_num`` zero-computation ones (the identity), the top ``moe_topk`` chosen by score plus
    ``e_score_correction_bias``, weighted by score times ``routed_scaling_factor``, not renormalised; the latent
    attention's queries times ``sqrt(hidden_size / q_lora_rank)`` and its normed latent times ``sqrt(hidden_size /
    kv_lora_rank)``. The multi-token prediction layer (``model.mtp``) is not read."""
    cfg = {**DEFAULTS, **cfg}
    for key, supported in FIXED.items():
        if key in cfg and cfg[key] != supported:
            raise ValueError(f"LongCat-Flash {key}={cfg[key]!r} is not supported (supported: {supported!r})")
    nope, rope_dim = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"]
    if cfg["head_dim"] != rope_dim or cfg.get("qk_head_dim", nope + rope_dim) != nope + rope_dim:
        raise ValueError(
            f"LongCat-Flash head_dim={cfg['head_dim']}, qk_head_dim={cfg.get('qk_head_dim')} is not supported "
            f"(supported: head_dim=qk_rope_head_dim={rope_dim}, the channels transformers rotates, and qk_head_dim="
            f"qk_nope_head_dim + qk_rope_head_dim={nope + rope_dim})"
        )
    layers = cfg.get("num_layers") or cfg["num_hidden_layers"] // 2
    experts, zero, top_k = cfg["n_routed_experts"], cfg["zero_expert_num"] or 0, cfg["moe_topk"]
    if not 0 < top_k <= experts + zero:
        raise ValueError(
            f"LongCat-Flash moe_topk={top_k} must be between 1 and n_routed_experts + zero_expert_num={experts + zero}"
        )
    blocks = {**cfg, "num_hidden_layers": 2 * layers, "intermediate_size": cfg["expert_ffn_hidden_size"]}
    settings, rope = latent_attention(blocks, dtype, interleaved=True)
    hidden = settings["hidden_size"]
    if settings["mla"].q_lora_rank is None:
        raise ValueError("LongCat-Flash q_lora_rank=None is not supported (its queries are always low-rank)")
    mla: MLASpec = settings["mla"]
    scales = dict(q_scale=(hidden / mla.q_lora_rank) ** 0.5, latent_scale=(hidden / mla.kv_lora_rank) ** 0.5)
    pair = (
        LayerSpec(rope, dense_mlp_size=cfg["ffn_hidden_size"], moe_shortcut="out"),
        LayerSpec(rope, dense_mlp_size=cfg["ffn_hidden_size"], moe_shortcut="in"),
    )
    rename = (
        ("gate", "router.classifier"),
        ("gate.e_score_correction_bias", "router.e_score_correction_bias"),
        ("experts", "experts.{e}"),
    )
    return ModelArgs(
        **{**settings, "mla": dataclasses.replace(mla, **scales)},
        layers=pair * layers,
        mlp_act=activation(cfg, "hidden_act", "silu", "LongCat-Flash"),
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=False,
        zero_experts=zero,
        router_float32=True,
        moe_routing=GroupedRouting("softmax", scale=float(cfg["routed_scaling_factor"]), softmax_bias=True),
        weights=WeightMap(rename=rename, reader=_paired_layer),
    )


def _paired_layer(index: Any, path: tuple[Any, ...], shape: tuple[int, ...], dtype: Any) -> Any:
    """A block's parameter read from its pair's layer: our layer ``2 l + i``'s ``self_attn`` is the checkpoint's
    ``layers.l.self_attn.i``, its dense MLP ``layers.l.mlps.i``, the first block's mixture ``layers.l.mlp``; None
    outside the layers (embeddings, final norm, head: the usual names)."""
    if str(path[0]) != "layers":
        return None
    block, module = int(path[1]), str(path[2])
    paired = copy.copy(index)
    paired.weights = dataclasses.replace(index.weights, reader=None)
    stored = ("layers", block // 2, BLOCK_MODULES[module].format(i=block % 2), *path[3:])
    return paired.param_reader(stored, shape, dtype, 1)

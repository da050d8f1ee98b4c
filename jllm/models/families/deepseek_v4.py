"""DeepSeek-V4 (``DeepseekV4ForCausalLM``): its attention (``jllm.models.deepseek_v4``: low-rank queries, one K=V
head, sinks, the rotary on each head's last channels, a grouped low-rank output) over a sliding window in every
layer, with compressed entries beside it in the compressed layers (``layer_types``: heavily_compressed_attention
every ``compress_rates[...]`` tokens, compressed_sparse_attention from two overlapping series with a lightning
indexer keeping ``index_topk`` of them; ``jllm.models.compressed_kv``), ``hc_mult`` hyper-connection streams mixed by
Sinkhorn-normalised matrices (``hyper_connections.SinkhornHyperConnection``), and a mixture of clamped SwiGLU experts
with one shared expert behind a ``sqrtsoftplus`` router, its first layers routing by token id (``hash_moe``:
``tid2eid``). Read from the checkpoint's own tensor names, which transformers saves.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from jllm.models.compressed_kv import CompressSpec
from jllm.models.deepseek_v4 import V4AttentionSpec
from jllm.models.families.common import base_args, read_rope
from jllm.models.hyper_connections import SinkhornSpec
from jllm.models.layers import ClampedSwiGLU
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.models.moe import GroupedRouting

SLIDING = "sliding_attention"
LAYER_TYPES = (SLIDING, "compressed_sparse_attention", "heavily_compressed_attention")
MLP_TYPES = ("hash_moe", "moe")
SCORING_FUNCS = ("sqrtsoftplus", "sigmoid")
# DeepseekV4Config's defaults for the keys a config.json may leave out
DEFAULTS = dict(
    routed_scaling_factor=1.5,
    scoring_func="sqrtsoftplus",
    swiglu_limit=10.0,
    sliding_window=128,
    hc_mult=4,
    hc_sinkhorn_iters=20,
    hc_eps=1e-6,
    o_groups=8,
    o_lora_rank=1024,
    q_lora_rank=1024,
    compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
    index_n_heads=64,
    index_head_dim=128,
    index_topk=512,
)
# our modules' and parameters' names -> the checkpoint's (DeepSeek's own, which transformers saves: its
# conversion_mapping renames them on load)
STORED_NAMES = (
    ("lm_head", "head"),
    ("self_attn", "attn"),
    ("q_a_proj", "wq_a"),
    ("q_a_norm", "q_norm"),
    ("q_b_proj", "wq_b"),
    ("kv_proj", "wkv"),
    ("kv_norm", "norm"),
    ("o_a_proj", "wo_a"),
    ("o_b_proj", "wo_b"),
    ("sinks", "attn_sink"),
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp", "ffn"),
    ("e_score_correction_bias", "bias"),
    ("experts", "experts.{e}"),
    ("down_proj", "w2"),
    ("shared_expert", "shared_experts"),
    ("hyper_connection_mixer", "hc_head"),
    ("gate_proj", "wgate"),
    ("position_bias", "ape"),
)


def deepseek_v4(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """The model from a ``deepseek_v4`` config.json as transformers saves it (``layer_types``,
    ``mlp_layer_types``, ``compress_rates`` and ``rope_parameters`` per rope kind, "main" and "compress")."""
    cfg = {**DEFAULTS, **cfg}
    _check(cfg)
    cfg = {**cfg, "intermediate_size": cfg["moe_intermediate_size"]}
    base = base_args(cfg, dtype)
    ropes = {
        kind: read_rope(cfg, base["head_dim"], cfg["rope_parameters"][kind], True) for kind in ("main", "compress")
    }
    glu = ClampedSwiGLU(float(cfg["swiglu_limit"]), gate_first=True)
    layers = tuple(
        LayerSpec(
            ropes["main" if kind == SLIDING else "compress"],  # the compressed layers' queries and keys too
            cfg["sliding_window"],
            hash_routed=mlp == "hash_moe",
            compress=_compress(cfg, kind),
            experts_glu=glu,
            shared_expert_glu=glu,
        )
        for kind, mlp in zip(cfg["layer_types"], cfg["mlp_layer_types"], strict=True)
    )
    hyper = [
        (f"{ours}.{leaf}", f"hc_{theirs}_{stored}")
        for ours, theirs in (("attn_hyper_connection", "attn"), ("mlp_hyper_connection", "ffn"))
        for leaf, stored in (("fn", "fn"), ("base", "base"), ("mix_scale", "scale"))
    ]
    return ModelArgs(
        **base,
        layers=layers,
        num_experts=cfg["n_routed_experts"],
        experts_per_token=cfg["num_experts_per_tok"],
        shared_expert_size=cfg["moe_intermediate_size"],  # one shared expert, whatever n_shared_experts (transformers')
        shared_expert_gated=False,
        moe_routing=GroupedRouting(cfg["scoring_func"], scale=float(cfg["routed_scaling_factor"])),
        hyper_streams=cfg["hc_mult"],
        hyper_sinkhorn=SinkhornSpec(cfg["hc_sinkhorn_iters"], float(cfg["hc_eps"])),
        v4_attention=V4AttentionSpec(cfg["q_lora_rank"], cfg["o_groups"], cfg["o_lora_rank"]),
        weights=WeightMap(gate_up=("w1", "w3"), rename=(*STORED_NAMES, *hyper)),
    )


def _compress(cfg: dict[str, Any], kind: str) -> CompressSpec | None:
    """A layer's compressed entries by its type: none on a sliding layer, an indexer on a compressed sparse one."""
    if kind == SLIDING:
        return None
    rate = cfg["compress_rates"][kind]
    if kind == "heavily_compressed_attention":
        return CompressSpec(rate)
    return CompressSpec(rate, cfg["index_n_heads"], cfg["index_head_dim"], cfg["index_topk"])


def _check(cfg: dict[str, Any]) -> None:
    """Refuses what transformers' DeepSeek-V4 has no other form of, or jllm does not run, by its key."""
    n = cfg["num_hidden_layers"]
    for key, kinds in (("layer_types", LAYER_TYPES), ("mlp_layer_types", MLP_TYPES)):
        found = cfg.get(key) or []
        if len(found) != n or any(kind not in kinds for kind in found):
            raise ValueError(f"DeepSeek-V4 {key}={found!r} must name each of the {n} layers, each one of {kinds}")
    checks = (
        ("num_key_value_heads", cfg.get("num_key_value_heads", 1), 1),
        ("attention_bias", bool(cfg.get("attention_bias")), False),
        ("mlp_bias", bool(cfg.get("mlp_bias")), False),
        ("hidden_act", cfg.get("hidden_act", "silu"), "silu"),
    )
    for key, value, supported in checks:
        if value != supported:
            raise ValueError(f"DeepSeek-V4 {key}={value!r} is not supported (supported: {supported!r})")
    if cfg["scoring_func"] not in SCORING_FUNCS:
        raise ValueError(
            f"DeepSeek-V4 scoring_func={cfg['scoring_func']!r} is not supported (supported: {', '.join(SCORING_FUNCS)})"
        )
    if cfg["num_attention_heads"] % cfg["o_groups"]:
        raise ValueError(
            f"DeepSeek-V4 o_groups={cfg['o_groups']} does not divide num_attention_heads={cfg['num_attention_heads']}"
        )

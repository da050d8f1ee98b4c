"""The Mamba2 hybrids: some layers attention over the paged pool, the others a Mamba2 mixer (``jllm.models.mamba2``)
with a per-sequence state, each followed by the layer's MLP (Bamba, Granite-4.0-H), or each block one of them alone
(Nemotron-H), or attention beside the mixer in every layer (Falcon-H1); pure Mamba2 is read with the Mamba families
(``families.mamba``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jllm.models.families.common import activation, base_args, check_attends, read_rope, whole_head_rotary
from jllm.models.families.llama import granite
from jllm.models.families.mixtures import granite_moe_shared
from jllm.models.mamba2 import Mamba2Spec
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.models.moe import GroupedRouting

# a layer's kind in ``layer_types`` (transformers 5's names and the hub's older ones) -> our mixer
LAYER_KINDS = {"linear_attention": "mamba2", "mamba": "mamba2", "full_attention": "attention", "attention": "attention"}
# our mixer's names -> the checkpoint's: the layer's ``mamba``, its gated norm ``norm``
MAMBA_NAMES = (("mixer", "mamba"), ("gated_norm", "norm"))


def mamba2_spec(cfg: dict[str, Any], family: str) -> Mamba2Spec:
    """The mixer's sizes from the ``mamba_*`` keys (transformers' defaults where absent; ``mamba_d_head`` "auto":
    ``mamba_expand * hidden_size`` over the heads), its gated norm's eps the model's ``rms_norm_eps``, its conv's
    activation ``hidden_act``, its prefill's chunk ``mamba_chunk_size``."""
    heads = cfg.get("mamba_n_heads", 128)
    head_dim = cfg.get("mamba_d_head", "auto")
    if head_dim == "auto":
        head_dim = cfg.get("mamba_expand", 2) * cfg["hidden_size"] // heads
    return Mamba2Spec(
        num_heads=heads,
        head_dim=head_dim,
        n_groups=cfg.get("mamba_n_groups", 1),
        state_size=cfg.get("mamba_d_state", 256),
        conv_kernel=cfg.get("mamba_d_conv", 4),
        conv_bias=bool(cfg.get("mamba_conv_bias", True)),
        proj_bias=bool(cfg.get("mamba_proj_bias", False)),
        time_step_limit=time_step_limit(cfg.get("time_step_limit", (0.0, math.inf)), family),
        norm_eps=cfg.get("rms_norm_eps", 1e-5),
        act=activation(cfg, "hidden_act", "silu", family),
        chunk_size=cfg.get("mamba_chunk_size", 256),
    )


def time_step_limit(value: Any, family: str) -> tuple[float, float]:
    """``time_step_limit`` as two floats: JSON numbers, or transformers 5's ``{"__float__": "Infinity"}``; None (no
    limit) as ``(0, inf)``."""
    if value is None:
        return 0.0, math.inf
    bounds = [float(v["__float__"]) if isinstance(v, dict) and "__float__" in v else v for v in value]
    if len(bounds) != 2 or not all(isinstance(b, int | float) for b in bounds):
        raise ValueError(f"{family} time_step_limit={value!r} is not supported (supported: two numbers, low and high)")
    return float(bounds[0]), float(bounds[1])


def mixer_kinds(types: list[str], num_layers: int, family: str) -> list[str]:
    """Each layer's mixer from its ``layer_types`` entry, a list not naming every layer or an unknown kind refused."""
    if len(types) != num_layers:
        raise ValueError(f"{family} layer_types={types!r} must name each of the {num_layers} layers")
    for kind in types:
        if kind not in LAYER_KINDS:
            raise ValueError(
                f"{family} layer_types entry {kind!r} is not supported (supported: {', '.join(LAYER_KINDS)})"
            )
    return [LAYER_KINDS[kind] for kind in types]


def _layers(kinds: list[str], rope: Any, family: str) -> tuple[LayerSpec, ...]:
    """The attention layers with ``rope``, the Mamba2 layers without (their order is the recurrence's)."""
    layers = tuple(LayerSpec(rope if kind == "attention" else None, mixer=kind) for kind in kinds)
    check_attends(layers, family)
    return layers


def bamba(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Bamba: Llama's layers with a Mamba2 mixer in place of the attention except at ``attn_layer_indices``, whose
    attention rotates half of each head's channels (``partial_rotary_factor`` 0.5, as BambaConfig fixes it); the
    MLP is ``feed_forward``, its norm ``pre_ff_layernorm``, the final one ``final_layernorm``."""
    cfg = {"rms_norm_eps": 1e-5, "max_position_embeddings": 262_144, "num_key_value_heads": 8, **cfg}
    base = base_args(cfg, dtype)
    attn = set(cfg.get("attn_layer_indices") or [])
    kinds = ["attention" if i in attn else "mamba2" for i in range(base["num_layers"])]
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    params.setdefault("partial_rotary_factor", 0.5)
    bias = bool(cfg.get("attention_bias", False))
    rename = (("mlp", "feed_forward"), ("post_attention_layernorm", "pre_ff_layernorm"), ("norm", "final_layernorm"))
    return ModelArgs(
        **base,
        layers=_layers(kinds, read_rope(cfg, base["head_dim"], params), "Bamba"),
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        mlp_act=activation(cfg, "hidden_act", "silu", "Bamba"),
        mamba2=mamba2_spec(cfg, "Bamba"),
        weights=WeightMap(rename=(*MAMBA_NAMES, *rename)),
    )


def granite_moe_hybrid(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Granite-4.0-H: Granite MoE Shared's layers (its four multipliers, ``num_local_experts`` routed experts beside
    the shared MLP, or the shared MLP alone where there are none) with a Mamba2 mixer in place of the attention
    where ``layer_types`` says (all, without it); rotary only where ``position_embedding_type`` is "rope" (the
    released models have none)."""
    n = cfg["num_hidden_layers"]
    kinds = mixer_kinds(cfg.get("layer_types") or ["mamba"] * n, n, "Granite-4.0-H")
    position = cfg.get("position_embedding_type")
    if position not in (None, "nope", "rope"):
        raise ValueError(
            f"Granite-4.0-H position_embedding_type={position!r} is not supported (supported: 'rope', 'nope', null)"
        )
    # layer_types read above: Granite's readers would take its entries for sliding windows
    cfg = {"num_local_experts": 8, "shared_intermediate_size": 1024, **cfg, "layer_types": None}
    if cfg["num_local_experts"]:
        args = granite_moe_shared(cfg, dtype)
    else:  # the shared MLP alone: a dense SwiGLU, its gate and up rows in one tensor
        names = WeightMap(gate_up=("input_linear",), rename=(("mlp", "shared_mlp"), ("down_proj", "output_linear")))
        dense = dict(intermediate_size=cfg["shared_intermediate_size"], mlp_bias=False, weights=names)
        args = dataclasses.replace(granite(cfg, dtype), **dense)
    rope = args.layers[0].rope if position == "rope" else None
    weights = dataclasses.replace(args.weights, rename=(*MAMBA_NAMES, *args.weights.rename))
    return dataclasses.replace(
        args, layers=_layers(kinds, rope, "Granite-4.0-H"), mamba2=mamba2_spec(cfg, "Granite-4.0-H"), weights=weights
    )


# Nemotron-H's block kinds (``layers_block_type``, or the older ``hybrid_override_pattern``'s characters) -> a layer:
# a Mamba2 mixer alone, attention alone, or an MLP or a mixture of experts alone (Nemotron 3's), each block with its
# own norm and residual (in a model with a mixture, its MLP blocks are dense ones ``intermediate_size`` wide)
_MAMBA_BLOCK, _ATTENTION_BLOCK = LayerSpec(None, mixer="mamba2", mlp=False), LayerSpec(None, mlp=False)
NEMOTRON_BLOCKS = {
    "linear_attention": _MAMBA_BLOCK,
    "mamba": _MAMBA_BLOCK,
    "full_attention": _ATTENTION_BLOCK,
    "attention": _ATTENTION_BLOCK,
    "mlp": LayerSpec(None, mixer="none"),
    "moe": LayerSpec(None, mixer="none"),
}
NEMOTRON_PATTERN = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
# NemotronHConfig's older key names -> its own
NEMOTRON_ALIASES = {
    "mamba_n_groups": "n_groups",
    "mamba_d_conv": "conv_kernel",
    "mamba_conv_bias": "use_conv_bias",
    "mamba_dt_limit": "time_step_limit",
    "mamba_chunk_size": "chunk_size",
}


def nemotron_h(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Nemotron-H (NVIDIA's Nemotron-H, Nemotron Nano 2): blocks each of one kind, a Mamba2 mixer, attention (no
    rotary) or a squared-ReLU MLP, after an RMSNorm and into the residual, in the order ``layers_block_type`` (or
    ``hybrid_override_pattern``: M, *, -, E) gives; each block a decoder layer with the other half absent. Nemotron
    3's mixture blocks ("moe", E): DeepSeek-V3's sigmoid router with its choice bias over squared-ReLU experts (not
    gated) beside a shared one; their latent projections (``moe_latent_size``) and sliding attention are refused."""
    cfg = {NEMOTRON_ALIASES.get(k, k): v for k, v in cfg.items()}
    pattern = [NEMOTRON_PATTERN.get(c, c) for c in cfg.get("hybrid_override_pattern") or ""]
    kinds = cfg.get("layers_block_type") or cfg.get("layer_types") or pattern
    kinds = kinds or ["linear_attention", "moe", "full_attention", "mlp"]  # NemotronHConfig's default
    for kind in kinds:
        if kind not in NEMOTRON_BLOCKS:
            raise ValueError(f"Nemotron-H block {kind!r} is not supported (supported: {', '.join(NEMOTRON_BLOCKS)})")
    layers = tuple(NEMOTRON_BLOCKS[kind] for kind in kinds)
    check_attends(layers, "Nemotron-H")
    if cfg.get("sliding_window") is not None:
        raise ValueError(f"Nemotron-H sliding_window={cfg['sliding_window']} is not supported (supported: null)")
    defaults = {"head_dim": 128, "num_key_value_heads": 8, "intermediate_size": 21504, "max_position_embeddings": 4096}
    cfg = {**defaults, **cfg, "num_hidden_layers": len(kinds), "rms_norm_eps": cfg.get("layer_norm_epsilon", 1e-5)}
    mamba = dict(
        mamba_n_heads=cfg.get("mamba_num_heads", 128),
        mamba_d_head=cfg.get("mamba_head_dim", 64),
        mamba_n_groups=cfg.get("n_groups", 8),
        mamba_d_state=cfg.get("ssm_state_size", 128),
        mamba_d_conv=cfg.get("conv_kernel", 4),
        mamba_conv_bias=cfg.get("use_conv_bias", True),
        mamba_proj_bias=cfg.get("use_bias", False),  # the mixer's projections read use_bias, not mamba_proj_bias
        hidden_act=cfg.get("mamba_hidden_act", "silu"),
        mamba_chunk_size=cfg.get("chunk_size", 128),
    )
    rename = (
        ("embed_tokens", "embeddings"),
        ("self_attn", "mixer"),
        ("mlp", "mixer"),
        ("input_layernorm", "norm"),
        ("post_attention_layernorm", "norm"),
        ("norm", "norm_f"),
        ("gated_norm", "norm"),
    )
    args = ModelArgs(
        **base_args(cfg, dtype),
        layers=layers,
        mlp_act=activation(cfg, "mlp_hidden_act", "relu2", "Nemotron-H"),
        mlp_gated=False,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        mamba2=mamba2_spec({**cfg, **mamba}, "Nemotron-H"),
        weights=WeightMap(prefix="backbone.", rename=rename),
    )
    return _nemotron_mixture(args, cfg, kinds) if "moe" in kinds else args


def _nemotron_mixture(args: ModelArgs, cfg: dict[str, Any], kinds: list[str]) -> ModelArgs:
    """Nemotron 3's model: its "moe" blocks the top ``num_experts_per_tok`` of ``n_routed_experts`` plain experts of
    ``moe_intermediate_size`` by sigmoid score plus ``e_score_correction_bias`` among the ``topk_group`` best of
    ``n_group`` groups, renormalised where ``norm_topk_prob``, times ``routed_scaling_factor``, beside a plain shared
    expert of ``moe_shared_expert_intermediate_size``; its "mlp" blocks dense."""
    if cfg.get("moe_latent_size") is not None:
        raise ValueError(
            f"Nemotron-H moe_latent_size={cfg['moe_latent_size']} is not supported (supported: null, no latent "
            "projection around the experts)"
        )
    if args.mlp_bias:
        raise ValueError("Nemotron-H mlp_bias=True with mixture blocks is not supported (supported: False)")
    experts = cfg.get("n_routed_experts", cfg.get("num_local_experts", 8))
    top_k, groups = cfg.get("num_experts_per_tok", 2), (cfg.get("n_group", 1), cfg.get("topk_group", 1))
    if not 0 < top_k <= experts:
        raise ValueError(f"Nemotron-H num_experts_per_tok={top_k} must be between 1 and n_routed_experts={experts}")
    layers = tuple(
        dataclasses.replace(spec, dense_mlp_size=args.intermediate_size if kind == "mlp" else None)
        for spec, kind in zip(args.layers, kinds, strict=True)
    )
    rename = (*args.weights.rename, ("experts", "experts.{e}"), ("shared_expert", "shared_experts"))
    return dataclasses.replace(
        args,
        layers=layers,
        intermediate_size=cfg.get("moe_intermediate_size", 7688),
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=bool(cfg.get("norm_topk_prob", True)),
        shared_expert_size=cfg.get("moe_shared_expert_intermediate_size", 7688),
        shared_expert_gated=False,
        moe_routing=GroupedRouting("sigmoid", *groups, scale=float(cfg.get("routed_scaling_factor", 1.0))),
        weights=dataclasses.replace(args.weights, rename=rename),
    )


# FalconH1Config's defaults for the keys read here
FALCON_H1_DEFAULTS = {
    "vocab_size": 128_000,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 8192,
    "num_key_value_heads": 8,
    "mamba_d_ssm": 1024,
    "mamba_n_heads": 128,
    "mamba_expand": 2,
    "mamba_norm_before_gate": True,
}


# a Falcon-H1 layer's block multipliers, in ``LayerSpec.attention_beside``'s order
FALCON_H1_BLOCK_MULTIPLIERS = (
    "attention_in_multiplier",
    "attention_out_multiplier",
    "ssm_in_multiplier",
    "ssm_out_multiplier",
)


def falcon_h1(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Falcon-H1: in every layer Llama's attention and a Mamba2 mixer side by side over the same RMS-normed input,
    their outputs summed into the residual, then a SwiGLU (``feed_forward``, its norm ``pre_ff_layernorm``); muP
    multipliers throughout: the embeddings (``embedding_multiplier``), the logits (``lm_head_multiplier``), the keys
    (``key_multiplier``, folded into the attention's scale: the keys meet nothing but the queries), each block's
    input and output (``attention_in_`` / ``attention_out_`` / ``ssm_in_`` / ``ssm_out_multiplier``), the mixer's z,
    x, B, C and dt (``ssm_multipliers``) and the MLP's gate and output (``mlp_multipliers``). The mixer is
    ``mamba_d_ssm`` channels wide (``mamba_expand * hidden_size`` where null), its gated norm optional
    (``mamba_rms_norm``) and before or after the gate (``mamba_norm_before_gate``); ``in_proj``'s bias is
    ``mamba_proj_bias``, ``out_proj``'s ``projectors_bias``, refused where they differ."""
    cfg = {**FALCON_H1_DEFAULTS, **cfg}
    in_bias, out_bias = bool(cfg.get("mamba_proj_bias", False)), bool(cfg.get("projectors_bias", False))
    if in_bias != out_bias:
        raise ValueError(
            f"Falcon-H1 mamba_proj_bias={in_bias} with projectors_bias={out_bias} is not supported (supported: the "
            "two equal, the mixer's in_proj and out_proj both biased or neither)"
        )
    inner = cfg["mamba_d_ssm"] or cfg["mamba_expand"] * cfg["hidden_size"]
    heads = cfg["mamba_n_heads"]
    head_dim = cfg.get("mamba_d_head", "auto")
    head_dim = inner // heads if head_dim == "auto" else head_dim
    if heads * head_dim != inner:
        raise ValueError(
            f"Falcon-H1 mamba_n_heads={heads} x mamba_d_head={head_dim} must equal the mixer's {inner} channels "
            "(mamba_d_ssm, or mamba_expand x hidden_size; transformers refuses such a config too)"
        )
    base = base_args(cfg, dtype)
    multipliers = tuple(float(cfg.get(k, 1.0)) for k in FALCON_H1_BLOCK_MULTIPLIERS)
    ssm = tuple(float(m) for m in cfg.get("ssm_multipliers") or (1.0,) * 5)
    mlp = tuple(float(m) for m in cfg.get("mlp_multipliers") or (1.0, 1.0))
    if len(ssm) != 5 or len(mlp) != 2:
        raise ValueError(
            f"Falcon-H1 ssm_multipliers={cfg.get('ssm_multipliers')!r}, mlp_multipliers={cfg.get('mlp_multipliers')!r}"
            " are not supported (supported: 5 numbers for z, x, B, C, dt; 2 for the MLP's gate and output)"
        )
    gate_norm = "gate_only"
    if cfg.get("mamba_rms_norm", False):
        gate_norm = "norm_then_gate" if cfg["mamba_norm_before_gate"] else "gate_then_norm"
    mamba = dataclasses.replace(
        mamba2_spec({**cfg, "mamba_d_head": head_dim}, "Falcon-H1"), gate_norm=gate_norm, in_multipliers=ssm
    )
    layer = LayerSpec(read_rope(whole_head_rotary(cfg), base["head_dim"]), mixer="mamba2", attention_beside=multipliers)
    bias = bool(cfg.get("attention_bias", False))
    rename = (("mlp", "feed_forward"), ("post_attention_layernorm", "pre_ff_layernorm"), ("norm", "final_layernorm"))
    return ModelArgs(
        **base,
        layers=(layer,) * base["num_layers"],
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        mlp_act=activation(cfg, "hidden_act", "silu", "Falcon-H1"),
        mlp_multipliers=mlp,
        embed_scale=float(cfg.get("embedding_multiplier", 1.0)),
        sm_scale=float(cfg.get("key_multiplier", 1.0)) * base["head_dim"] ** -0.5,
        logits_divisor=1.0 / float(cfg.get("lm_head_multiplier", 1.0)),
        mamba2=mamba,
        weights=WeightMap(rename=(*MAMBA_NAMES, *rename)),
    )

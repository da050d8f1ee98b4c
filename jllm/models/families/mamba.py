"""The Mamba families: Mamba and FalconMamba, every layer a Mamba (v1) mixer (``jllm.models.mamba``) alone after its
RMSNorm, no attention and no MLP; pure Mamba2 (state-spaces' mamba2, Mamba-Codestral), the same blocks around a
Mamba2 mixer (``jllm.models.mamba2``); Jamba, Mamba mixers with attention every ``attn_layer_period`` layers, each
followed by a SwiGLU or a mixture of experts every ``expert_layer_period`` layers.

An attention-free model has no heads: its ``ModelArgs`` carry one placeholder head, which nothing builds or checks
(``ModelArgs.attends``), and its pages store nothing (``kv_cache.attention_free_pages``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import math
from typing import Any

from jllm.models.families.common import activation, base_args
from jllm.models.families.mamba_hybrids import mamba2_spec
from jllm.models.mamba import MambaSpec
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap

# the longest context of a config that names none (Mamba's: a recurrence has no position table), vLLM's assumption
# for such a config
DEFAULT_CONTEXT = 2048
# our names -> Mamba's and FalconMamba's: the embedding, each layer's one norm, the final norm
BACKBONE_NAMES = (("embed_tokens", "embeddings"), ("input_layernorm", "norm"), ("norm", "norm_f"))
# Mamba2Config's keys as ``mamba_hybrids.mamba2_spec`` reads them (the hybrids' ``mamba_*`` names)
MAMBA2_KEYS = {
    "num_heads": "mamba_n_heads",
    "head_dim": "mamba_d_head",
    "n_groups": "mamba_n_groups",
    "state_size": "mamba_d_state",
    "conv_kernel": "mamba_d_conv",
    "use_conv_bias": "mamba_conv_bias",
    "use_bias": "mamba_proj_bias",
    "chunk_size": "mamba_chunk_size",
    "layer_norm_epsilon": "rms_norm_eps",
}


def _dt_rank(value: Any, hidden: int, key: str, family: str) -> int:
    """``time_step_rank`` / ``mamba_dt_rank``: a number, or "auto" (``ceil(hidden / 16)``, as transformers reads
    it)."""
    if value == "auto":
        return math.ceil(hidden / 16)
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{family} {key}={value!r} is not supported (supported: a positive int or 'auto')")
    return value


def _period(cfg: dict[str, Any], kind: str, period: int, offset: int) -> tuple[int, int]:
    """Jamba's ``{kind}_layer_period`` and ``{kind}_layer_offset`` (JambaConfig's defaults where absent), an offset
    outside the period refused."""
    period, offset = cfg.get(f"{kind}_layer_period", period), cfg.get(f"{kind}_layer_offset", offset)
    if not (isinstance(period, int) and period >= 1 and isinstance(offset, int) and 0 <= offset < period):
        raise ValueError(
            f"Jamba {kind}_layer_offset={offset!r} and {kind}_layer_period={period!r} are not supported (supported: "
            "0 <= offset < period)"
        )
    return period, offset


def mamba(cfg: dict[str, Any], dtype: Any, family: str = "Mamba", ssm_norm: str | None = None) -> ModelArgs:
    """Mamba (state-spaces' ``mamba-*-hf``): ``num_hidden_layers`` blocks of an RMSNorm (``layer_norm_epsilon``) and
    a Mamba mixer of ``intermediate_size`` (``expand * hidden_size``) channels into the residual, the final norm
    ``norm_f``, the LM head tied to the embedding unless ``tie_word_embeddings`` is false."""
    hidden = cfg["hidden_size"]
    inner = cfg.get("intermediate_size") or cfg.get("expand", 2) * hidden
    spec = MambaSpec(
        inner=inner,
        state_size=cfg.get("state_size", 16),
        conv_kernel=cfg.get("conv_kernel", 4),
        dt_rank=_dt_rank(cfg.get("time_step_rank", "auto"), hidden, "time_step_rank", family),
        conv_bias=bool(cfg.get("use_conv_bias", True)),
        proj_bias=bool(cfg.get("use_bias", False)),
        act=activation(cfg, "hidden_act", "silu", family),
        ssm_norm=ssm_norm,
        ssm_norm_eps=cfg.get("mixer_rms_eps", 1e-6),
    )
    n = cfg["num_hidden_layers"]
    return ModelArgs(
        vocab_size=cfg["vocab_size"],
        hidden_size=hidden,
        intermediate_size=inner,  # no MLP: the mixer's width, which tensor parallelism splits
        num_layers=n,
        num_heads=1,  # no attention: a placeholder head (``ModelArgs.attends``)
        num_kv_heads=1,
        head_dim=hidden,
        norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
        max_position_embeddings=cfg.get("max_position_embeddings", DEFAULT_CONTEXT),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        layers=(LayerSpec(None, mixer="mamba", mlp=False),) * n,
        mamba=spec,
        weights=WeightMap(prefix="backbone.", rename=BACKBONE_NAMES),
        dtype=dtype,
    )


def mamba2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Pure Mamba2 (``Mamba2ForCausalLM``): Mamba's blocks and names around a Mamba2 mixer of ``num_heads`` heads of
    ``head_dim`` (``expand * hidden_size`` channels in all), ``n_groups`` groups of B and C, its gated norm grouped
    by them and gated before it norms (transformers' only form: ``norm_before_gate`` true refused), the LM head
    untied unless ``tie_word_embeddings``. ``rescale_prenorm_residual`` and the ``time_step_min`` / ``_max`` /
    ``_floor`` keys only shape an initialisation, so a checkpoint's weights are all they leave; ``residual_in_fp32``
    is not followed (the residual stays in the model's dtype, as vLLM keeps it)."""
    cfg = {"num_heads": 128, "head_dim": 64, "n_groups": 8, "state_size": 128, "layer_norm_epsilon": 1e-5, **cfg}
    hidden, expand = cfg["hidden_size"], cfg.get("expand", 2)
    if expand * hidden != cfg["num_heads"] * cfg["head_dim"]:
        raise ValueError(
            f"Mamba2 expand={expand} x hidden_size={hidden} must equal num_heads={cfg['num_heads']} x "
            f"head_dim={cfg['head_dim']} (transformers refuses such a config too)"
        )
    if cfg.get("norm_before_gate"):
        raise ValueError(
            "Mamba2 norm_before_gate=True is not supported (supported: false, the gate applied before the norm, the "
            "only form transformers' and vLLM's Mamba2 run)"
        )
    spec = mamba2_spec({MAMBA2_KEYS.get(k, k): v for k, v in cfg.items()}, "Mamba2")
    n = cfg["num_hidden_layers"]
    return ModelArgs(
        vocab_size=cfg["vocab_size"],
        hidden_size=hidden,
        intermediate_size=spec.inner,  # no MLP: the mixer's width
        num_layers=n,
        num_heads=1,  # no attention: a placeholder head (``ModelArgs.attends``)
        num_kv_heads=1,
        head_dim=hidden,
        norm_eps=cfg["layer_norm_epsilon"],
        max_position_embeddings=cfg.get("max_position_embeddings", DEFAULT_CONTEXT),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        layers=(LayerSpec(None, mixer="mamba2", mlp=False),) * n,
        mamba2=spec,
        # the mixer's gated norm is its ``norm``; older checkpoints name the embedding ``embedding`` (transformers'
        # load hook renames it)
        weights=WeightMap(
            prefix="backbone.",
            rename=(*BACKBONE_NAMES, ("gated_norm", "norm")),
            aliases=(("backbone.embedding.", "backbone.embeddings."),),
        ),
        dtype=dtype,
    )


def falcon_mamba(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """FalconMamba: Mamba with weightless RMSNorms (``mixer_rms_eps``) on the time step's input, B and C."""
    return mamba(cfg, dtype, "FalconMamba", ssm_norm="rms_no_affine")


def jamba(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Jamba: Llama's pre-norm layers, attention (no rotary, no biases) at ``i % attn_layer_period ==
    attn_layer_offset`` and a Mamba mixer (``mamba_*`` keys, RMSNorms with weights on its time step's input, B and C)
    elsewhere; each followed (``pre_ff_layernorm``, ``feed_forward``) by a mixture of ``num_experts`` SwiGLU experts
    (the top ``num_experts_per_tok`` of a softmax, not renormalised) at ``i % expert_layer_period ==
    expert_layer_offset``, a dense SwiGLU of the same width elsewhere (everywhere with one expert)."""
    cfg = {"num_key_value_heads": 8, "max_position_embeddings": 262_144, **cfg}
    base = base_args(cfg, dtype)
    n, hidden = base["num_layers"], base["hidden_size"]
    attn = _period(cfg, "attn", 8, 4)
    expert = _period(cfg, "expert", 2, 1)
    experts = cfg.get("num_experts", 16)
    top_k = cfg.get("num_experts_per_tok", 2)
    if experts > 1 and not 0 < top_k <= experts:
        raise ValueError(f"Jamba num_experts_per_tok={top_k} must be between 1 and num_experts={experts}")

    layers = tuple(
        LayerSpec(
            None,  # Jamba's attention has no positions: the Mamba layers order the tokens
            mixer="attention" if i % attn[0] == attn[1] else "mamba",
            dense_mlp_size=None if experts > 1 and i % expert[0] == expert[1] else base["intermediate_size"],
        )
        for i in range(n)
    )
    spec = MambaSpec(
        inner=cfg.get("mamba_expand", 2) * hidden,
        state_size=cfg.get("mamba_d_state", 16),
        conv_kernel=cfg.get("mamba_d_conv", 4),
        dt_rank=_dt_rank(cfg.get("mamba_dt_rank", "auto"), hidden, "mamba_dt_rank", "Jamba"),
        conv_bias=bool(cfg.get("mamba_conv_bias", True)),
        proj_bias=bool(cfg.get("mamba_proj_bias", False)),
        act=activation(cfg, "hidden_act", "silu", "Jamba"),
        ssm_norm="rms",
        ssm_norm_eps=base["norm_eps"],
    )
    rename = (
        ("mixer", "mamba"),
        ("mlp", "feed_forward"),
        ("post_attention_layernorm", "pre_ff_layernorm"),
        ("norm", "final_layernorm"),
        ("gate", "router"),
        ("experts", "experts.{e}"),
    )
    mixture = dict(num_experts=experts, experts_per_token=top_k, experts_renormalize=False) if experts > 1 else {}
    return ModelArgs(
        **base,
        layers=layers,
        mlp_act=activation(cfg, "hidden_act", "silu", "Jamba"),
        mamba=spec,
        weights=WeightMap(rename=rename),
        **mixture,
    )

"""Zamba2 (Zyphra's ``Zamba2ForCausalLM``): Mamba2 layers, each an RMSNorm and a Mamba2 mixer into the residual, some
of them (``hybrid`` in ``layers_block_type``) invoking one of ``num_mem_blocks`` shared transformer blocks first
(``jllm.models.zamba2``).

The checkpoint keeps a shared block's weights under the first hybrid layer that invokes it, every invocation's
adapters there too (``..._adapter_list.{i}``, ``i`` counting hybrid layers), and a hybrid layer's Mamba2 layer one
level down (``mamba_decoder.``): ``WeightMap.aliases`` read those names as our layer's own. Zamba (v1) is the same
layout around one block without adapters and a multi-head Mamba (v1) mixer (``jllm.models.zamba``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from jllm.models.families.common import activation, read_rope, whole_head_rotary
from jllm.models.mamba import MambaSpec
from jllm.models.mamba2 import Mamba2Spec
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.models.zamba2 import SharedBlockSpec

# ``layers_block_type`` entries (transformers 5's names and the released configs' older ones) -> hybrid or not
BLOCK_KINDS = {"linear_attention": False, "mamba": False, "hybrid": True}
# our module names -> the checkpoint's: the mixer, its gated norm, the final norm; a hybrid layer's invocation of its
# block has no level of its own there
RENAME = (("mixer", "mamba"), ("gated_norm", "norm"), ("norm", "final_layernorm"), ("shared_block", ""))


def zamba2(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Zamba2: ``num_hidden_layers`` Mamba2 layers (``n_mamba_heads`` heads of ``mamba_expand * hidden_size /
    n_mamba_heads``, ``mamba_ngroups`` groups, a biased conv, time steps clamped below at ``time_step_min``, the
    gated norm's eps 1e-5, as transformers' ``Zamba2MambaMixer`` fixes them); the hybrid ones invoke shared block
    ``i % num_mem_blocks`` at their ``i``-th invocation: attention over ``2 hidden_size`` channels in
    ``num_attention_heads`` heads (rotary where ``use_mem_rope``), a gated ``hidden_act`` MLP of
    ``intermediate_size`` (``4 hidden_size`` without it), biased where ``add_bias_linear``, adapters of
    ``adapter_rank``. ``use_long_context`` (transformers only lengthens the context, though it says the rotary's
    base is rescaled), ``use_shared_mlp_adapter`` false (transformers always builds the MLP's adapters) and grouped
    KV heads with attention adapters (their output is ``2 hidden_size`` wide) are refused."""
    hidden, n = cfg["hidden_size"], cfg["num_hidden_layers"]
    kinds = cfg.get("layers_block_type") or cfg.get("layer_types")
    if not kinds or len(kinds) != n or any(kind not in BLOCK_KINDS for kind in kinds):
        raise ValueError(
            f"Zamba2 layers_block_type={kinds!r} is not supported (supported: one of {', '.join(BLOCK_KINDS)} for "
            f"each of the {n} layers)"
        )
    for key, refused in (("use_long_context", True), ("use_shared_mlp_adapter", False)):
        if cfg.get(key, not refused) == refused:
            raise ValueError(f"Zamba2 {key}={refused} is not supported (supported: {not refused})")
    heads = cfg.get("num_attention_heads", 32)
    kv_heads = cfg.get("num_key_value_heads") or heads
    blocks = SharedBlockSpec(
        num_blocks=cfg.get("num_mem_blocks", 1),
        adapter_rank=cfg.get("adapter_rank", 128),
        attention_adapters=bool(cfg.get("use_shared_attention_adapter", False)),
    )
    if blocks.attention_adapters and kv_heads != heads:
        raise ValueError(
            f"Zamba2 num_key_value_heads={kv_heads} with use_shared_attention_adapter is not supported (supported: "
            f"num_attention_heads={heads}: the k and v adapters' outputs are 2 x hidden_size wide)"
        )
    head_dim = 2 * hidden // heads
    mamba_heads = cfg.get("n_mamba_heads", 8)
    mamba = Mamba2Spec(
        num_heads=mamba_heads,
        head_dim=cfg.get("mamba_expand", 2) * hidden // mamba_heads,
        n_groups=cfg.get("mamba_ngroups", 1),
        state_size=cfg.get("mamba_d_state", 64),
        conv_kernel=cfg.get("mamba_d_conv", 4),
        proj_bias=bool(cfg.get("add_bias_linear", False)),
        time_step_limit=(float(cfg.get("time_step_min", 0.001)), float("inf")),
        chunk_size=cfg.get("chunk_size", 256),
    )
    rope = read_rope(whole_head_rotary(cfg), head_dim) if cfg.get("use_mem_rope") else None
    layers, hybrid_ids = [], []
    for i, kind in enumerate(kinds):
        block = len(hybrid_ids) % blocks.num_blocks if BLOCK_KINDS[kind] else None
        layers.append(LayerSpec(rope, mixer="mamba2", mlp=False, shared_block=block))
        hybrid_ids += [i] * BLOCK_KINDS[kind]
    return ModelArgs(
        vocab_size=cfg["vocab_size"],
        hidden_size=hidden,
        intermediate_size=cfg.get("intermediate_size") or 4 * hidden,  # the shared blocks' MLP
        num_layers=n,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        norm_eps=cfg.get("rms_norm_eps", 1e-5),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        layers=tuple(layers),
        mlp_act=activation(cfg, "hidden_act", "gelu", "Zamba2"),
        mlp_bias=bool(cfg.get("add_bias_linear", False)),
        sm_scale=(head_dim / 2) ** -0.5,
        mamba2=mamba,
        shared_blocks=blocks,
        weights=WeightMap(gate_up=("gate_up_proj",), rename=RENAME, aliases=_aliases(hybrid_ids, blocks.num_blocks)),
        dtype=dtype,
    )


def _aliases(hybrid_ids: list[int], num_blocks: int) -> tuple[tuple[str, str], ...]:
    """The stored names a hybrid layer's parameters are read under: its Mamba2 layer's (``mamba_decoder.``) and its
    adapters', kept in its block's first layer's lists, as that layer's own."""
    aliases = []
    for i, layer in enumerate(hybrid_ids):
        ours, first = f"model.layers.{layer}.", f"model.layers.{hybrid_ids[i % num_blocks]}.shared_transformer."
        aliases.append((f"{ours}mamba_decoder.", ours))
        for part in "qkv":
            for stored, name in (("0", "lora_a"), ("1", "lora_b")):
                aliases.append(
                    (f"{first}self_attn.linear_{part}_adapter_list.{i}.{stored}.", f"{ours}{part}_adapter.{name}.")
                )
        adapters = f"{first}feed_forward.gate_up_proj_adapter_list.{i}."
        aliases += [
            (f"{adapters}0.", f"{ours}gate_up_adapter.lora_a."),
            (f"{adapters}1.", f"{ours}gate_up_adapter.gate_up_proj."),
        ]
    return tuple(aliases)


def zamba(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Zamba (v1): ``num_hidden_layers`` Mamba (v1) layers of ``n_mamba_heads`` heads (``mamba_expand *
    hidden_size`` channels, ``mamba_dt_rank``, ``mamba_d_state``, ``mamba_d_conv``, ``hidden_mamba_act``), each an
    RMSNorm and the mixer into the residual; the ``hybrid`` ones of ``layers_block_type`` (by default the third and
    every ``attn_layer_period``-th from ``attn_layer_offset`` after it) invoke the one shared block first: attention
    without rotary over ``2 hidden_size`` channels in ``num_attention_heads`` heads of ``attention_head_dim``, scores
    scaled by ``(head_dim / 2) ** -0.5``, a gated bias-free ``hidden_act`` MLP; no adapters. Its block is stored under
    the first hybrid layer (``shared_transf``)."""
    hidden, n = cfg["hidden_size"], cfg["num_hidden_layers"]
    period, offset = cfg.get("attn_layer_period", 6), cfg.get("attn_layer_offset", 4)
    default = ["mamba", "mamba", "hybrid"] + ["hybrid" if i % period == offset else "mamba" for i in range(n - 3)]
    kinds = cfg.get("layers_block_type") or cfg.get("layer_types") or default
    if len(kinds) != n or any(kind not in BLOCK_KINDS for kind in kinds) or not any(map(BLOCK_KINDS.get, kinds)):
        raise ValueError(
            f"Zamba layers_block_type={kinds!r} is not supported (supported: one of {', '.join(BLOCK_KINDS)} for "
            f"each of the {n} layers, at least one hybrid)"
        )
    width = cfg.get("attention_hidden_size") or 2 * hidden
    if width != 2 * hidden:
        raise ValueError(
            f"Zamba attention_hidden_size={width} is not supported (supported: 2 x hidden_size = {2 * hidden}, the "
            "residual stream beside the embeddings)"
        )
    heads = cfg.get("num_attention_heads", 16)
    head_dim = cfg.get("attention_head_dim") or 2 * hidden // heads
    inner = cfg.get("mamba_expand", 2) * hidden
    dt_rank = cfg.get("mamba_dt_rank", "auto")
    mamba = MambaSpec(
        inner=inner,
        state_size=cfg.get("mamba_d_state", 16),
        conv_kernel=cfg.get("mamba_d_conv", 4),
        dt_rank=-(-hidden // 16) if dt_rank == "auto" else dt_rank,
        conv_bias=bool(cfg.get("mamba_conv_bias", True)),
        proj_bias=bool(cfg.get("mamba_proj_bias", False)),
        act=activation(cfg, "hidden_mamba_act", "silu", "Zamba"),
        heads=cfg.get("n_mamba_heads", 2),
    )
    layers = tuple(
        LayerSpec(None, mixer="mamba", mlp=False, shared_block=0 if BLOCK_KINDS[kind] else None) for kind in kinds
    )
    hybrid_ids = [i for i, kind in enumerate(kinds) if BLOCK_KINDS[kind]]
    rename = (
        ("mixer", "mamba"),
        ("norm", "final_layernorm"),
        ("shared_block", ""),
        ("shared_transformer", "shared_transf"),
    )
    return ModelArgs(
        vocab_size=cfg["vocab_size"],
        hidden_size=hidden,
        intermediate_size=cfg.get("intermediate_size", 14848),  # the shared block's MLP
        num_layers=n,
        num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        norm_eps=cfg.get("rms_norm_eps", 1e-5),
        max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        layers=layers,
        mlp_act=activation(cfg, "hidden_act", "gelu", "Zamba"),
        sm_scale=(head_dim / 2) ** -0.5,
        mamba=mamba,
        shared_blocks=SharedBlockSpec(num_blocks=1, adapter_rank=0, attention_adapters=False),
        weights=WeightMap(
            rename=rename, aliases=tuple((f"model.layers.{i}.mamba_decoder.", f"model.layers.{i}.") for i in hybrid_ids)
        ),
        dtype=dtype,
    )

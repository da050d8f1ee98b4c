"""DBRX (databricks/dbrx-base, -instruct): grouped-query attention from one fused ``Wqkv`` clipped to ``clip_qkv``,
bias-free LayerNorms, and in every layer a routed mixture of SwiGLU experts stored as one 2-D tensor per projection
(``w1`` gate, ``v1`` up, ``w2`` down, each ``[experts * ffn, d_model]``), read through its ``WeightMap.reader``.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from jllm.models.families.common import activation, base_args, read_rope, whole_head_rotary
from jllm.models.families.mixtures import _check_top_k
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap

if TYPE_CHECKING:
    from jllm.safetensors_index import Reader, SafetensorsIndex

# our module names -> DBRX's (the attention and both norms sit in one ``norm_attn_norm`` module)
DBRX_NAMES = (
    ("embed_tokens", "wte"),
    ("layers", "blocks"),
    ("input_layernorm", "norm_attn_norm.norm_1"),
    ("self_attn", "norm_attn_norm.attn"),
    ("o_proj", "out_proj"),
    ("post_attention_layernorm", "norm_attn_norm.norm_2"),
    ("mlp", "ffn"),
    ("gate", "router.layer"),
    ("norm", "norm_f"),
)


def dbrx(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """The top ``moe_top_k`` of ``moe_num_experts`` experts by a softmax over the router's logits, their weights
    divided by their sum (``moe_normalize_expert_weights`` 1, DBRX's; other norms are refused); config names
    ``d_model``, ``n_heads``, ``n_layers``, ``max_seq_len``, ``attn_config`` (``kv_n_heads``, ``clip_qkv``,
    ``rope_theta``) and ``ffn_config`` (``ffn_hidden_size``, ``ffn_act_fn``)."""
    attn, ffn = cfg.get("attn_config") or {}, cfg.get("ffn_config") or {}
    experts, top_k = ffn.get("moe_num_experts", 4), ffn.get("moe_top_k", 1)
    _check_top_k("DBRX", top_k, experts, "moe_num_experts")
    norm = ffn.get("moe_normalize_expert_weights", 1.0)
    if norm not in (None, 1, 1.0):
        raise ValueError(
            f"DBRX ffn_config.moe_normalize_expert_weights={norm!r} is not supported (supported: 1, weights divided "
            "by their sum, as DBRX's, or null)"
        )
    heads, hidden = cfg["n_heads"], cfg["d_model"]
    cfg = {
        **cfg,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": attn.get("kv_n_heads", 1),
        "head_dim": hidden // heads,
        "num_hidden_layers": cfg["n_layers"],
        "intermediate_size": ffn.get("ffn_hidden_size", 3584),
        "max_position_embeddings": cfg.get("max_seq_len", 2048),
        "rms_norm_eps": 1e-5,  # torch's LayerNorm default
        "rope_theta": attn.get("rope_theta", 10000.0),
        "hidden_act": (ffn.get("ffn_act_fn") or {}).get("name", "silu"),
    }
    base = base_args(cfg, dtype)
    return ModelArgs(
        **base,
        layers=(LayerSpec(read_rope(whole_head_rotary(cfg), base["head_dim"])),) * base["num_layers"],
        norm="layer_no_bias",
        qkv_clip=attn.get("clip_qkv"),
        mlp_act=activation(cfg, "hidden_act", "silu", "DBRX"),
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=norm is not None,
        weights=WeightMap(
            qkv=("Wqkv",), qkv_layout="concat", rename=DBRX_NAMES, prefix="transformer.", reader=read_experts
        ),
    )


def read_experts(index: SafetensorsIndex, path: tuple[Any, ...], shape: tuple[int, ...], dtype: Any) -> Reader | None:
    """The experts' kernels (None for any other parameter): ours ``gate_up_proj [experts, d_model, 2, ffn]`` and
    ``down_proj [experts, ffn, d_model]`` from ``ffn.experts.mlp.{w1, v1, w2}``, each ``[experts * ffn, d_model]``:
    w1's and v1's rows are expert e's gate and up outputs (torch's ``[out, in]``), w2's its down inputs (``[in,
    out]``, as ours). Each expert's rows are read alone, so a device reads only its experts' slice."""
    *modules, _ = (str(p) for p in path)
    if modules[-2:-1] != ["experts"]:
        return None
    layer = modules[1]
    experts, ffn = shape[0], shape[-1] if modules[-1] == "gate_up_proj" else shape[1]
    d_model = shape[1] if modules[-1] == "gate_up_proj" else shape[2]
    stored = {
        part: index.slice_reader(
            f"{index.weights.prefix}blocks.{layer}.ffn.experts.mlp.{part}", (experts * ffn, d_model), False, dtype
        )
        for part in (("w1", "v1") if modules[-1] == "gate_up_proj" else ("w2",))
    }

    def rows(part: str, e: int, columns: slice, model_columns: slice) -> np.ndarray:
        """Expert ``e``'s ``[ffn columns, d_model columns]`` of ``part``."""
        start, stop, _ = columns.indices(ffn)
        return stored[part]((slice(e * ffn + start, e * ffn + stop), model_columns))

    def read_gate_up(at: tuple[slice, ...]) -> np.ndarray:
        chosen, model_columns, parts, columns = at
        picked = ("w1", "v1")[parts]
        return np.stack(
            [
                np.stack([rows(p, e, columns, model_columns).T for p in picked], axis=-2)
                for e in range(*chosen.indices(experts))
            ]
        )

    def read_down(at: tuple[slice, ...]) -> np.ndarray:
        chosen, columns, model_columns = at
        return np.stack([rows("w2", e, columns, model_columns) for e in range(*chosen.indices(experts))])

    return read_gate_up if modules[-1] == "gate_up_proj" else read_down

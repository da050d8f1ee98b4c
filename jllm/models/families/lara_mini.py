"""LaraMini (Translated's Lara-4-Mini, ``LaraMiniForCausalLM``): Qwen3.5's gated DeltaNet layers
(``jllm.models.gated_deltanet``) beside Qwen3's attention (per-head q/k RMSNorms, no output gate), by ``layer_types``:
"sliding_attention" layers rotate and slide, "full_attention" ones use no position at all. Norms apply their weight
in float32 (Helium's); every layer's MLP is a float32 softmax top-k router's mixture beside an ungated shared SwiGLU
(Flint's block), its experts stacked as transformers 5 keeps them. The checkpoint fuses the DeltaNet's input
projections into one ``in_proj`` (rows ``[q | k | v | z | b | a]``) and names its gated norm ``out_norm``, which
``reader`` reads as transformers' ``conversion_mapping`` splits them.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from jllm.models.families.common import (
    FULL,
    SLIDING,
    activation,
    base_args,
    check_attends,
    read_rope,
    whole_head_rotary,
)
from jllm.models.gated_deltanet import DeltaNetSpec
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.safetensors_index import hf_names

LINEAR = "linear_attention"
PATTERN = (LINEAR, SLIDING, LINEAR, FULL, SLIDING)  # the released layers' period (LaraMiniConfig's default)
# LaraMiniConfig's defaults for the keys a config leaves out
DEFAULTS = dict(
    hidden_size=1024,
    num_hidden_layers=34,
    num_attention_heads=16,
    num_key_value_heads=4,
    head_dim=128,
    rms_norm_eps=1e-6,
    max_position_embeddings=131072,
    tie_word_embeddings=True,
    sliding_window=512,
)
# our DeltaNet projections read from rows of the stored ``in_proj``
FUSED_PARTS = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")


def lara_mini(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """LaraMini: ``layer_types`` (by default the released period of five), the DeltaNet's widths (``linear_*``), the
    mixture's sizes; ``attention_bias`` read onto q, k, v and o as Qwen3's attention has it; a ``hidden_act`` other than
    SiLU refused (transformers' DeltaNet convolution takes it too, jllm's is SiLU's)."""
    cfg = {**DEFAULTS, **cfg}
    n = cfg["num_hidden_layers"]
    types = cfg.get("layer_types") or [PATTERN[i % len(PATTERN)] for i in range(n)]
    if len(types) != n or any(kind not in (FULL, SLIDING, LINEAR) for kind in types):
        raise ValueError(
            f"LaraMini layer_types={types!r} must name each of the {n} layers as one of {FULL!r}, "
            f"{SLIDING!r}, {LINEAR!r}"
        )
    base = base_args(cfg, dtype)
    rope = read_rope(whole_head_rotary(cfg), base["head_dim"])
    window = cfg["sliding_window"]
    by_kind = {
        LINEAR: LayerSpec(None, mixer="gated_deltanet"),
        SLIDING: LayerSpec(rope, window),
        FULL: LayerSpec(None),  # the global layers use no positional encoding
    }
    layers = tuple(by_kind[kind] for kind in types)
    check_attends(layers, "LaraMini")
    experts, top_k = cfg.get("num_experts", 128), cfg.get("num_experts_per_tok", 4)
    if not 0 < top_k <= experts:
        raise ValueError(f"LaraMini num_experts_per_tok={top_k} must be between 1 and num_experts={experts}")
    bias = bool(cfg.get("attention_bias", False))
    if (act := activation(cfg, "hidden_act", "silu", "LaraMini")) != "silu":
        raise ValueError(f"LaraMini hidden_act={act!r} is not supported (supported: 'silu', the DeltaNet conv's)")
    deltanet = DeltaNetSpec(
        num_k_heads=cfg.get("linear_num_key_heads", 8),
        num_v_heads=cfg.get("linear_num_value_heads", 16),
        head_k_dim=cfg.get("linear_key_head_dim", 128),
        head_v_dim=cfg.get("linear_value_head_dim", 128),
        conv_kernel=cfg.get("linear_conv_kernel_dim", 4),
        fused_qkvz=False,
    )
    rename = (("mixer", "linear_attn"), ("mixer.norm.weight", "linear_attn.out_norm.weight"))
    return ModelArgs(
        **{**base, "intermediate_size": cfg.get("moe_intermediate_size", 512)},
        layers=layers,
        norm="rms_float32",
        qk_norm=True,
        qkv_bias=bias,
        o_bias=bias,
        mlp_act=act,
        deltanet=deltanet,
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=bool(cfg.get("norm_topk_prob", True)),
        router_float32=True,
        shared_expert_size=cfg.get("shared_expert_intermediate_size", 512),
        shared_expert_gated=False,
        weights=WeightMap(rename=rename, expert_params="out_in", reader=reader),
    )


def reader(index: Any, path: tuple[Any, ...], shape: tuple[int, ...], dtype: Any) -> Any:
    """A DeltaNet input projection (kernel ``[hidden, width]``) read from its rows of the stored ``in_proj`` where
    the checkpoint keeps that fused tensor; None otherwise (read as named)."""
    module = str(path[-2])
    if module not in FUSED_PARTS:
        return None
    name = hf_names(path, index.weights)[0][0]
    fused = name.replace(f".{module}.", ".in_proj.")
    if name in index.tensors or fused not in index.tensors:
        return None
    total = index.tensors[fused].slice().get_shape()[0]
    conv_dim = index.tensors[fused.replace(".in_proj.", ".conv1d.")].slice().get_shape()[0]
    width = shape[1]  # rows q|k|v, then z, then b and a (one row per value head each)
    offset = {"in_proj_qkv": 0, "in_proj_z": conv_dim, "in_proj_b": total - 2 * width, "in_proj_a": total - width}
    offset = offset[module]
    read_all = index.slice_reader(fused, (shape[0], total), True, dtype)

    def read(where: tuple[slice, ...]) -> Any:
        rows, columns = where
        start, stop, step = columns.indices(width)
        return read_all((rows, slice(start + offset, stop + offset, step)))

    return read

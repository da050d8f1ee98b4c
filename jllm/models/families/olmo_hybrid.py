"""OLMo-Hybrid (AI2's ``OlmoHybridForCausalLM``): gated DeltaNet layers (``jllm.models.gated_deltanet``, Qwen3.5's
mixer with beta doubled where ``linear_allow_neg_eigval`` and its gated norm's eps 1e-5) beside OLMo 3's attention
layers (q/k RMSNorms over all heads, norms on the blocks' outputs only), by ``layer_types``; the DeltaNet layers'
norms are on the blocks' inputs (``LayerSpec.norms`` "pre"). Its checkpoint keeps q, k, v and their convs apart,
which ``reader`` reads into the mixer's fused ``in_proj_qkv`` and ``conv1d`` (``stored_apart``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from jllm.models.families.common import FULL, activation, base_args, check_attends, read_rope, whole_head_rotary
from jllm.models.families.stored_apart import read_qkv_apart, read_renamed
from jllm.models.gated_deltanet import DeltaNetSpec
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap

LINEAR = "linear_attention"
RENAME = (
    ("mixer", "linear_attn"),
    ("in_proj_z", "g_proj"),
    ("in_proj_b", "b_proj"),
    ("in_proj_a", "a_proj"),
    ("out_proj", "o_proj"),
    ("mixer.norm.weight", "linear_attn.o_norm.weight"),
    ("attn_out_norm", "post_attention_layernorm"),
    ("mlp_out_norm", "post_feedforward_layernorm"),
)
# our norms -> the names transformers' conversion renames on load and save_pretrained writes (the attention layers'
# output norm too, as ``feedforward_layer_norm``); read where the in-memory names (``RENAME``'s) are absent
STORED_NORMS = (
    ("input_layernorm", "attention_layer_norm"),
    ("post_attention_layernorm", "feedforward_layer_norm"),
    ("attn_out_norm", "feedforward_layer_norm"),
)


def olmo_hybrid(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """OLMo-Hybrid: ``layer_types`` (by default every fourth layer full attention, the last at least), the
    DeltaNet's widths (``linear_*``: by default as many heads as the attention's, keys ``0.75 * hidden / heads``
    wide, values twice that), a SwiGLU in every layer; ``attention_bias`` and activations other than SiLU refused."""
    n = cfg["num_hidden_layers"]
    types = cfg.get("layer_types")
    if types is None:
        types = [FULL if i % 4 == 3 else LINEAR for i in range(n)]
        types[-1] = types[-1] if FULL in types else FULL
    if len(types) != n or any(kind not in (FULL, LINEAR) for kind in types):
        raise ValueError(
            f"OLMo-Hybrid layer_types={types!r} must name each of the {n} layers as {FULL!r} or {LINEAR!r}"
        )
    if cfg.get("attention_bias"):
        raise ValueError("OLMo-Hybrid attention_bias=True is not supported (supported: False, as released)")
    if (act := activation(cfg, "hidden_act", "silu", "OLMo-Hybrid")) != "silu":
        raise ValueError(f"OLMo-Hybrid hidden_act={act!r} is not supported (supported: 'silu', the DeltaNet conv's)")
    cfg = {"max_position_embeddings": 65536, **cfg}
    base = base_args(cfg, dtype)
    rope = read_rope(whole_head_rotary(cfg), base["head_dim"])
    layers = tuple(
        LayerSpec(rope) if k == FULL else LayerSpec(None, mixer="gated_deltanet", norms="pre") for k in types
    )
    check_attends(layers, "OLMo-Hybrid")
    heads = cfg["num_attention_heads"]
    key_heads = cfg.get("linear_num_key_heads") or heads
    key_dim = cfg.get("linear_key_head_dim") or int(0.75 * cfg["hidden_size"] / key_heads)
    deltanet = DeltaNetSpec(
        num_k_heads=key_heads,
        num_v_heads=cfg.get("linear_num_value_heads") or heads,
        head_k_dim=key_dim,
        head_v_dim=cfg.get("linear_value_head_dim") or 2 * key_dim,
        conv_kernel=cfg.get("linear_conv_kernel_dim", 4),
        fused_qkvz=False,
        beta_scale=2.0 if cfg.get("linear_allow_neg_eigval", True) else 1.0,
        norm_eps=1e-5,  # OlmoHybridRMSNormGated's, fixed
    )
    return ModelArgs(
        **base,
        layers=layers,
        qk_norm=True,
        qk_norm_all_heads=True,
        pre_norms=False,
        sandwich_norms=True,
        deltanet=deltanet,
        weights=WeightMap(rename=RENAME, reader=reader),
    )


def reader(index: Any, path: tuple[Any, ...], shape: tuple[int, ...], dtype: Any) -> Any:
    """The DeltaNet's q, k and v (and their convs) read fused; the norms under either of transformers' names. None:
    read as named."""
    return read_qkv_apart(index, path, shape, dtype) or read_renamed(index, path, shape, dtype, STORED_NORMS)

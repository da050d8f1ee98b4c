"""gpt-oss (openai/gpt-oss-20b, -120b): sliding (128-token) and full layers alternating, attention sinks, q/k/v and o
biases, YaRN, and in every layer a routed mixture of experts with biases and a clamped SwiGLU, its experts stored as
one tensor per projection (gate and up interleaved), in MXFP4 in the released checkpoints (dequantized at load).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from jllm import mxfp4
from jllm.models.families.common import FULL, SLIDING, base_args, layer_windows, read_rope, whole_head_rotary
from jllm.models.families.mixtures import _check_top_k
from jllm.models.layers import ClampedSwiGLU
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap

if TYPE_CHECKING:
    from jllm.safetensors_index import Reader, SafetensorsIndex

# transformers' GptOssConfig defaults where a config leaves them out
DEFAULT_ROPE = {
    "rope_type": "yarn",
    "factor": 32.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "truncate": False,
    "original_max_position_embeddings": 4096,
}
DEFAULT_THETA = 150000.0


def gpt_oss(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Top ``num_experts_per_tok`` of ``num_local_experts`` by the router's logits, their weights a softmax over the
    chosen logits; layers by ``layer_types`` (sliding on even layers without them, as transformers). An MXFP4
    ``quantization_config`` is the experts' storage only (``jllm.quantization.stored_scheme`` lets it through).
    GptOssConfig's window (128) and eps (1e-5) where a config leaves them out."""
    cfg = {"sliding_window": 128, "rms_norm_eps": 1e-5, **cfg}
    experts, top_k = cfg["num_local_experts"], cfg.get("num_experts_per_tok") or cfg.get("experts_per_token", 4)
    _check_top_k("gpt-oss", top_k, experts, "num_local_experts")
    base = base_args(cfg, dtype)
    rope_params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or DEFAULT_ROPE)
    rope_params.setdefault("rope_theta", cfg.get("rope_theta") or DEFAULT_THETA)
    rope = read_rope(whole_head_rotary(cfg), base["head_dim"], whole_head_rotary(rope_params))
    default = [SLIDING if i % 2 == 0 else FULL for i in range(base["num_layers"])]
    bias = bool(cfg.get("attention_bias", True))
    glu = ClampedSwiGLU(float(cfg.get("swiglu_limit", 7.0)), alpha=float(cfg.get("swiglu_alpha", 1.702)))
    return ModelArgs(
        **base,
        layers=tuple(LayerSpec(rope, w, experts_glu=glu) for w in layer_windows(cfg, default)),
        qkv_bias=bias,
        o_bias=bias,
        attn_sinks=True,
        num_experts=experts,
        experts_per_token=top_k,
        experts_bias=True,
        weights=WeightMap(rename=(("gate", "router"),), reader=read_experts),
    )


def read_experts(index: SafetensorsIndex, path: tuple[Any, ...], shape: tuple[int, ...], dtype: Any) -> Reader | None:
    """The experts' parameters (None for any other): ``experts.gate_up_proj`` / ``experts.down_proj`` hold every
    expert, ``[experts, in, out]`` as ours, with ``_bias`` ``[experts, out]`` beside; gate_up's out axis interleaves
    gate and up (gate ``[..., ::2]``, up ``[..., 1::2]``), ours keeps them apart (``[experts, in, 2, mlp]``)."""
    *modules, leaf = (str(p) for p in path)
    if len(modules) < 2 or modules[-2] != "experts":
        return None
    name = index.weights.prefix + ".".join(modules)
    lead = shape[:1] if leaf == "bias" else shape[:2]  # [experts] or [experts, in]
    stored_shape = (*lead, int(np.prod(shape[len(lead) :])))
    if leaf == "bias":
        stored = index.slice_reader(name + "_bias", stored_shape, False, dtype)
    elif name + "_blocks" in index.tensors:
        stored = _mxfp4_reader(index, name, stored_shape, dtype)
    else:
        stored = index.slice_reader(name, stored_shape, False, dtype)
    return _deinterleaved(stored, shape) if modules[-1] == "gate_up_proj" else stored


def _deinterleaved(stored: Reader, shape: tuple[int, ...]) -> Reader:
    """Our ``[*lead, 2, mlp]`` (gate, up) from a stored ``[*lead, 2 * mlp]`` with gate and up alternating."""
    width = shape[-1]

    def read(index: tuple[slice, ...]) -> np.ndarray:
        *lead_index, part, columns = index
        start, stop, _ = columns.indices(width)
        pairs = stored((*lead_index, slice(2 * start, 2 * stop)))  # [..., 2n]: gate, up, gate, up, ...
        pairs = pairs.reshape(*pairs.shape[:-1], stop - start, 2)
        return np.moveaxis(pairs, -1, -2)[..., part, :]  # [..., parts, n]

    return read


def _mxfp4_reader(index: SafetensorsIndex, name: str, shape: tuple[int, ...], dtype: Any) -> Reader:
    """``[experts, in, out]`` from MXFP4 ``{name}_blocks`` u8[experts, out, in / 32, 16] and ``{name}_scales``
    u8[experts, out, in / 32], dequantized one expert at a time (a float32 copy of one expert's slice at most)."""
    experts, d_in, d_out = shape
    if d_in % mxfp4.BLOCK:
        raise ValueError(f"{name}: MXFP4 needs the input width ({d_in}) a multiple of {mxfp4.BLOCK}")
    groups = d_in // mxfp4.BLOCK
    blocks = index.slice_reader(name + "_blocks", (experts, d_out, groups, mxfp4.BLOCK // 2), False, np.uint8)
    scales = index.slice_reader(name + "_scales", (experts, d_out, groups), False, np.uint8)

    def read(at: tuple[slice, ...]) -> np.ndarray:
        chosen, rows, columns = range(*at[0].indices(experts)), at[1].indices(d_in), at[2]
        g0, g1 = rows[0] // mxfp4.BLOCK, -(-rows[1] // mxfp4.BLOCK)  # the blocks that hold the rows
        first = rows[0] - g0 * mxfp4.BLOCK
        out = np.empty((len(chosen), rows[1] - rows[0], len(range(*columns.indices(d_out)))), dtype)
        for n, e in enumerate(chosen):
            one, held = slice(e, e + 1), slice(g0, g1)
            values = mxfp4.dequantize(blocks((one, columns, held, slice(None))), scales((one, columns, held)))
            out[n] = values[0, :, first : first + out.shape[1]].T  # [out, in] -> [in, out]
        return out

    return read

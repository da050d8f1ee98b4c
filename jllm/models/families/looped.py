"""The looped families (``jllm.models.looped``): each run of a stored layer is a jllm layer with pages of its own,
the runs of one stored layer sharing its module, read under the first run's name (``WeightMap.aliases``).

HRM-Text (Sapient's hierarchical reasoning model, ``HrmTextForCausalLM``): two stacks of Llama layers (multi-head
attention whose output is gated per channel by a sigmoid of its own projection, weightless RMSNorms, a SwiGLU), run
``H_cycles * (L_cycles + 1)`` times per token as ``HrmLoop`` says, its embeddings scaled by ``embedding_scale``. The
checkpoint fuses each attention's gate, q, k and v into ``attn.gqkv_proj`` and the MLP's gate and up into
``mlp.gate_up_proj``, as transformers' conversion saves them. Its prefix-LM mask applies only to ``token_type_ids``,
which a request never carries: served causal, as transformers' ``generate`` runs it.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jllm.models.families.common import activation, base_args, read_rope
from jllm.models.looped import HrmLoop
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.safetensors_index import hf_names

# HrmTextConfig's defaults for the keys a config leaves out
HRM_DEFAULTS = dict(hidden_size=1536, intermediate_size=4096, num_attention_heads=12, head_dim=128, rms_norm_eps=1e-6)


def hrm_text(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """HRM-Text: ``num_layers_per_stack`` layers a stack (an older config's ``num_hidden_layers``), ``H_cycles`` and
    ``L_cycles``; multi-head attention whatever ``num_key_value_heads`` says (transformers' attention ignores it);
    ``attention_bias`` and ``mlp_bias`` refused (the checkpoint's fused tensors carry no bias)."""
    cfg = {**HRM_DEFAULTS, **cfg}
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise ValueError(f"HRM-Text {key}=True is not supported (supported: False, as released)")
    per_stack = cfg.get("num_layers_per_stack") or cfg["num_hidden_layers"]
    loop = HrmLoop(per_stack, cfg.get("H_cycles", 2), cfg.get("L_cycles", 3), cfg["rms_norm_eps"])
    if min(loop.h_cycles, loop.l_cycles, per_stack) < 1:
        raise ValueError(f"HRM-Text needs at least one layer and cycle, got {loop}")
    base = base_args({**cfg, "num_key_value_heads": cfg["num_attention_heads"]}, dtype)
    rope = read_rope(cfg, base["head_dim"])
    scale = cfg.get("embedding_scale") or 1.0 / cfg.get("initializer_range", 0.02)
    aliases = tuple(
        (f"model.{stack}.layers.{layer}.", f"model.layers.{loop.first_invocation(stack, layer)}.")
        for stack in ("L_module", "H_module")
        for layer in range(per_stack)
    )
    return ModelArgs(
        **{**base, "num_layers": loop.invocations},
        layers=(LayerSpec(rope),) * loop.invocations,
        norm="rms_no_affine",
        mlp_act=activation(cfg, "hidden_act", "silu", "HRM-Text"),
        attn_output_gate="sigmoid",
        embed_scale=scale,
        loop=loop,
        weights=WeightMap(
            qkv=("gqkv_proj",),
            gate_up=("gate_up_proj",),
            rename=(("self_attn", "attn"), ("attn_gate", "gqkv_proj")),
            aliases=(*aliases, ("model.z_L_init", "model.looped.z_L_init")),
            reader=_gqkv,
        ),
    )


def _gqkv(index: Any, path: tuple[Any, ...], shape: tuple[int, ...], dtype: Any) -> Any:
    """The attention's fused QKV ``[hidden, heads, 3, head_dim]`` (multi-head: one query head a KV head) and its output
    gate ``[hidden, heads, head_dim]`` from ``gqkv_proj``'s rows ``[gate | q | k | v]``; None for other parameters."""
    module = str(path[-2])
    if module not in ("qkv_proj", "attn_gate") or str(path[-1]) != "kernel":
        return None
    name = hf_names(path, index.weights)[0][0]
    hidden, heads, hd = shape[0], shape[1], shape[-1]
    stored = index.slice_reader(name, (hidden, 4 * heads * hd), True, dtype)

    def read(where: tuple[slice, ...]) -> np.ndarray:
        parts = stored((where[0], slice(None))).reshape(-1, 4, heads, hd)  # [hidden, gate | q | k | v, heads, hd]
        whole = parts[:, 0] if module == "attn_gate" else parts[:, 1:].transpose(0, 2, 1, 3)
        return whole[(slice(None), *where[1:])]

    return read

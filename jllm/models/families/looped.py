"""The looped families (``jllm.models.looped``): each run of a stored layer is a jllm layer with pages of its own,
the runs of one stored layer sharing its module, read under the first run's name (``WeightMap.aliases``).

Dory (NVIDIA's looped nGPT, ``DoryForCausalLM``): nGPT's layers (``jllm.models.ngpt``), its input layers once, its
recurrent layers ``n_recurrent_loops`` times (``DoryLoop``), its output layers once; each loop's runs keep pages of
their own ("per_loop" caches).

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

from jllm.models.families.common import (
    FULL,
    SLIDING,
    activation,
    base_args,
    per_type_ropes,
    read_rope,
    typed_layers,
    whole_head_rotary,
)
from jllm.models.looped import DoryLoop, HrmLoop
from jllm.models.model_args import LayerSpec, ModelArgs, NGPTSpec, WeightMap
from jllm.safetensors_index import hf_names

# DoryConfig's defaults for the keys a config leaves out (its rotary per layer type below)
DORY_DEFAULTS = dict(
    hidden_size=2560,
    intermediate_size=7168,
    num_attention_heads=16,
    num_key_value_heads=4,
    head_dim=256,
    max_position_embeddings=8192,
    initializer_range=0.0177,
    sliding_window=1024,
)
DORY_ROPE = {kind: {"rope_type": "default", "rope_theta": theta} for kind, theta in ((SLIDING, 1e4), (FULL, 1e7))}
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
    rope = read_rope(whole_head_rotary(cfg), base["head_dim"])
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


def dory(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Dory: nGPT's layers (``jllm.models.ngpt``) by ``layer_types`` (sliding or full, each its rotary), the input,
    recurrent and output sections (``n_*_layers``, ``n_recurrent_loops``); a released config's layers, listed as
    attention and MLP blocks in turn (``"mlp"`` entries, every count doubled), read as transformers pairs them. Only
    ``recurrent_kv_cache_mode`` "per_loop" is served (each loop's own pages); "last_loop", whose earlier loops read
    the last loop's K/V for earlier steps' tokens and their own for the step's, depends on where steps split a prompt
    and is refused. The checkpoint is read under transformers' saved names
    (``backbone.``, ``embeddings``, ``g_proj``) or the hub's (each layer's attention and MLP blocks as two,
    ``mixer.``, ``attn_alpha`` / ``mlp_alpha``)."""
    cfg = {**DORY_DEFAULTS, **cfg}
    if (mode := cfg.get("recurrent_kv_cache_mode", "per_loop")) != "per_loop":
        raise ValueError(
            f"Dory recurrent_kv_cache_mode={mode!r} is not supported (supported: 'per_loop'): its earlier loops "
            "attend over the last loop's cached K/V for the tokens of earlier steps and their own for the step's, "
            "so its outputs depend on where steps split a prompt (a chunked prefill, a prefix-cache hit, a "
            "preempted prompt computed again) and transformers' one-pass prefill cannot be reproduced; serve the "
            "checkpoint with recurrent_kv_cache_mode 'per_loop' (a page set per loop)"
        )
    types, counts = cfg.get("layer_types"), ("num_hidden_layers", "n_input_layers", "n_output_layers")
    if types and "mlp" in types:  # the released layout: each layer an attention block, then an mlp block
        halves = {k: cfg[k] // 2 for k in (*counts, "n_recurrent_layers") if cfg.get(k) is not None}
        cfg = {**cfg, **halves, "layer_types": types[::2]}
    n, n_in, n_out = cfg["num_hidden_layers"], cfg.get("n_input_layers", 8), cfg.get("n_output_layers", 8)
    n_rec = cfg.get("n_recurrent_layers")
    n_rec = n - n_in - n_out if n_rec is None else n_rec
    loop = DoryLoop(n_in, n_rec, n_out, cfg.get("n_recurrent_loops", 2))
    if n_in + n_rec + n_out != n or min(n_in, n_rec, n_out) < 0 or loop.loops < 1:
        raise ValueError(f"Dory's sections {loop} must add up to num_hidden_layers={n} with at least one loop")
    base = base_args(cfg, dtype)
    default_types = [FULL if (i + 1) % 4 == 0 else SLIDING for i in range(n)]
    stored = typed_layers(cfg, per_type_ropes(whole_head_rotary(cfg), base["head_dim"], DORY_ROPE), default_types)
    if bias := bool(cfg.get("attention_bias", False)):
        raise ValueError(f"Dory attention_bias={bias} is not supported (supported: False, as released)")
    if tied := bool(cfg.get("tie_word_embeddings", False)):
        raise ValueError(
            f"Dory tie_word_embeddings={tied} is not supported (supported: False, as released): its LM head scales "
            "the logits by its own logit_scale"
        )
    init = cfg["initializer_range"]
    return ModelArgs(
        **{**base, "num_layers": loop.invocations},
        layers=tuple(stored[loop.stored_layer(u)] for u in range(loop.invocations)),
        mlp_act=activation(cfg, "hidden_act", "silu", "Dory"),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        attn_output_gate="sigmoid",
        ngpt=NGPTSpec(init, cfg.get("ngpt_alpha_init", 0.05)),
        loop=loop,
        weights=WeightMap(rename=(("attn_gate", "g_proj"),), aliases=_dory_aliases(loop, n)),
    )


def _dory_aliases(loop: DoryLoop, n: int) -> tuple[tuple[str, str], ...]:
    """Stored names -> ours: the hub's blocks (``layers.{2i}`` attention, ``layers.{2i+1}`` MLP, their rates beside
    them) first, then transformers' saved layers, each under its first invocation's name."""
    ours = {k: f"model.layers.{loop.first_invocation(k)}." for k in range(n)}
    hub = [
        pair
        for k in range(n)
        for pair in (
            (f"backbone.layers.{2 * k}.mixer.", ours[k] + "self_attn."),
            (f"backbone.layers.{2 * k + 1}.mixer.", ours[k] + "mlp."),
            (f"backbone.layers.{2 * k}.attn_alpha", ours[k] + "lambda_1"),
            (f"backbone.layers.{2 * k + 1}.mlp_alpha", ours[k] + "lambda_2"),
        )
    ]
    saved = [(f"backbone.layers.{k}.", ours[k]) for k in range(n)]
    return (*hub, *saved, ("backbone.embeddings.", "model.embed_tokens."))


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

"""The gated-DeltaNet hybrids: Qwen3-Next and Qwen3.5 (dense and MoE). Most layers are gated DeltaNet
(``jllm.models.gated_deltanet``, a recurrent mixer with a per-sequence state), every ``full_attention_interval``-th
(``layer_types``) is full attention: q/k RMSNorms, a partial rotary, its output gated per channel by a sigmoid of
rows stored per head after the head's query rows in ``q_proj``. Norms are zero-centred (``1 + w``). Qwen3-Next's and
Qwen3.5-MoE's MLPs are a softmax top-k mixture with a shared expert scaled by a sigmoid gate (Qwen2-MoE's); Qwen3.5's
a dense SwiGLU. Qwen3.5's M-RoPE sections rotate a text token's channels by its one position, the plain rotary.
Qwen4-Exp is Qwen3.5-MoE's layers in hyper-connection streams (``jllm.models.hyper_connections``), its attention
layers QSA's ("indexed_attention"), served up to the indexer's budget, where QSA keeps every token.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from jllm.models.families.common import FULL, MROPE_KEYS, activation, base_args, read_rope
from jllm.models.gated_deltanet import DeltaNetSpec
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.safetensors_index import hf_names

LINEAR = "linear_attention"
QSA = "indexed_attention"  # Qwen4-Exp's attention layers, with their QSA indexer
# within indexer_budget QSA keeps every token: its indexer's selection is never run
QSA_SKIPPED = ((r"\.self_attn\.indexer\.", "QSA indexer: within indexer_budget every token is kept, so it never runs"),)
QSA_KEYS = ("indexer_n_heads", "indexer_head_dim", "indexer_budget", "indexer_compress_ratio")
# the attention's output gate stored per head after its query rows; the recurrent mixer under transformers' name
WEIGHTS = WeightMap(qkv_layout="gated", rename=(("attn_gate", "q_proj"), ("mixer", "linear_attn")))


def qwen3_next(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3-Next (``Qwen3NextForCausalLM``): Qwen3-Next's ``in_proj_qkvz`` / ``in_proj_ba``, a mixture of experts in
    every ``decoder_sparse_step``-th layer not in ``mlp_only_layers`` (a dense SwiGLU of ``intermediate_size`` in the
    others)."""
    base, layers = _hybrid(cfg, dtype, "Qwen3-Next", fused_qkvz=True)
    experts, step, dense = cfg.get("num_experts", 512), cfg.get("decoder_sparse_step", 1), cfg.get("mlp_only_layers")
    sparse = [experts > 0 and i not in (dense or []) and (i + 1) % step == 0 for i in range(base["num_layers"])]
    layers = tuple(
        dataclasses.replace(spec, dense_mlp_size=None if moe else cfg["intermediate_size"])
        for spec, moe in zip(layers, sparse, strict=True)
    )
    if not any(sparse):
        return ModelArgs(**base, layers=layers)
    return _with_mixture(cfg, base, layers, "Qwen3-Next", bool(cfg.get("norm_topk_prob", True)))


def qwen3_5(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3.5 (``Qwen3_5ForCausalLM``, the ``qwen3_5_text`` config): Qwen3.5's ``in_proj_qkv`` / ``in_proj_z`` /
    ``in_proj_b`` / ``in_proj_a``, a dense SwiGLU in every layer."""
    base, layers = _hybrid(cfg, dtype, "Qwen3.5", fused_qkvz=False)
    return ModelArgs(**base, layers=layers)


def qwen3_5_moe(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen3.5-MoE (``Qwen3_5MoeForCausalLM``, ``qwen3_5_moe_text``): Qwen3.5's layers with a mixture of experts in
    every layer, its top-k weights always renormalised."""
    base, layers = _hybrid(cfg, dtype, "Qwen3.5-MoE", fused_qkvz=False)
    return _with_mixture(cfg, base, layers, "Qwen3.5-MoE", True)


def qwen4_exp(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """Qwen4-Exp (``Qwen4ExpForCausalLM``, the ``qwen4_exp_text`` config): Qwen3.5-MoE's layers without their
    norms, in ``hc_count`` hyper-connection streams (mixers of rank ``hc_lowrank``), the streams' final mix in place
    of the final norm; the mixer's output gate by ``output_gate_type`` (else ``hidden_act``); the rotary over the
    whole head unless ``partial_rotary_factor`` says otherwise. Its attention layers' QSA indexer (required) is not
    run: the model is served up to ``indexer_budget`` tokens (``ModelArgs.indexer_budget``), where it keeps every
    token. Per-layer n-gram embeddings (``ple_layer_ids``) are refused."""
    if cfg.get("ple_layer_ids"):
        raise ValueError(
            f"Qwen4-Exp ple_layer_ids={cfg['ple_layer_ids']} is not supported (PLE, the hashed n-gram per-layer "
            "embeddings); supported: none"
        )
    missing = [key for key in QSA_KEYS if not cfg.get(key)]
    if missing:
        raise ValueError(f"Qwen4-Exp needs its QSA indexer's settings: {', '.join(missing)} unset")
    gate = cfg.get("output_gate_type") or cfg.get("hidden_act", "silu")
    if gate not in ("silu", "sigmoid"):
        raise ValueError(f"Qwen4-Exp output_gate_type={gate!r} is not supported (supported: 'silu', 'sigmoid')")
    streams, rank = cfg.get("hc_count", 4), cfg.get("hc_lowrank", 320)
    if streams < 2:
        raise ValueError(f"Qwen4-Exp hc_count={streams} is not supported: hyper-connections need at least 2 streams")
    if types := cfg.get("layer_types"):  # its attention layers are QSA's (the hub's config names them full)
        cfg = {**cfg, "layer_types": [FULL if kind == QSA else kind for kind in types]}
    base, layers = _hybrid(cfg, dtype, "Qwen4-Exp", fused_qkvz=False, rotary_fraction=1.0)
    deltanet = dataclasses.replace(base["deltanet"], sigmoid_gate=gate == "sigmoid")
    hyper = dict(hyper_streams=streams, hyper_rank=rank, pre_norms=False, indexer_budget=cfg["indexer_budget"])
    base = {**base, "deltanet": deltanet, **hyper}
    args = _with_mixture(cfg, base, layers, "Qwen4-Exp", bool(cfg.get("norm_topk_prob", True)))
    return dataclasses.replace(args, weights=dataclasses.replace(args.weights, skipped=QSA_SKIPPED))


def _hybrid(
    cfg: dict[str, Any], dtype: Any, family: str, *, fused_qkvz: bool, rotary_fraction: float = 0.25
) -> tuple[dict[str, Any], tuple[LayerSpec, ...]]:
    """The settings the four share and each layer's mixer from ``layer_types`` (default: every
    ``full_attention_interval``-th layer, 4, full attention); ``rotary_fraction``: the rotary's share of a head
    where the config names none."""
    cfg = {"head_dim": 256, **cfg}
    base = base_args(cfg, dtype)
    n = base["num_layers"]
    interval = cfg.get("full_attention_interval", 4)
    types = cfg.get("layer_types") or [FULL if (i + 1) % interval == 0 else LINEAR for i in range(n)]
    if len(types) != n or any(kind not in (FULL, LINEAR) for kind in types):
        raise ValueError(f"{family} layer_types={types!r} must name each of the {n} layers as {FULL!r} or {LINEAR!r}")
    if cfg.get("attention_bias"):
        raise ValueError(f"{family} attention_bias=True is not supported (supported: False, as the released models)")
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    params = {"partial_rotary_factor": rotary_fraction, **{k: v for k, v in params.items() if k not in MROPE_KEYS}}
    if params.get("rope_type") == "mrope":
        params["rope_type"] = "default"
    rope = read_rope(cfg, base["head_dim"], params)
    layers = tuple(LayerSpec(rope) if kind == FULL else LayerSpec(None, mixer="gated_deltanet") for kind in types)
    deltanet = DeltaNetSpec(
        num_k_heads=cfg.get("linear_num_key_heads", 16),
        num_v_heads=cfg.get("linear_num_value_heads", 32),
        head_k_dim=cfg.get("linear_key_head_dim", 128),
        head_v_dim=cfg.get("linear_value_head_dim", 128),
        conv_kernel=cfg.get("linear_conv_kernel_dim", 4),
        fused_qkvz=fused_qkvz,
    )
    settings = dict(
        norm="rms_unit_offset",
        qk_norm=True,
        attn_output_gate="sigmoid",
        mlp_act=activation(cfg, "hidden_act", "silu", family),
        deltanet=deltanet,
        weights=WEIGHTS,
    )
    return {**base, **settings}, layers


def _with_mixture(
    cfg: dict[str, Any], base: dict[str, Any], layers: tuple[LayerSpec, ...], family: str, renormalize: bool
) -> ModelArgs:
    """The model with Qwen2-MoE's mixture: top ``num_experts_per_tok`` of ``num_experts`` SwiGLU experts of
    ``moe_intermediate_size``, and a sigmoid-gated shared expert of ``shared_expert_intermediate_size``."""
    experts, top_k = cfg.get("num_experts", 512), cfg.get("num_experts_per_tok", 10)
    if not 0 < top_k <= experts:
        raise ValueError(f"{family} num_experts_per_tok={top_k} must be between 1 and num_experts={experts}")
    per_expert = (*base["weights"].rename, ("experts", "experts.{e}"))
    weights = dataclasses.replace(base["weights"], rename=per_expert, reader=_stacked_experts)
    return ModelArgs(
        **{**base, "intermediate_size": cfg.get("moe_intermediate_size", 512), "weights": weights},
        layers=layers,
        num_experts=experts,
        experts_per_token=top_k,
        experts_renormalize=renormalize,
        shared_expert_size=cfg.get("shared_expert_intermediate_size", 512),
    )


def _stacked_experts(index: Any, path: tuple[Any, ...], shape: tuple[int, ...], dtype: Any) -> Any:
    """An expert kernel read from the layer's stacked tensor where the checkpoint keeps one (transformers 5's
    ``experts.gate_up_proj [experts, 2 * moe, hidden]`` and ``experts.down_proj [experts, hidden, moe]``, as some
    Qwen3.5-MoE releases are stored; vLLM reads both); None otherwise: the per-expert names (``experts.{e}.*``,
    what transformers saves) are read as any mixture's."""
    if len(path) < 3 or str(path[-3]) != "experts":
        return None
    weights = index.weights
    stacked = copy.copy(index)
    stacked.weights = dataclasses.replace(
        weights,
        rename=tuple(pair for pair in weights.rename if pair != ("experts", "experts.{e}")),
        expert_params="out_in",
        reader=None,
    )
    name = hf_names(path, stacked.weights)[0][0]
    return stacked.param_reader(path, shape, dtype, 1) if name in index.tensors else None

"""What transformers' GGUF reader makes of each `general.architecture` jllm converts: the HF class and model type,
llama.cpp's tensor names and metadata keys under their HF names, the class defaults it fills in, the weight
reshuffles it undoes, and the files it would load wrong, refused by name. `jllm.gguf_convert` applies it.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jllm.gguf_tokenizer import SUPPORTED_TOKENIZERS

_COMMON_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_QK_NORMS = {"attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight"}
# Gemma 2/3's four norms per layer: llama.cpp's `ffn_norm` is the pre-MLP one.
_GEMMA_NORMS = {
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}
# Routed experts: one GGUF tensor [experts, out, in] per projection, one HF tensor per expert; the shared expert.
_MOE_NAMES = {
    "ffn_gate_inp.weight": "mlp.gate.weight",
    "ffn_gate_exps.weight": "mlp.experts.{e}.gate_proj.weight",
    "ffn_up_exps.weight": "mlp.experts.{e}.up_proj.weight",
    "ffn_down_exps.weight": "mlp.experts.{e}.down_proj.weight",
}
_SHARED_EXPERT_NAMES = {
    "ffn_gate_inp_shexp.weight": "mlp.shared_expert_gate.weight",
    "ffn_gate_shexp.weight": "mlp.shared_expert.gate_proj.weight",
    "ffn_up_shexp.weight": "mlp.shared_expert.up_proj.weight",
    "ffn_down_shexp.weight": "mlp.shared_expert.down_proj.weight",
}
_MOE_KEYS = {"expert_count": "num_experts", "expert_used_count": "num_experts_per_tok"}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# LayerNorm families (StableLM, StarCoder2, Nemotron): the norms' biases, and biases on the other linears
_LAYER_NORM_BIASES = {"attn_norm.bias": "input_layernorm.bias", "ffn_norm.bias": "post_attention_layernorm.bias"}
_LINEAR_BIASES = {
    "attn_output.bias": "self_attn.o_proj.bias",
    "ffn_up.bias": "mlp.up_proj.bias",
    "ffn_down.bias": "mlp.down_proj.bias",
}
_LAYER_NORM_GLOBAL_NAMES = {**_GLOBAL_NAMES, "output_norm.bias": "model.norm.bias"}


@dataclass(frozen=True)
class Architecture:
    """What transformers' GGUF loader does with one `general.architecture`."""

    hf_class: str
    model_type: str
    layer_names: dict[str, str]
    head_dim_key: str | None  # the metadata key transformers reads head_dim from (None: hidden // heads)
    extra_config: dict[str, Any] = field(default_factory=dict)  # transformers' class defaults jllm must see
    rotary_permuted: bool = False  # llama.cpp interleaved q/k rows per head (Llama only)
    norm_offset: bool = False  # llama.cpp stored Gemma's `1 + w` norms as w + 1
    qkv_per_head: bool = False  # llama.cpp stored the fused q/k/v as [q; k; v], HF's per head [q_h; k_h; v_h] (BLOOM)
    # transformers ties the head to the embeddings (Falcon, BLOOM), and unties it where `output` holds other values
    tied_head: bool = False
    keys: dict[str, str] = field(default_factory=dict)  # more `<arch>.*` metadata keys -> config keys
    prefix: str = "model.layers."  # where the HF layers are
    global_names: dict[str, str] = field(default_factory=lambda: _GLOBAL_NAMES)
    # config keys transformers derives from which tensors the file has (StableLM's biases and residual layout)
    from_tensors: Callable[[set[str]], dict[str, Any]] | None = None
    refused: dict[str, str] = field(default_factory=dict)  # layer tensors transformers drops -> why refused
    transposed: tuple[str, ...] = ()  # layer tensors llama.cpp stores transposed (GPT-2's `Conv1D` [in, out])
    config_names: dict[str, str | None] = field(default_factory=dict)  # config.json's own names (None: not there)


# transformers' config classes' defaults for keys a file may leave out; the file's value wins where it has one
_GEMMA_CONFIG = {"hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 256, "sliding_window": 4096}
_GEMMA_KEYS = {"attention.sliding_window": "sliding_window"}
ARCHITECTURES = {
    "llama": Architecture(
        "LlamaForCausalLM", "llama", _COMMON_LAYER_NAMES, "rope.dimension_count", rotary_permuted=True
    ),
    "qwen2": Architecture("Qwen2ForCausalLM", "qwen2", _COMMON_LAYER_NAMES, None),
    # transformers reads no head_dim for Qwen3 (its class default, 128, every Qwen3 has); the file's, where stated
    "qwen3": Architecture(
        "Qwen3ForCausalLM", "qwen3", {**_COMMON_LAYER_NAMES, **_QK_NORMS}, "attention.key_length", {"head_dim": 128}
    ),
    "gemma2": Architecture(
        "Gemma2ForCausalLM",
        "gemma2",
        {**_COMMON_LAYER_NAMES, **_GEMMA_NORMS},
        "attention.key_length",
        {**_GEMMA_CONFIG, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0},
        norm_offset=True,
        keys=_GEMMA_KEYS,
    ),
    "gemma3": Architecture(
        "Gemma3ForCausalLM",
        "gemma3_text",
        {**_COMMON_LAYER_NAMES, **_GEMMA_NORMS, **_QK_NORMS},
        "attention.key_length",
        _GEMMA_CONFIG,
        norm_offset=True,
        keys=_GEMMA_KEYS,
    ),
    "phi3": Architecture(
        "Phi3ForCausalLM",
        "phi3",
        {
            **_COMMON_LAYER_NAMES,
            "attn_qkv.weight": "self_attn.qkv_proj.weight",
            "ffn_up.weight": "mlp.gate_up_proj.weight",
        },
        None,
    ),
    # transformers takes the experts' widths from its config classes' defaults (one checkpoint's); the file's here
    "qwen2moe": Architecture(
        "Qwen2MoeForCausalLM",
        "qwen2_moe",
        {**_COMMON_LAYER_NAMES, **_MOE_NAMES, **_SHARED_EXPERT_NAMES},
        None,
        {"intermediate_size": 5632, "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632},
        keys={
            **_MOE_KEYS,
            "expert_feed_forward_length": "moe_intermediate_size",
            "expert_shared_feed_forward_length": "shared_expert_intermediate_size",
        },
    ),
    "qwen3moe": Architecture(
        "Qwen3MoeForCausalLM",
        "qwen3_moe",
        {**_COMMON_LAYER_NAMES, **_QK_NORMS, **_MOE_NAMES},
        "attention.key_length",
        # norm_topk_prob: transformers' GGUF default (llama.cpp renormalises Qwen3-MoE's top-k)
        {"norm_topk_prob": True, "intermediate_size": 6144, "moe_intermediate_size": 768},
        keys={**_MOE_KEYS, "expert_feed_forward_length": "moe_intermediate_size"},
    ),
    # Falcon-7B's layout (multi-query, parallel attention and MLP, one norm), the only one transformers' GGUF
    # reader builds; files with several KV heads are refused (`architecture`)
    "falcon": Architecture(
        "FalconForCausalLM",
        "falcon",
        {
            f"{gguf}.{kind}": f"{hf}.{kind}"
            for gguf, hf in (
                ("attn_norm", "input_layernorm"),
                ("attn_qkv", "self_attention.query_key_value"),
                ("attn_output", "self_attention.dense"),
                ("ffn_up", "mlp.dense_h_to_4h"),
                ("ffn_down", "mlp.dense_4h_to_h"),
            )
            for kind in ("weight", "bias")
        },
        None,
        tied_head=True,
        prefix="transformer.h.",
        global_names={
            "token_embd.weight": "transformer.word_embeddings.weight",
            "output_norm.weight": "transformer.ln_f.weight",
            "output_norm.bias": "transformer.ln_f.bias",
            "output.weight": "lm_head.weight",
        },
    ),
    # GPT-2: its own config names; every matrix transposed back to `Conv1D`'s [in, out]; positions learned
    "gpt2": Architecture(
        "GPT2LMHeadModel",
        "gpt2",
        {
            f"{gguf}.{kind}": f"{hf}.{kind}"
            for gguf, hf in (
                ("attn_norm", "ln_1"),
                ("attn_qkv", "attn.c_attn"),
                ("attn_output", "attn.c_proj"),
                ("ffn_norm", "ln_2"),
                ("ffn_up", "mlp.c_fc"),
                ("ffn_down", "mlp.c_proj"),
            )
            for kind in ("weight", "bias")
        },
        None,
        keys={"attention.layer_norm_epsilon": "layer_norm_epsilon"},
        prefix="transformer.h.",
        global_names={
            "token_embd.weight": "transformer.wte.weight",
            "position_embd.weight": "transformer.wpe.weight",
            "output_norm.weight": "transformer.ln_f.weight",
            "output_norm.bias": "transformer.ln_f.bias",
            "output.weight": "lm_head.weight",
        },
        transposed=("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight"),
        # the context is `wpe`'s rows; the MLP width is always 4 * n_embd (`n_inner` unset, as transformers reads it)
        config_names={
            "hidden_size": "n_embd",
            "num_hidden_layers": "n_layer",
            "num_attention_heads": "n_head",
            "max_position_embeddings": "n_positions",
            "num_key_value_heads": None,
            "rope_theta": None,
            "intermediate_size": None,
        },
    ),
    # BLOOM: the fused q/k/v back per head; a LayerNorm on the embeddings; the head tied (llama.cpp writes a copy of
    # the embeddings as `output`, which a quantizer may store in another type); ALiBi, so no context key is read
    "bloom": Architecture(
        "BloomForCausalLM",
        "bloom",
        {
            f"{gguf}.{kind}": f"{hf}.{kind}"
            for gguf, hf in (
                ("attn_norm", "input_layernorm"),
                ("attn_qkv", "self_attention.query_key_value"),
                ("attn_output", "self_attention.dense"),
                ("ffn_norm", "post_attention_layernorm"),
                ("ffn_up", "mlp.dense_h_to_4h"),
                ("ffn_down", "mlp.dense_4h_to_h"),
            )
            for kind in ("weight", "bias")
        },
        None,
        tied_head=True,
        qkv_per_head=True,
        keys={"attention.layer_norm_epsilon": "layer_norm_epsilon"},
        prefix="transformer.h.",
        global_names={
            "token_embd.weight": "transformer.word_embeddings.weight",
            "token_embd_norm.weight": "transformer.word_embeddings_layernorm.weight",
            "token_embd_norm.bias": "transformer.word_embeddings_layernorm.bias",
            "output_norm.weight": "transformer.ln_f.weight",
            "output_norm.bias": "transformer.ln_f.bias",
            "output.weight": "lm_head.weight",
        },
        # the MLP is always 4 * hidden wide, the heads all KV heads
        config_names={
            "num_hidden_layers": "n_layer",
            "num_attention_heads": "n_head",
            "max_position_embeddings": None,
            "num_key_value_heads": None,
            "rope_theta": None,
            "intermediate_size": None,
        },
    ),
    # StableLM 2 / StableLM-3B-4E1T: q/k/v biases and the parallel residual (no `ffn_norm`) read off the tensors, as
    # transformers reads them; llama.cpp writes no rope base (10000, both readers' default)
    "stablelm": Architecture(
        "StableLmForCausalLM",
        "stablelm",
        {**_COMMON_LAYER_NAMES, **_LAYER_NORM_BIASES},
        None,
        keys={"attention.layer_norm_epsilon": "layer_norm_eps"},
        global_names=_LAYER_NORM_GLOBAL_NAMES,
        from_tensors=lambda names: {
            "use_qkv_bias": any(n.endswith(("attn_q.bias", "attn_k.bias", "attn_v.bias")) for n in names),
            "use_parallel_residual": not any(".ffn_norm." in n for n in names),
        },
        refused=dict.fromkeys(
            ("attn_q_norm.weight", "attn_k_norm.weight"),
            "StableLM 2 12B's per-head q/k LayerNorms, which transformers' GGUF reader drops",
        ),
    ),
    # transformers reads no rope base for StarCoder2 (its class default, 10000); the file's, which llama.cpp runs
    "starcoder2": Architecture(
        "Starcoder2ForCausalLM",
        "starcoder2",
        {
            **_COMMON_LAYER_NAMES,
            **_LAYER_NORM_BIASES,
            **_LINEAR_BIASES,
            "ffn_up.weight": "mlp.c_fc.weight",
            "ffn_up.bias": "mlp.c_fc.bias",
            "ffn_down.weight": "mlp.c_proj.weight",
            "ffn_down.bias": "mlp.c_proj.bias",
        },
        None,
        keys={"attention.layer_norm_epsilon": "norm_epsilon"},
        global_names=_LAYER_NORM_GLOBAL_NAMES,
    ),
    # LayerNorm1P's `1 + w` stored as w + 1; the epsilon llama.cpp writes as `layer_norm_epsilon` (older files) or
    # the RMS key (newer); heads of hidden / heads channels, the only ones transformers builds (`_architecture`)
    "nemotron": Architecture(
        "NemotronForCausalLM",
        "nemotron",
        {**{k: v for k, v in _COMMON_LAYER_NAMES.items() if k.endswith(".weight")}, **_LAYER_NORM_BIASES},
        None,
        norm_offset=True,
        keys={"attention.layer_norm_epsilon": "norm_eps", "attention.layer_norm_rms_epsilon": "norm_eps"},
        global_names=_LAYER_NORM_GLOBAL_NAMES,
        refused=dict.fromkeys(
            ("attn_q.bias", "attn_k.bias", "attn_v.bias", *_LINEAR_BIASES),
            "Nemotron's attention / MLP biases, which transformers' GGUF reader drops (it reads attention_bias = "
            "mlp_bias = False, as every released Nemotron has)",
        ),
    ),
}


def architecture(gguf_path: Path, meta: dict[str, Any]) -> tuple[str, Architecture]:
    """The file's `general.architecture` and what transformers makes of it, or a refusal listing what is read."""
    name = meta.get("general.architecture")
    if name == "mistral":
        raise NotImplementedError(
            f"{gguf_path}: GGUF architecture 'mistral' is not supported: llama.cpp writes Mistral models as 'llama' "
            "(supported), and transformers' GGUF reader, whose 'mistral' keys this file would follow, cannot place "
            "its tensors (gguf-py has no 'mistral' architecture)"
        )
    if name not in ARCHITECTURES:
        raise NotImplementedError(
            f"{gguf_path}: GGUF architecture {name!r} is not supported (supported: {', '.join(ARCHITECTURES)})"
        )
    if (kind := meta.get("tokenizer.ggml.model")) not in SUPPORTED_TOKENIZERS:
        raise NotImplementedError(
            f"{gguf_path}: GGUF tokenizer model {kind!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_TOKENIZERS)})"
        )
    if name == "falcon" and int(meta.get("falcon.attention.head_count_kv") or 1) != 1:
        raise NotImplementedError(
            f"{gguf_path}: a Falcon GGUF with {meta['falcon.attention.head_count_kv']} KV heads (Falcon-40B/180B's "
            "new decoder architecture) is not supported: transformers' GGUF reader builds only Falcon-7B's "
            "multi-query layout (supported: falcon.attention.head_count_kv = 1)"
        )
    if name == "nemotron" and "nemotron.attention.key_length" in meta:
        head_dim = meta["nemotron.embedding_length"] // meta["nemotron.attention.head_count"]
        if meta["nemotron.attention.key_length"] != head_dim:
            raise NotImplementedError(
                f"{gguf_path}: a Nemotron GGUF with heads of {meta['nemotron.attention.key_length']} channels "
                "(Minitron-8B's layout) is not supported: transformers' GGUF reader builds heads of hidden / heads = "
                f"{head_dim} (supported: nemotron.attention.key_length = embedding_length / head_count)"
            )
    return name, ARCHITECTURES[name]

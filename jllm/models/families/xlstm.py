"""xLSTM (NX-AI's xLSTM-7b, ``xLSTMForCausalLM``): every layer an mLSTM block, an RMSNorm and an mLSTM layer
(``jllm.models.mlstm``: a matrix memory per head, its state per sequence), then an RMSNorm and a SwiGLU, no attention
(``ModelArgs.attends`` False, one placeholder head), the logits soft-capped, the head untied.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from jllm.models.mlstm import MLSTMSpec
from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap

# our names -> xLSTM's: the embedding, the blocks and their norms, the mixer, the SwiGLU, the final norm
RENAME = (
    ("embed_tokens", "embeddings"),
    ("layers", "blocks"),
    ("input_layernorm", "norm_mlstm"),
    ("mixer", "mlstm_layer"),
    ("post_attention_layernorm", "norm_ffn"),
    ("mlp", "ffn"),
    ("down_proj", "proj_down"),
    ("norm", "out_norm"),
)
# transformers' xLSTMCache sizes the state by q's and v's widths rounded up to this, its layers by the widths unrounded
CACHE_MULTIPLE = 64
# xLSTMConfig's settings that jllm serves one value of: the key, that value, why
SERVED = (
    ("weight_mode", "single", "q, k, v and the gates as projections of their own; 'fused' is not read yet"),
    ("use_bias", False, "no biases on the projections and norms (jllm's RMSNorm has no bias)"),
    ("norm_reduction_force_float32", True, "the norms' statistics in float32, as jllm takes them"),
    ("inference_state_dtype", "float32", "the recurrent state in float32, as jllm keeps it"),
)


def _rounded_up(x: float, multiple: int) -> int:
    """transformers' ``round_up_to_next_multiple_of`` (on a float, as the config passes it)."""
    return int(((x + multiple - 1) // multiple) * multiple)


def xlstm(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """xLSTMConfig's keys (its defaults where absent): ``num_hidden_layers`` (``num_blocks``) blocks of
    ``hidden_size`` (``embedding_dim``), ``num_heads`` mLSTM heads over q and k ``int(hidden * qk_dim_factor)`` wide
    and v ``int(hidden * v_dim_factor)`` (as transformers' layer sizes them, unrounded), gates soft-capped at
    ``gate_soft_cap``, a SwiGLU of ``hidden * ffn_proj_factor`` rounded up to ``ffn_round_up_to_multiple_of``,
    logits soft-capped at ``output_logit_soft_cap``. The settings ``SERVED`` names take one value; ``chunk_size``,
    ``mode`` and ``max_inference_chunksize`` only choose how transformers groups the same sums."""
    for key, value, why in SERVED:
        if cfg.get(key, value) != value:
            raise ValueError(f"xLSTM {key}={cfg[key]!r} is not supported (supported: {value!r}: {why})")
    hidden = cfg.get("hidden_size") or cfg.get("embedding_dim") or 4096
    n = cfg.get("num_hidden_layers") or cfg.get("num_blocks") or 32
    norm_eps = cfg.get("norm_eps", 1e-6)
    widths = {
        key: int(hidden * cfg.get(key, default)) for key, default in (("qk_dim_factor", 0.5), ("v_dim_factor", 1.0))
    }
    for key, width in widths.items():
        if width % CACHE_MULTIPLE:
            raise ValueError(
                f"xLSTM hidden_size={hidden} x {key}={cfg.get(key)} = {width} is not supported (supported: a multiple "
                f"of {CACHE_MULTIPLE}: transformers' layer is that wide but its cache rounds the width up to one)"
            )
    spec = MLSTMSpec(
        heads=cfg.get("num_heads", 8),
        qk_dim=widths["qk_dim_factor"],
        v_dim=widths["v_dim_factor"],
        gate_soft_cap=cfg.get("gate_soft_cap", 15.0),
        eps=cfg.get("eps", 1e-6),
        norm_eps=norm_eps,
    )
    return ModelArgs(
        vocab_size=cfg.get("vocab_size", 50304),
        hidden_size=hidden,
        intermediate_size=_rounded_up(
            hidden * cfg.get("ffn_proj_factor", 2.667), cfg.get("ffn_round_up_to_multiple_of", 64)
        ),
        num_layers=n,
        num_heads=1,  # no attention: a placeholder head (``ModelArgs.attends``)
        num_kv_heads=1,
        head_dim=hidden,
        norm_eps=norm_eps,
        # a recurrence has no position table: vLLM's assumption for a config that names no context
        max_position_embeddings=cfg.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        layers=(LayerSpec(None, mixer="mlstm"),) * n,
        final_softcap=cfg.get("output_logit_soft_cap", 30.0),
        mlstm=spec,
        weights=WeightMap(prefix="backbone.", gate_up=("proj_up_gate", "proj_up"), rename=RENAME),
        dtype=dtype,
    )

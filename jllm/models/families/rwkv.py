"""RWKV (v4, ``RwkvForCausalLM``): every layer one RWKV block (``jllm.models.rwkv``: time mixing and channel mixing
with their token shifts and the WKV state) after its ``ln1``, LayerNorms throughout, the first block's ``pre_ln`` on
the embeddings, no attention (``ModelArgs.attends`` False, one placeholder head), an untied ``head``.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from jllm.models.model_args import LayerSpec, ModelArgs, WeightMap
from jllm.models.rwkv import RwkvSpec

# transformers' ``ln_out`` is an ``nn.LayerNorm`` of its default eps whatever ``layer_norm_epsilon`` says
FINAL_NORM_EPS = 1e-5
# our names -> RWKV's: the embedding and its norm (the first block's), the blocks, each block's first norm, its
# mixer's level (the checkpoint's blocks hold ``attention``, ``ln2`` and ``feed_forward`` directly), the final norm
RENAME = (
    ("embed_tokens", "embeddings"),
    ("embed_norm", "blocks.0.pre_ln"),
    ("layers", "blocks"),
    ("input_layernorm", "ln1"),
    ("mixer", ""),
    ("norm", "ln_out"),
    ("lm_head", "head"),
)


def rwkv(cfg: dict[str, Any], dtype: Any) -> ModelArgs:
    """RWKV v4: ``num_hidden_layers`` blocks of ``hidden_size``, time mixing as wide (``attention_hidden_size``),
    channel mixing ``intermediate_size`` (four times the hidden size); transformers' eval-mode ``rescale_every`` as
    ``LayerSpec.block_scale`` and ``output_scale``. ``context_length`` is the longest context served (the recurrence
    has no position table)."""
    hidden, n = cfg["hidden_size"], cfg["num_hidden_layers"]
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    if eps != FINAL_NORM_EPS:
        raise ValueError(
            f"RWKV layer_norm_epsilon={eps} is not supported (supported: {FINAL_NORM_EPS}, the eps transformers' final "
            "ln_out keeps whatever the config says, which jllm's one norm eps would change)"
        )
    every = cfg.get("rescale_every", 6)
    if not isinstance(every, int):
        raise ValueError(f"RWKV rescale_every={every!r} is not supported (supported: an int, 0 or less for none)")
    attention = cfg.get("attention_hidden_size") or hidden
    if attention != hidden:
        raise ValueError(
            f"RWKV attention_hidden_size={attention} is not supported (supported: hidden_size={hidden}, as every "
            "released checkpoint has it; transformers' cached state keeps hidden_size channels of it per layer)"
        )
    spec = RwkvSpec(
        attention_size=attention,
        ffn_size=cfg.get("intermediate_size") or 4 * hidden,
    )
    layers = tuple(
        LayerSpec(
            None,
            mixer="rwkv",
            mlp=False,
            block_scale=2.0 ** -(i // every) if every > 0 else 1.0,
            output_scale=0.5 if every > 0 and (i + 1) % every == 0 else 1.0,
        )
        for i in range(n)
    )
    return ModelArgs(
        vocab_size=cfg["vocab_size"],
        hidden_size=hidden,
        intermediate_size=spec.ffn_size,  # channel mixing's width, which tensor parallelism splits
        num_layers=n,
        num_heads=1,  # no attention: a placeholder head (``ModelArgs.attends``)
        num_kv_heads=1,
        head_dim=hidden,
        norm_eps=eps,
        max_position_embeddings=cfg.get("context_length") or cfg.get("max_position_embeddings") or 1024,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        layers=layers,
        norm="layer",
        embed_norm=True,
        rwkv=spec,
        weights=WeightMap(prefix="rwkv.", rename=RENAME),
        dtype=dtype,
    )

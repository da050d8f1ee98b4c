"""Which family description serves a checkpoint, keyed by ``config.json``'s ``architectures``.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx

from jllm.models import families
from jllm.models.decoder import CausalLM, ModelArgs

# architecture name -> the family reader that turns its config.json into ModelArgs
ARCHITECTURES: dict[str, Callable[[dict[str, Any], Any], ModelArgs]] = {
    "LlamaForCausalLM": families.llama,
    "MistralForCausalLM": families.mistral,
    "Qwen2ForCausalLM": families.qwen2,
    "Qwen3ForCausalLM": families.qwen3,
    "GemmaForCausalLM": families.gemma,
    "Gemma2ForCausalLM": families.gemma2,
    "Gemma3ForCausalLM": families.gemma3,
    "Phi3ForCausalLM": families.phi3,
    "GPTNeoXForCausalLM": families.gpt_neox,
    "FalconForCausalLM": families.falcon,
    "MixtralForCausalLM": families.mixtral,
    "GraniteForCausalLM": families.granite,
    "Olmo2ForCausalLM": families.olmo2,
    "Qwen2MoeForCausalLM": families.qwen2_moe,
    "Qwen3MoeForCausalLM": families.qwen3_moe,
}


def resolve_architecture(hf_config: dict[str, Any]) -> Callable[[dict[str, Any], Any], ModelArgs]:
    names = hf_config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise ValueError(
        f"unsupported architecture {names!r} in config.json; supported: {', '.join(sorted(ARCHITECTURES))}"
    )


def build_args(hf_config: dict[str, Any], dtype: Any) -> tuple[type[nnx.Module], ModelArgs]:
    return CausalLM, resolve_architecture(hf_config)(hf_config, dtype)

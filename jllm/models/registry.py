"""Which NNX model class and settings serve a checkpoint, keyed by ``config.json``'s ``architectures``.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from jllm.models.llama import LlamaArgs, LlamaForCausalLM

# architecture name -> (model class, its args class, model_type used to read settings)
ARCHITECTURES: dict[str, tuple[type[nnx.Module], type, str]] = {
    "LlamaForCausalLM": (LlamaForCausalLM, LlamaArgs, "llama"),
    "MistralForCausalLM": (LlamaForCausalLM, LlamaArgs, "mistral"),
    "Qwen2ForCausalLM": (LlamaForCausalLM, LlamaArgs, "qwen2"),
}


def resolve_architecture(hf_config: dict[str, Any]) -> tuple[type[nnx.Module], type, str]:
    names = hf_config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise ValueError(
        f"unsupported architecture {names!r} in config.json; supported: {', '.join(sorted(ARCHITECTURES))}"
    )


def build_args(hf_config: dict[str, Any], dtype: Any) -> tuple[type[nnx.Module], Any]:
    model_cls, args_cls, model_type = resolve_architecture(hf_config)
    return model_cls, args_cls.from_hf(hf_config, dtype, model_type)

"""Helpers for LoRA tests: a tiny random Llama with random PEFT adapters (nonzero B), and PEFT's own logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from model_utils import TINY_CONFIG, save_char_tokenizer, save_tiny_checkpoint

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# A wide initializer keeps greedy decoding off a single repeated token, so token equality means something.
LLAMA_CONFIG = {**TINY_CONFIG, "head_dim": 16, "initializer_range": 0.3, "bos_token_id": 1, "eos_token_id": 2}


def save_llama(root: Path, model_cls_name: str = "LlamaForCausalLM", **overrides: object) -> Path:
    """A tiny random model of a Llama-layout family with a character tokenizer (``LLM`` can serve it)."""
    config = {**LLAMA_CONFIG, **overrides}
    out = save_tiny_checkpoint(model_cls_name, config, root / model_cls_name)
    save_char_tokenizer(out, config["vocab_size"])
    return out


def save_adapter(model_dir: Path, out: Path, *, r: int, targets: list[str], seed: int, **lora_kwargs: object) -> Path:
    """A random PEFT LoRA on ``model_dir``'s model: ``init_lora_weights=False`` draws B nonzero too, then scaled up
    so the adapter changes greedy tokens."""
    import peft
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = peft.LoraConfig(r=r, target_modules=targets, init_lora_weights=False, **lora_kwargs)
    model = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.mul_(3.0)
    model.save_pretrained(out)
    return out


def peft_logits(model_dir: Path, adapter_dir: Path | None, token_ids: list[int]) -> np.ndarray:
    """PEFT's float32 PyTorch logits ``[T, vocab]`` for one sequence with the adapter (the base's without one)."""
    import peft
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter_dir is not None:
        model = peft.PeftModel.from_pretrained(model, adapter_dir).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([token_ids])).logits[0].numpy()

"""Helpers for LoRA tests: a tiny random Llama with random PEFT adapters (nonzero B), and PEFT's own logits."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from model_utils import TINY_CONFIG, hf_model, save_char_tokenizer, save_tiny_checkpoint

from jllm.attention import AttentionMetadata
from jllm.loader import LoadedModel
from jllm.lora import LoRARequest
from jllm.lora.manager import LoRAManager
from jllm.models.lora import LoRABatch

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# A wide initializer keeps greedy decoding off a single repeated token, so token equality means something.
LLAMA_CONFIG = {**TINY_CONFIG, "head_dim": 16, "initializer_range": 0.3, "bos_token_id": 1, "eos_token_id": 2}
# An engine for these tiny models with two adapter slots of rank 8
ENGINE_KEYS = dict(
    dtype="float32",
    max_model_len=128,
    max_num_seqs=4,
    max_num_batched_tokens=64,
    num_pages=64,
    compile_at_start=False,
    enable_lora=True,
    max_loras=2,
    max_lora_rank=8,
)


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

    torch.manual_seed(seed)
    model = hf_model(model_dir)
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

    model = hf_model(model_dir)
    if adapter_dir is not None:
        model = peft.PeftModel.from_pretrained(model, adapter_dir).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([token_ids])).logits[0].numpy()


def lora_manager(loaded: LoadedModel, adapters: list[Path], max_loras: int = 2, max_lora_rank: int = 8) -> LoRAManager:
    """A manager over ``loaded`` (on its mesh) knowing ``adapters`` as ids 1, 2, ..."""
    manager = LoRAManager(
        loaded.args,
        loaded.hf_config,
        loaded.mesh,
        max_loras=max_loras,
        max_lora_rank=max_lora_rank,
        kv_replicas=loaded.kv_replicas,
    )
    for i, path in enumerate(adapters, start=1):
        manager.add(LoRARequest(f"a{i}", i, str(path)))
    return manager


def lora_logits(
    loaded: LoadedModel, manager: LoRAManager, sequences: list[list[int]], slots: list[int]
) -> list[np.ndarray]:
    """jllm's logits of each sequence, prefilled in one ragged step, sequence i through adapter slot ``slots[i]``."""
    args, page_size = loaded.args, 16
    pages = [-(-len(seq) // page_size) for seq in sequences]
    first = np.cumsum([1, *pages])
    block_tables = np.zeros((len(sequences), max(pages)), np.int32)
    mapping = []
    for s, seq in enumerate(sequences):
        block_tables[s, : pages[s]] = np.arange(first[s], first[s] + pages[s])
        positions = np.arange(len(seq))
        mapping.append(block_tables[s, positions // page_size] * page_size + positions % page_size)
    pool = [jnp.zeros((2, args.num_kv_heads, int(first[-1]), page_size, args.head_dim)) for _ in range(args.num_layers)]
    meta = AttentionMetadata(
        slot_mapping=jnp.asarray(np.concatenate(mapping), jnp.int32),
        query_start_loc=jnp.asarray(np.cumsum([0, *map(len, sequences)]), jnp.int32),
        kv_lens=jnp.asarray([len(seq) for seq in sequences], jnp.int32),
        block_tables=jnp.asarray(block_tables),
    )
    ids = jnp.asarray(np.concatenate(sequences), jnp.int32)
    positions = jnp.asarray(np.concatenate([np.arange(len(seq)) for seq in sequences]), jnp.int32)
    token_slots = jnp.asarray(np.repeat(slots, [len(seq) for seq in sequences]), jnp.int32)
    graphdef, state = nnx.split(loaded.model)

    @jax.jit
    def forward(state, weights, ids, pos, pool, meta, token_slots):
        model = nnx.merge(graphdef, state)
        hidden, _ = model(ids, pos, pool, meta, lora=LoRABatch(weights, token_slots))
        return model.compute_logits(hidden)

    manager.sync()
    logits = np.asarray(forward(state, manager.weights, ids, positions, pool, meta, token_slots))
    return np.split(logits, np.cumsum([len(seq) for seq in sequences])[:-1])

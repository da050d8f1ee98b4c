"""Multi-LoRA: adapters read from PEFT folders match PEFT's forward, mixed batches, slots, refusals by name."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from lora_utils import ALL_TARGETS, peft_logits, save_adapter, save_llama
from model_utils import relative_error

from jllm.attention import AttentionMetadata
from jllm.loader import load_model
from jllm.lora import LoRARequest
from jllm.lora.manager import LoRAManager
from jllm.lora.peft_files import AdapterError
from jllm.models.lora import LoRABatch
from jllm.parallel import make_mesh

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A tiny random Llama (4 query heads over 2 KV heads) and two adapters: every target at r=4, and q/v/down at
    r=8 with rsLoRA's scaling."""
    root = tmp_path_factory.mktemp("lora")
    model = save_llama(root)
    first = save_adapter(model, root / "all", r=4, targets=ALL_TARGETS, seed=1, lora_alpha=8)
    second = save_adapter(
        model, root / "qvd", r=8, targets=["q_proj", "v_proj", "down_proj"], seed=2, lora_alpha=16, use_rslora=True
    )
    return model, [first, second]


def _manager(loaded, adapters: list[Path], max_loras: int = 2, max_lora_rank: int = 8) -> LoRAManager:
    manager = LoRAManager(loaded.args, loaded.hf_config, loaded.mesh, max_loras=max_loras, max_lora_rank=max_lora_rank)
    for i, path in enumerate(adapters, start=1):
        manager.add(LoRARequest(f"a{i}", i, str(path)))
    return manager


def _lora_logits(loaded, manager: LoRAManager, sequences: list[list[int]], slots: list[int]) -> list[np.ndarray]:
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


def test_logits_with_each_adapter_match_peft_and_a_mixed_batch_gives_each_row_its_own(llama):
    """One ragged step mixing no adapter, adapter 1 and adapter 2: each row within 1e-5 (relative, float32) of
    PEFT's forward with its adapter, or of the base model's."""
    model_dir, adapters = llama
    loaded = load_model(model_dir, mesh=make_mesh(1), dtype="float32")
    manager = _manager(loaded, adapters)
    slots = [0, manager.slots.acquire(1), manager.slots.acquire(2)]
    rng = np.random.default_rng(0)
    sequences = [rng.integers(3, 160, n).tolist() for n in (21, 9, 17)]
    got = _lora_logits(loaded, manager, sequences, slots)
    for seq, adapter, logits in zip(sequences, [None, *adapters], got, strict=True):
        want = peft_logits(model_dir, adapter, seq)
        assert relative_error(logits, want) < 1e-5
    assert relative_error(got[1], peft_logits(model_dir, None, sequences[1])) > 1e-2  # the adapter matters

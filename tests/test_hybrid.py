"""A hybrid model (gated DeltaNet + full attention: a tiny random Qwen3-Next) through the paths its recurrent state
can break: a prompt prefilled in chunks beside other rows, then decodes, against transformers' float32 logits; the
engine's greedy tokens under preemption (fewer pages than the sequences want), with n > 1, and an abort freeing the
state slots; and what it is refused (LoRA, hidden states) by name. test_families checks each family's logits and
greedy batch; tests/test_hybrid_tp.py tensor parallelism."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_utils import hf_logits, hf_model, relative_error, save_tiny_checkpoint
from test_families import little_machine_code_optimization  # noqa: F401 (every test's fixture)

from jllm import LLM, SamplingParams
from jllm.attention import AttentionMetadata
from jllm.config import ConfigError
from jllm.errors import InputError
from jllm.inputs import Prompt
from jllm.kv_cache import KVCacheSpec, allocate_kv_pool
from jllm.loader import load_model
from jllm.parallel import make_mesh

# the tiny model's programs compile once for a few steps: LLVM level 0 on their machine code (test_families' fixture)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("little_machine_code_optimization")]

CONFIG = dict(
    vocab_size=49152,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=512,
    layer_types=["linear_attention", "full_attention"] * 2,
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=8,
    linear_value_head_dim=8,
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=48,
    initializer_range=0.3,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
# transformers' float32 chunked delta rule is itself ~1e-5 off its float64 forward (test_families' HYBRID_LOGITS_RTOL)
LOGITS_RTOL = 1e-4
PROMPTS = [[1, 5, 77, 300, 9000, 12, 40], list(range(100, 130)), [1, 2000, 3000, 4000]]
NEW_TOKENS = 12
STEP_TOKENS = 16  # run_steps' one step shape


@pytest.fixture(scope="module")
def model_dir(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = save_tiny_checkpoint("Qwen3NextForCausalLM", CONFIG, tmp_path_factory.mktemp("hybrid") / "qwen3_next")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / name, out / name)
    return out


def run_steps(model_dir: Path, prompts: list[list[int]], steps: list[list[tuple[int, int]]]) -> list[np.ndarray]:
    """jllm's float32 logits of each prompt, computed over ``steps`` (each a list of (prompt, new tokens)) with one
    pool kept between them: prompt i on its own pages, in state slot i + 1. Every step is padded to one shape
    (``STEP_TOKENS`` tokens, a row per prompt), as the engine's buckets pad: one compile, and padding rows too. The
    attention layers run the Pallas kernel: the recurrent layers are the same JAX on every backend."""
    loaded = load_model(model_dir, mesh=make_mesh(1), dtype="float32")
    page_size, pages = 16, -(-max(map(len, prompts)) // 16)
    spec = KVCacheSpec.for_model(loaded.args, page_size, jnp.float32)
    pool = allocate_kv_pool(spec, 1 + pages * len(prompts), num_state_slots=len(prompts) + 1)
    graphdef, state = nnx.split(loaded.model)

    @jax.jit
    def forward(state, ids, positions, pool, meta):
        model = nnx.merge(graphdef, state)
        hidden, pool = model(ids, positions, pool, meta)
        return model.compute_logits(hidden), pool

    done, logits = [0] * len(prompts), [[] for _ in prompts]
    for step in steps:
        ids, positions, slots, qsl, tables, kv_lens, state_slots = [], [], [], [0], [], [], []
        for i, n in step:
            table = 1 + i * pages + np.arange(pages)
            pos = np.arange(done[i], done[i] + n)
            ids += prompts[i][done[i] : done[i] + n]
            positions += pos.tolist()
            slots += (table[pos // page_size] * page_size + pos % page_size).tolist()
            qsl.append(qsl[-1] + n)
            tables.append(table)
            done[i] += n
            kv_lens.append(done[i])
            state_slots.append(i + 1)
        pad_tokens, pad_rows = STEP_TOKENS - len(ids), len(prompts) - len(step)  # padding: page 0, slot 0
        meta = AttentionMetadata(
            slot_mapping=jnp.asarray(slots + list(range(pad_tokens)), jnp.int32),
            query_start_loc=jnp.asarray(qsl + [qsl[-1]] * pad_rows, jnp.int32),
            kv_lens=jnp.asarray(kv_lens + [0] * pad_rows, jnp.int32),
            block_tables=jnp.asarray(np.stack(tables + [np.zeros(pages, int)] * pad_rows), jnp.int32),
            state_slots=jnp.asarray(state_slots + [0] * pad_rows, jnp.int32),
            backend="pallas",  # the full-attention layers on the Pallas kernel (interpreted off a GPU)
        )
        ids, positions = ids + [0] * pad_tokens, positions + [0] * pad_tokens
        out, pool = forward(state, jnp.asarray(ids, jnp.int32), jnp.asarray(positions, jnp.int32), pool, meta)
        for row, (i, _) in enumerate(step):
            logits[i].append(np.asarray(out)[qsl[row] : qsl[row + 1]])
    return [np.concatenate(rows) for rows in logits]


def test_prefill_in_chunks_beside_other_rows_then_decodes_matches_transformers(model_dir):
    """Prompt 0 prefilled in chunks of 10, 7 and 6 tokens, continuing its state, beside prompt 1's prefill (in two
    chunks) and decodes of its last tokens, the attention on the Pallas kernel: every row's logits are
    transformers' over the whole prompt."""
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, CONFIG["vocab_size"], n).tolist() for n in (23, 9)]
    steps = [[(0, 10)], [(0, 7), (1, 5)], [(0, 6), (1, 1)], [(1, 1)], [(1, 2)]]
    got = run_steps(model_dir, prompts, steps)
    for ids, logits in zip(prompts, got, strict=True):
        expected = hf_logits(model_dir, ids)
        assert relative_error(logits, expected) < LOGITS_RTOL
        np.testing.assert_array_equal(logits.argmax(-1), expected.argmax(-1))


def hf_greedy(model_dir: Path, prompts: list[list[int]]) -> list[list[int]]:
    import torch

    model = hf_model(model_dir)
    with torch.no_grad():
        return [
            model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None)[
                0, len(ids) :
            ].tolist()
            for ids in prompts
        ]


def test_preemption_n_samples_and_abort_keep_each_sequence_on_its_own_state(model_dir, caplog):
    """Pages for two of the three prompts' contexts: sequences are preempted and resumed (their state computed
    again from scratch), a request's two greedy samples each prefill into their own slot, and every token is
    transformers' greedy one. Then an abort gives its slots back at once. Prefix caching is off, and said. A sleep
    and wake-up keep the tokens."""
    caplog.set_level(logging.INFO, logger="jllm.build")
    llm = LLM(
        str(model_dir),
        dtype="float32",
        max_model_len=64,
        max_num_batched_tokens=16,
        max_num_seqs=4,
        num_pages=5,  # 4 usable pages of 16: two contexts of up to 42 tokens
        compile_at_start=False,
    )
    assert "prefix caching is off for this hybrid model" in caplog.text
    engine = llm.engine
    greedy = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    outputs = llm.generate(PROMPTS, [greedy, dataclasses.replace(greedy, n=2), greedy], use_tqdm=False)
    expected = hf_greedy(model_dir, PROMPTS)
    assert [[c.token_ids for c in o.outputs] for o in outputs] == [
        [expected[0]],
        [expected[1], expected[1]],
        [expected[2]],
    ]
    assert engine.scheduler.num_preemptions > 0
    assert engine.scheduler.state_slots.num_free == 4
    engine.add_request("aborted", Prompt(PROMPTS[0]), SamplingParams(n=2, max_tokens=NEW_TOKENS))
    engine.step()
    assert engine.scheduler.state_slots.num_free == 2
    engine.abort_request("aborted")
    assert engine.scheduler.state_slots.num_free == 4
    with pytest.raises(InputError, match="not supported for hybrid models"):
        llm.encode([PROMPTS[0]], use_tqdm=False)
    llm.sleep(level=1)  # the state pools go with the KV pool, and come back zeroed
    llm.wake_up()
    (again,) = llm.generate([PROMPTS[0]], greedy, use_tqdm=False)
    assert again.outputs[0].token_ids == expected[0]


def test_hybrid_model_refuses_lora_by_name(model_dir):
    with pytest.raises(ConfigError, match="enable_lora.*not supported for hybrid models") as err:
        LLM(str(model_dir), dtype="float32", max_model_len=64, compile_at_start=False, enable_lora=True)
    assert err.value.key == "enable_lora"


def test_qwen3_5_moe_experts_stored_stacked_load_as_stored_per_expert(tmp_path):
    """A Qwen3.5-MoE checkpoint whose experts are stacked per layer (transformers 5's ``experts.gate_up_proj`` and
    ``experts.down_proj``) loads the same weights as the one transformers saves per expert."""
    from safetensors.numpy import load_file, save_file

    config = dict(CONFIG, num_experts=4)
    per_expert = save_tiny_checkpoint(
        "Qwen3_5MoeForCausalLM", config, tmp_path / "per_expert", config_cls_name="Qwen3_5MoeTextConfig"
    )
    tensors = {}
    for file in per_expert.glob("*.safetensors"):
        tensors |= load_file(file)
    stacked_dir = tmp_path / "stacked"
    stacked_dir.mkdir()
    shutil.copy(per_expert / "config.json", stacked_dir / "config.json")
    for layer in range(config["num_hidden_layers"]):
        experts = f"model.layers.{layer}.mlp.experts."
        take = [
            {p: tensors.pop(f"{experts}{e}.{p}.weight") for p in ("gate_proj", "up_proj", "down_proj")}
            for e in range(4)
        ]
        tensors[experts + "gate_up_proj"] = np.stack([np.concatenate([t["gate_proj"], t["up_proj"]]) for t in take])
        tensors[experts + "down_proj"] = np.stack([t["down_proj"] for t in take])
    save_file(tensors, str(stacked_dir / "model.safetensors"))
    want, got = (load_model(d, mesh=make_mesh(1), dtype="float32").model for d in (per_expert, stacked_dir))
    for a, b in zip(jax.tree.leaves(nnx.state(want)), jax.tree.leaves(nnx.state(got)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

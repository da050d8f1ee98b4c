"""Longrope (Phi-3) past its original context: transformers turns a forward by the long factors once its length
passes ``original_max_position_embeddings``, and Phi-3's ``generate`` computes a sequence's cache again when it
decodes past it, so a sequence longer than that context has every token turned by the long factors. The engine marks
such sequences' positions (``rope.long_rope_positions``), computes a short prompt's K/V again when it grows past the
context, and keeps long sequences' cached pages apart from short ones'; checked against transformers' ``generate``
on a tiny Phi-3."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from model_utils import TINY_CONFIG, hf_model, save_tiny_checkpoint
from test_families import little_machine_code_optimization  # noqa: F401 (the slow test's fixture)

from jllm import LLM, SamplingParams
from jllm.block_manager import BlockManager
from jllm.models.rope import LONG_FACTORS_BIT, long_rope_positions
from jllm.scheduler import Scheduler
from jllm.state_slots import StateSlots

ORIGINAL = 32  # original_max_position_embeddings: prompts of 40 tokens are long, of 20 short until they pass it
PHI3 = dict(
    TINY_CONFIG,
    vocab_size=49152,  # the default model's tokenizer
    head_dim=16,
    initializer_range=0.3,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    max_position_embeddings=128,
    original_max_position_embeddings=ORIGINAL,
    rope_parameters={
        "rope_type": "longrope",
        "rope_theta": 1e4,
        "partial_rotary_factor": 0.5,
        "short_factor": [1.0, 1.5, 2.0, 3.0],
        "long_factor": [2.0, 3.0, 4.0, 5.0],
    },
)
# Phi-3.5-MoE: past the original context transformers 5 scales cos/sin by long_mscale and keeps the short factors
PHIMOE = dict(
    PHI3,
    num_local_experts=4,
    router_jitter_noise=0.3,
    rope_parameters={
        "rope_type": "longrope",
        "rope_theta": 1e4,
        "original_max_position_embeddings": ORIGINAL,
        "short_factor": [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0],
        "long_factor": [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
        "short_mscale": 1.2,
        "long_mscale": 1.6,
    },
)
CHECKPOINTS = {"Phi3ForCausalLM": PHI3, "PhimoeForCausalLM": PHIMOE}
LOGPROB_ATOL = 2e-4  # float32 both sides


def test_long_factors_mark_the_long_sequences_tokens_and_keep_their_positions() -> None:
    positions = np.array([0, 31, 32, 0, 5], np.int32)
    long = np.array([False, False, True, True, False])
    marked = long_rope_positions(positions, long)
    assert (marked >= LONG_FACTORS_BIT).tolist() == long.tolist()
    np.testing.assert_array_equal(marked & (LONG_FACTORS_BIT - 1), positions)


def test_a_hybrid_models_longrope_is_refused() -> None:
    """A sequence passing the original context computes its K/V again from its first token, which a recurrent
    state slot would carry stale."""
    with pytest.raises(ValueError, match="longrope with recurrent state slots"):
        Scheduler(
            BlockManager(8, 16), max_num_seqs=2, max_num_batched_tokens=16, max_model_len=64,
            state_slots=StateSlots(2), long_rope_from=ORIGINAL,
        )  # fmt: skip


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def model_dir(request, default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    arch = request.param
    out = save_tiny_checkpoint(arch, CHECKPOINTS[arch], tmp_path_factory.mktemp(arch), seed=3)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / file, out / file)
    return out


def hf_generate(model_dir: Path, prompt: list[int], new_tokens: int) -> tuple[list[int], list[float]]:
    """transformers' greedy tokens and each one's log-probability (Phi-3's ``generate`` runs the whole sequence
    again, long factors throughout, at the step that passes the original context)."""
    import torch

    model = hf_model(model_dir)
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
        output_logits=True, return_dict_in_generate=True,
    )  # fmt: skip
    tokens = out.sequences[0, len(prompt) :].tolist()
    logprobs = [torch.log_softmax(step[0], -1)[t].item() for step, t in zip(out.logits, tokens, strict=True)]
    return tokens, logprobs


def assert_generates_as_transformers(llm: LLM, model_dir: Path, prompts: list[list[int]], new_tokens: int) -> None:
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True, logprobs=0)
    for prompt, output in zip(prompts, llm.generate(prompts, params, use_tqdm=False), strict=True):
        tokens, logprobs = hf_generate(model_dir, prompt, new_tokens)
        got = output.outputs[0]
        assert got.token_ids == tokens
        ours = [entry[t].logprob for entry, t in zip(got.logprobs, got.token_ids, strict=True)]
        np.testing.assert_allclose(ours, logprobs, atol=LOGPROB_ATOL)


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
def test_prompts_past_and_within_the_original_context_generate_as_transformers(model_dir: Path) -> None:
    """A 40-token prompt (long factors throughout) beside a 20-token one decoding past position 32 (short factors
    until then, then its whole K/V again with the long ones), prefilled 16 tokens a step; then a prompt of the long
    one's first 24 tokens, which must not read the long prompt's cached first page (computed with the long
    factors)."""
    rng = np.random.default_rng(11)
    long_prompt, short_prompt = rng.integers(3, 49152, 40).tolist(), rng.integers(3, 49152, 20).tolist()
    llm = LLM(
        str(model_dir), dtype="float32", max_model_len=128, max_num_batched_tokens=16, max_num_seqs=4, num_pages=40,
        compile_at_start=False,
    )  # fmt: skip
    assert llm.engine.runner.loaded.args.long_rope_from == ORIGINAL
    assert_generates_as_transformers(llm, model_dir, [long_prompt, short_prompt], new_tokens=20)
    assert_generates_as_transformers(llm, model_dir, [long_prompt[:24]], new_tokens=4)

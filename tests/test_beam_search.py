"""Beam search, vLLM's algorithm: the search's state on scripted logprobs, and ``LLM.beam_search`` on a tiny random
Llama against transformers' own beam search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jllm.beam_search import BeamSearch, BeamSearchParams
from jllm.outputs import Logprob

EOS = 2


def entry(**logprobs: float) -> dict[int, Logprob]:
    """A step's logprobs entry from ``t<id>=logprob`` pairs."""
    return {int(name[1:]): Logprob(value) for name, value in logprobs.items()}


def test_each_step_keeps_the_best_candidates_and_sets_eos_endings_aside() -> None:
    search = BeamSearch([[7, 8]], BeamSearchParams(beam_width=2, max_tokens=3), {EOS})
    assert search.step_prompts() == [[7, 8]]
    search.advance([entry(t5=-0.1, t2=-0.5, t6=-1.0, t9=-3.0)])
    assert search.step_prompts() == [[7, 8, 5], [7, 8, 6]]  # EOS (t2) ended a beam: kept aside, not extended
    assert [b.tokens for b in search.completed[0]] == [[7, 8, 2]]
    search.advance([entry(t4=-2.0, t3=-2.5), entry(t4=-0.2, t3=-0.3)])
    assert search.step_prompts() == [[7, 8, 6, 4], [7, 8, 6, 3]]  # -1.2 and -1.3 beat -2.1
    search.advance([entry(t1=-0.1), entry(t1=-0.1)])
    assert search.finished
    best = search.results(lambda ids: ",".join(map(str, ids)))[0].sequences
    # scores: cumulative logprob over the length (prompt included, the EOS not): -0.5 / 2 beats -1.3 / 5
    assert [b.tokens for b in best] == [[7, 8, 2], [7, 8, 6, 4, 1]]
    assert [b.finish_reason for b in best] == ["stop", "length"] and best[0].stop_reason is None
    assert best[1].cum_logprob == pytest.approx(-1.3) and best[1].text == "7,8,6,4,1"
    assert [len(b.logprobs) for b in best] == [1, 3]


def test_length_penalty_zero_ranks_by_cumulative_logprob_and_ignore_eos_extends_eos() -> None:
    params = BeamSearchParams(beam_width=1, max_tokens=2, ignore_eos=True, length_penalty=0.0)
    search = BeamSearch([[1]], params, {EOS})
    search.advance([entry(t2=-0.1, t3=-0.2)])
    assert search.step_prompts() == [[1, 2]] and not search.completed[0]
    search.advance([entry(t4=-0.3)])
    (best,) = search.results()[0].sequences
    assert best.text is None
    assert best.tokens == [1, 2, 4] and best.cum_logprob == pytest.approx(-0.4)


def test_a_search_whose_beams_all_ended_is_finished() -> None:
    search = BeamSearch([[1], [1, 1]], BeamSearchParams(beam_width=1, max_tokens=5), {EOS})
    search.advance([entry(t2=-0.1), entry(t2=-0.2)])
    assert search.finished and search.step_prompts() == []


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(beam_width=0), r"beam_width must be an integer in \[1, 10\]"),
        (dict(beam_width=11), r"2 x beam_width <= 20"),
        (dict(beam_width=True), "beam_width"),
        (dict(max_tokens=0), "max_tokens must be an integer >= 1"),
        (dict(temperature=-1.0), "temperature"),
        (dict(length_penalty="long"), "length_penalty must be a number"),
    ],
)
def test_bad_params_are_refused_by_name(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BeamSearchParams(**{"beam_width": 2, "max_tokens": 4, **fields})


@pytest.mark.slow
def test_llm_beam_search_equals_transformers_beam_search(tiny_model: Path) -> None:
    """Beams that never end (``ignore_eos``; transformers without an EOS id) all have the same length, so both rank
    them by cumulative logprob: the same sequences, in the same order, with the same scores. Float32 both sides
    (scores within 1e-4: only the order of sums differs)."""
    import torch
    from transformers import AutoModelForCausalLM

    from jllm.llm import LLM

    prompts, width, new = [[5, 17, 33, 9], [40, 41, 2, 80, 7, 7]], 3, 6
    llm = LLM(
        str(tiny_model), dtype="float32", max_model_len=64, max_num_batched_tokens=32, max_num_seqs=8, num_pages=64
    )
    params = BeamSearchParams(beam_width=width, max_tokens=new, ignore_eos=True, length_penalty=0.5)
    outputs = llm.beam_search([{"prompt_token_ids": p} for p in prompts], params)
    hf = AutoModelForCausalLM.from_pretrained(tiny_model, torch_dtype=torch.float32)
    for prompt, output in zip(prompts, outputs, strict=True):
        expected = hf.generate(
            torch.tensor([prompt]),
            num_beams=width,
            num_return_sequences=width,
            do_sample=False,
            max_new_tokens=new,
            eos_token_id=None,
            length_penalty=0.5,
            output_scores=True,
            return_dict_in_generate=True,
        )
        assert [s.tokens for s in output.sequences] == expected.sequences.tolist()
        generated_scores = [s.cum_logprob / new**0.5 for s in output.sequences]  # transformers: generated length
        np.testing.assert_allclose(generated_scores, expected.sequences_scores.numpy(), atol=1e-4)
        assert all(s.finish_reason == "length" and len(s.logprobs) == new for s in output.sequences)

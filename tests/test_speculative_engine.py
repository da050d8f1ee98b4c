"""Speculative decoding end to end on a tiny random Llama (character tokenizer): greedy outputs equal decoding without
it, with drafts proposed and accepted, a batch of several, max_tokens and stop strings cutting verified runs, and
preemption; seeded draws reproducible; warm-up compiling what speculative steps run; the combinations refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from model_utils import TINY_CONFIG, assert_only_warmup_programs, save_char_tokenizer, save_tiny_checkpoint
from test_families import little_machine_code_optimization  # noqa: F401 (every test's fixture)
from test_hybrid import CONFIG as HYBRID_CONFIG

from jllm import LLM, SamplingParams
from jllm.beam_search import BeamSearchParams
from jllm.config import ConfigError
from jllm.errors import InputError

# the tiny model's programs compile once for a few steps: LLVM level 0 on their machine code (test_families' fixture)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("little_machine_code_optimization")]

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2, "prompt_lookup_max": 4}
# 8 usable pages of 16 tokens: four sequences of up to ~80 tokens preempt each other
KEYS = dict(
    dtype="float32", max_model_len=128, max_num_batched_tokens=64, max_num_seqs=4, num_pages=9, compile_at_start=False
)
# text that repeats (drafts proposed and accepted) and text that does not
PROMPTS = ["abcabcabcabcabc", "the cat sat on the mat, the cat sat on the", "xyz", "Hello world"]


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> tuple[LLM, LLM]:
    """The same model without and with speculation."""
    out = save_tiny_checkpoint("LlamaForCausalLM", TINY_CONFIG, tmp_path_factory.mktemp("spec") / "tiny")
    save_char_tokenizer(out, TINY_CONFIG["vocab_size"])
    return LLM(str(out), **KEYS), LLM(str(out), speculative_config=NGRAM, **KEYS)


def outputs(llm: LLM, params: list[SamplingParams]) -> list[tuple[list[int], str, str]]:
    results = llm.generate(PROMPTS, params, use_tqdm=False)
    return [(o.outputs[0].token_ids, o.outputs[0].text, o.outputs[0].finish_reason) for o in results]


def test_greedy_outputs_equal_decoding_without_speculation(engines):
    base, spec = engines
    scheduler = spec.engine.scheduler
    # max_tokens 40 for two, and 7 and 23: the length limit lands inside a verified run
    params = [SamplingParams(temperature=0, max_tokens=n) for n in (40, 40, 7, 23)]
    expected = outputs(base, params)
    assert outputs(spec, params) == expected
    assert scheduler.num_accepted_tokens > 10 and scheduler.num_draft_tokens > scheduler.num_accepted_tokens
    assert scheduler.num_preemptions > 0
    assert [len(tokens) for tokens, _, _ in expected] == [40, 40, 7, 23]
    spec.engine.block_manager.check_invariants()


def test_a_stop_string_inside_a_verified_run_ends_the_text_where_decoding_would(engines):
    base, spec = engines
    text = outputs(base, [SamplingParams(temperature=0, max_tokens=40)] * 4)[1][1]
    stop = text[12:14]  # somewhere in the repeated part, where runs of drafts are accepted
    params = [SamplingParams(temperature=0, max_tokens=40, stop=[stop])] * 4
    expected = outputs(base, params)
    assert expected[1][2] == "stop"
    assert outputs(spec, params) == expected


def test_seeded_draws_are_reproducible_and_every_sample_runs(engines):
    _, spec = engines
    params = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=3, n=2, max_tokens=30)
    first, again = (spec.generate(PROMPTS[:2], params, use_tqdm=False) for _ in range(2))
    tokens = [[c.token_ids for c in o.outputs] for o in first]
    assert tokens == [[c.token_ids for c in o.outputs] for o in again]
    assert all(len(t) == 30 for sample in tokens for t in sample)


def test_requests_it_cannot_verify_exactly_are_refused_by_field(engines):
    _, spec = engines
    with pytest.raises(InputError, match="logprobs is not supported with speculative decoding"):
        spec.generate(PROMPTS[0], SamplingParams(logprobs=2), use_tqdm=False)
    with pytest.raises(InputError, match="repetition_penalty is not supported with speculative decoding"):
        spec.generate(PROMPTS[0], SamplingParams(repetition_penalty=1.2), use_tqdm=False)
    with pytest.raises(InputError, match="beam search is not supported with speculative decoding"):
        spec.beam_search([PROMPTS[0]], BeamSearchParams(beam_width=2, max_tokens=4))


@pytest.mark.parametrize(
    ("keys", "named"),
    [(dict(enable_lora=True), "enable_lora=True"), (dict(tensor_parallel_size=2), "tensor_parallel_size=2")],
)
def test_engine_settings_it_cannot_serve_are_refused_before_loading(engines, keys, named):
    folder = Path(engines[0].config.model.model)  # refused before its weights are read
    with pytest.raises(ConfigError, match=f"speculative_config is not supported with {named}") as error:
        LLM(str(folder), speculative_config=NGRAM, **KEYS, **keys)
    assert error.value.key == "speculative_config"


def test_a_hybrid_model_is_refused(tmp_path: Path):
    out = save_tiny_checkpoint("Qwen3NextForCausalLM", HYBRID_CONFIG, tmp_path / "hybrid")  # tests/test_hybrid.py's
    save_char_tokenizer(out, HYBRID_CONFIG["vocab_size"])
    with pytest.raises(ConfigError, match="not supported for hybrid models .* cannot roll back a rejected draft"):
        LLM(str(out), speculative_config=NGRAM, **KEYS)


def test_warmup_compiles_what_speculative_steps_run():
    """Every forward gathers K + 1 rows a sequence and every sampler verifies, so the programs warm-up compiles are
    the ones speculative steps pick: generating compiles nothing more."""
    tiny = str(Path(__file__).resolve().parents[1] / "configs" / "models" / "tiny-llama")
    args = dict(load_format="dummy", dtype="float32", max_model_len=64, num_pages=16, max_num_seqs=2)
    llm = LLM(tiny, max_num_batched_tokens=8, speculative_config=NGRAM, **args)
    runner = llm.engine.runner
    compiled = runner.num_compilations
    prompts = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [9, 10, 11, 9, 10, 11, 9]]
    llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    llm.generate(prompts, SamplingParams(temperature=0.7, top_k=5, seed=1, max_tokens=12), use_tqdm=False)
    assert runner.num_compilations == compiled
    assert_only_warmup_programs(runner)
    assert llm.engine.scheduler.num_draft_tokens > 0

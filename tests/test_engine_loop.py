"""The engine loop over a scripted runner: outputs, stops, abort, pipelining and preemption, in milliseconds.

Every token is known in advance (``fake_runner.counting_script`` unless a test scripts its own), so each test
checks the engine's outputs against the script, not against another run of the engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from fake_runner import ScriptedRunner, counting_script, fake_engine

from jllm.engine import LLMEngine
from jllm.inputs import Prompt
from jllm.outputs import RequestOutput, top_logprobs
from jllm.sampling import RequestOutputKind, SamplingParams

EOS = 2
FINAL = SamplingParams(temperature=0, max_tokens=6, output_kind=RequestOutputKind.FINAL_ONLY)


def scripted(prompt: Sequence[int], count: int) -> list[int]:
    """The first ``count`` tokens the counting script samples after ``prompt``."""
    return [counting_script(prompt, len(prompt) + k) for k in range(count)]


def run(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list[RequestOutput]]:
    """Adds the requests, steps until the engine is idle, returns every output by request id."""
    for request_id, (token_ids, params) in requests.items():
        engine.add_request(request_id, engine.inputs.process(token_ids, params), params)
    outputs: dict[str, list[RequestOutput]] = {rid: [] for rid in requests}
    for _ in range(1000):
        if not engine.has_unfinished_requests():
            break
        for output in engine.step():
            outputs[output.request_id].append(output)
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.num_allocated_pages == 0
    engine.block_manager.check_invariants([])
    return outputs


def workload() -> dict[str, tuple[list[int], SamplingParams]]:
    """Prompts of 1 to 40 tokens (several prefill chunks at a 32-token budget), one with two samples."""
    requests = {f"r{i}": ([i + 10] * length, dataclasses.replace(FINAL, max_tokens=3 + i)) for i, length in
                enumerate([1, 7, 16, 33, 40])}  # fmt: skip
    requests["pair"] = ([50] * 9, SamplingParams(n=2, max_tokens=5, output_kind=RequestOutputKind.FINAL_ONLY))
    return requests


@pytest.mark.parametrize("async_scheduling", [True, False])
@pytest.mark.parametrize("num_pages", [64, 16])  # 16 pages of 4 preempt under this load
def test_outputs_follow_the_script_however_steps_run(async_scheduling: bool, num_pages: int) -> None:
    engine = fake_engine(async_scheduling=async_scheduling, num_pages=num_pages)
    outputs = run(engine, workload())
    for request_id, (prompt, params) in workload().items():
        [output] = outputs[request_id]
        assert output.finished and output.prompt_token_ids == prompt
        assert [c.index for c in output.outputs] == list(range(params.n))
        for completion in output.outputs:
            assert completion.token_ids == scripted(prompt, params.max_tokens)
            assert completion.finish_reason == "length"
            assert completion.text == engine.tokenizer.decode(completion.token_ids)
    if num_pages == 16:
        assert engine.scheduler.num_preemptions > 0
    assert engine.scheduler.num_generation_tokens == sum(p.max_tokens * p.n for _, p in workload().values())


def test_delta_outputs_add_up_to_the_whole_output() -> None:
    prompt = [7] * 5
    by_kind = {}
    for kind in RequestOutputKind:
        params = SamplingParams(n=2, max_tokens=8, logprobs=1, output_kind=kind, seed=3)
        by_kind[kind] = run(fake_engine(), {"a": (prompt, params)})["a"]
    [final] = by_kind[RequestOutputKind.FINAL_ONLY]
    assert by_kind[RequestOutputKind.CUMULATIVE][-1].outputs == final.outputs
    deltas = by_kind[RequestOutputKind.DELTA]
    assert len(deltas) > 1 and deltas[-1].finished and not any(d.finished for d in deltas[:-1])
    for whole in final.outputs:
        parts = [c for d in deltas for c in d.outputs if c.index == whole.index]
        assert "".join(c.text for c in parts) == whole.text
        assert [t for c in parts for t in c.token_ids] == whole.token_ids == scripted(prompt, 8)
        assert [e for c in parts for e in c.logprobs] == whole.logprobs
        assert [c.finish_reason for c in parts] == [None] * (len(parts) - 1) + ["length"]


def test_eos_ends_a_sample_unless_ignored_or_before_min_tokens() -> None:
    def eos_at_3(prompt: Sequence[int], position: int) -> int:
        return EOS if position - len(prompt) in (1, 3) else 120

    prompt = [9, 9]
    cases = {
        "eos": (SamplingParams(max_tokens=8), [120, EOS], "stop", None),
        "min_tokens": (SamplingParams(max_tokens=8, min_tokens=3), [120, EOS, 120, EOS], "stop", None),
        "ignore_eos": (SamplingParams(max_tokens=5, ignore_eos=True), [120, EOS, 120, EOS, 120], "length", None),
        "stop_id": (SamplingParams(max_tokens=8, stop_token_ids=[120], ignore_eos=True), [120], "stop", 120),
    }
    requests = {k: (prompt, dataclasses.replace(p, temperature=0)) for k, (p, *_) in cases.items()}
    outputs = run(fake_engine(script=eos_at_3), requests)
    for request_id, (_, tokens, reason, stop_reason) in cases.items():
        [completion] = outputs[request_id][-1].outputs
        assert (completion.token_ids, completion.finish_reason, completion.stop_reason) == (tokens, reason, stop_reason)
        assert "</s>" not in completion.text  # a stop token's text is never shown; skipped specials neither


def test_a_stop_string_ends_the_sequence_and_frees_its_pages() -> None:
    engine = fake_engine()
    words = engine.tokenizer.encode(" one two three four five six", add_special_tokens=False)

    def say_words(prompt: Sequence[int], position: int) -> int:
        return words[(position - len(prompt)) % len(words)]

    engine = fake_engine(script=say_words)
    params = SamplingParams(temperature=0, max_tokens=30, stop=["three"])
    [*_, last] = run(engine, {"a": ([5, 6], params)})["a"]
    [completion] = last.outputs
    assert completion.text == " one two " and completion.finish_reason == "stop" and completion.stop_reason == "three"
    assert len(completion.token_ids) < 30


def test_abort_mid_generation_ends_the_request_and_frees_its_pages() -> None:
    engine = fake_engine()
    params = SamplingParams(temperature=0, max_tokens=50, output_kind=RequestOutputKind.DELTA)
    engine.add_request("a", Prompt([3] * 10), params)
    engine.add_request("b", Prompt([4] * 10), params)
    streamed = [o for _ in range(4) for o in engine.step() if o.request_id == "a"]
    assert streamed and engine.block_manager.num_allocated_pages > 0
    final = engine.abort_request("a")
    assert final is not None and final.finished and final.outputs[0].finish_reason == "abort"
    assert engine.abort_request("a") is None
    received = [t for o in streamed for t in o.outputs[0].token_ids]
    assert received == scripted([3] * 10, len(received))
    while engine.has_unfinished_requests():
        assert all(o.request_id == "b" for o in engine.step())
    assert engine.block_manager.num_allocated_pages == 0 and engine.scheduler.num_running == 0


def test_a_request_the_pool_cannot_hold_ends_as_aborted() -> None:
    engine = fake_engine(num_pages=5, page_size=4, max_model_len=64)  # 16 tokens of KV
    outputs = run(engine, {"big": ([1] * 10, SamplingParams(max_tokens=20)), "ok": ([1] * 4, FINAL)})
    [big] = outputs["big"]
    assert big.finished and big.outputs[0].finish_reason == "abort" and big.outputs[0].token_ids == []
    assert outputs["ok"][0].outputs[0].token_ids == scripted([1] * 4, 6)


def test_prompt_logprobs_arrive_once_per_position_across_chunks_and_preemption() -> None:
    engine = fake_engine(num_pages=12, max_num_batched_tokens=8)
    prompt = list(range(20, 40))
    params = SamplingParams(temperature=0, max_tokens=4, prompt_logprobs=0, output_kind=RequestOutputKind.FINAL_ONLY)
    [output] = run(engine, {"a": (prompt, params), "b": ([7] * 30, FINAL)})["a"]
    assert output.prompt_logprobs is not None and output.prompt_logprobs[0] is None
    assert [next(iter(entry)) for entry in output.prompt_logprobs[1:]] == prompt[1:]


def test_every_logprob_entry_carries_the_chosen_token_s_rank() -> None:
    """The scripted prompt token sits second behind another: with a top 1 it is outside the top, and keeps the rank
    the device counted; a top entry has its place; ``top_logprobs`` (what the routes show) leaves the chosen one out.
    With ``logprobs=0`` a sampled token's entry is itself alone, with its rank."""
    engine = fake_engine()
    prompt = list(range(20, 30))
    params = dataclasses.replace(FINAL, max_tokens=3, logprobs=0, prompt_logprobs=1)
    [output] = run(engine, {"a": (prompt, params)})["a"]
    assert output.prompt_logprobs is not None
    for token, entry in zip(prompt[1:], output.prompt_logprobs[1:], strict=True):
        assert entry is not None and {t: lp.rank for t, lp in entry.items()} == {(token + 1) % 512: 1, token: 2}
        assert [t for t, _ in top_logprobs(entry, 1)] == [(token + 1) % 512]
    [completion] = output.outputs
    assert completion.logprobs is not None
    assert [{t: lp.rank for t, lp in e.items()} for e in completion.logprobs] == [{t: 1} for t in completion.token_ids]


def test_the_runner_sees_pending_inputs_only_under_async_scheduling() -> None:
    for async_scheduling in (True, False):
        engine = fake_engine(async_scheduling=async_scheduling)
        run(engine, {"a": ([5] * 3, FINAL)})
        runner = engine.runner
        assert isinstance(runner, ScriptedRunner)
        pending = [s.pending_input for out in runner.launched for s in out.scheduled]
        assert any(pending) is async_scheduling


@pytest.mark.parametrize("include", [False, True])
def test_a_stop_tokens_text_shows_only_with_include_stop_str_in_output(include: bool) -> None:
    """vLLM's rule: the token that stopped a sequence (EOS or a stop id) is dropped from the text unless
    include_stop_str_in_output; the token itself stays in token_ids."""
    prompt = [5, 6, 7]
    tokens = scripted(prompt, 6)
    params = dataclasses.replace(FINAL, stop_token_ids=[tokens[3]], include_stop_str_in_output=include)
    [output] = run(fake_engine(), {"a": (prompt, params)})["a"]
    [completion] = output.outputs
    assert completion.token_ids == tokens[:4] and completion.stop_reason == tokens[3]
    tokenizer = fake_engine().tokenizer
    assert completion.text == tokenizer.decode(tokens[:4] if include else tokens[:3])


def test_greedy_samples_of_one_prompt_are_equal() -> None:
    params = SamplingParams(n=3, temperature=0, max_tokens=5, output_kind=RequestOutputKind.FINAL_ONLY)
    [output] = run(fake_engine(), {"a": ([9] * 6, params)})["a"]
    assert [c.index for c in output.outputs] == [0, 1, 2]
    assert all(c.token_ids == scripted([9] * 6, 5) and c.finish_reason == "length" for c in output.outputs)

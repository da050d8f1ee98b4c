"""vLLM's ``repetition_detection``: the tail check against a brute-force reading of its rule, the request checks, and
the engine loop (scripted runner) ending a looping sample with finish_reason "repetition"."""

from __future__ import annotations

import random

import pytest
from fake_runner import fake_engine, run_requests

from jllm.repetition import MAX_PATTERN_SIZE, MAX_SCAN_TOKENS, RepetitionDetectionParams, ends_in_repetition
from jllm.sampling import SamplingParams


def brute_force(tokens: list[int], low: int, high: int, count: int) -> bool:
    """Some pattern size n in [max(low, 1), high] whose last n tokens occur count times back to back at the end."""
    return any(
        n * count <= len(tokens) and tokens[len(tokens) - n * count :] == tokens[len(tokens) - n :] * count
        for n in range(max(low, 1), high + 1)
    )


def test_the_tail_check_agrees_with_brute_force_on_random_outputs() -> None:
    rng = random.Random(0)
    hits = 0
    for _ in range(3000):
        tokens = [rng.randrange(3) for _ in range(rng.randrange(0, 24))]
        low, high = sorted(rng.randrange(0, 6) for _ in range(2))
        high = max(high, 1)
        count = rng.randrange(2, 5)
        params = RepetitionDetectionParams(max_pattern_size=high, min_pattern_size=low, min_count=count)
        expected = brute_force(tokens, low, high, count)
        assert ends_in_repetition(tokens, params) == expected, (tokens, low, high, count)
        hits += expected
    assert 300 < hits < 2700  # both answers well represented


def test_vllms_example_a_phrase_three_times() -> None:
    params = RepetitionDetectionParams(max_pattern_size=5, min_count=3)
    assert ends_in_repetition([9, 1, 2, 3, 1, 2, 3, 1, 2, 3], params)
    assert not ends_in_repetition([9, 1, 2, 3, 1, 2, 3, 1, 2], params)
    assert not ends_in_repetition([1, 2, 3, 4, 5, 6] * 3, params)  # a 6-token pattern is past max_pattern_size


@pytest.mark.parametrize(
    "value, message",
    [
        ({"max_pattern_size": 3, "min_count": 1}, "min_count must be >= 2"),
        ({"max_pattern_size": 3, "min_pattern_size": 4, "min_count": 2}, "min_pattern_size <= max_pattern_size"),
        ({"max_pattern_size": -1}, "must be >= 0"),
        ({"max_pattern_size": MAX_PATTERN_SIZE + 1, "min_count": 2}, f"max_pattern_size must be <= {MAX_PATTERN_SIZE}"),
        ({"max_pattern_size": 1000, "min_count": 20}, f"max_pattern_size x min_count must be <= {MAX_SCAN_TOKENS}"),
        ({"max_pattern_size": "3", "min_count": 2}, "max_pattern_size must be an integer"),
        ({"max_pattern": 3}, "has no key 'max_pattern'"),
        ([3, 2], "must be an object of vLLM's keys"),
    ],
)
def test_bad_parameters_are_refused_naming_the_key(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(repetition_detection=value)


def test_detection_off_asks_for_nothing_and_vllms_class_is_exported() -> None:
    from jllm import RepetitionDetectionParams as Exported

    assert Exported is RepetitionDetectionParams
    assert SamplingParams(repetition_detection={"max_pattern_size": 0}).repetition_detection is None
    params = SamplingParams(repetition_detection={"max_pattern_size": 4, "min_count": 3})
    assert params.repetition_detection == RepetitionDetectionParams(4, 0, 3)


def looping(prompt, position: int) -> int:  # noqa: ANN001 - the runner's script signature
    """After the prompt: 100, 101, then 7, 8, 7, 8, ... (a two-token loop)."""
    k = position - len(prompt)
    return 100 + k if k < 2 else 7 + k % 2


def test_a_looping_sample_ends_with_finish_reason_repetition_and_others_run_on() -> None:
    engine = fake_engine(script=looping)
    loops = {"max_pattern_size": 3, "min_count": 3}
    done = run_requests(engine, {
        "detected": ([5], SamplingParams(max_tokens=40, repetition_detection=loops)),
        "late": ([5], SamplingParams(max_tokens=40, min_tokens=12, repetition_detection=loops)),
        "free": ([5], SamplingParams(max_tokens=12)),
    })  # fmt: skip
    detected = done["detected"].outputs[0]
    # 100 101 7 8 7 8 7 8: the pattern (7, 8) the third time; 1-token patterns never repeat three times here
    assert detected.token_ids == [100, 101, 7, 8, 7, 8, 7, 8]
    assert (detected.finish_reason, detected.stop_reason) == ("repetition", "repetition_detected")
    late = done["late"].outputs[0]  # checked only once min_tokens are out
    assert len(late.token_ids) == 12 and late.finish_reason == "repetition"
    free = done["free"].outputs[0]
    assert len(free.token_ids) == 12 and free.finish_reason == "length"
    assert free.token_ids[:8] == detected.token_ids
    assert not engine.requests and engine.block_manager.num_allocated_pages == 0

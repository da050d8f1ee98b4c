"""The thinking budget's state machine over a reasoning format (Qwen3's, whose template opens the reasoning): which
token it forces after how many, a marker of several tokens forced one a step, and a reasoning that closes by itself
left alone."""

from __future__ import annotations

import pytest
from fake_runner import fake_engine

from jllm.reasoning_parsers import ReasoningGate, reasoning_format
from jllm.thinking_budget import ThinkingBudget


@pytest.fixture(scope="module")
def tokenizer():
    return fake_engine().tokenizer


def _budget(tokenizer, budget: int) -> ThinkingBudget:
    fmt = reasoning_format("qwen3")
    end = tokenizer.encode("</think>", add_special_tokens=False)
    return ThinkingBudget(ReasoningGate(fmt, tokenizer.token_bytes), budget, end)


def test_the_closing_marker_is_forced_a_token_at_a_time_once_the_budget_is_spent(tokenizer) -> None:
    budget = _budget(tokenizer, 3)
    end = list(budget.end_ids)
    assert len(end) > 1  # the tiny tokenizer spells </think> in several tokens
    for token in tokenizer.encode("abc", add_special_tokens=False):
        assert budget.forced() is None and budget.holds
        budget.accept(token)
    forced = []
    while (token := budget.forced()) is not None:
        forced.append(token)
        budget.accept(token)
    assert forced == end and not budget.holds  # the reasoning closed: nothing more is forced
    budget.accept(tokenizer.encode("x", add_special_tokens=False)[0])
    assert budget.forced() is None


def test_a_budget_of_zero_closes_at_once_and_a_closed_reasoning_is_left_alone(tokenizer) -> None:
    zero = _budget(tokenizer, 0)
    assert zero.forced() == zero.end_ids[0]
    roomy = _budget(tokenizer, 100)
    for token in tokenizer.encode("ok</think>answer", add_special_tokens=False):
        assert roomy.forced() is None
        roomy.accept(token)
    assert not roomy.holds


def test_where_the_reply_may_not_reason_nothing_is_forced_until_its_reasoning_opens(tokenizer) -> None:
    """GLM-4.5's format: the reasoning opens only with a written <think>; a reply that answers at once is free."""
    fmt = reasoning_format("glm45")
    end = tokenizer.encode("</think>", add_special_tokens=False)
    answer = ThinkingBudget(ReasoningGate(fmt, tokenizer.token_bytes), 0, end)
    assert answer.forced() is None  # nothing read: it may or may not open
    for token in tokenizer.encode("Four.", add_special_tokens=False):
        answer.accept(token)
        assert answer.forced() is None
    thinks = ThinkingBudget(ReasoningGate(fmt, tokenizer.token_bytes), 0, end)
    for token in tokenizer.encode("<think>", add_special_tokens=False):
        assert thinks.forced() is None
        thinks.accept(token)
    assert thinks.forced() == end[0]  # opened, with no budget: its end at once


def test_forks_go_on_alone(tokenizer) -> None:
    budget = _budget(tokenizer, 2)
    a = tokenizer.encode("a", add_special_tokens=False)[0]
    budget.accept(a)
    twin = budget.fork()
    budget.accept(a)
    assert budget.forced() == budget.end_ids[0] and twin.forced() is None


def test_a_negative_budget_is_refused(tokenizer) -> None:
    with pytest.raises(ValueError, match="thinking_token_budget must be >= 0, got -2"):
        _budget(tokenizer, -2)

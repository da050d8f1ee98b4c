"""vLLM's ``thinking_token_budget``: a thinking model's reasoning cut at a number of tokens by forcing its closing
marker, so the reply goes on to its answer instead of reasoning until ``max_tokens``.

A sample's ``ThinkingBudget`` reads each token it generates through a ``ReasoningGate`` (the served model's reasoning
format: where the reasoning ends, and how many tokens it took, its markers included, as usage's reasoning_tokens
counts them). Once an open reasoning (opened by its marker, or by the chat template where the format says so) has
taken ``budget`` tokens and not closed, the sampler's mask allows only the
closing marker's tokens, one a step (vLLM's ``ThinkingTokenBudgetLogitsProcessor`` sets the same tokens). The model
then reads its own ``</think>`` and answers. Which token is forced follows from the last one, so under async
scheduling the mask waits for it as a grammar's does (``jllm.sampler.mask_follows_tokens``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence as Seq

from jllm.reasoning_parsers import ReasoningGate


class ThinkingBudget:
    """One sample's budget: consumes every token it generates (``accept``) and names the token to force, if any."""

    def __init__(self, gate: ReasoningGate, budget: int, end_ids: Seq[int]) -> None:
        if budget < 0:
            raise ValueError(f"thinking_token_budget must be >= 0, got {budget}")
        if not end_ids:
            raise ValueError("the reasoning's closing marker must have at least one token")
        self.gate = gate
        self.budget = budget
        self.end_ids = tuple(end_ids)  # the closing marker's tokens (the format's first end marker)
        self._forced = 0  # how many of them have been forced so far

    @property
    def holds(self) -> bool:
        """Whether the reasoning is still open: the budget may force a token at some step."""
        return not self.gate.ended

    def forced(self) -> int | None:
        """The only token the next step may sample, or None (no reasoning open, or within its budget)."""
        if not self.gate.reasoning or self._forced == len(self.end_ids):
            return None
        if self._forced or self.gate.tokens >= self.budget:
            return self.end_ids[self._forced]
        return None

    def accept(self, token_id: int) -> None:
        """Reads a token the sample generated (a forced one advances through the marker)."""
        if self.gate.ended:
            return
        if self.forced() == token_id:
            self._forced += 1
        self.gate.opens_after(token_id)

    def fork(self) -> ThinkingBudget:
        """Another sample's budget from the same state (``n`` samples of one request)."""
        twin = copy.copy(self)
        twin.gate = self.gate.fork()
        return twin

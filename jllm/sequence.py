"""One sample's token state as the scheduler sees it: plain Python, no JAX.

vLLM's rule "schedule tokens, not phases": a sequence's ``num_computed_tokens`` (tokens whose K/V sit in the pool)
catches up with ``num_tokens`` (prompt + output). Prefill chunks, prefix-cache hits, decodes and recompute after
preemption are all the same move: schedule some of the not-yet-computed tokens.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jllm.bad_words import BadWordIds
    from jllm.lora.request import LoRARequest
    from jllm.sampling import SamplingParams
    from jllm.structured_output import GrammarMatcher
    from jllm.thinking_budget import ThinkingBudget


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"
    FINISHED_ERROR = "error"  # its grammar failed mid-generation (vLLM's FinishReason.ERROR)
    FINISHED_REPETITION = "repetition"  # its output ended in a loop (repetition_detection; vLLM's REPETITION)

    @property
    def is_finished(self) -> bool:
        return self not in (SequenceStatus.WAITING, SequenceStatus.RUNNING)


@dataclass(eq=False)
class Sequence:
    """One of a request's ``n`` samples. Identity equality: two sequences are never interchangeable."""

    seq_id: int
    request_id: str
    sample_index: int  # 0..n-1 within its request
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    arrival_time: float
    sampling_seed: int  # the request's seed, or one drawn by the engine: every sample is reproducible
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose K/V are written in the pool (or will be, by a launched step)
    num_pending_tokens: int = 0  # 0 or 1: sampled by a launched step, not yet known here (async scheduling)
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache at the last admission
    block_table: list[int] = field(default_factory=list)  # page ids, in order
    status: SequenceStatus = SequenceStatus.WAITING
    num_preemptions: int = 0
    grammar: GrammarMatcher | None = None  # structured output: consumes each appended token, masks the next
    bad_word_ids: BadWordIds = ()  # its request's bad_words as token sequences (jllm.bad_words)
    thinking: ThinkingBudget | None = None  # thinking_token_budget: consumes each appended token, may force the next
    lora_request: LoRARequest | None = None  # the adapter it runs with (None: the base model)
    cache_salt: str | None = None  # its prompt's (vLLM's): its pages' hashes chain from the salt
    priority: int = 0  # its request's (vLLM's): lower runs first under the priority scheduling policy
    lora_slot: int = 0  # its adapter's device slot while running (jllm.lora.slots; 0: none)
    state_slot: int = 0  # a hybrid model's recurrent state slot while running (jllm.state_slots; 0: none)
    # a longrope model's sequence past its original context: every token turned by the long factors (jllm.scheduler)
    long_rope: bool = False

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_slice(self, start: int, stop: int) -> list[int]:
        """``token_ids[start:stop]`` without building ``token_ids``: a decode step needs one token of a long list."""
        prompt = self.prompt_token_ids
        if stop <= len(prompt):
            return prompt[start:stop]
        tail = self.output_token_ids[max(0, start - len(prompt)) : stop - len(prompt)]
        return prompt[start:] + tail if start < len(prompt) else tail

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_tokens_with_pending(self) -> int:
        """What the scheduler computes up to: known tokens plus the one a launched step is sampling."""
        return self.num_tokens + self.num_pending_tokens

    def reaches_length_limit(self, max_model_len: int, *, with_pending: bool = False) -> bool:
        """max_tokens or max_model_len reached by the known tokens (plus the pending one with ``with_pending``)."""
        extra = self.num_pending_tokens if with_pending else 0
        max_tokens = self.sampling_params.max_tokens
        return self.num_tokens + extra >= max_model_len or (
            max_tokens is not None and self.num_output_tokens + extra >= max_tokens
        )

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished


@dataclass
class ScheduledSequence:
    """``num_new_tokens`` of ``seq`` run this step, starting at ``seq.num_computed_tokens``; with speculative
    decoding the last ``len(draft_token_ids)`` of them are drafts (``jllm.speculative``), never part of ``seq``'s
    tokens: the step verifies them, and only those it accepts become output."""

    seq: Sequence
    num_new_tokens: int
    draft_token_ids: list[int] = field(default_factory=list)
    # Frozen at scheduling time: on_step_launched advances seq.num_computed_tokens and the engine later appends the
    # sampled token, so recomputing these from ``seq`` after the step would give the wrong answer.
    start: int = field(init=False)  # first position computed this step: seq.num_computed_tokens when scheduled
    samples_token: bool = field(init=False)  # this step computes the last token, so its logits give the next
    pending_input: bool = field(init=False)  # its last input is the token the previous step is still sampling

    def __post_init__(self) -> None:
        self.start = self.seq.num_computed_tokens
        end = self.start + self.num_new_tokens - len(self.draft_token_ids)  # the sequence's own tokens end here
        self.samples_token = end == self.seq.num_tokens_with_pending
        self.pending_input = end > self.seq.num_tokens


@dataclass
class SchedulerOutput:
    """What one engine step runs. Running sequences come first, in scheduling order."""

    scheduled: list[ScheduledSequence]
    preempted: list[Sequence] = field(default_factory=list)  # sent back to waiting this step
    rejected: list[tuple[Sequence, str]] = field(default_factory=list)  # can never fit: (sequence, reason)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled

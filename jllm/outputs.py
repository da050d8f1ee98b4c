"""What a request returns, shaped like vLLM's ``RequestOutput`` so users switch by changing an import.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jllm.lora.request import LoRARequest


@dataclass
class Logprob:
    logprob: float
    # 1 = most likely under the raw logits: a top token's place, a chosen token past the top its rank over the whole
    # vocabulary (vLLM's: the tokens at least as likely, itself included); set on every engine entry
    rank: int | None = None
    decoded_token: str | None = None


# One entry per generated token: token id -> its Logprob (the sampled token plus the requested top ones).
SampleLogprobs = list[dict[int, Logprob]]


def top_logprobs(entry: dict[int, Logprob], k: int) -> list[tuple[int, Logprob]]:
    """An entry's top ``k`` tokens, most likely first: those ranked 1 to k. A chosen token outside them is left out
    (its rank, vLLM's count of the tokens at least as likely, is past k)."""
    ranked = [(tid, lp) for tid, lp in entry.items() if lp.rank is not None and lp.rank <= k]
    return sorted(ranked, key=lambda item: item[1].rank or 0)


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: SampleLogprobs | None
    finish_reason: str | None = None  # "stop", "length", "abort", "error" or "repetition"; None while running
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it
    error: str | None = None  # with finish_reason "error": what failed (its grammar broke mid-generation)

    def finished(self) -> bool:
        """A method, as vLLM's (``RequestOutput.finished`` is an attribute there and here)."""
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache
    # arrival_time, first_token_time, last_token_time (time.monotonic() seconds) and time_to_first_token
    metrics: dict[str, float] = field(default_factory=dict)
    lora_request: LoRARequest | None = None  # the adapter it ran with (None: the base model), as vLLM's


@dataclass
class PoolingOutput:
    data: Any  # np.ndarray [len(layers), num_tokens, hidden] float32: the asked hidden states, in the asked order


@dataclass
class PoolingRequestOutput:
    """What ``LLM.encode`` returns per prompt, vLLM's shape; ``hidden_states`` reads one layer's ``[T, hidden]``."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: PoolingOutput
    layers: list[int]  # as asked (negative ones from the end), one per row of ``outputs.data``
    finished: bool = True

    @property
    def hidden_states(self) -> dict[int, Any]:
        """Asked layer index -> its states ``[num_tokens, hidden]``."""
        return dict(zip(self.layers, self.outputs.data, strict=True))


@dataclass
class EmbeddingOutput:
    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass
class EmbeddingRequestOutput:
    """What ``LLM.embed`` returns per prompt, vLLM's shape: ``outputs.embedding``."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: EmbeddingOutput
    finished: bool = True


@dataclass
class ContinuationScore:
    """What ``LLM.score`` returns per (prompt, continuation): the continuation's log-probability given the prompt
    (lm-evaluation-harness's log-likelihood), token by token and summed."""

    prompt_token_ids: list[int]
    continuation_token_ids: list[int]
    token_logprobs: list[float]  # one per continuation token, natural log, from the raw logits
    logprob: float  # their sum
    is_greedy: bool  # every continuation token is the most likely one at its position


@dataclass
class ClassificationOutput:
    probs: list[float]  # one per label: the head's activation of its logits (the logits themselves without it)

    @property
    def num_classes(self) -> int:
        return len(self.probs)


@dataclass
class ClassificationRequestOutput:
    """What ``LLM.classify`` returns per prompt, vLLM's shape: ``outputs.probs``."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: ClassificationOutput
    finished: bool = True


@dataclass
class ScoringOutput:
    score: float


@dataclass
class ScoringRequestOutput:
    """What ``LLM.score_pairs`` returns per pair, vLLM's shape (its ``LLM.score``): ``outputs.score``."""

    request_id: str
    prompt_token_ids: list[int]  # a cross-encoder's pair prompt; a bi-encoder's two texts' tokens one after the other
    outputs: ScoringOutput
    finished: bool = True

"""Speculative decoding by n-gram (prompt lookup), vLLM's ``method: ngram``: the settings, the proposer, and what a
request may ask for beside it. Plain Python and NumPy, no JAX.

A decode step normally computes one token per sequence. With speculation the scheduler also feeds each running
sequence the ``k`` tokens that followed an earlier occurrence of its last n tokens (``propose``): the forward computes
all 1 + k positions at once, and the sampler verifies the drafts against the model's own choice at each position
(``jllm.spec_verify``). Greedy rows keep exactly the tokens decoding without speculation gives; drawing rows keep its
distribution (rejection sampling). Text that repeats its context (code edits, quoting, summaries) then takes several
tokens a step.

Only the plain cases are served, exactly: a request whose sampler would need more than temperature, top-k, top-p and
min-p at each position (logprobs, penalties, bans, masks, biases) is refused by ``check_request``, as are the engine
settings whose state cannot roll back rejected tokens (``check_engine``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from jllm.errors import InputError

if TYPE_CHECKING:
    from jllm.sampling import SamplingParams
    from jllm.sequence import Sequence

SUPPORTED = (
    'speculative_config serves method "ngram" alone (prompt lookup: drafts copied from the sequence\'s own tokens), '
    "with keys num_speculative_tokens, prompt_lookup_min and prompt_lookup_max"
)
REQUEST_SUPPORT = (
    "with speculative decoding a request may use temperature, top_k, top_p, min_p, seed, n, max_tokens, stop, "
    "stop_token_ids and ignore_eos"
)
_KEYS = ("method", "num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max")
NGRAM_DEFAULT = 5  # vLLM's prompt_lookup_min and _max when neither is given


@dataclass(frozen=True)
class NgramSpec:
    """``speculative_config`` read and checked: ``k`` drafts a step, matched on the longest n in [min_n, max_n]."""

    num_speculative_tokens: int
    prompt_lookup_min: int
    prompt_lookup_max: int

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> NgramSpec:
        """vLLM's keys and defaults (one of min / max given: the other equals it; neither: 5). Raises ``ValueError``
        naming the bad key and what is served."""
        if not isinstance(config, Mapping):
            raise ValueError(f"speculative_config={config!r} must be a mapping; {SUPPORTED}")
        method = config.get("method")
        if method != "ngram" or "model" in config:
            got = f"method={method!r}" + (f", model={config['model']!r}" if "model" in config else "")
            raise ValueError(f"speculative_config {got} is not served: {SUPPORTED}")
        unknown = sorted(set(config) - set(_KEYS))
        if unknown:
            raise ValueError(f"speculative_config has unknown keys {unknown}: {SUPPORTED}")
        k = config.get("num_speculative_tokens")
        low, high = config.get("prompt_lookup_min"), config.get("prompt_lookup_max")
        if low is None and high is None:
            low = high = NGRAM_DEFAULT
        low, high = (high if low is None else low), (low if high is None else high)
        for name, value in [("num_speculative_tokens", k), ("prompt_lookup_min", low), ("prompt_lookup_max", high)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"speculative_config {name}={value!r} must be an integer >= 1")
        if low > high:
            raise ValueError(f"speculative_config prompt_lookup_min={low} must be <= prompt_lookup_max={high}")
        return cls(k, low, high)


def propose(token_ids: list[int] | np.ndarray, spec: NgramSpec, k: int | None = None) -> list[int]:
    """Up to ``k`` (default ``spec.num_speculative_tokens``) drafts for a sequence's tokens (prompt + output).

    The longest n in [min, max] whose last n tokens occur earlier wins; among its occurrences the earliest, as
    vLLM's KMP search picks (the first time a phrase appeared is where it was written out whole, later copies are
    more often cut short). The drafts are the tokens that followed it, fewer where the sequence ends first.
    One vector compare finds the earlier places of the last token; each longer n filters those few, so the cost is
    one pass over the tokens whatever ``prompt_lookup_max`` is.
    """
    k = spec.num_speculative_tokens if k is None else k
    tokens = np.asarray(token_ids)
    total = tokens.shape[0]
    if k < 1 or total < 2:  # no earlier token to match
        return []
    ends = np.flatnonzero(tokens[: total - 1] == tokens[total - 1])  # where an earlier match would end, ascending
    found = None
    for n in range(1, min(spec.prompt_lookup_max, total - 1) + 1):
        if n > 1:  # the matches of n - 1 tokens that also match the n-th token back
            ends = ends[ends >= n - 1]
            ends = ends[tokens[ends - (n - 1)] == tokens[total - n]]
        if not ends.size:
            break
        if n >= spec.prompt_lookup_min:
            found = int(ends[0])
    return [] if found is None else tokens[found + 1 : found + 1 + k].tolist()


class NgramProposer:
    """The scheduler's proposer: each sequence's tokens kept as a growing array between steps, so a decode step
    appends the tokens since its last proposal instead of building and converting the whole list (at 32k tokens that
    took 3.6 ms a sequence a step on this project's CPU host)."""

    def __init__(self, spec: NgramSpec) -> None:
        self.spec = spec
        self._tokens: dict[int, tuple[np.ndarray, int]] = {}  # seq_id -> (buffer, tokens in it)

    def __len__(self) -> int:
        """Sequences whose tokens it holds."""
        return len(self._tokens)

    def propose(self, seq: Sequence, k: int) -> list[int]:
        buffer, held = self._tokens.get(seq.seq_id, (np.empty(0, np.int32), 0))
        total = seq.num_tokens
        if held > total:  # tokens taken back: start over
            held = 0
        if total > buffer.shape[0]:
            grown = np.empty(max(2 * total, 64), np.int32)
            grown[:held] = buffer[:held]
            buffer = grown
        buffer[held:total] = seq.token_slice(held, total)
        self._tokens[seq.seq_id] = (buffer, total)
        return propose(buffer[:total], self.spec, k)

    def forget(self, seq: Sequence) -> None:
        """``seq`` finished: its tokens are dropped."""
        self._tokens.pop(seq.seq_id, None)


def refuse_beam_search() -> InputError:
    """Beam search's steps ask for top logprobs, which verification does not give."""
    return InputError(
        f"beam search is not supported with speculative decoding (its steps need top logprobs): {REQUEST_SUPPORT}",
        param="use_beam_search",
    )


def check_request(params: SamplingParams) -> None:
    """Refuses (``InputError``, a 400) what the verifier cannot make exact: it samples every position with
    temperature, top-k, top-p and min-p alone."""
    refused = {
        "logprobs": params.logprobs is not None,
        "prompt_logprobs": params.prompt_logprobs is not None,
        "presence_penalty": params.presence_penalty != 0.0,
        "frequency_penalty": params.frequency_penalty != 0.0,
        "repetition_penalty": params.repetition_penalty != 1.0,
        "min_tokens": params.min_tokens > 0,
        "logit_bias": bool(params.logit_bias),
        "allowed_token_ids": params.allowed_token_ids is not None,
        "structured_outputs": params.structured_outputs is not None,
        "bad_words": bool(params.bad_words),
    }
    for name, used in refused.items():
        if used:
            raise InputError(f"{name} is not supported with speculative decoding: {REQUEST_SUPPORT}", param=name)

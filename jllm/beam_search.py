"""Beam search as vLLM runs it: each step extends every live beam by one token through ordinary one-token requests
that return the top ``2 * beam_width`` logprobs, keeps the ``beam_width`` best candidates by length-penalised score,
and sets aside those that end in EOS. The engine needs nothing new: the prefix cache serves each beam's earlier
tokens, so a step prefills only the part of its last page that is new.

``BeamSearch`` is the search's state alone (no engine), so the offline API (``LLM.beam_search``) and the server
(``use_beam_search``) drive the same loop, one synchronously and one on the event loop.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from jllm.outputs import Logprob
from jllm.sampling import MAX_LOGPROBS, SamplingParams

MAX_BEAM_WIDTH = MAX_LOGPROBS // 2  # a step asks for the top 2 x beam_width logprobs of each beam
# |length_penalty| bound: up to 2^30 tokens, length ** 32 and length ** -32 stay inside float64 (1e308, 1e-308)
MAX_LENGTH_PENALTY = 32


@dataclass(frozen=True)
class BeamSearchParams:
    """vLLM's ``BeamSearchParams``: ``length_penalty`` divides a beam's cumulative logprob by its length (prompt
    included, a final EOS not) to this power, as vLLM and transformers score beams."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        if (
            not isinstance(self.beam_width, int)
            or isinstance(self.beam_width, bool)
            or not 1 <= self.beam_width <= MAX_BEAM_WIDTH
        ):
            raise ValueError(
                f"beam_width must be an integer in [1, {MAX_BEAM_WIDTH}] (each step asks for the top "
                f"2 x beam_width <= {MAX_LOGPROBS} logprobs), got {self.beam_width!r}"
            )
        penalty = self.length_penalty
        if (
            not isinstance(penalty, int | float)
            or isinstance(penalty, bool)
            or not -MAX_LENGTH_PENALTY <= penalty <= MAX_LENGTH_PENALTY
        ):
            raise ValueError(
                f"length_penalty must be a number in [-{MAX_LENGTH_PENALTY}, {MAX_LENGTH_PENALTY}] (a beam's length to "
                f"that power stays a finite, non-zero float), got {penalty!r}"
            )
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        self.step_params()  # temperature and the flags checked as SamplingParams checks them

    def step_params(self) -> SamplingParams:
        """What each beam's one-token request asks: the top ``2 * beam_width`` logprobs of the next token."""
        return SamplingParams(
            max_tokens=1,
            temperature=self.temperature,
            logprobs=2 * self.beam_width,
            ignore_eos=self.ignore_eos,
            include_stop_str_in_output=self.include_stop_str_in_output,
        )


@dataclass
class BeamSearchSequence:
    """A beam: its tokens (the prompt's first, as vLLM's), one logprobs entry per generated token (the top
    ``2 * beam_width`` of that step), and, once returned, its text and why it ended."""

    tokens: list[int]
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    cum_logprob: float = 0.0
    text: str | None = None
    finish_reason: str | None = None  # "stop" (it generated EOS) or "length" (max_tokens, or still live)
    stop_reason: int | str | None = None  # vLLM's field; EOS endings leave it None (no stop strings here)


@dataclass
class BeamSearchOutput:
    """The ``beam_width`` best sequences of one prompt, best first."""

    sequences: list[BeamSearchSequence]


class BeamSearch:
    """The state of one search over several prompts: ``step_prompts`` lists the live beams' tokens, one request
    each; ``advance`` takes each one's next-token logprobs, in the same order."""

    def __init__(self, prompts: list[list[int]], params: BeamSearchParams, eos_token_ids: set[int]):
        self.params = params
        self.eos_token_ids = eos_token_ids
        self.prompt_lens = [len(p) for p in prompts]
        self.beams = [[BeamSearchSequence(list(p))] for p in prompts]
        self.completed: list[list[BeamSearchSequence]] = [[] for _ in prompts]
        self.steps = 0

    @property
    def finished(self) -> bool:
        return self.steps >= self.params.max_tokens or not any(self.beams)

    def step_prompts(self) -> list[list[int]]:
        """Every live beam's tokens, prompt by prompt."""
        return [beam.tokens for beams in self.beams for beam in beams]

    def advance(self, logprobs: list[dict[int, Logprob]]) -> None:
        """Extends each live beam by each of its candidates (``logprobs``: one entry per ``step_prompts`` item);
        a candidate ending in EOS is complete (unless ``ignore_eos``), the best ``beam_width`` others live on."""
        entries = iter(logprobs)
        for prompt, beams in enumerate(self.beams):
            candidates = []
            for beam in beams:
                entry = next(entries)
                for token, logprob in entry.items():
                    new = BeamSearchSequence(beam.tokens + [token], beam.logprobs + [entry], beam.cum_logprob)
                    new.cum_logprob += logprob.logprob
                    if token in self.eos_token_ids and not self.params.ignore_eos:
                        new.finish_reason = "stop"  # an EOS ending has no stop_reason, as in generate's outputs
                        self.completed[prompt].append(new)
                    else:
                        candidates.append(new)
            self.beams[prompt] = sorted(candidates, key=self._score, reverse=True)[: self.params.beam_width]
        self.steps += 1

    def results(self, decode: Callable[[list[int]], str] | None = None) -> list[BeamSearchOutput]:
        """Each prompt's ``beam_width`` best sequences, complete and live together, best first; ``decode`` (if
        given) gives each its text (of every token, the prompt's too, as vLLM's ``LLM.beam_search``)."""
        outputs = []
        for live, done in zip(self.beams, self.completed, strict=True):
            ended = done + [dataclasses.replace(b, finish_reason="length") for b in live]
            best = sorted(ended, key=self._score, reverse=True)[: self.params.beam_width]
            for beam in best if decode is not None else ():
                beam.text = decode(beam.tokens)
            outputs.append(BeamSearchOutput(best))
        return outputs

    def _score(self, beam: BeamSearchSequence) -> float:
        """vLLM's ``get_beam_search_score``: the cumulative logprob over the length (a final EOS not counted) to
        the power ``length_penalty``."""
        length = len(beam.tokens) - (beam.tokens[-1] in self.eos_token_ids)
        return beam.cum_logprob / (length**self.params.length_penalty)

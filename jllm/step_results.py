"""One step's results as the engine reads them: the sampler's fetched arrays, unpacked per scheduled sequence.

Plain NumPy to Python, no device: what ``ModelRunner.collect`` returns once a step's results are on the host.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence as Seq

from jllm.sampler import PromptLogprobsOutput, SamplerOutput
from jllm.sequence import ScheduledSequence


@dataclasses.dataclass
class SampledToken:
    token_id: int
    logprob: float
    rank: int  # over the whole vocabulary, vLLM's (``sampler.token_ranks``): 1 = the most likely
    top_ids: list[int]
    top_logprobs: list[float]


@dataclasses.dataclass
class PromptTokenLogprob:
    """Logprobs of prompt token ``position`` given the tokens before it."""

    position: int
    token_id: int
    logprob: float
    rank: int  # as ``SampledToken.rank``
    top_ids: list[int]
    top_logprobs: list[float]


@dataclasses.dataclass
class StepResult:
    tokens: list[SampledToken | None]  # per scheduled sequence; None mid-prefill
    prompt_logprobs: list[list[PromptTokenLogprob]]  # per scheduled sequence; empty unless it asked for them
    # per scheduled sequence, with speculative decoding: the tokens after ``tokens[i]`` its verified drafts gave
    more_tokens: list[list[SampledToken]] = dataclasses.field(default_factory=list)

    def row_tokens(self, row: int) -> list[SampledToken]:
        """Every token row ``row`` sampled this step, in order."""
        first = self.tokens[row]
        return ([] if first is None else [first]) + (self.more_tokens[row] if self.more_tokens else [])


def step_result(
    scheduled: Seq[ScheduledSequence], result: SamplerOutput, prompt: PromptLogprobsOutput | None
) -> StepResult:
    """Entry i of each list belongs to ``scheduled[i]``; ``result`` and ``prompt`` hold host arrays."""
    if result.token_ids.ndim == 2:  # speculative decoding: [S, K + 1], -1 after each row's tokens
        runs = [_verified(result, i) if s.samples_token else [] for i, s in enumerate(scheduled)]
        tokens = [run[0] if run else None for run in runs]
        return StepResult(tokens, _prompt_logprobs(scheduled, prompt), [run[1:] for run in runs])
    return StepResult(_tokens(scheduled, result), _prompt_logprobs(scheduled, prompt))


def _verified(result: SamplerOutput, row: int) -> list[SampledToken]:
    """Row ``row``'s accepted drafts and the token after them (no top logprobs: refused with speculation)."""
    ids = result.token_ids[row]
    logprobs, ranks = result.logprobs[row], result.ranks[row]
    return [SampledToken(int(t), float(logprobs[j]), int(ranks[j]), [], []) for j, t in enumerate(ids) if t >= 0]


def _tokens(scheduled: Seq[ScheduledSequence], result: SamplerOutput) -> list[SampledToken | None]:
    tokens: list[SampledToken | None] = []
    for i, sched in enumerate(scheduled):
        if not sched.samples_token:
            tokens.append(None)
            continue
        n = sched.seq.sampling_params.logprobs or 0
        tokens.append(
            SampledToken(
                token_id=int(result.token_ids[i]),
                logprob=float(result.logprobs[i]),
                rank=int(result.ranks[i]),
                top_ids=result.top_ids[i, :n].tolist(),
                top_logprobs=result.top_logprobs[i, :n].tolist(),
            )
        )
    return tokens


def _prompt_logprobs(
    scheduled: Seq[ScheduledSequence], prompt: PromptLogprobsOutput | None
) -> list[list[PromptTokenLogprob]]:
    """Rows follow the flattened batch: sequence i's rows start where the earlier sequences' tokens end."""
    chunks: list[list[PromptTokenLogprob]] = []
    offset = 0
    for sched in scheduled:
        seq, k = sched.seq, sched.seq.sampling_params.prompt_logprobs
        entries = []
        if prompt is not None and k is not None:
            last = min(sched.start + sched.num_new_tokens, seq.num_prompt_tokens - 1)
            for pos in range(sched.start, last):
                row = offset + pos - sched.start
                entries.append(
                    PromptTokenLogprob(
                        position=pos + 1,
                        token_id=seq.prompt_token_ids[pos + 1],
                        logprob=float(prompt.target_logprobs[row]),
                        rank=int(prompt.target_ranks[row]),
                        top_ids=prompt.top_ids[row, :k].tolist(),
                        top_logprobs=prompt.top_logprobs[row, :k].tolist(),
                    )
                )
        chunks.append(entries)
        offset += sched.num_new_tokens
    return chunks

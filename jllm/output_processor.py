"""What each request has produced, as its clients see it: text, logprobs, finish reasons, and the outputs emitted.

The scheduler owns a sequence's tokens; this module owns everything derived from them for the client: incremental
detokenization and stop strings (a stop string ends a sequence: the engine passes that back to the scheduler),
logprob entries with decoded tokens and ranks, request timings, and the ``RequestOutput`` objects. A request asks for
its outputs as vLLM's ``RequestOutputKind`` says: every step's new part (``DELTA``, what a stream sends), the whole so
far (``CUMULATIVE``), or one output when it ends (``FINAL_ONLY``). Plain Python, no JAX.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jllm import repetition
from jllm.inputs import Prompt
from jllm.outputs import CompletionOutput, Logprob, RequestOutput
from jllm.sampling import RequestOutputKind, SamplingParams
from jllm.sequence import SchedulerOutput, Sequence, SequenceStatus
from jllm.tokenizer import IncrementalDetokenizer, Tokenizer

if TYPE_CHECKING:  # the runner's host-side result types; importing them would load JAX
    from jllm.step_results import PromptTokenLogprob, SampledToken, StepResult


@dataclass
class SampleState:
    """One sample's client-facing state beside its ``Sequence``, and how much of it was already emitted."""

    seq: Sequence
    detokenizer: IncrementalDetokenizer
    logprobs: list[dict[int, Logprob]] | None
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_sent_tokens: int = 0  # DELTA: tokens (and logprob entries) already emitted
    num_sent_chars: int = 0  # DELTA: characters of text already emitted
    finish_sent: bool = False  # DELTA: the finish reason went out; the sample is not reported again
    error: str | None = None  # with finish_reason "error": what failed

    def finish(self, reason: str, stop_reason: int | str | None = None) -> None:
        """Ends the sample's text: releases what the detokenizer still holds back (not after a stop string)."""
        self.finish_reason, self.stop_reason = reason, stop_reason
        self.detokenizer.flush()


@dataclass
class RequestState:
    request_id: str
    prompt: Prompt
    params: SamplingParams
    samples: list[SampleState]
    arrival_time: float  # time.monotonic() seconds, as the token times
    prompt_logprobs: list[dict[int, Logprob] | None] | None  # vLLM's shape: None for the first prompt token
    num_sent_prompt_logprobs: int = 0  # DELTA: entries already emitted
    first_token_time: float | None = None
    last_token_time: float | None = None

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.samples)


class OutputProcessor:
    """Request state for one engine, fed with each step's results after the scheduler has appended the tokens."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.requests: dict[str, RequestState] = {}

    def add_request(
        self, request_id: str, prompt: Prompt, params: SamplingParams, seqs: list[Sequence], *, arrival_time: float
    ) -> None:
        samples = [
            SampleState(
                seq,
                IncrementalDetokenizer(
                    self.tokenizer,
                    prompt.token_ids,
                    skip_special_tokens=params.skip_special_tokens,
                    stop=params.stop,
                    include_stop_str_in_output=params.include_stop_str_in_output,
                    min_tokens=params.min_tokens,
                    final_only=params.output_kind is RequestOutputKind.FINAL_ONLY,
                    detokenize=params.detokenize,
                ),
                [] if params.logprobs is not None else None,
            )
            for seq in seqs
        ]
        prompt_logprobs = None if params.prompt_logprobs is None else [None]
        self.requests[request_id] = RequestState(request_id, prompt, params, samples, arrival_time, prompt_logprobs)

    def abort(self, request_id: str) -> RequestOutput | None:
        """Ends every unfinished sample with finish_reason "abort"; returns the request's last output."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return None
        for sample in state.samples:
            if sample.finish_reason is None:
                sample.finish("abort")
        return self._output(state)

    def reject(self, seq: Sequence) -> str | None:
        """A sample the scheduler refused ends as aborted; returns its request id when that request still exists."""
        state = self.requests.get(seq.request_id)
        if state is None:
            return None
        state.samples[seq.sample_index].finish("abort")
        return state.request_id

    def process(
        self, output: SchedulerOutput, result: StepResult, appended: Iterable[int]
    ) -> tuple[dict[str, None], list[tuple[Sequence, int]]]:
        """Takes a step's results: prompt logprobs, then for each token the scheduler appended (``appended`` names
        its row once per token: a speculative row may append several) its logprobs, text and finish. Returns the
        requests that changed (in step order) and the sequences a stop string ended, each with the output tokens
        it keeps (the scheduler must finish those, dropping any token of the same step after the stop)."""
        touched: dict[str, None] = {}
        for sched, chunk in zip(output.scheduled, result.prompt_logprobs, strict=True):
            state = self.requests.get(sched.seq.request_id)
            if chunk and state is not None:  # any sample's prefill: positions already recorded are skipped
                self._append_prompt_logprobs(state, chunk)
        now = time.monotonic()
        stopped = []
        appended = list(appended)
        total, left = Counter(appended), Counter(appended)  # each row's appended tokens, and those not yet processed
        for row in appended:
            seq = output.scheduled[row].seq
            state = self.requests[seq.request_id]
            tokens = result.row_tokens(row)
            index = total[row] - left[row]
            left[row] -= 1
            assert index < len(tokens), "the scheduler appended a token the step did not sample"
            token = tokens[index]
            sample = state.samples[seq.sample_index]
            if sample.finish_reason is not None:  # a stop string earlier in this row's verified run ended it
                continue
            state.first_token_time = state.first_token_time or now
            state.last_token_time = now
            touched[state.request_id] = None
            sample.cumulative_logprob += token.logprob
            if sample.logprobs is not None:
                sample.logprobs.append(self._logprob_entry(token, state.params.detokenize))
            if self._update_text(sample, token.token_id, last=not left[row]):
                stopped.append((seq, seq.num_output_tokens - left[row]))
        return touched, stopped

    def _update_text(self, sample: SampleState, token_id: int, last: bool = True) -> bool:
        """Detokenizes the new token and settles the finish reason; True when a stop string ended a sequence the
        scheduler still runs. A stop token's text (EOS or a stop id) is shown only with include_stop_str_in_output
        (vLLM's rule; a special token's text stays hidden unless skip_special_tokens is false); the token that completes
        a grammar is output, the one that breaks it is not; a stop string wins over the length limit. A token before
        the last of a verified run (``last`` false) is text alone: the sequence's status is its last token's; a
        stop string there returns True even where the scheduler has ended the sequence, which must drop the rest."""
        if not last:
            sample.detokenizer.add_tokens([token_id])
            if sample.detokenizer.finished:
                sample.finish_reason, sample.stop_reason = "stop", sample.detokenizer.stop_reason
            return sample.detokenizer.finished
        seq = sample.seq
        if seq.status is SequenceStatus.FINISHED_ERROR:  # its grammar broke on this token: the token is not output
            assert seq.grammar is not None
            sample.finish("error")
            sample.error = f"structured output failed after {seq.num_output_tokens - 1} tokens: {seq.grammar.error}"
            return False
        eos = token_id in self.tokenizer.eos_token_ids
        stopped = seq.status is SequenceStatus.FINISHED_STOPPED
        if stopped and (eos or token_id in seq.sampling_params.stop_token_ids):  # a stop token
            if seq.sampling_params.include_stop_str_in_output:
                sample.detokenizer.add_tokens([token_id])
            sample.finish("stop", None if eos else token_id)
            return False
        sample.detokenizer.add_tokens([token_id])
        if sample.detokenizer.finished:
            sample.finish_reason, sample.stop_reason = "stop", sample.detokenizer.stop_reason
            return not seq.is_finished
        if stopped:  # its grammar is complete: the token is part of the output
            sample.finish("stop")
        elif seq.status is SequenceStatus.FINISHED_LENGTH:
            sample.finish("length")
        elif seq.status is SequenceStatus.FINISHED_REPETITION:
            sample.finish("repetition", repetition.STOP_REASON)
        return False

    def _append_prompt_logprobs(self, state: RequestState, chunk: list[PromptTokenLogprob]) -> None:
        """Positions already recorded (recomputed after a preemption) are skipped."""
        assert state.prompt_logprobs is not None
        for entry in chunk:
            if entry.position == len(state.prompt_logprobs):
                state.prompt_logprobs.append(self._logprob_entry(entry, state.params.detokenize))

    def _logprob_entry(self, token: SampledToken | PromptTokenLogprob, detokenize: bool) -> dict[int, Logprob]:
        """The top tokens, ranked 1 to k by their place, then the chosen one if it is not among them, with its rank
        over the whole vocabulary from the device (past k: vLLM's rank counts every token at least as likely). A
        chosen token among the top keeps its place's rank, as vLLM's entry does. Without ``detokenize`` no token's
        text (vLLM's None)."""

        def decode(tid: int) -> str | None:
            return self.tokenizer.decode([tid], skip_special_tokens=False) if detokenize else None

        entry = {
            tid: Logprob(lp, rank=i + 1, decoded_token=decode(tid))
            for i, (tid, lp) in enumerate(zip(token.top_ids, token.top_logprobs, strict=True))
        }
        chosen = token.token_id
        if chosen not in entry:
            entry[chosen] = Logprob(token.logprob, token.rank, decode(chosen))
        return entry

    def outputs(self, request_ids: Iterable[str]) -> list[RequestOutput]:
        """The outputs due for these requests, as each asked (a FINAL_ONLY one only once it has finished);
        finished requests are forgotten."""
        outputs = []
        for request_id in request_ids:
            state = self.requests.get(request_id)
            if state is None:
                continue
            if state.finished:
                del self.requests[request_id]
            elif state.params.output_kind is RequestOutputKind.FINAL_ONLY:
                continue
            outputs.append(self._output(state))
        return outputs

    def _output(self, state: RequestState) -> RequestOutput:
        delta = state.params.output_kind is RequestOutputKind.DELTA
        completions = [
            _delta_completion(i, s) if delta else _whole_completion(i, s)
            for i, s in enumerate(state.samples)
            if not (delta and s.finish_sent)
        ]
        prompt_logprobs = state.prompt_logprobs
        if prompt_logprobs is not None and delta:
            prompt_logprobs, state.num_sent_prompt_logprobs = (
                prompt_logprobs[state.num_sent_prompt_logprobs :],
                len(prompt_logprobs),
            )
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt.text,
            prompt_token_ids=state.prompt.token_ids,
            prompt_logprobs=None if prompt_logprobs is None else list(prompt_logprobs),
            outputs=[c for c in completions if c is not None],
            finished=state.finished,
            num_cached_tokens=state.samples[0].seq.num_cached_tokens,
            metrics=_metrics(state),
            lora_request=state.samples[0].seq.lora_request,
        )


def _whole_completion(index: int, sample: SampleState) -> CompletionOutput:
    return CompletionOutput(
        index=index,
        text=sample.detokenizer.text,
        token_ids=list(sample.seq.output_token_ids),
        cumulative_logprob=sample.cumulative_logprob if sample.logprobs is not None else None,
        logprobs=None if sample.logprobs is None else list(sample.logprobs),
        finish_reason=sample.finish_reason,
        stop_reason=sample.stop_reason,
        error=sample.error,
    )


def _delta_completion(index: int, sample: SampleState) -> CompletionOutput | None:
    """What the sample gained since its last output, or None when nothing did; its finish goes out once."""
    tokens, text = sample.seq.output_token_ids, sample.detokenizer.text
    start, chars = sample.num_sent_tokens, sample.num_sent_chars
    if len(tokens) == start and len(text) == chars and sample.finish_reason is None:
        return None
    sample.num_sent_tokens, sample.num_sent_chars = len(tokens), len(text)
    sample.finish_sent = sample.finish_reason is not None
    return CompletionOutput(
        index=index,
        text=text[chars:],
        token_ids=tokens[start:],
        cumulative_logprob=sample.cumulative_logprob if sample.logprobs is not None else None,
        logprobs=None if sample.logprobs is None else sample.logprobs[start:],
        finish_reason=sample.finish_reason,
        stop_reason=sample.stop_reason,
        error=sample.error,
    )


def _metrics(state: RequestState) -> dict[str, float]:
    """vLLM's request timings (``time.monotonic()`` seconds), with the time to first token worked out."""
    metrics = {"arrival_time": state.arrival_time}
    if state.first_token_time is not None and state.last_token_time is not None:
        metrics |= {
            "first_token_time": state.first_token_time,
            "last_token_time": state.last_token_time,
            "time_to_first_token": state.first_token_time - state.arrival_time,
        }
    return metrics

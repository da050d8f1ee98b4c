"""One API request's run on the engine: one engine request per prompt, admitted together and aborted together.

Both generation endpoints share this: it turns the engine's cumulative outputs into per-choice deltas, times each
engine request for the metrics, and guarantees that a request whose client is gone stops using the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from jllm.async_engine import AsyncEngine, RequestStream
from jllm.outputs import CompletionOutput, Logprob, RequestOutput
from jllm.sampling import SamplingParams
from jllm.server.errors import bad_request
from jllm.server.metrics import RequestTimer, ServerMetrics
from jllm.server.schemas import UsageInfo
from jllm.tokenizer import Tokenizer


@dataclass
class Prompt:
    token_ids: list[int]
    text: str | None  # None for token-id prompts that need no text


def check_token_ids(tokenizer: Tokenizer, token_ids: list[int], param: str) -> None:
    """Client token ids must be in the vocabulary before anything decodes them (the decoder overflows on -1)."""
    bad = [t for t in token_ids if not 0 <= t < tokenizer.vocab_size]
    if bad:
        raise bad_request(
            f"{param}: token id {bad[0]} is outside the vocabulary [0, {tokenizer.vocab_size})", param=param
        )


@dataclass
class Delta:
    """What one choice gained since it was last reported."""

    index: int  # the choice's index in the response: prompt_index * n + sample_index
    prompt_index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None  # one entry per new token, when logprobs were asked for
    finish_reason: str | None


class Generation:
    """The engine requests behind one API request, and what their clients have been sent so far."""

    def __init__(
        self, engine: AsyncEngine, streams: list[RequestStream], params: SamplingParams, metrics: ServerMetrics
    ) -> None:
        self.engine = engine
        self.streams = streams
        self.params = params
        self.timers = [RequestTimer(metrics, s.request_id) for s in streams]
        self.finals: list[RequestOutput | None] = [None] * len(streams)  # the latest output of each prompt
        self._sent = [[0] * params.n for _ in streams]  # tokens reported so far, per prompt and sample
        self._sent_text = [[0] * params.n for _ in streams]  # characters reported so far
        self._reported_finish: set[int] = set()  # choice indices whose finish reason went out
        self._pending: dict[asyncio.Future[RequestOutput], int] = {}  # next-output waits -> prompt index

    @classmethod
    async def start(
        cls,
        engine: AsyncEngine,
        request_id: str,
        prompts: list[Prompt],
        params: SamplingParams,
        metrics: ServerMetrics,
    ) -> Generation:
        """Admits every prompt or none: bad input in any prompt raises, and the ones already admitted are aborted.

        More prompts than the queue can ever hold is a 400, not a 429: retrying would fail the same way."""
        if len(prompts) > engine.max_queued_requests:
            raise bad_request(
                f"prompt: {len(prompts)} prompts in one request exceed the server's max_queued_requests="
                f"{engine.max_queued_requests}; send them in smaller requests",
                param="prompt",
            )
        streams: list[RequestStream] = []
        try:
            for i, prompt in enumerate(prompts):
                rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
                streams.append(await engine.add_request(rid, prompt.token_ids, params, prompt_text=prompt.text))
        except BaseException:
            for stream in streams:
                engine.abort(stream.request_id)
            raise
        return cls(engine, streams, params, metrics)

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, output) in arrival order, across all prompts, until every one has finished."""
        pending = self._pending
        pending.update({asyncio.ensure_future(anext(s)): i for i, s in enumerate(self.streams)})
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                i = pending.pop(task)
                output = task.result()
                self.finals[i] = output
                self.timers[i].observe(output)
                if not output.finished:
                    pending[asyncio.ensure_future(anext(self.streams[i]))] = i
                yield i, output

    async def deltas(self) -> AsyncIterator[Delta]:
        """Each choice's new text and tokens as they arrive; a choice's last delta carries its finish reason."""
        async for i, output in self.outputs():
            for sample in output.outputs:
                delta = self._delta(i, sample)
                if delta is not None:
                    yield delta

    async def wait(self) -> list[Delta]:
        """Runs to the end; returns every choice whole, in index order (for a response that is not streamed)."""
        async for _ in self.outputs():
            pass
        deltas = [self._delta(i, sample) for i, out in enumerate(self.finals) if out for sample in out.outputs]
        return [d for d in deltas if d is not None]

    def _delta(self, prompt_index: int, sample: CompletionOutput) -> Delta | None:
        """What ``sample`` gained since last asked, or None when nothing changed; a finished sample reports once."""
        sent, sent_text = self._sent[prompt_index], self._sent_text[prompt_index]
        j, index = sample.index, prompt_index * self.params.n + sample.index
        num_tokens = len(sample.token_ids)
        if index in self._reported_finish:
            return None
        if num_tokens == sent[j] and len(sample.text) == sent_text[j] and not sample.finished:
            return None
        delta = Delta(
            index=index,
            prompt_index=prompt_index,
            text=sample.text[sent_text[j] :],
            token_ids=sample.token_ids[sent[j] :],
            logprobs=sample.logprobs[sent[j] : num_tokens] if sample.logprobs is not None else None,
            finish_reason=sample.finish_reason,
        )
        sent[j], sent_text[j] = num_tokens, len(sample.text)
        if sample.finished:
            self._reported_finish.add(index)
        return delta

    def usage(self) -> UsageInfo:
        finals = [out for out in self.finals if out is not None]
        prompt = sum(len(out.prompt_token_ids) for out in finals)
        completion = sum(len(c.token_ids) for out in finals for c in out.outputs)
        return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def close(self) -> None:
        """Aborts whatever has not finished (the client left or the handler failed); safe to call twice."""
        for task in self._pending:
            task.cancel()
        for stream, timer in zip(self.streams, self.timers, strict=True):
            if not stream.finished:
                self.engine.abort(stream.request_id)
                timer.finish("abort")

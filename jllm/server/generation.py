"""One API request's run on the engine: one engine request per prompt, admitted together and aborted together.

Both generation endpoints share this: it hands on the engine's per-step deltas as per-choice deltas, times each
engine request for the metrics, and guarantees that a request whose client is gone stops using the engine.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

from jllm.async_engine import AsyncEngine, RequestStream
from jllm.errors import GrammarFailedError
from jllm.inputs import Prompt
from jllm.lora.request import LoRARequest
from jllm.outputs import Logprob, RequestOutput
from jllm.sampling import RequestOutputKind, SamplingParams
from jllm.server.errors import bad_request
from jllm.server.metrics import ModelMetrics, RequestTimer
from jllm.server.schemas import UsageInfo
from jllm.structured_output import GrammarGate
from jllm.thinking_budget import ThinkingBudget


@dataclass
class Delta:
    """What one choice gained since it was last reported."""

    index: int  # the choice's index in the response: prompt_index * n + sample_index
    prompt_index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None  # one entry per new token, when logprobs were asked for
    finish_reason: str | None
    stop_reason: int | str | None = None
    # The prompt's logprobs (None for its first token), when asked for: complete by a choice's first delta, since
    # a sample's first token comes in the step that ends the prompt.
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None

    def extend(self, later: Delta) -> None:
        """Appends a later delta of the same choice (for a response that is not streamed)."""
        self.text += later.text
        self.token_ids += later.token_ids
        if self.logprobs is not None and later.logprobs is not None:
            self.logprobs += later.logprobs
        self.finish_reason, self.stop_reason = later.finish_reason, later.stop_reason


class RunningUsage:
    """vLLM's ``stream_options.continuous_usage_stats``: each chunk's usage is its prompt's tokens and its choice's
    tokens so far (the usage chunk after the last stays the whole request's)."""

    def __init__(self) -> None:
        self._completion: dict[int, int] = {}

    def after(self, delta: Delta, prompt_tokens: int) -> UsageInfo:
        """The usage once ``delta`` is counted (a delta of no tokens: as it was)."""
        done = self._completion[delta.index] = self._completion.get(delta.index, 0) + len(delta.token_ids)
        return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=done, total_tokens=prompt_tokens + done)


def batched(deltas: AsyncIterator[Delta], interval: int) -> AsyncIterator[Delta]:
    """vLLM's ``stream_interval``: each choice's deltas joined until they hold ``interval`` tokens, so a stream
    sends a chunk per ``interval`` tokens; a choice's first delta and its last go at once, as vLLM sends them.
    An interval of 1 hands ``deltas`` on as they are (no generator in between, whose step each token would cost)."""
    return deltas if interval <= 1 else _batched(deltas, interval)


async def _batched(deltas: AsyncIterator[Delta], interval: int) -> AsyncIterator[Delta]:
    held: dict[int, Delta] = {}  # choice index -> its tokens not yet sent
    started: set[int] = set()
    async for delta in deltas:
        if delta.index in held:
            delta = _joined(held.pop(delta.index), delta)
        if delta.finish_reason is not None or delta.index not in started or len(delta.token_ids) >= interval:
            started.add(delta.index)
            yield delta
        else:
            held[delta.index] = delta


def _joined(first: Delta, later: Delta) -> Delta:
    """``later`` appended to a copy of ``first`` (the engine's lists are left as they came)."""
    logprobs = None if first.logprobs is None else list(first.logprobs)
    joined = dataclasses.replace(first, token_ids=list(first.token_ids), logprobs=logprobs)
    joined.extend(later)
    return joined


class Generation:
    """The engine requests behind one API request; the engine sends each step's new part (``DELTA`` outputs)."""

    def __init__(
        self,
        engine: AsyncEngine,
        prompts: list[Prompt],
        streams: list[RequestStream],
        params: SamplingParams,
        metrics: ModelMetrics,
        public_id: str,
    ) -> None:
        self.engine = engine
        self.prompts = prompts  # as admitted (checked, truncated): one engine request each
        self.streams = streams
        self.params = params
        names = [public_id] if len(streams) == 1 else [f"{public_id}-{i}" for i in range(len(streams))]
        self.timers = [RequestTimer(metrics, name) for name in names]  # logged under the id the client knows
        self._prompt_tokens = [len(p.token_ids) for p in prompts]  # per prompt: known once admitted
        self._completion_tokens = 0
        self._cached_tokens = [0] * len(streams)  # per prompt: its tokens the prefix cache served
        self._prompt_logprobs: list[list[dict[int, Logprob] | None] | None] = [None] * len(streams)  # per prompt
        self._pending: dict[asyncio.Future[RequestOutput], int] = {}  # next-output waits -> prompt index

    @classmethod
    async def start(
        cls,
        engine: AsyncEngine,
        request_id: str,
        prompts: list[Prompt],
        params: SamplingParams,
        metrics: ModelMetrics,
        public_id: str,
        gate: GrammarGate | None = None,
        lora_request: LoRARequest | None = None,
        thinking: ThinkingBudget | None = None,
        *,
        priority: int = 0,
    ) -> Generation:
        """Admits every prompt (checked by the engine's input door) or none: if one fails, the ones already
        admitted are aborted. ``gate``: what the request's grammar waits for (a thinking model's reasoning);
        ``lora_request``: the LoRA adapter the request's ``model`` names; ``thinking``: the reply's thinking budget
        (forked for each further prompt); ``priority``: vLLM's, for the priority scheduling policy.

        More sequences (prompts x n) than the queue can ever hold is a 400, not a 429: retrying would fail the same
        way."""
        if len(prompts) * params.n > engine.max_queued_requests:
            param = "n" if params.n > 1 else "prompt"
            raise bad_request(
                f"{param}: {len(prompts)} prompts x n={params.n} = {len(prompts) * params.n} sequences in one request "
                f"exceed the server's max_queued_requests={engine.max_queued_requests}; send smaller requests",
                param=param,
            )
        params = dataclasses.replace(params, output_kind=RequestOutputKind.DELTA)
        # A grammar is built once (off both threads) and forked for each further prompt, all before the first is
        # admitted: a matcher the engine has advanced would fork its state.
        grammar = await engine.grammar(params)
        if grammar is not None and gate is not None:
            grammar = grammar.gated(gate)
        grammars = [grammar] + [None if grammar is None else grammar.fork() for _ in prompts[1:]]
        budgets = [thinking] + [None if thinking is None else thinking.fork() for _ in prompts[1:]]
        streams: list[RequestStream] = []
        try:
            for i, (prompt, own, budget) in enumerate(zip(prompts, grammars, budgets, strict=True)):
                rid = request_id if len(prompts) == 1 else f"{request_id}-{i}"
                streams.append(await engine.add_request(rid, prompt, params, own, lora_request, budget, priority))
        except BaseException:
            for stream in streams:
                engine.abort(stream.request_id)
            raise
        return cls(engine, prompts, streams, params, metrics, public_id)

    async def deltas(self) -> AsyncIterator[Delta]:
        """Each choice's new text and tokens as they arrive, across all prompts, until every one has finished;
        a choice's last delta carries its finish reason."""
        if len(self.streams) == 1:  # most requests: read the one stream directly, no task per output
            async for output in self.streams[0]:
                for delta in self._deltas_of(0, output):
                    yield delta
            return
        pending = self._pending
        pending.update({asyncio.ensure_future(anext(s)): i for i, s in enumerate(self.streams)})
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                i = pending.pop(task)
                output = task.result()
                if not output.finished:
                    pending[asyncio.ensure_future(anext(self.streams[i]))] = i
                for delta in self._deltas_of(i, output):
                    yield delta

    def _deltas_of(self, i: int, output: RequestOutput) -> list[Delta]:
        """Books prompt ``i``'s output (its timer, token counts, prompt logprobs) and returns its choices' deltas;
        raises ``GrammarFailedError`` for a choice that ended with an error (a 400, or a stream's error event)."""
        self.timers[i].observe(output)
        self._prompt_tokens[i] = len(output.prompt_token_ids)
        self._cached_tokens[i] = output.num_cached_tokens
        if output.prompt_logprobs is not None:  # DELTA: the entries new since the last output
            self._prompt_logprobs[i] = (self._prompt_logprobs[i] or []) + output.prompt_logprobs
        deltas = []
        for c in output.outputs:
            if c.finish_reason == "error":  # the sibling samples are aborted by ``close``
                self.timers[i].finish("error")
                raise GrammarFailedError(f"choice {i * self.params.n + c.index}: {c.error or 'generation failed'}")
            self._completion_tokens += len(c.token_ids)
            deltas.append(
                Delta(
                    i * self.params.n + c.index,
                    i,
                    c.text,
                    c.token_ids,
                    c.logprobs,
                    c.finish_reason,
                    c.stop_reason,
                    self._prompt_logprobs[i],
                )
            )
        return deltas

    async def wait(self) -> list[Delta]:
        """Runs to the end; returns every choice whole, in index order (for a response that is not streamed)."""
        choices: dict[int, Delta] = {}
        async for delta in self.deltas():
            if delta.index in choices:
                choices[delta.index].extend(delta)
            else:
                choices[delta.index] = delta
        return [choices[index] for index in sorted(choices)]

    def usage(self) -> UsageInfo:
        prompt = sum(self._prompt_tokens)
        completion = self._completion_tokens
        return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens the prefix cache served, over all prompts (at their last admission)."""
        return sum(self._cached_tokens)

    def close(self) -> None:
        """Aborts whatever has not finished (the client left or the handler failed); safe to call twice."""
        for task in self._pending:
            task.cancel()
        for stream, timer in zip(self.streams, self.timers, strict=True):
            if not stream.finished:
                self.engine.abort(stream.request_id)
                timer.finish("abort")

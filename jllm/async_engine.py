"""The asyncio face of ``LLMEngine``: its step loop runs on a dedicated thread, each request gets an async stream.

A step blocks for as long as the device takes, so it must never run on the event loop: the loop would stop
answering every other connection meanwhile. ``LLMEngine`` is not thread-safe, so only the engine thread touches
it; the event loop sends it commands through a thread-safe inbox (drained before every step), and the engine
thread hands outputs back with ``loop.call_soon_threadsafe``. The per-request streams and the admission checks
live on the event loop, so they need no locks.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from jllm.classify import ClassifierHead
from jllm.engine import LLMEngine
from jllm.errors import EngineUnavailableError, QueueFullError
from jllm.inputs import InputProcessor, Prompt
from jllm.lora.request import LoRARequest
from jllm.outputs import RequestOutput
from jllm.sampling import SamplingParams
from jllm.structured_output import GrammarMatcher
from jllm.thinking_budget import ThinkingBudget

logger = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10.0  # how long stopping waits on a step before giving up on the engine thread
ENGINE_THREAD = "jllm-engine"  # the engine loop's thread's name

# A command runs on the engine thread; an output it returns (an abort's final one) goes to the request's stream.
Command = Callable[[], RequestOutput | None]


@dataclass
class DeviceCall:
    """A ``call``'s work on the engine thread, and how to fail its caller if it never runs (the engine stopped)."""

    run: Callable[[], None]
    fail: Callable[[BaseException], None]

    def __call__(self) -> None:
        self.run()


T = TypeVar("T")


@dataclass(frozen=True)
class EngineSnapshot:
    """Counters read when the engine starts and on its thread after each loop turn, published whole so readers
    never see them torn."""

    num_running: int = 0  # requests with a sample in the running batch
    num_running_seqs: int = 0  # sequences (samples) in the running batch
    num_waiting: int = 0  # requests with a sample waiting for a slot (new or preempted)
    kv_cache_usage: float = 0.0  # fraction of usable KV pages held by unfinished sequences
    num_pages_in_use: int = 0
    num_preemptions: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of those, tokens found
    prompt_tokens: int = 0
    generation_tokens: int = 0
    spec_decode_num_draft_tokens: int = 0  # speculative decoding: drafts verified
    spec_decode_num_accepted_tokens: int = 0  # of those, accepted
    compilations_after_startup: int = 0  # programs the engine compiled since this AsyncEngine started (steps, pooling)


@dataclass(frozen=True)
class StreamLimits:
    """Backpressure: a stream holding more than ``max_buffered`` outputs its client has not taken for
    ``stall_timeout`` seconds, or four times that many at any time, has its request aborted (its pages freed, its
    outputs no longer made), so a client that stops reading costs a bounded amount of memory."""

    max_buffered: int = 256
    stall_timeout: float = 30.0


class RequestStream:
    """One request's outputs in step order, as its ``output_kind`` asks; the last has ``finished=True``.

    ``on_stall`` is called once when the client stops taking outputs (see ``StreamLimits``)."""

    def __init__(
        self, request_id: str, limits: StreamLimits = StreamLimits(), on_stall: Callable[[], None] | None = None
    ) -> None:
        self.request_id = request_id
        self.finished = False
        self.limits = limits
        self._on_stall = on_stall
        self._over_since: float | None = None  # when the buffer last went over max_buffered
        self._queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()

    def put(self, item: RequestOutput | BaseException) -> None:
        self._queue.put_nowait(item)
        size, limits = self._queue.qsize(), self.limits
        if size <= limits.max_buffered or self._on_stall is None:
            return
        now = time.monotonic()
        self._over_since = self._over_since or now
        if size >= 4 * limits.max_buffered or now - self._over_since >= limits.stall_timeout:
            logger.warning(
                "request %s: its client took no output while %d were buffered; aborting it", self.request_id, size
            )
            on_stall, self._on_stall = self._on_stall, None
            on_stall()

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if self._queue.qsize() <= self.limits.max_buffered:
            self._over_since = None
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        self.finished = item.finished
        return item


class AsyncEngine:
    """Drives an ``LLMEngine`` from its own thread; every public method is called from the event loop.

    ``max_queued_requests`` bounds the sequences waiting for a slot (a request counts its ``n`` samples: the
    engine's work grows with sequences, not requests). ``stall_timeout``: seconds without a finished loop turn,
    while requests are in flight, after which ``health_problem`` reports the engine as stuck (a first compile of a
    new step shape can take a while).
    """

    def __init__(
        self,
        engine: LLMEngine,
        *,
        max_queued_requests: int = 1024,
        stall_timeout: float = 120.0,
        stream_limits: StreamLimits = StreamLimits(),
    ) -> None:
        self.engine = engine
        self.max_queued_requests = max_queued_requests
        self.stream_limits = stream_limits
        self.stall_timeout = stall_timeout
        self._compilations_at_start = engine.num_compilations  # warm-up's, and any before this server
        self.snapshot = self._take_snapshot()  # an engine reused by a new server keeps its counters
        self._inbox: queue.SimpleQueue[Command | None] = queue.SimpleQueue()  # None stops the thread
        self._streams: dict[str, RequestStream] = {}  # every request in flight, from admission to its last output
        self._num_seqs: dict[str, int] = {}  # each in-flight request's sequences (its n)
        self._in_flight_seqs = 0  # their sum
        self._admitting: dict[str, asyncio.Future[None]] = {}  # adds the engine thread has not acknowledged yet
        self._calls: set[asyncio.Future[Any]] = set()  # ``call``s queued or running on the engine thread
        self._deferred: list[DeviceCall] = []  # engine thread: ``call``s waiting for a step of their own
        self._accepting = True
        self._error: BaseException | None = None
        self._heartbeat = time.monotonic()
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=ENGINE_THREAD, daemon=True)

    @property
    def inputs(self) -> InputProcessor:
        """The engine's input door: read-only (encoding, checks), so handlers may use it from any thread."""
        return self.engine.inputs

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def classifier(self) -> ClassifierHead | None:
        """A sequence classifier's head (read-only), None for a causal LM."""
        return self.engine.classifier

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """What a request's unset sampling fields take (the model's generation_config.json's, read-only)."""
        return self.engine.sampling_defaults

    @property
    def accepting(self) -> bool:
        """False once draining or stopped: new requests get ``EngineUnavailableError``."""
        return self._accepting

    def start(self) -> None:
        """Starts the engine thread; call from the event loop that will consume the streams."""
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    # ------------------------------------------------------------------ event-loop side

    async def grammar(self, params: SamplingParams) -> GrammarMatcher | None:
        """The matcher of ``params``' constraint (None without one), built on a worker thread: llguidance's work
        takes a second or more for a large grammar, which on the engine thread would stop every stream, and on the
        event loop every connection. Several prompts of one request share one (``GrammarMatcher.fork``)."""
        if params.structured_outputs is None:
            return None
        return await asyncio.to_thread(self.engine.grammars.matcher, params.structured_outputs)

    async def add_request(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams,
        grammar: GrammarMatcher | None = None,
        lora_request: LoRARequest | None = None,
        thinking: ThinkingBudget | None = None,
        priority: int = 0,
    ) -> RequestStream:
        """Admits a prompt checked by ``inputs``; raises here (not in the stream) on a full queue, while draining,
        on a request id in use, or on a grammar llguidance cannot build for the tokenizer. A grammar's matcher is
        built on a worker thread first: on the engine thread, 20,000 alternatives held every stream 1.5 s (and
        the first structured request, which builds llguidance's tokenizer, 5 s). ``grammar``: one built by
        ``grammar`` already, this request's own."""
        self._check_admission(request_id, params.n)
        if grammar is None and params.structured_outputs is not None:
            grammar = await self.grammar(params)
            self._check_admission(request_id, params.n)  # again: the queue may have filled meanwhile
        loop = asyncio.get_running_loop()

        def add() -> None:
            try:
                given = {"grammar": grammar, "lora_request": lora_request, "thinking": thinking, "priority": priority}
                self.engine.add_request(request_id, prompt, params, **{k: v for k, v in given.items() if v is not None})
            except Exception as e:  # handed to the caller, who maps it to a status
                loop.call_soon_threadsafe(self._settle_add, request_id, e)
            else:
                loop.call_soon_threadsafe(self._settle_add, request_id, None)

        stream = RequestStream(request_id, self.stream_limits, lambda: self.abort(request_id))
        self._streams[request_id] = stream
        self._num_seqs[request_id] = params.n
        self._in_flight_seqs += params.n
        self._idle.clear()
        self._admitting[request_id] = ack = loop.create_future()
        self._inbox.put(add)
        try:
            await ack
        except asyncio.CancelledError:
            self.abort(request_id)  # the add may still land; the abort queued behind it undoes it
            raise
        return stream

    async def call(self, fn: Callable[[LLMEngine], T]) -> T:
        """``fn(engine)`` on the engine thread between two steps, for work that shares the device with them
        (embeddings, scores): it never runs beside a step, and the loop goes on meanwhile. While requests run, one
        call goes between two steps, so a burst of calls spreads over steps instead of holding every stream's next
        token behind all of them. Its exception is raised here."""
        self._check_open()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if done.done():  # the caller was cancelled, or the engine died, meanwhile
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)

        def command() -> None:
            try:
                result = fn(self.engine)
            except Exception as e:  # handed to the caller, who maps it to a status
                loop.call_soon_threadsafe(settle, None, e)
            else:
                loop.call_soon_threadsafe(settle, result, None)

        self._calls.add(done)
        self._inbox.put(DeviceCall(command, lambda e: loop.call_soon_threadsafe(settle, None, e)))
        try:
            return await done
        finally:
            self._calls.discard(done)

    def _check_admission(self, request_id: str, n: int) -> None:
        self._check_open()
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use; send a unique X-Request-Id")
        # Sequences in flight minus those running: a snapshot older than the streams only over-counts the queue.
        queued = self._in_flight_seqs - self.snapshot.num_running_seqs
        if queued + n > self.max_queued_requests:
            raise QueueFullError(
                f"{queued} sequences are already waiting and this request adds {n} "
                f"(max_queued_requests={self.max_queued_requests} counts prompts x n); retry later"
            )

    def _check_open(self) -> None:
        if self._error is not None or not self._thread.is_alive():
            raise EngineUnavailableError(f"the engine loop is not running ({self._error!r})")
        if not self._accepting:
            raise EngineUnavailableError("the server is shutting down and admits no new requests")

    def abort(self, request_id: str) -> None:
        """Frees the request's pages on the next loop turn; its stream then ends with finish_reason "abort"."""
        if request_id in self._streams:
            self._inbox.put(lambda: self.engine.abort_request(request_id))

    def health_problem(self) -> str | None:
        """Why the engine cannot serve (loop died, or no progress while requests run), or None when healthy."""
        if self._error is not None:
            return f"the engine loop died: {self._error!r}"
        if not self._thread.is_alive():
            return "the engine loop is not running"
        stalled = time.monotonic() - self._heartbeat
        if self._streams and stalled > self.stall_timeout:
            return f"the engine made no progress for {stalled:.0f} s while {len(self._streams)} requests are in flight"
        return None

    async def drain(self, timeout: float, error: Exception | None = None) -> None:
        """Stops admitting, lets in-flight requests finish for up to ``timeout`` seconds, then aborts the rest: each
        stream ends with finish_reason "abort", or raises ``error`` when one is given (a model being unloaded)."""
        self._accepting = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        if self._streams:
            logger.warning("aborting %d requests still running after %.1f s of draining", len(self._streams), timeout)
            for request_id, stream in list(self._streams.items()):
                self.abort(request_id)
                if error is not None:
                    stream.put(error)
                    self._forget(request_id)
            try:
                await asyncio.wait_for(self._idle.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                logger.error("the engine did not take the aborts within %.0f s; it may be stuck", STOP_GRACE_SECONDS)

    async def shutdown(self) -> None:
        """Stops the engine thread (aborting whatever still runs) and waits for it (a daemon: a stuck one is left)."""
        self._accepting = False
        self._inbox.put(None)
        await asyncio.to_thread(self._thread.join, STOP_GRACE_SECONDS)  # a stuck step must not block the exit

    def release(self) -> None:
        """Frees the engine's device memory (weights, KV pool) after ``shutdown``: a model being unloaded."""
        if self._thread.is_alive():
            raise RuntimeError("the engine thread is still running (stuck in a step?); its memory cannot be freed")
        self.engine.release()

    def _settle_add(self, request_id: str, error: Exception | None) -> None:
        ack = self._admitting.pop(request_id, None)
        if error is not None:
            self._forget(request_id)
        if ack is None or ack.done():  # the caller was cancelled, or the engine died, meanwhile
            return
        if error is None:
            ack.set_result(None)
        else:
            ack.set_exception(error)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            stream.put(output)
            if output.finished:
                self._forget(output.request_id)

    def _forget(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
        self._in_flight_seqs -= self._num_seqs.pop(request_id, 0)
        if not self._streams:
            self._idle.set()

    def _fail_all(self, error: BaseException) -> None:
        for call in self._calls:
            if not call.done():
                call.set_exception(EngineUnavailableError(f"the engine loop died: {error!r}"))
        for request_id, stream in list(self._streams.items()):
            failure = EngineUnavailableError(f"the engine loop died: {error!r}")
            ack = self._admitting.pop(request_id, None)
            if ack is not None and not ack.done():
                ack.set_exception(failure)
            stream.put(failure)
            self._forget(request_id)

    # ------------------------------------------------------------------ engine-thread side

    def _run(self) -> None:
        assert self._loop is not None
        try:
            while self._turn():
                pass
        except BaseException as e:  # anything that kills the loop must reach the waiting clients
            logger.exception("the engine loop died")
            self._error = e
            self._loop.call_soon_threadsafe(self._fail_all, e)

    def _turn(self) -> bool:
        """Runs the queued commands (while requests run, at most one ``call``: the rest wait for the next turns),
        then one step if anything is unfinished; False once told to stop."""
        engine = self.engine
        outputs: list[RequestOutput] = []
        deferred, self._deferred = self._deferred, []
        calls_run = 0
        for command in [*deferred, *self._commands(block=not engine.has_unfinished_requests() and not deferred)]:
            if command is None:
                outputs += [o for rid in list(engine.requests) if (o := engine.abort_request(rid)) is not None]
                self._publish(outputs)
                for call in self._deferred:
                    call.fail(EngineUnavailableError("the engine stopped before this call ran"))
                return False
            if isinstance(command, DeviceCall):
                if calls_run and engine.has_unfinished_requests():
                    self._deferred.append(command)
                    continue
                calls_run += 1
            if (output := command()) is not None:
                outputs.append(output)
        if engine.has_unfinished_requests():
            outputs += engine.step()
        self._publish(outputs)
        return True

    def _commands(self, block: bool) -> Iterator[Command | None]:
        """Everything in the inbox now; when idle, first waits for something to arrive."""
        if block:
            command = self._inbox.get()
            self._heartbeat = time.monotonic()  # idle time is not a stall
            yield command
        while True:
            try:
                yield self._inbox.get_nowait()
            except queue.Empty:
                return

    def _take_snapshot(self) -> EngineSnapshot:
        scheduler, pages = self.engine.scheduler, self.engine.block_manager
        return EngineSnapshot(
            num_running=len({s.request_id for s in scheduler.running}),
            num_running_seqs=len(scheduler.running),
            num_waiting=len({s.request_id for s in scheduler.waiting}),
            kv_cache_usage=pages.usage,
            num_pages_in_use=pages.num_allocated_pages,
            num_preemptions=scheduler.num_preemptions,
            prefix_cache_queries=pages.prefix_cache_queries,
            prefix_cache_hits=pages.prefix_cache_hits,
            prompt_tokens=scheduler.num_prompt_tokens,
            generation_tokens=scheduler.num_generation_tokens,
            spec_decode_num_draft_tokens=scheduler.num_draft_tokens,
            spec_decode_num_accepted_tokens=scheduler.num_accepted_tokens,
            compilations_after_startup=self.engine.num_compilations - self._compilations_at_start,
        )

    def _publish(self, outputs: list[RequestOutput]) -> None:
        self.snapshot = self._take_snapshot()
        self._heartbeat = time.monotonic()
        if outputs:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._deliver, outputs)

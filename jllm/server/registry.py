"""The served models: each name's engine, its planned memory, and the loading and unloading of models at run time.

Every model has its own ``AsyncEngine``, so its own step loop on its own thread: a flood of requests to one model
queues in that model's scheduler and never holds another model's steps back (on one device their steps run side by
side). Memory is planned before a build starts: a model whose weights and KV pool do not fit what the served models
leave is refused, never loaded into an out-of-memory crash. Unloading stops admitting to the model, lets its
requests finish for ``drain_timeout_s``, fails the rest with an error, stops its thread and frees its arrays, while
the other models go on serving.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from jllm.async_engine import AsyncEngine, EngineSnapshot, StreamLimits
from jllm.build import collect_unfrozen, reload_weights
from jllm.config import ConfigError
from jllm.engine import LLMEngine
from jllm.errors import EngineUnavailableError
from jllm.lora.peft_files import AdapterError
from jllm.lora.request import LoRARequest
from jllm.memory_plan import MemoryPlanError, ModelMemory, check_fits
from jllm.serve_config import ModelEntry
from jllm.server.errors import APIError
from jllm.server.metrics import ModelMetrics, ServerMetrics

logger = logging.getLogger(__name__)
GIL_SWITCH_SECONDS = 0.001  # with several models served (see ModelRegistry.add)
LOAD_THREAD = "jllm-load"  # the name of the thread a model loads on (in_daemon_thread)
T = TypeVar("T")


class EngineFactory(Protocol):
    """Plans and builds engines (``jllm.build.ModelBuilder``, or a scripted one in tests)."""

    capacity_bytes: int  # what every served model together may use on the device

    def plan(self, entry: ModelEntry) -> ModelMemory: ...

    def build(self, entry: ModelEntry, memory: ModelMemory) -> LLMEngine: ...


@dataclass
class ServedModel:
    entry: ModelEntry
    engine: AsyncEngine
    memory: ModelMemory | None  # None: an engine handed in ready-made, never planned
    metrics: ModelMetrics
    load_seconds: float | None = None
    unloading: bool = False
    adapters: dict[str, LoRARequest] = field(default_factory=dict)  # its LoRA adapters by served name

    @property
    def name(self) -> str:
        return self.entry.name


class ModelRegistry:
    """Served models by every name they answer to, in the order they were loaded (the first answers requests that
    name no model, as in vLLM). Used from the event loop only."""

    def __init__(
        self,
        factory: EngineFactory | None = None,
        *,
        max_queued_requests: int = 1024,
        stream_limits: StreamLimits | None = None,
    ) -> None:
        self.metrics = ServerMetrics(self.snapshots)
        self.factory = factory
        self.max_queued_requests = max_queued_requests
        self.stream_limits = stream_limits or StreamLimits()
        self.pending: set[str] = set()  # names of models being loaded: their requests get 503, not 404
        self.starting = False  # the server's own models are loading (probes answer 503; an admin load does not count)
        self._models: dict[str, ServedModel] = {}  # by first name, in load order
        self._by_name: dict[str, ServedModel] = {}
        self._changing = asyncio.Lock()  # one load or unload at a time: memory and names are checked, then used

    @property
    def models(self) -> list[ServedModel]:
        return list(self._models.values())

    @property
    def used_bytes(self) -> int:
        return sum(m.memory.total_bytes for m in self._models.values() if m.memory is not None)

    def snapshots(self) -> dict[str, EngineSnapshot]:
        return {name: m.engine.snapshot for name, m in self._models.items()}

    def add(self, entry: ModelEntry, engine: AsyncEngine, memory: ModelMemory | None = None) -> ServedModel:
        """Serves a started engine under the entry's names."""
        self._check_names_free(entry)
        if self._models:
            # Engine threads and the event loop share the GIL: a thread that wants it waits up to the switch
            # interval for the holder to let go. At Python's 5 ms a light model's request paid that at each of its
            # hand-overs while a heavy model was flooded (TTFT 1.95-2.2x idle on 2 CPU cores; 1.5-1.7x at 1 ms).
            sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_SECONDS))
        served = ServedModel(entry, engine, memory, self.metrics.for_model(entry.name))
        lora = getattr(engine.engine, "lora", None)  # the engine's adapters (its lora_modules) when enable_lora
        served.adapters = {a.lora_name: a for a in (lora.adapters if lora is not None else [])}
        taken = [n for n in served.adapters if n in self._by_name or n in entry.names]
        if taken:
            raise APIError(409, f"LoRA adapter names {taken} are already served", param="lora_modules")
        self._models[entry.name] = served
        self._by_name.update(dict.fromkeys([*entry.names, *served.adapters], served))
        return served

    def lora_for(self, name: str | None) -> LoRARequest | None:
        """The LoRA adapter a request's ``model`` names (None: a model's own name, or none)."""
        served = None if name is None else self._by_name.get(name)
        return None if served is None else served.adapters.get(name)

    async def load_adapter(self, name: str, path: str, model: str | None) -> ServedModel:
        """vLLM's runtime ``load_lora_adapter``: the adapter read and checked on the model's engine thread, then
        served as ``name``; 400 for a name in use or an adapter jllm cannot serve."""
        served = self.route(model)
        if name in self._by_name:
            raise APIError(400, f"The lora adapter '{name}' has already been loaded.", param="lora_name")
        used = [a.lora_int_id for m in self._models.values() for a in m.adapters.values()]
        request = LoRARequest(name, max(used, default=0) + 1, path)
        try:
            await served.engine.call(lambda engine: engine.add_lora(request))
        except (AdapterError, ValueError) as e:
            raise APIError(400, f"cannot load LoRA adapter {name!r}: {e}", param="lora_path") from e
        served.adapters[name] = request
        self._by_name[name] = served
        return served

    async def unload_adapter(self, name: str) -> None:
        """vLLM's runtime ``unload_lora_adapter``: 404 for a name that is no adapter, 400 while requests use it."""
        adapter = self.lora_for(name)
        if adapter is None:
            raise APIError(404, f"The lora adapter '{name}' cannot be found.", param="lora_name", code="not_found")
        served = self._by_name[name]
        try:
            await served.engine.call(lambda engine: engine.remove_lora(adapter.lora_int_id))
        except ValueError as e:
            raise APIError(400, f"cannot unload LoRA adapter {name!r}: {e}", param="lora_name") from e
        del served.adapters[name], self._by_name[name]

    def route(self, name: str | None) -> ServedModel:
        """The model a request names (None: the first); 404 naming the served models for any other name, 503
        while it loads or unloads."""
        if name is None:
            served = next((m for m in self._models.values() if not m.unloading), None)
        else:
            served = self._by_name.get(name)
        if served is None and (name in self.pending or (name is None and self.pending)):
            raise APIError(503, "the model is still loading", type="server_error", code="server_starting")
        if served is None:
            names = ", ".join(f"`{n}`" for n in self._by_name) or "no models yet"
            loading = f" (loading: {', '.join(f'`{n}`' for n in sorted(self.pending))})" if self.pending else ""
            message = f"The model `{name}` does not exist; this server serves {names}{loading}."
            raise APIError(404, message, param="model", code="model_not_found")
        if served.unloading:
            raise APIError(503, f"the model `{name}` is being unloaded", type="server_error", code="model_unloading")
        return served

    async def load_all(self, entries: tuple[ModelEntry, ...]) -> None:
        """The server's start: plans every model before loading any, refuses the lot when together they do not
        fit (a ``MemoryPlanError`` naming the bytes), then loads them in order. Their names answer 503 meanwhile."""
        factory = self._factory()
        async with self._changing:
            self.pending.update(name for entry in entries for name in entry.names)
            self.starting = True
            try:
                plans = await in_daemon_thread(lambda: {entry.name: factory.plan(entry) for entry in entries})
                check_fits(plans, factory.capacity_bytes, in_use=self.used_bytes)
                for entry in entries:
                    await self._load(entry, factory)
            finally:
                self.pending.clear()
                self.starting = False

    async def load(self, entry: ModelEntry) -> ServedModel:
        """Plans, builds (off the event loop) and starts the entry's engine; 409 for a name in use, 400 for a bad
        entry (a path that is no model), 507 naming the bytes needed and free when it does not fit."""
        async with self._changing:
            return await self._load(entry, self._factory())

    def _factory(self) -> EngineFactory:
        if self.factory is None:
            raise APIError(400, "this server cannot load models (it was handed its engines)", code="not_supported")
        return self.factory

    async def _load(self, entry: ModelEntry, factory: EngineFactory) -> ServedModel:
        self._check_names_free(entry)
        started = time.monotonic()
        try:
            memory = await in_daemon_thread(factory.plan, entry)
            check_fits({entry.name: memory}, factory.capacity_bytes, in_use=self.used_bytes)
        except MemoryPlanError as e:
            raise APIError(507, str(e), type="server_error", code="insufficient_memory") from e
        except (ConfigError, ValueError, FileNotFoundError, NotImplementedError) as e:
            raise APIError(400, f"cannot load model {entry.name!r}: {e}", param="model", code="bad_model") from e
        self.pending.update(entry.names)
        try:
            engine = await in_daemon_thread(factory.build, entry, memory)
        finally:
            self.pending.difference_update(entry.names)
        async_engine = AsyncEngine(
            engine, max_queued_requests=self.max_queued_requests, stream_limits=self.stream_limits
        )
        async_engine.start()
        served = self.add(entry, async_engine, memory)
        served.load_seconds = time.monotonic() - started
        logger.info("loaded model %r in %.2f s (%s)", entry.name, served.load_seconds, memory)
        return served

    async def swap_weights(self, name: str, model: str) -> ServedModel:
        """Another checkpoint of the served model, swapped in on its engine thread between steps
        (``build.reload_weights``): 409 while it runs requests (the client retries once they end), 400 for a
        checkpoint of another model or tokenizer, or no model at all; 404 for an unknown name."""
        async with self._changing:
            served = self.route(name)
            entry = served.entry
            try:
                config = await served.engine.call(lambda engine: reload_weights(engine, entry.config, model))
            except RuntimeError as e:
                raise APIError(409, f"model {served.name!r}: {e}", code="model_busy") from e
            except (ConfigError, ValueError, FileNotFoundError, NotImplementedError) as e:
                raise APIError(400, f"cannot swap model {served.name!r}'s weights: {e}", param="model") from e
            served.entry = dataclasses.replace(entry, config=config)
            logger.info("model %r runs %s's weights", served.name, model)
            return served

    async def unload(self, name: str, drain_timeout: float) -> ServedModel:
        """Stops admitting to the model, lets its requests run for ``drain_timeout`` seconds, fails the rest (each
        stream gets an error event), stops its engine and frees its weights and KV pool; 404 for an unknown name."""
        async with self._changing:
            served = self._by_name.get(name)
            if served is None or served.unloading:
                return self.route(name)  # raises the 404 (or the 503 of an unload already under way)
            served.unloading = True
            error = EngineUnavailableError(f"the model `{served.name}` was unloaded before this request finished")
            await served.engine.drain(drain_timeout, error=error)
            await served.engine.shutdown()
            try:
                await asyncio.to_thread(served.engine.release)
            except RuntimeError:
                logger.exception("model %r is unloaded but its memory could not be freed", served.name)
            del self._models[served.name]
            for alias in [*served.entry.names, *served.adapters]:
                del self._by_name[alias]
            collect_unfrozen()  # the engine's cycles go now, though its start froze them (build.freeze_heap)
            logger.info("unloaded model %r (%s freed)", served.name, served.memory)
            return served

    async def drain(self, timeout: float) -> None:
        """Server shutdown, first half: every model stops admitting and finishes its requests, all at once
        (``timeout`` seconds in all), then aborts the rest."""
        await asyncio.gather(*(m.engine.drain(timeout) for m in self._models.values()))

    async def shutdown(self) -> None:
        """Server shutdown, second half: stops every engine thread."""
        await asyncio.gather(*(m.engine.shutdown() for m in self._models.values()))

    def _check_names_free(self, entry: ModelEntry) -> None:
        taken = [n for n in entry.names if n in self._by_name]
        if taken:
            message = f"a model is already served as {', '.join(map(repr, taken))}; unload it or pick another name"
            raise APIError(409, message, param="served_model_name", code="model_exists")


def in_daemon_thread[T](fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``fn(*args)`` on a daemon thread (not the executor's): a SIGTERM during a long model load then exits at
    once instead of waiting for the load to finish."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as e:
            outcome = functools.partial(_settle, future, None, e)
        else:
            outcome = functools.partial(_settle, future, result, None)
        if not loop.is_closed():  # closed when a signal ended the server meanwhile
            loop.call_soon_threadsafe(outcome)

    threading.Thread(target=run, name=LOAD_THREAD, daemon=True).start()
    return future


def _settle[T](future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]

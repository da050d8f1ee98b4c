"""Helpers for the server tests: a tiny chat model and the real app (and gRPC API) on a free loopback port.

The model is a 2-layer random-weight Llama carrying the default model's tokenizer and chat template: real BPE text
(multi-byte characters, special tokens) with steps of a few milliseconds on a CPU.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from model_utils import TINY_CONFIG, save_tiny_checkpoint
from prometheus_client.parser import text_string_to_metric_families

from jllm.async_engine import AsyncEngine
from jllm.config import EngineConfig, load_config
from jllm.engine import LLMEngine
from jllm.memory_plan import ModelMemory
from jllm.serve_config import ModelEntry
from jllm.server.app import bound_port, build_app, start_app, start_grpc, stop_app
from jllm.server.grpc_server import GrpcServer
from jllm.server.registry import EngineFactory
from jllm.server.state import STATE

API_KEY = "sk-test-key"
# Four step buckets (16/32 tokens x 1/4 sequences): compiles in seconds; a 96-page pool holds every test's load.
ENGINE_ARGS = dict(dtype="float32", max_model_len=256, max_num_batched_tokens=32, max_num_seqs=4, num_pages=96)
T = TypeVar("T")


def tiny_chat_model(root: Path, tokenizer_dir: Path) -> Path:
    """The tiny model under ``root`` (built once; later calls in the session reuse it)."""
    out = root / "tiny_chat_model"
    if not (out / "config.json").is_file():
        building = root / "tiny_chat_model.partial"
        shutil.rmtree(building, ignore_errors=True)
        config = {**TINY_CONFIG, "vocab_size": 49152, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": True}
        save_tiny_checkpoint("LlamaForCausalLM", config, building)
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            shutil.copy(tokenizer_dir / name, building / name)
        building.rename(out)
    return out


def engine_config(model_dir: Path, **overrides: Any) -> EngineConfig:
    return load_config(None, model=str(model_dir), **{**ENGINE_ARGS, **overrides})


class RunningServer:
    """The app and an ``AsyncEngine`` over ``engine``, serving on 127.0.0.1 from an event loop on its own thread,
    so tests can use blocking clients (the ``openai`` package) and ``asyncio.run`` clients alike.

    Several models: ``engine`` None and ``models`` of (entry, engine, planned memory or None); ``factory`` plans and
    builds what the admin API loads."""

    def __init__(
        self,
        engine: LLMEngine | None,
        config: EngineConfig,
        *,
        models: Sequence[tuple[ModelEntry, LLMEngine, ModelMemory | None]] = (),
        factory: EngineFactory | None = None,
        grpc: bool = False,
        **async_engine_args: Any,
    ) -> None:
        self.engine = engine
        self.config = config
        self.models = models
        self.factory = factory
        self.grpc = grpc
        self.async_engine_args = async_engine_args
        self.runner: web.AppRunner | None = None
        self.grpc_server: GrpcServer | None = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)

    def __enter__(self) -> RunningServer:
        self._thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(drain_timeout=0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Runs ``coro`` on the server's loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, drain_timeout: float) -> None:
        """The graceful stop ``run_server`` does on SIGTERM; idempotent."""
        if self.runner is not None:
            runner, self.runner = self.runner, None
            self.call(stop_app(self.app, runner, drain_timeout, self.grpc_server), timeout=drain_timeout + 60)

    async def _start(self) -> None:
        self.async_engine = self._started(self.engine) if self.engine is not None else None
        self.app = build_app(self.config, self.async_engine, factory=self.factory)
        for entry, engine, memory in self.models:
            self.app[STATE].registry.add(entry, self._started(engine), memory)
        self.runner = await start_app(self.app, "127.0.0.1", 0)
        scheme = "https" if self.config.server.ssl_certfile else "http"
        self.url = f"{scheme}://127.0.0.1:{bound_port(self.runner)}"
        if self.grpc:  # started as `jllm serve --grpc-port` does, with its models already loaded
            self.grpc_server = await start_grpc(self.app, "127.0.0.1", 0)
            await self.grpc_server.set_serving(True)
            self.grpc_target = f"127.0.0.1:{self.grpc_server.port}"

    def _started(self, engine: LLMEngine) -> AsyncEngine:
        async_engine = AsyncEngine(engine, **self.async_engine_args)
        async_engine.start()
        return async_engine


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str, url: str, *, data: bytes | None = None, json_body: Any = None, headers: dict | None = None
) -> Reply:
    """One request with a fresh connection, read to the end."""

    async def go() -> Reply:
        async with aiohttp.ClientSession() as session:
            async with session.request(method, url, data=data, json=json_body, headers=headers) as response:
                return Reply(response.status, dict(response.headers), await response.read())

    return asyncio.run(go())


def wait_until(done: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls ``done`` for up to ``timeout`` seconds: the server acts on a client's hang-up (aborts its request
    within a few steps) after the client has moved on."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.005)


def assert_engine_left_empty(engine: LLMEngine, wait: float = 0.0) -> None:
    """No request left in ``engine`` and no page held, after waiting up to ``wait`` seconds for aborted requests to
    leave (0: they must be gone already)."""
    wait_until(lambda: not engine.requests, wait)
    assert not engine.requests and engine.block_manager.num_allocated_pages == 0


def metrics(url: str) -> dict[str, float]:
    """The server's /metrics as {name: value}; a sample with labels besides model_name is keyed ``name{value}``."""
    text = http("GET", f"{url}/metrics").body.decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            extra = [v for k, v in sample.labels.items() if k not in ("model_name", "le")]
            out[f"{sample.name}{{{','.join(extra)}}}" if extra else sample.name] = sample.value
    return out


def spy_prompts(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The text of each prompt ``engine`` is handed from now on (the routes' rendering, as the engine sees it)."""
    seen: list[str] = []
    add = engine.add_request

    def spy(request_id: str, prompt: Any, *args: object, **options: object) -> None:
        seen.append(prompt.text or "")
        add(request_id, prompt, *args, **options)

    monkeypatch.setattr(engine, "add_request", spy)
    return seen

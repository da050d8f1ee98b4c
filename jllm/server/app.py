"""The aiohttp application and its life: listen first, load the model, serve, and drain on SIGTERM.

``build_app`` makes the app around an ``AsyncEngine`` (or none yet: every engine route answers 503 while the model
loads), so tests can run it in-process; ``run_server`` is the blocking entry point ``jllm serve`` calls.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import threading

from aiohttp import web

from jllm import distributed
from jllm.async_engine import AsyncEngine
from jllm.build import build_engine, build_worker
from jllm.config import EngineConfig
from jllm.engine import LLMEngine
from jllm.server import info
from jllm.server.chat import create_chat_completion
from jllm.server.completions import create_completion
from jllm.server.errors import error_middleware
from jllm.server.middleware import auth_middleware, echo_request_id, request_id_middleware
from jllm.server.state import STATE, ServerState

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 << 20  # room for a long context as JSON token ids; larger bodies get a 413
HANDLER_GRACE_SECONDS = 5.0  # after draining, how long handlers get to flush their last bytes


def build_app(config: EngineConfig, engine: AsyncEngine | None = None) -> web.Application:
    middlewares = [request_id_middleware, error_middleware]
    if config.server.api_key:
        middlewares.append(auth_middleware(config.server.api_key))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[STATE] = ServerState(config, engine)
    app.on_response_prepare.append(echo_request_id)
    app.router.add_post("/v1/completions", create_completion)
    app.router.add_post("/v1/chat/completions", create_chat_completion)
    app.router.add_get("/v1/models", info.list_models)
    app.router.add_get("/v1/models/{model:.+}", info.retrieve_model)  # ids may hold slashes ("org/name")
    app.router.add_get("/version", info.version)
    app.router.add_post("/tokenize", info.tokenize)
    app.router.add_post("/detokenize", info.detokenize)
    app.router.add_get("/health", info.health)
    app.router.add_get("/ready", info.ready)
    app.router.add_get("/metrics", info.metrics)
    return app


async def start_app(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Listens on ``host:port`` (0 = any free port; read it back with ``bound_port``)."""
    # handler_cancellation: a client that hangs up cancels its handler, whose cleanup aborts the request.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=HANDLER_GRACE_SECONDS)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    return runner.addresses[0][1]


async def stop_app(app: web.Application, runner: web.AppRunner, drain_timeout: float) -> None:
    """Graceful stop: refuse new requests (503), let running ones finish for up to ``drain_timeout`` seconds,
    abort the rest, then close the listener and the engine thread."""
    engine = app[STATE].engine
    if engine is not None:
        await engine.drain(drain_timeout)
    await runner.cleanup()
    if engine is not None:
        await engine.shutdown()


def run_server(config: EngineConfig) -> None:
    """Serves ``config`` until SIGTERM or SIGINT, then drains and returns. Blocks.

    Logs at INFO to stderr unless the caller configured logging: an operator needs the address and request lines.
    Under ``jax.distributed`` only the lead (process 0) listens; a follower runs the lead's steps until it stops.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    distributed.initialize(config.parallel)
    if not distributed.is_lead():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the lead drains on SIGTERM and needs its followers for it
        distributed.run_follower(build_worker(config).runner)
        return
    asyncio.run(_serve(config))


async def _serve(config: EngineConfig) -> None:
    app = build_app(config)
    runner = await start_app(app, config.server.host, config.server.port)
    logger.info("jllm listening on http://%s:%d; loading the model", config.server.host, bound_port(runner))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loading = _load_engine(config)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            engine = AsyncEngine(loading.result(), max_queued_requests=config.server.max_queued_requests)
            engine.start()
            app[STATE].engine = engine
            logger.info("jllm ready: serving %r", app[STATE].model_name)
            await stopping
            logger.info("draining: finishing running requests for up to %.0f s", config.server.shutdown_timeout)
    finally:
        stopping.cancel()
        await stop_app(app, runner, config.server.shutdown_timeout)
    logger.info("jllm stopped")


def _load_engine(config: EngineConfig) -> asyncio.Future[LLMEngine]:
    """Builds the engine on a daemon thread, so the port answers (503) meanwhile and a SIGTERM during a long load
    exits at once instead of waiting for it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[LLMEngine] = loop.create_future()

    def load() -> None:
        try:
            engine = build_engine(config)
        except BaseException as e:
            outcome = functools.partial(future.set_exception, e)
        else:
            outcome = functools.partial(future.set_result, engine)
        if not loop.is_closed():  # closed when a signal ended the server during the load
            loop.call_soon_threadsafe(outcome)

    threading.Thread(target=load, name="jllm-load", daemon=True).start()
    return future

"""The aiohttp application and its life: listen first (HTTP, and gRPC when asked), load the models, serve, and
drain on SIGTERM.

``build_app`` makes the app around a registry of served models (empty at first: a model's routes answer 503 while it
loads), so tests can run it in-process; ``run_server`` is the blocking entry point ``jllm serve`` calls.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading

from aiohttp import web

from jllm import distributed
from jllm.async_engine import ENGINE_THREAD, AsyncEngine, StreamLimits
from jllm.build import ModelBuilder, build_worker
from jllm.config import EngineConfig
from jllm.serve_config import ServeConfig, entry_of
from jllm.server import admin, info, lora_adapters
from jllm.server.chat import create_chat_completion
from jllm.server.classify import create_classification
from jllm.server.completions import create_completion
from jllm.server.connections import (
    ConnectionGuard,
    GuardedSite,
    body_timeout_middleware,
    fit_descriptor_limit,
    tls_context,
)
from jllm.server.cors import CorsPolicy
from jllm.server.embeddings import create_embedding
from jllm.server.errors import error_middleware, expect_handler
from jllm.server.grpc_server import GrpcServer
from jllm.server.host_work import HostWork
from jllm.server.messages import count_tokens, create_message
from jllm.server.middleware import auth_middleware, echo_request_id, request_id_middleware
from jllm.server.registry import LOAD_THREAD, EngineFactory, ModelRegistry
from jllm.server.response_store import ResponseStore
from jllm.server.responses import (
    cancel_response,
    create_response,
    delete_response,
    list_input_items,
    retrieve_response,
)
from jllm.server.sagemaker import invocations
from jllm.server.scores import create_rerank, create_score
from jllm.server.state import STATE, ServerState
from jllm.timing import show_info_logs

logger = logging.getLogger(__name__)

# the threads that run JAX work: a model's load (``registry.in_daemon_thread``) and each engine's loop (``AsyncEngine``)
DEVICE_THREADS = (LOAD_THREAD, ENGINE_THREAD)
MAX_BODY_BYTES = 16 << 20  # room for a long context as JSON token ids; larger bodies get a 413
HANDLER_GRACE_SECONDS = 5.0  # after draining, how long handlers get to flush their last bytes


def build_app(
    config: EngineConfig, engine: AsyncEngine | None = None, *, factory: EngineFactory | None = None
) -> web.Application:
    """The app for ``config``'s server settings. ``engine``: a started engine served as ``config``'s one model;
    ``factory``: how models are planned and built (at start-up and through the admin API). Tests add ready-made
    engines to ``app[STATE].registry`` directly."""
    server = config.server
    guard = ConnectionGuard(fit_descriptor_limit(server.max_connections), server.header_timeout_s)
    cors = CorsPolicy(
        tuple(server.allowed_origins),
        tuple(server.allowed_methods),
        tuple(server.allowed_headers),
        server.allow_credentials,
    )
    middlewares = [
        guard.middleware,
        request_id_middleware,
        error_middleware,
        cors.middleware(),  # preflights carry no API key
        body_timeout_middleware(server.body_timeout_s),
    ]
    if config.server.api_key:
        middlewares.append(auth_middleware(config.server.api_key))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    limits = StreamLimits(server.stream_buffer_outputs, server.stream_stall_timeout_s)
    registry = ModelRegistry(factory, max_queued_requests=server.max_queued_requests, stream_limits=limits)
    if engine is not None:
        registry.add(entry_of(config), engine)
    responses = ResponseStore(server.responses_store_mb * 2**20)
    app[STATE] = ServerState(config, registry, HostWork(server.tokenizer_workers), guard, responses)
    app.on_response_prepare.append(echo_request_id)
    app.on_response_prepare.append(cors.on_prepare)
    app.on_cleanup.append(lambda _: responses.stop())  # background responses still generating are cancelled
    app.router.add_post("/v1/completions", create_completion, expect_handler=expect_handler)
    app.router.add_post("/v1/chat/completions", create_chat_completion, expect_handler=expect_handler)
    app.router.add_post("/v1/responses", create_response, expect_handler=expect_handler)
    app.router.add_get("/v1/responses/{response_id}", retrieve_response)
    app.router.add_get("/v1/responses/{response_id}/input_items", list_input_items)
    app.router.add_delete("/v1/responses/{response_id}", delete_response)
    app.router.add_post("/v1/responses/{response_id}/cancel", cancel_response)
    app.router.add_post("/v1/messages", create_message, expect_handler=expect_handler)
    app.router.add_post("/v1/messages/count_tokens", count_tokens, expect_handler=expect_handler)
    app.router.add_post("/v1/embeddings", create_embedding, expect_handler=expect_handler)
    app.router.add_post("/classify", create_classification, expect_handler=expect_handler)
    for path in ("/score", "/v1/score"):
        app.router.add_post(path, create_score, expect_handler=expect_handler)
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        app.router.add_post(path, create_rerank, expect_handler=expect_handler)
    app.router.add_get("/v1/models", info.list_models)
    app.router.add_get("/v1/models/{model:.+}", info.retrieve_model)  # ids may hold slashes ("org/name")
    app.router.add_get("/version", info.version)
    app.router.add_post("/tokenize", info.tokenize, expect_handler=expect_handler)
    app.router.add_post("/detokenize", info.detokenize, expect_handler=expect_handler)
    app.router.add_get("/health", info.health)
    app.router.add_get("/ping", info.health)  # SageMaker's health check, GET or POST
    app.router.add_post("/ping", info.health)
    app.router.add_post("/invocations", invocations, expect_handler=expect_handler)
    app.router.add_get("/ready", info.ready)
    app.router.add_get("/metrics", info.metrics)
    app.router.add_post("/v1/load_lora_adapter", lora_adapters.load_lora_adapter, expect_handler=expect_handler)
    app.router.add_post("/v1/unload_lora_adapter", lora_adapters.unload_lora_adapter, expect_handler=expect_handler)
    app.router.add_get("/v1/admin/models", admin.list_models)
    app.router.add_post("/v1/admin/models", admin.load_model, expect_handler=expect_handler)
    app.router.add_post("/v1/admin/models/{name:.+}/weights", admin.swap_weights, expect_handler=expect_handler)
    app.router.add_delete("/v1/admin/models/{name:.+}", admin.unload_model)
    return app


async def start_app(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Listens on ``host:port`` (0 = any free port; read it back with ``bound_port``)."""
    # handler_cancellation: a client that hangs up cancels its handler, whose cleanup aborts the request.
    state = app[STATE]
    runner = web.AppRunner(
        app,
        handler_cancellation=True,
        shutdown_timeout=HANDLER_GRACE_SECONDS,
        keepalive_timeout=state.config.server.keepalive_timeout_s,
    )
    await runner.setup()
    await GuardedSite(runner, host, port, state.connections, tls_context(state.config.server)).start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    return runner.addresses[0][1]


async def start_grpc(app: web.Application, host: str, port: int) -> GrpcServer:
    """The gRPC API on ``host:port`` (0: any free port) over the app's served models, in this event loop."""
    return await GrpcServer.start(app[STATE], host, port)


async def stop_app(
    app: web.Application, runner: web.AppRunner, drain_timeout: float, grpc_server: GrpcServer | None = None
) -> None:
    """Graceful stop of both listeners: refuse new requests (503 / UNAVAILABLE, gRPC health NOT_SERVING), let
    running ones finish for up to ``drain_timeout`` seconds, abort the rest, then close the listeners and the
    engine threads."""
    registry = app[STATE].registry
    if grpc_server is not None:
        await grpc_server.begin_drain()
    await registry.drain(drain_timeout)
    closing = [runner.cleanup()]
    if grpc_server is not None:
        closing.append(grpc_server.stop(HANDLER_GRACE_SECONDS))
    await asyncio.gather(*closing)
    await registry.shutdown()
    app[STATE].host_work.shutdown()


def run_server(config: EngineConfig | ServeConfig) -> None:
    """Serves ``config`` (one model, or a ``ServeConfig``'s models) until SIGTERM or SIGINT, then drains and
    returns. Blocks.

    Logs at INFO to stderr unless the caller configured logging: an operator needs the address and request lines.
    Under ``jax.distributed`` only the lead (process 0) listens; a follower runs the lead's steps until it stops.
    """
    serve = config if isinstance(config, ServeConfig) else ServeConfig(config, (entry_of(config),))
    show_info_logs()
    distributed.initialize(serve.config.parallel)
    if not distributed.is_lead():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the lead drains on SIGTERM and needs its followers for it
        distributed.run_follower(build_worker(serve.models[0].config).runner)
        return
    asyncio.run(_serve(serve))
    _leave_unfinished_device_work()


def _leave_unfinished_device_work() -> None:
    """After the drain: a model still loading when the signal came (its load runs on a daemon thread, so stopping
    need not wait for it), or an engine thread stuck in a step past its grace, is still inside JAX, and an
    interpreter finalizing beside it aborts: a SIGINT 4-7 s into the default model's start had exited with SIGABRT
    (jaxlib's "Check failed: PyGILState_Check()" and a C++ stack). The listeners are closed and every request has
    its answer by now, so the process leaves without finalizing, as it would have without the thread."""
    busy = sorted({t.name for t in threading.enumerate() if t.name in DEVICE_THREADS and t.is_alive()})
    if busy:
        logger.info("exiting while %s still runs", " and ".join(busy))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


async def _serve(serve: ServeConfig) -> None:
    server = serve.server
    app = build_app(serve.config, factory=ModelBuilder.for_server(server))
    runner = await start_app(app, server.host, server.port)
    grpc_server = None
    if server.grpc_port is not None:
        grpc_server = await start_grpc(app, server.host, server.grpc_port)
        logger.info("jllm gRPC listening on %s:%d", server.host, grpc_server.port)
    logger.info(
        "jllm listening on %s://%s:%d; loading %d model(s)",
        "https" if server.ssl_certfile else "http",
        server.host,
        bound_port(runner),
        len(serve.models),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loading = asyncio.ensure_future(app[STATE].registry.load_all(serve.models))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            loading.result()  # a model that failed to load ends the server with its error
            if grpc_server is not None:
                await grpc_server.set_serving(True)
            logger.info("jllm ready: serving %s", ", ".join(repr(m.name) for m in app[STATE].registry.models))
            await stopping
            logger.info("draining: finishing running requests for up to %.0f s", server.shutdown_timeout)
    finally:
        stopping.cancel()
        loading.cancel()
        await stop_app(app, runner, server.shutdown_timeout, grpc_server)
    logger.info("jllm stopped")

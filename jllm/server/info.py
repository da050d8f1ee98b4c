"""The routes around generation: the model list and card, tokenizer access, the version, and the probes and metrics
for operators.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time

from aiohttp import web

from jllm.server.chat import render_chat
from jllm.server.errors import APIError, bad_request
from jllm.server.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from jllm.server.state import server_state

_CREATED = int(time.time())
_VERSION = importlib.metadata.version("jllm")


async def list_models(request: web.Request) -> web.Response:
    state = server_state(request)
    engine = state.require_engine()
    card = ModelCard(id=state.model_name, created=_CREATED, max_model_len=engine.max_model_len)
    return web.json_response(text=ModelList(data=[card]).model_dump_json())


async def retrieve_model(request: web.Request) -> web.Response:
    """OpenAI's ``GET /v1/models/{model}``: the served model's card, or a 404 for any other id."""
    state = server_state(request)
    state.check_model(request.match_info["model"])
    engine = state.require_engine()
    card = ModelCard(id=state.model_name, created=_CREATED, max_model_len=engine.max_model_len)
    return web.json_response(text=card.model_dump_json())


async def version(request: web.Request) -> web.Response:
    """vLLM's ``GET /version``: the installed jllm's version."""
    return web.json_response({"version": _VERSION})


async def tokenize(request: web.Request) -> web.Response:
    """vLLM's ``/tokenize``: a prompt, or chat messages through the chat template."""
    state = server_state(request)
    body = TokenizeRequest.model_validate_json(await request.read())
    state.check_model(body.model)
    engine = state.require_engine()
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("give exactly one of prompt or messages", param="prompt")
    if body.messages is not None:
        tokens = (await asyncio.to_thread(render_chat, engine.inputs, body)).token_ids
    else:
        add_special_tokens = body.add_special_tokens is not False  # a prompt's default: true
        tokens = await asyncio.to_thread(engine.inputs.tokenizer.encode, body.prompt, add_special_tokens)
    response = TokenizeResponse(count=len(tokens), max_model_len=engine.max_model_len, tokens=tokens)
    return web.json_response(text=response.model_dump_json())


async def detokenize(request: web.Request) -> web.Response:
    state = server_state(request)
    body = DetokenizeRequest.model_validate_json(await request.read())
    state.check_model(body.model)
    text = await asyncio.to_thread(state.require_engine().inputs.decode, body.tokens, param="tokens")
    return web.json_response(text=DetokenizeResponse(prompt=text).model_dump_json())


async def health(request: web.Request) -> web.Response:
    """Liveness: 503 while loading, or when the engine loop died or stopped making progress."""
    problem = server_state(request).require_engine().health_problem()
    if problem is not None:
        raise APIError(503, problem, type="server_error", code="engine_unhealthy")
    return web.Response()


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 only while new requests are admitted (503 while loading or draining)."""
    engine = server_state(request).require_engine()
    if not engine.accepting:
        raise APIError(503, "the server is draining for shutdown", type="server_error", code="server_draining")
    problem = engine.health_problem()
    if problem is not None:
        raise APIError(503, problem, type="server_error", code="engine_unhealthy")
    return web.Response()


async def metrics(request: web.Request) -> web.Response:
    body = server_state(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

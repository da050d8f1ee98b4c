"""The routes around generation: the model list and card, tokenizer access, the version, and the probes and metrics
for operators. The model list and tokenizer access are plain functions of the server state too, which the gRPC
service calls.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time

from aiohttp import web

from jllm.server.chat import render_chat
from jllm.server.chat_schemas import tools_for_template
from jllm.server.errors import APIError, bad_request
from jllm.server.info_schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from jllm.server.registry import ModelRegistry
from jllm.server.state import ServerState, request_body, server_state

_CREATED = int(time.time())

try:
    _VERSION = importlib.metadata.version("jllm")
except importlib.metadata.PackageNotFoundError:  # run from a source tree on PYTHONPATH, not installed
    _VERSION = "0+source"


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(text=model_list(server_state(request).registry).model_dump_json())


def model_list(registry: ModelRegistry) -> ModelList:
    """Every served model under each name it answers to (aliases included), with its ``max_model_len``; a 503
    while the server's models load."""
    models = registry.models
    if not models and registry.starting:
        raise _starting()
    cards = []
    for m in models:
        if not m.unloading:
            cards += [_card(name, m.engine.max_model_len) for name in m.entry.names]
            cards += [_card(a.lora_name, m.engine.max_model_len, m.name, a.lora_path) for a in m.adapters.values()]
    return ModelList(data=cards)


async def retrieve_model(request: web.Request) -> web.Response:
    """OpenAI's ``GET /v1/models/{model}``: a served model's (or LoRA adapter's) card, or a 404 naming the served
    models."""
    name = request.match_info["model"]
    served = server_state(request).route(name)
    adapter = served.adapters.get(name)
    parent, root = (None, None) if adapter is None else (served.name, adapter.lora_path)
    return web.json_response(text=_card(name, served.engine.max_model_len, parent, root).model_dump_json())


def _card(name: str, max_model_len: int, parent: str | None = None, root: str | None = None) -> ModelCard:
    """A model's card; a LoRA adapter's names its base model (``parent``) and folder (``root``), as vLLM's."""
    return ModelCard(id=name, created=_CREATED, max_model_len=max_model_len, parent=parent, root=root)


async def version(request: web.Request) -> web.Response:
    """vLLM's ``GET /version``: the installed jllm's version."""
    return web.json_response({"version": _VERSION})


async def tokenize(request: web.Request) -> web.Response:
    body = await request_body(request, TokenizeRequest)
    response = await tokenize_body(server_state(request), body)
    return web.json_response(text=response.model_dump_json())


async def tokenize_body(state: ServerState, body: TokenizeRequest) -> TokenizeResponse:
    """vLLM's ``/tokenize`` (and the gRPC ``Tokenize``): a prompt, or chat messages (with their tools) through the
    chat template."""
    engine = state.route(body.model).engine
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("give exactly one of prompt or messages", param="prompt")
    work = state.host_work
    if body.messages is not None:
        body.check_template_trusted(state.config.server.trust_request_chat_template)
        kwargs = engine.inputs.template_kwargs(body.chat_template_kwargs, body.reasoning_effort)
        body = body.model_copy(update={"chat_template_kwargs": kwargs})
        tools = tools_for_template(body.tools)
        chars = engine.inputs.check_prompt_size([[m.for_template() for m in body.messages], tools], "messages")
        content_format = state.config.server.chat_template_content_format
        tokens = (await work.run(chars, render_chat, engine.inputs, body, tools, content_format)).token_ids
    else:
        add_special_tokens = body.add_special_tokens is not False  # a prompt's default: true
        chars = engine.inputs.check_prompt_size(body.prompt, "prompt")
        tokens = await work.run(chars, engine.inputs.tokenizer.encode, body.prompt, add_special_tokens)
    strs = [engine.inputs.tokenizer.backend.id_to_token(t) for t in tokens] if body.return_token_strs else None
    return TokenizeResponse(count=len(tokens), max_model_len=engine.max_model_len, tokens=tokens, token_strs=strs)


async def detokenize(request: web.Request) -> web.Response:
    body = await request_body(request, DetokenizeRequest)
    response = await detokenize_body(server_state(request), body)
    return web.json_response(text=response.model_dump_json())


async def detokenize_body(state: ServerState, body: DetokenizeRequest) -> DetokenizeResponse:
    engine = state.route(body.model).engine
    text = await asyncio.to_thread(engine.inputs.decode, body.tokens, param="tokens")
    return DetokenizeResponse(prompt=text)


async def health(request: web.Request) -> web.Response:
    """Liveness, per model: ``{"models": {name: "ok" or its problem}}``; 503 while the models load, or naming each
    model whose engine loop died or stopped making progress."""
    registry = server_state(request).registry
    report = {m.name: m.engine.health_problem() or "ok" for m in registry.models}
    if not report or registry.starting:
        raise _starting()
    failing = {name: problem for name, problem in report.items() if problem != "ok"}
    if failing:
        message = "; ".join(f"model `{name}`: {problem}" for name, problem in failing.items())
        raise APIError(503, message, type="server_error", code="engine_unhealthy")
    return web.json_response({"models": report})


def _starting() -> APIError:
    message = "the server is starting: a model is still loading"
    return APIError(503, message, type="server_error", code="server_starting")


async def ready(request: web.Request) -> web.Response:
    """Readiness: 200 only while every served model admits requests and is healthy (503 while loading or
    draining for shutdown); a model being unloaded does not count, the others go on serving."""
    registry = server_state(request).registry
    models = [m for m in registry.models if not m.unloading]
    if not models or registry.starting:
        raise _starting()
    if not all(m.engine.accepting for m in models):
        raise APIError(503, "the server is draining for shutdown", type="server_error", code="server_draining")
    problems = [f"model `{m.name}`: {p}" for m in models if (p := m.engine.health_problem()) is not None]
    if problems:
        raise APIError(503, "; ".join(problems), type="server_error", code="engine_unhealthy")
    return web.Response()


async def metrics(request: web.Request) -> web.Response:
    body = server_state(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

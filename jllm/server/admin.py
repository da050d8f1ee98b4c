"""The admin API: load a model at run time, unload one, list the served models with their memory.

    POST   /v1/admin/models          a model entry as in a config's models: list -> 201 and the model
    POST   /v1/admin/models/{name}/weights   {"model": another checkpoint of it} -> 200 and the model (409 while it
                                     runs requests: its weights are swapped between them, nothing recompiled)
    DELETE /v1/admin/models/{name}   ?drain_timeout_s=N (default: the server's drain_timeout_s) -> 200
    GET    /v1/admin/models          every model with its planned bytes, and the device's capacity and free bytes

Loading or unloading models is the operator's, not a client's: the routes need the server's API key (checked by
``middleware.auth_middleware`` like every other route), and a server started without one answers 403 here.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from jllm.config import ConfigError
from jllm.serve_config import parse_entry
from jllm.server.errors import APIError, bad_request, json_body
from jllm.server.registry import ServedModel
from jllm.server.state import ServerState, server_state


def _admin_state(request: web.Request) -> ServerState:
    state = server_state(request)
    if state.config.server.api_key is None:
        raise APIError(403, "the admin API needs the server's api_key: start it with --api-key", code="admin_disabled")
    return state


def _describe(served: ServedModel) -> dict[str, Any]:
    memory = served.memory
    return {
        "id": served.name,
        "object": "model",
        "aliases": list(served.entry.names[1:]),
        "model": served.entry.config.model.model,
        "max_model_len": served.engine.max_model_len,
        "state": "unloading" if served.unloading else "serving",
        "weights_bytes": memory.weights_bytes if memory else None,
        "kv_pool_bytes": memory.pool_bytes if memory else None,
        "num_pages": memory.num_pages if memory else None,
        "load_seconds": served.load_seconds,
    }


async def list_models(request: web.Request) -> web.Response:
    state = _admin_state(request)
    registry = state.registry
    capacity = registry.factory.capacity_bytes if registry.factory is not None else None
    used = registry.used_bytes
    return web.json_response(
        {
            "object": "list",
            "capacity_bytes": capacity,
            "used_bytes": used,
            "free_bytes": None if capacity is None else capacity - used,
            "data": [_describe(m) for m in registry.models],
        }
    )


async def load_model(request: web.Request) -> web.Response:
    state = _admin_state(request)
    raw = json_body(await request.read())
    try:
        entry = parse_entry(raw, state.config)
    except ConfigError as e:
        raise bad_request(str(e), code="bad_model_entry") from e
    served = await asyncio.shield(state.registry.load(entry))  # a client that hangs up leaves the load whole
    return web.json_response(_describe(served), status=201)


async def swap_weights(request: web.Request) -> web.Response:
    state = _admin_state(request)
    body = json_body(await request.read())
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or set(body) != {"model"}:
        raise bad_request('send {"model": "<a checkpoint of the served model>"} and nothing else', param="model")
    served = await asyncio.shield(state.registry.swap_weights(request.match_info["name"], body["model"]))
    return web.json_response(_describe(served))


async def unload_model(request: web.Request) -> web.Response:
    state = _admin_state(request)
    given = request.query.get("drain_timeout_s")
    timeout = state.config.server.drain_timeout_s
    if given is not None:
        try:
            timeout = float(given)
        except ValueError:
            timeout = -1.0
        if not timeout >= 0:  # also refuses nan
            raise bad_request(f"drain_timeout_s={given!r} must be a number of seconds >= 0", param="drain_timeout_s")
    served = await asyncio.shield(state.registry.unload(request.match_info["name"], timeout))
    freed = served.memory.total_bytes if served.memory else None
    return web.json_response({"id": served.name, "object": "model", "deleted": True, "freed_bytes": freed})

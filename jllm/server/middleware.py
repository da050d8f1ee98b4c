"""Per-request plumbing every route shares: the request id and the API key check.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import hmac
import uuid

from aiohttp import web
from aiohttp.typedefs import Middleware

from jllm.server.errors import APIError, Handler

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", "/version"})  # probes, scrapers and /version: no key (vLLM)
REQUEST_ID = web.RequestKey("request_id", str)


def request_id(request: web.Request, from_body: str | None = None) -> str:
    """The request's id: the ``X-Request-Id`` header's, else the body's ``request_id`` (vLLM's field), else ours."""
    if from_body and "X-Request-Id" not in request.headers:
        request[REQUEST_ID] = from_body
    return request[REQUEST_ID]


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Honours the client's ``X-Request-Id`` (so its logs and ours line up), else makes one."""
    request[REQUEST_ID] = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    return await handler(request)


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: every response, streamed or error, carries the request id."""
    if REQUEST_ID in request:
        response.headers["X-Request-Id"] = request[REQUEST_ID]


def auth_middleware(api_key: str) -> Middleware:
    """Bearer-key check on every route but ``OPEN_PATHS``, compared in constant time."""
    expected = f"Bearer {api_key}".encode()

    @web.middleware
    async def check_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise APIError(
                    401,
                    "missing or incorrect API key: send it as 'Authorization: Bearer <key>'",
                    code="invalid_api_key",
                )
        return await handler(request)

    return check_key

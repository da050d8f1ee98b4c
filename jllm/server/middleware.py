"""Per-request plumbing every route shares: the request id and the API key check (the gRPC service's too).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import hmac
import uuid

from aiohttp import web
from aiohttp.typedefs import Middleware

from jllm.server.errors import APIError, Handler

# probes (SageMaker's /ping too), scrapers and /version: no key (vLLM)
OPEN_PATHS = frozenset({"/health", "/ping", "/ready", "/metrics", "/version"})
REQUEST_ID = web.RequestKey("request_id", str)  # the engine's id: always ours, so clients can never collide
CLIENT_REQUEST_ID = web.RequestKey("client_request_id", str)  # the client's X-Request-Id, echoed and logged only
MAX_CLIENT_ID_LEN = 256
_CLIENT_ID_RULE = f"1-{MAX_CLIENT_ID_LEN} printable ASCII characters"


def request_id(request: web.Request) -> str:
    """The engine's id of this request: server-made, unique whatever ids clients send."""
    return request[REQUEST_ID]


def public_id(request: web.Request, from_body: str | None = None) -> str:
    """The id a response carries (``chatcmpl-<id>``): the client's ``X-Request-Id``, else the body's ``request_id``
    (vLLM's field), else the engine's."""
    return request.get(CLIENT_REQUEST_ID) or checked_body_id(from_body) or request[REQUEST_ID]


def checked_body_id(value: str | None) -> str | None:
    """A body's ``request_id`` (HTTP or gRPC), under X-Request-Id's rule or a 400 naming it: it names the response
    and the log lines, so a newline in it would forge lines."""
    if value is not None and not _is_valid_client_id(value):
        raise APIError(400, f"request_id must be {_CLIENT_ID_RULE}", param="request_id")
    return value


def _is_valid_client_id(value: str) -> bool:
    return 0 < len(value) <= MAX_CLIENT_ID_LEN and all(" " <= c <= "~" for c in value)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Makes the engine's id; keeps a valid client ``X-Request-Id`` to echo (so its logs and ours line up) and
    answers an invalid one with a 400 (outermost middleware: the error is built here, not by error_middleware)."""
    request[REQUEST_ID] = uuid.uuid4().hex
    if "X-Request-Id" in request.headers:
        client_id = request.headers["X-Request-Id"]
        if not _is_valid_client_id(client_id):
            message = f"X-Request-Id must be {_CLIENT_ID_RULE}"
            return APIError(400, message, param="X-Request-Id").response_for(request)
        request[CLIENT_REQUEST_ID] = client_id
    return await handler(request)


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: every response, streamed or error, carries the client's id, else ours."""
    if CLIENT_REQUEST_ID in request or REQUEST_ID in request:
        response.headers["X-Request-Id"] = request.get(CLIENT_REQUEST_ID) or request[REQUEST_ID]


def check_api_key(given: str, api_key: str) -> None:
    """A 401 unless ``given`` (an ``Authorization`` header or gRPC metadata value) is ``Bearer <api_key>``;
    compared in constant time, so the time taken says nothing about how much of the key was right. aiohttp keeps
    undecodable header bytes as surrogates: encoded back, they simply do not match."""
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), f"Bearer {api_key}".encode()):
        raise APIError(
            401,
            "missing or incorrect API key: send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>')",
            code="invalid_api_key",
        )


def auth_middleware(api_key: str) -> Middleware:
    """Bearer-key check on every route but ``OPEN_PATHS``; Anthropic's clients send the key as ``x-api-key``."""

    @web.middleware
    async def check_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization")
            if given is None and "x-api-key" in request.headers:
                given = f"Bearer {request.headers['x-api-key']}"
            check_api_key(given or "", api_key)
        return await handler(request)

    return check_key

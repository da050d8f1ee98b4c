"""OpenAI's error body for every non-2xx answer (Anthropic's on its Messages routes), and the mapping from what went
wrong to a status.

Clients (the ``openai`` and ``anthropic`` packages among them) read the error's message and branch on the status, so
every failure, from a router 404 to an engine that died mid-stream, must come back in its API's shape.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic_core
from aiohttp import web
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from jllm.errors import ContextLengthError, EngineUnavailableError, GrammarFailedError, InputError, QueueFullError

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1  # a full queue drains within a few steps


class APIError(Exception):
    """A failure with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)

    def renamed(self, names: dict[str, str]) -> APIError:
        """This error with the field it names renamed (``names``: chat's field -> the route's), in ``param`` and at
        the message's start: the routes that stand for a chat request name their own fields."""
        name = names.get(self.param or "")
        if name is not None and self.param is not None:
            if self.message.startswith(self.param):
                self.message = name + self.message[len(self.param) :]
            self.param = name
        return self

    def anthropic_body(self) -> dict[str, Any]:
        """Anthropic's error JSON (its Messages routes): the error's type by status; the field it names leads the
        message, as this server's messages mostly say already."""
        kind = ANTHROPIC_ERROR_TYPES.get(self.status, "api_error" if self.status >= 500 else "invalid_request_error")
        named = self.param is not None and not self.message.startswith(self.param)
        message = f"{self.param}: {self.message}" if named else self.message
        return {"type": "error", "error": {"type": kind, "message": message}}

    def response_for(self, request: web.BaseRequest) -> web.Response:
        """The error as the route's API writes it: Anthropic's JSON under ``/v1/messages``, else OpenAI's."""
        if not request.path.startswith(ANTHROPIC_PATH):
            return self.response()
        return web.json_response(self.anthropic_body(), status=self.status, headers=self.headers)


ANTHROPIC_PATH = "/v1/messages"
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """HTTP's ``Expect`` on the POST routes: ``100-continue`` as aiohttp answers it; anything else a 417 in OpenAI's
    JSON (aiohttp's own answer is plain text, sent before any middleware runs)."""
    expect = request.headers.get("Expect", "")
    if expect.lower() == "100-continue":
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the response proper has not started
        return None
    error = APIError(417, f"Expect: {expect!r} is not supported (only 100-continue)", param="Expect")
    response = error.response_for(request)
    response.force_close()  # the client may be sending the body it asked about: the connection cannot go on
    return response


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def json_body(raw: bytes) -> Any:
    """A request body read as JSON by a route with no pydantic body of its own (``/invocations``, the admin API),
    with the parser, and so the nesting limit and messages, the routes' bodies get; a body that is not JSON is a
    400 (the standard library's parser raised RecursionError, a 500, for ~1,000 levels of nesting)."""
    try:
        return pydantic_core.from_json(raw)
    except ValueError as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from e


def from_validation_error(error: ValidationError) -> APIError:
    """A pydantic failure as a 400 naming the first bad field (``param`` is its top-level name)."""
    problems = error.errors(include_url=False)
    if problems[0]["type"] == "json_invalid":
        return bad_request(f"the request body is not valid JSON: {problems[0]['msg']}")
    described = [f"{'.'.join(map(str, p['loc'])) or 'body'}: {_message(p)}" for p in problems[:3]]
    more = f" (and {len(problems) - 3} more problems)" if len(problems) > 3 else ""
    loc = problems[0]["loc"]
    return bad_request("; ".join(described) + more, param=str(loc[0]) if loc else None)


def _message(problem: ErrorDetails) -> str:
    """pydantic's message, less the "Value error, " it puts before our own validators' messages."""
    return problem["msg"].removeprefix("Value error, ")


def from_engine_error(error: Exception) -> APIError:
    """Maps what the input door, ``AsyncEngine.add_request`` and the request streams raise to a status; anything
    else is a 500."""
    if isinstance(error, ContextLengthError):
        return bad_request(str(error), param=error.param, code="context_length_exceeded")
    if isinstance(error, GrammarFailedError):
        return bad_request(str(error), param=error.param, code=error.code)
    if isinstance(error, InputError):
        return bad_request(str(error), param=error.param)
    if isinstance(error, QueueFullError):
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        return APIError(429, str(error), type="rate_limit_error", code="queue_full", headers=retry)
    if isinstance(error, EngineUnavailableError):
        return APIError(503, str(error), type="server_error", code="engine_unavailable")
    if isinstance(error, ValueError):
        return bad_request(str(error))
    logger.exception("request failed", exc_info=error)
    return APIError(500, f"internal error: {error!r}", type="server_error", code="internal_error")


def as_api_error(error: Exception) -> APIError:
    """Whatever a handler (HTTP or gRPC) raised, as the status and message the client gets."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, ValidationError):
        return from_validation_error(error)
    return from_engine_error(error)


def _from_http_exception(error: web.HTTPException, request: web.Request) -> APIError:
    if error.status == 404:
        return APIError(404, f"no route for {request.method} {request.path}", code="not_found")
    if error.status == 405:
        return APIError(405, f"{request.method} is not allowed on {request.path}", code="method_not_allowed")
    if error.status == 413:
        return APIError(413, error.text or "the request body is too large", code="request_too_large")
    return APIError(error.status, error.reason, code=None)


def _unreadable_body(error: web.RequestPayloadError, request: web.Request) -> web.Response:
    """A body aiohttp could not read (bytes not in the ``Content-Encoding`` they claim, a broken chunked body) is a
    400; the connection's later bytes are unusable, so it closes after the answer."""
    message = f"the request body could not be read: {str(error.__cause__ or error).strip()}"
    response = APIError(400, message).response_for(request)
    response.force_close()
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Whatever a handler, the auth check or the router raises leaves as OpenAI error JSON (Anthropic's on its
    routes)."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _from_http_exception(e, request).response_for(request)
    except web.RequestPayloadError as e:
        return _unreadable_body(e, request)
    except Exception as e:
        return as_api_error(e).response_for(request)

"""Cross-origin requests (CORS), as vLLM's server allows them: a web page of another origin may call the API from a
browser (a chat UI calling the server directly). vLLM's defaults: every origin, method and header, no credentials
(``allowed_origins``, ``allowed_methods``, ``allowed_headers``, ``allow_credentials``).

A browser first asks with an ``OPTIONS`` preflight (no API key: browsers send none), answered here before the key
check and the router; every answer to a request from an allowed origin (errors and streams included) then carries
``Access-Control-Allow-Origin`` (set as the response is prepared). A preflight that asks for an origin, method or
header the policy refuses is a 400 in the route's error JSON.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses

from aiohttp import web
from aiohttp.typedefs import Middleware

from jllm.server.errors import APIError, Handler

ALL_METHODS = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
SAFELISTED_HEADERS = frozenset({"accept", "accept-language", "content-language", "content-type"})
PREFLIGHT_MAX_AGE_S = 600


@dataclasses.dataclass(frozen=True)
class CorsPolicy:
    origins: tuple[str, ...]
    methods: tuple[str, ...]
    headers: tuple[str, ...]
    credentials: bool

    def allows_origin(self, origin: str) -> bool:
        return "*" in self.origins or origin in self.origins

    def origin_headers(self, origin: str) -> dict[str, str]:
        """The headers every answer to an allowed origin carries: any origin as ``*`` unless credentials are
        allowed (browsers refuse ``*`` with them), else the origin itself, which makes the answer vary by it."""
        if "*" in self.origins and not self.credentials:
            return {"Access-Control-Allow-Origin": "*"}
        headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        if self.credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers

    def preflight(self, request: web.Request, origin: str) -> web.Response:
        """The answer to a preflight from ``origin``: what it may send, or a 400 naming what it may not."""
        method = request.headers["Access-Control-Request-Method"]
        asked = [h.strip() for h in request.headers.get("Access-Control-Request-Headers", "").split(",") if h.strip()]
        allowed_headers = {h.lower() for h in self.headers} | SAFELISTED_HEADERS
        refused = [h for h in asked if "*" not in self.headers and h.lower() not in allowed_headers]
        if not self.allows_origin(origin):
            problem = f"origin {origin!r} is not among allowed_origins"
        elif "*" not in self.methods and method.upper() not in {m.upper() for m in self.methods}:
            problem = f"method {method!r} is not among allowed_methods"
        elif refused:
            problem = f"headers {refused} are not among allowed_headers"
        else:
            headers = self.origin_headers(origin) | {
                "Access-Control-Allow-Methods": ALL_METHODS if "*" in self.methods else ", ".join(self.methods),
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
            }
            allow = ", ".join(asked) if "*" in self.headers else ", ".join(self.headers)
            if allow:
                headers["Access-Control-Allow-Headers"] = allow
            return web.Response(text="OK", headers=headers)
        return APIError(400, f"CORS preflight refused: {problem}", code="cors_refused").response_for(request)

    def middleware(self) -> Middleware:
        """Answers preflights before the key check and the router (which knows no ``OPTIONS`` routes)."""

        @web.middleware
        async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
            origin = request.headers.get("Origin")
            if request.method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
                return self.preflight(request, origin)
            return await handler(request)

        return cors

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare`` hook: the origin's headers on every answer to an allowed origin."""
        origin = request.headers.get("Origin")
        if origin and self.allows_origin(origin) and "Access-Control-Allow-Origin" not in response.headers:
            headers = self.origin_headers(origin)
            if "Vary" in headers and "Vary" in response.headers:
                headers["Vary"] = f"{response.headers['Vary']}, Origin"
            response.headers.update(headers)

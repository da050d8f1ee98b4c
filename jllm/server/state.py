"""What every handler reads: the server's settings, the served models (the registry) and the metrics.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from pydantic import BaseModel

from jllm.config import EngineConfig
from jllm.server.connections import ConnectionGuard
from jllm.server.host_work import HostWork
from jllm.server.metrics import ServerMetrics
from jllm.server.registry import ModelRegistry, ServedModel
from jllm.server.response_store import ResponseStore


@dataclass
class ServerState:
    config: EngineConfig  # the server section; the other sections are every model's defaults
    registry: ModelRegistry
    host_work: HostWork  # tokenization and chat rendering of long prompts, validation of large bodies
    connections: ConnectionGuard
    responses: ResponseStore  # the Responses API's stored responses

    @property
    def metrics(self) -> ServerMetrics:
        return self.registry.metrics

    def route(self, model: str | None) -> ServedModel:
        """The served model a request names (omitting the name means the first, as in vLLM)."""
        return self.registry.route(model)

    def route_generation(self, model: str | None) -> ServedModel:
        """``route`` for the routes that generate: a sequence classifier is a 400 naming the model (it cannot)."""
        served = self.route(model)
        if served.engine.classifier is not None:
            raise served.engine.classifier.cannot("generate text", model or served.name, offline=False)
        return served


STATE = web.AppKey("state", ServerState)


def server_state(request: web.Request) -> ServerState:
    return request.app[STATE]


async def request_body[M: BaseModel](request: web.Request, model: type[M]) -> M:
    """The request's JSON body validated as ``model`` (a large one off the event loop: ``HostWork.parse``)."""
    return await server_state(request).host_work.parse(model, await request.read())

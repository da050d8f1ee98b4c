"""What every handler reads: the settings, the served model's name, the metrics and (once loaded) the engine.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from jllm.async_engine import AsyncEngine, EngineSnapshot
from jllm.config import EngineConfig
from jllm.model_source import DEFAULT_MODEL
from jllm.server.errors import APIError
from jllm.server.metrics import ServerMetrics


@dataclass
class ServerState:
    config: EngineConfig
    engine: AsyncEngine | None = None  # None while the model loads
    model_name: str = field(init=False)
    metrics: ServerMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.model_name = self.config.server.served_model_name or self.config.model.model or DEFAULT_MODEL
        self.metrics = ServerMetrics(self.model_name, self._snapshot)

    def _snapshot(self) -> EngineSnapshot | None:
        return self.engine.snapshot if self.engine is not None else None

    def require_engine(self) -> AsyncEngine:
        if self.engine is None:
            raise APIError(
                503, "the server is starting: the model is still loading", type="server_error", code="server_starting"
            )
        return self.engine

    def check_model(self, model: str | None) -> None:
        """404 for a model this server does not serve (omitting the name means the served one, as in vLLM)."""
        if model is not None and model != self.model_name:
            raise APIError(
                404,
                f"The model `{model}` does not exist; this server serves `{self.model_name}`.",
                param="model",
                code="model_not_found",
            )


STATE = web.AppKey("state", ServerState)


def server_state(request: web.Request) -> ServerState:
    return request.app[STATE]

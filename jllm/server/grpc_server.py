"""The gRPC listener beside the HTTP one: ``grpc.aio`` in the same event loop, on the same served models, with the
standard ``grpc.health.v1.Health`` service.

Health says NOT_SERVING until the server's models have loaded, while a model's engine loop has died or stalled, and
from the moment a drain starts (SIGTERM), so a load balancer stops sending new calls while running streams finish;
the health service answers without an API key, as ``/health`` and ``/ready`` do.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from jllm.server.grpc_service import GenerationService
from jllm.server.registry import ModelRegistry
from jllm.server.state import ServerState
from jllm.v1 import generate_pb2, generate_pb2_grpc

SERVICE_NAME = generate_pb2.DESCRIPTOR.services_by_name["Generation"].full_name  # "jllm.v1.Generation"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class _Health(health_aio.HealthServicer):
    """The standard service, whose ``Check`` also says NOT_SERVING while a served model's engine loop has died or
    stalled (what ``/ready`` checks); ``Watch`` streams the set status only."""

    def __init__(self, registry: ModelRegistry) -> None:
        super().__init__()
        self.registry = registry

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        reply = await super().Check(request, context)
        models = [m for m in self.registry.models if not m.unloading]
        if reply.status == SERVING and any(m.engine.health_problem() is not None for m in models):
            return health_pb2.HealthCheckResponse(status=NOT_SERVING)
        return reply


class GrpcServer:
    """A started gRPC server: the ``Generation`` service over ``state``'s models, and health."""

    def __init__(self, server: grpc.aio.Server, health: _Health, port: int) -> None:
        self.server = server
        self.health = health
        self.port = port  # the bound port (the one asked for, or the free one picked for 0)

    @classmethod
    async def start(cls, state: ServerState, host: str, port: int) -> GrpcServer:
        """Listens on ``host:port`` (0: any free port), health NOT_SERVING until ``set_serving(True)``."""
        server = grpc.aio.server()
        generate_pb2_grpc.add_GenerationServicer_to_server(GenerationService(state), server)
        health = _Health(state.registry)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # an IPv6 literal needs brackets
        bound = server.add_insecure_port(address)
        await server.start()
        started = cls(server, health, bound)
        await started.set_serving(False)
        return started

    async def set_serving(self, serving: bool) -> None:
        """The health of the server as a whole ("") and of the ``Generation`` service."""
        status = SERVING if serving else NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def begin_drain(self) -> None:
        """NOT_SERVING for good: the server is shutting down (running calls go on until ``stop``)."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """Refuses new calls and gives running ones ``grace`` seconds to end (after the drain, that is only their
        last messages); health watchers are cancelled."""
        await self.server.stop(grace)

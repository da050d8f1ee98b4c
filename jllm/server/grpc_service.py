"""The gRPC ``jllm.v1.Generation`` service: the HTTP API's generation, tokenizer and model list over gRPC.

Each call goes the HTTP route's way (``grpc_convert`` turns it into the HTTP request body; ``start_completion`` /
``start_chat`` route, check and admit it; ``Generation`` runs it), so the engines, the metrics and the error
messages are the HTTP API's. The API key comes as ``authorization: Bearer <key>`` metadata. An error leaves as
the status code matching its HTTP status, with the HTTP API's message. A call the client cancels cancels its
handler, whose ``finally`` aborts the engine requests and frees their pages.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import grpc

from jllm.server import grpc_convert, info
from jllm.server.chat import start_chat
from jllm.server.chat_schemas import ChatCompletionRequest
from jllm.server.completions import start_completion
from jllm.server.errors import as_api_error
from jllm.server.middleware import check_api_key, checked_body_id
from jllm.server.state import ServerState
from jllm.v1 import generate_pb2 as pb
from jllm.v1 import generate_pb2_grpc

# HTTP status -> gRPC code (grpc's own HTTP mapping, plus 400 as INVALID_ARGUMENT and overload as exhaustion)
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,  # the queue is full: retry later
    503: grpc.StatusCode.UNAVAILABLE,  # starting, draining, or the engine is down
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class GenerationService(generate_pb2_grpc.GenerationServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        async with self._call(context):
            body = grpc_convert.generate_body(request)
            engine_id = uuid.uuid4().hex  # the engine's ids are always ours (see middleware.REQUEST_ID)
            public = checked_body_id(body.request_id) or engine_id
            if isinstance(body, ChatCompletionRequest):
                _, _, generation = await start_chat(self.state, body, engine_id, public)
            else:
                _, _, generation = await start_completion(self.state, body, engine_id, public)
            try:
                await context.send_initial_metadata((("x-request-id", public),))
                top = generation.params.logprobs or 0
                async for delta in generation.deltas():
                    yield grpc_convert.delta_message(delta, top)
                yield grpc_convert.usage_message(generation.usage())
            finally:
                generation.close()

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        async with self._call(context):
            response = await info.tokenize_body(self.state, grpc_convert.tokenize_body(request))
            return grpc_convert.tokenize_message(response)

    async def Detokenize(
        self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetokenizeResponse:
        async with self._call(context):
            response = await info.detokenize_body(self.state, grpc_convert.detokenize_body(request))
            return pb.DetokenizeResponse(text=response.prompt)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        async with self._call(context):
            return grpc_convert.models_message(info.model_list(self.state.registry))

    @contextlib.asynccontextmanager
    async def _call(self, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Checks the API key, then ends the call with the status of whatever the body raises."""
        try:
            api_key = self.state.config.server.api_key
            if api_key is not None:
                check_api_key(dict(context.invocation_metadata() or ()).get("authorization", ""), api_key)
            yield
        except grpc.aio.AbortError:
            raise
        except Exception as e:
            error = as_api_error(e)
            await context.abort(STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL), error.message)

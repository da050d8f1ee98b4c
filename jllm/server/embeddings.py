"""``POST /v1/embeddings``: OpenAI's request and response bodies (with vLLM's extra fields) and the route.

Each input is pooled from the model's final normed hidden states as the served model's ``pooling`` key says (the
last token's state, or the mean), unit-normed unless ``normalize`` / ``use_activation`` is false. The forward runs on
the model's engine thread between two steps (``AsyncEngine.call``), so it shares the device with generation safely;
a long list of inputs goes in groups of ``max_num_seqs``, with steps between them. A sequence classifier is a 400
naming the routes it serves (vLLM refuses it too: its task is classify, not embed).
Every field is honoured or refused with a 400 naming it, as on the generation routes.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import base64
import time
from typing import Any, Literal

import numpy as np
from aiohttp import web
from pydantic import BaseModel, model_validator

from jllm.server.errors import bad_request
from jllm.server.middleware import public_id
from jllm.server.pooling import PoolingRequest, chat_form_fields, in_groups, input_prompts, pooling_model
from jllm.server.schemas import refuse_unsupported
from jllm.server.state import request_body, server_state

# Fields of vLLM's embedding request this server cannot honour, beyond every pooling request's (``server.pooling``):
# (the values that ask for nothing, why more is refused)
UNSUPPORTED_EMBEDDING_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "dimensions": ((None,), "is not supported: the served models' embeddings have one size, their hidden size"),
    **chat_form_fields("embeddings"),
    "embed_dtype": ((None, "float32"), "must be float32, the only dtype embeddings are encoded in"),
}
BYTE_ORDER = {"native": "=", "little": "<", "big": ">"}  # numpy's byte-order marks


class EmbeddingRequest(PoolingRequest):
    """``use_activation`` false: the pooled vectors as they are, not unit-normed."""

    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"  # base64: the float32 bytes (the openai client's default)
    # vLLM's extras
    add_special_tokens: bool = True  # false encodes text inputs without BOS and the like
    normalize: bool | None = None  # vLLM's older name of use_activation; None: true
    endianness: Literal["native", "little", "big"] = "native"  # of base64's float32 bytes

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        return refuse_unsupported(data, UNSUPPORTED_EMBEDDING_FIELDS)

    @model_validator(mode="after")
    def _one_normalize(self) -> EmbeddingRequest:
        if None not in (self.normalize, self.use_activation) and self.normalize != self.use_activation:
            raise bad_request("normalize and use_activation disagree; give one of them", param="normalize")
        return self

    @property
    def unit_norm(self) -> bool:
        chosen = self.use_activation if self.use_activation is not None else self.normalize
        return chosen is not False


class EmbeddingData(BaseModel):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str  # a base64 string with encoding_format base64


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[EmbeddingData]
    usage: EmbeddingUsage


async def create_embedding(request: web.Request) -> web.Response:
    state = server_state(request)
    body = await request_body(request, EmbeddingRequest)
    response_id = f"embd-{public_id(request, body.request_id)}"
    served = pooling_model(state, body.model)
    if served.engine.classifier is not None:  # vLLM's 400 too: a classifier's task is classify, not embed
        raise served.engine.classifier.cannot("embed text", body.model or served.name, offline=False)
    inputs = served.engine.inputs
    chars = inputs.check_prompt_size(body.input, "input")
    args = (inputs, body.input, body.add_special_tokens, body.truncate_prompt_tokens, body.truncation_side)
    prompts = await state.host_work.run(chars, input_prompts, *args)
    token_ids = [p.token_ids for p in prompts]
    how, unit_norm = served.entry.config.model.pooling, body.unit_norm
    vectors = await in_groups(served, token_ids, lambda engine, chunk: engine.encoder.embed(chunk, how, unit_norm))
    dtype = np.dtype(f"{BYTE_ORDER[body.endianness]}f4")
    data = [
        EmbeddingData(
            index=i,
            embedding=vector.tolist()
            if body.encoding_format == "float"
            else base64.b64encode(vector.astype(dtype).tobytes()).decode("ascii"),
        )
        for i, vector in enumerate(vectors)
    ]
    num_tokens = sum(map(len, token_ids))
    response = EmbeddingResponse(
        id=response_id,
        created=int(time.time()),
        model=body.model or served.name,
        data=data,
        usage=EmbeddingUsage(prompt_tokens=num_tokens, total_tokens=num_tokens),
    )
    return web.json_response(text=response.model_dump_json())

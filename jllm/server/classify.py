"""``POST /classify``: vLLM's classification API for a sequence classifier (``jllm.classify``): per input its label
probabilities (the head's activation; the logits with ``use_activation`` false), the most likely label's name and the
number of classes. The work runs on the model's engine thread, as embeddings do (``server.pooling``). A model that
is not a classifier is a 400 naming it; every field is honoured or refused with a 400 naming it.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, model_validator

from jllm.classify import require_classifier
from jllm.server.middleware import public_id
from jllm.server.pooling import ActivatedRequest, chat_form_fields, in_groups, input_prompts, pooling_model
from jllm.server.schemas import UsageInfo, refuse_unsupported
from jllm.server.state import request_body, server_state

UNSUPPORTED_CLASSIFY_FIELDS = chat_form_fields("classification")


class ClassificationRequest(ActivatedRequest):
    input: str | list[str] | list[int] | list[list[int]]
    add_special_tokens: bool = True  # false encodes text inputs without BOS and the like

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        return refuse_unsupported(data, UNSUPPORTED_CLASSIFY_FIELDS)


class ClassificationData(BaseModel):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ClassificationResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: UsageInfo


async def create_classification(request: web.Request) -> web.Response:
    state = server_state(request)
    body = await request_body(request, ClassificationRequest)
    served = pooling_model(state, body.model)
    head = require_classifier(served.engine.classifier, body.model or served.name)
    inputs = served.engine.inputs
    chars = inputs.check_prompt_size(body.input, "input")
    args = (inputs, body.input, body.add_special_tokens, body.truncate_prompt_tokens, body.truncation_side)
    prompts = await state.host_work.run(chars, input_prompts, *args)
    token_ids = [p.token_ids for p in prompts]
    logits = await in_groups(served, token_ids, lambda engine, chunk: list(head.logits(engine.encoder, chunk)))
    data = []
    for i, row in enumerate(logits):
        probs = head.activate(row, body.activated)
        data.append(ClassificationData(index=i, label=head.label(probs), probs=probs.tolist(), num_classes=len(probs)))
    num_tokens = sum(map(len, token_ids))
    response = ClassificationResponse(
        id=f"classify-{public_id(request, body.request_id)}",
        created=int(time.time()),
        model=body.model or served.name,
        data=data,
        usage=UsageInfo(prompt_tokens=num_tokens, completion_tokens=0, total_tokens=num_tokens),
    )
    return web.json_response(text=response.model_dump_json())

"""``POST /score`` (``/v1/score``) and ``POST /rerank`` (``/v1/rerank``, ``/v2/rerank``: Jina's and Cohere's shape):
vLLM's scoring APIs over ``jllm.scoring``. A cross-encoder (a classifier of one label) scores each pair as one prompt
through its activation (``use_activation`` false: the logit); an embedding model the cosine similarity of the two
texts' embeddings. ``/score`` takes ``text_1`` / ``text_2`` (or vLLM's other names for them: ``queries`` with
``documents`` or ``items``, ``data_1`` / ``data_2``), one to one, one to many or many to many; ``/rerank`` a query
and its documents, sorted by score, the first ``top_n`` (0: all). The work runs on the model's engine thread, as
embeddings do (``server.pooling``); every field is honoured or refused with a 400 naming it.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from aiohttp import web
from pydantic import BaseModel, Field, model_validator

from jllm import scoring
from jllm.inputs import InputProcessor, Prompt, text_chars
from jllm.server.errors import bad_request
from jllm.server.middleware import public_id
from jllm.server.pooling import ActivatedRequest, in_groups, pooling_model
from jllm.server.registry import ServedModel
from jllm.server.schemas import _NOTHING, UsageInfo, refuse_unsupported
from jllm.server.state import request_body, server_state

# vLLM's scoring fields this server cannot honour: (the values that ask for nothing, why more is refused)
UNSUPPORTED_SCORING_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "max_tokens_per_query": ((None, 0), "is not supported: use truncate_prompt_tokens (each prompt's last tokens)"),
    "max_tokens_per_doc": ((None, 0), "is not supported: use truncate_prompt_tokens (each prompt's last tokens)"),
    "instruction": ((None,), "is not supported: it reaches a score template, and this server has none"),
    "chat_template_kwargs": (_NOTHING, "is not supported: they reach a score template, and this server has none"),
}
# /score's names for its two sides, vLLM's: the first pair a request gives is the one read
PAIR_FIELDS = (("text_1", "text_2"), ("queries", "documents"), ("queries", "items"), ("data_1", "data_2"))
Texts = str | list[str]


class ScoringRequest(ActivatedRequest):
    """What score and rerank share."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        return refuse_unsupported(data, UNSUPPORTED_SCORING_FIELDS)


class ScoreRequest(ScoringRequest):
    text_1: Texts | None = None
    text_2: Texts | None = None
    queries: Texts | None = None
    documents: Texts | None = None
    items: Texts | None = None
    data_1: Texts | None = None
    data_2: Texts | None = None

    @property
    def pair(self) -> tuple[tuple[str, str], Texts, Texts]:
        """The two sides' names and values; a request without both of one pair is a 400 naming the one missing."""
        for names in PAIR_FIELDS:
            first, second = (getattr(self, name) for name in names)
            if first is not None and second is not None:
                return names, first, second
        names = next((n for n in PAIR_FIELDS if getattr(self, n[0]) is not None), PAIR_FIELDS[0])
        missing = names[1] if getattr(self, names[0]) is not None else names[0]
        raise bad_request(
            f"{missing} is missing: give text_1 and text_2 (or queries and documents, queries and items, data_1 and "
            "data_2)",
            param=missing,
        )


class RerankRequest(ScoringRequest):
    query: str
    documents: Texts
    top_n: int = Field(0, ge=0)  # 0: every document


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: UsageInfo


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    document: RerankDocument
    relevance_score: float


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    usage: RerankUsage
    results: list[RerankResult]


async def create_score(request: web.Request) -> web.Response:
    body = await request_body(request, ScoreRequest)
    names, first, second = body.pair
    served, scores, num_tokens = await _scores(request, body, first, second, names)
    response = ScoreResponse(
        id=f"score-{public_id(request, body.request_id)}",
        created=int(time.time()),
        model=body.model or served.name,
        data=[ScoreData(index=i, score=score) for i, score in enumerate(scores)],
        usage=UsageInfo(prompt_tokens=num_tokens, completion_tokens=0, total_tokens=num_tokens),
    )
    return web.json_response(text=response.model_dump_json())


async def create_rerank(request: web.Request) -> web.Response:
    body = await request_body(request, RerankRequest)
    documents = [body.documents] if isinstance(body.documents, str) else body.documents
    served, scores, num_tokens = await _scores(request, body, body.query, documents, ("query", "documents"))
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: body.top_n or None]
    response = RerankResponse(
        id=f"score-{public_id(request, body.request_id)}",
        model=body.model or served.name,
        usage=RerankUsage(prompt_tokens=num_tokens, total_tokens=num_tokens),
        results=[
            RerankResult(index=i, document=RerankDocument(text=documents[i]), relevance_score=scores[i]) for i in order
        ],
    )
    return web.json_response(text=response.model_dump_json())


async def _scores(
    request: web.Request, body: ScoringRequest, first: Texts, second: Texts, names: tuple[str, str]
) -> tuple[ServedModel, list[float], int]:
    """Each pair's score, and the tokens the model ran over (a bi-encoder's first text counted once)."""
    state = server_state(request)
    served = pooling_model(state, body.model)
    head = scoring.cross_encoder(served.engine.classifier, body.model or served.name)
    firsts, seconds = scoring.pair_lists(first, second, names)
    inputs = served.engine.inputs
    longer = names[int(text_chars(seconds) > text_chars(firsts))]  # the side a refusal of the whole size names
    chars = inputs.check_prompt_size([firsts, seconds], longer)
    if head is not None:
        args = (inputs, head, firsts, seconds, body.truncate_prompt_tokens, names, body.truncation_side)
        prompts = await state.host_work.run(chars, scoring.pair_prompts, *args)
        token_ids = [p.token_ids for p in prompts]
        logits = await in_groups(served, token_ids, lambda engine, chunk: list(head.logits(engine.encoder, chunk)))
        scores = head.activate(np.stack(logits), body.activated)[:, 0].tolist()
    else:
        left, right = await state.host_work.run(chars, _texts, inputs, firsts, seconds, body, names)
        token_ids = [p.token_ids for p in left + right]
        how = served.entry.config.model.pooling
        vectors = await in_groups(served, token_ids, lambda engine, chunk: engine.encoder.embed(chunk, how, True))
        scores = scoring.cosine_scores(vectors[: len(left)], vectors[len(left) :])
    return served, scores, sum(map(len, token_ids))


def _texts(
    inputs: InputProcessor, firsts: list[str], seconds: list[str], body: ScoringRequest, names: tuple[str, str]
) -> tuple[list[Prompt], list[Prompt]]:
    """A bi-encoder's prompts, each side's texts alone."""
    truncate, side = body.truncate_prompt_tokens, body.truncation_side
    return (
        scoring.text_prompts(inputs, firsts, names[0], truncate, side),
        scoring.text_prompts(inputs, seconds, names[1], truncate, side),
    )

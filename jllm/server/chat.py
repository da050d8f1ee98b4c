"""``POST /v1/chat/completions``: the model's chat template, then generation, streamed or not.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from aiohttp import web

from jllm.inputs import InputProcessor, Prompt
from jllm.outputs import Logprob
from jllm.sampling import SamplingParams
from jllm.server.generation import Delta, Generation
from jllm.server.middleware import request_id
from jllm.server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    DeltaMessage,
    TokenizeRequest,
    TokenLogprob,
    TopLogprob,
    prompt_logprobs_json,
)
from jllm.server.sse import send_events
from jllm.server.state import server_state


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    state = server_state(request)
    body = ChatCompletionRequest.model_validate_json(await request.read())
    served = state.route(body.model)
    engine = served.engine
    params = body.sampling_params()
    prompt = await asyncio.to_thread(_checked_prompt, engine.inputs, body, params)
    rid = request_id(request, body.request_id)
    generation = await Generation.start(engine, rid, [prompt], params, served.metrics)
    response_id, created = f"chatcmpl-{rid}", int(time.time())
    top = body.top_logprobs or 0
    try:
        if body.stream:
            return await send_events(
                request, _chunks(body, generation, response_id, created, body.model or served.name)
            )
        deltas = await generation.wait()
        choices = [
            ChatChoice(
                index=d.index,
                message=AssistantMessage(content=d.text),
                logprobs=_logprobs(d, top),
                finish_reason=d.finish_reason,
                stop_reason=d.stop_reason,
            )
            for d in deltas
        ]
        response = ChatCompletionResponse(
            id=response_id,
            created=created,
            model=body.model or served.name,
            choices=choices,
            usage=generation.usage(),
            prompt_logprobs=prompt_logprobs_json(deltas[0].prompt_logprobs) if deltas else None,
        )
        return web.json_response(text=response.model_dump_json())
    finally:
        generation.close()


def render_chat(inputs: InputProcessor, body: ChatCompletionRequest | TokenizeRequest) -> Prompt:
    """The request's messages through the model's chat template, with its template switches and variables."""
    assert body.messages is not None
    return inputs.render_chat(
        [m.for_template() for m in body.messages],
        add_special_tokens=bool(body.add_special_tokens),
        **body.template_options(),
    )


def _checked_prompt(inputs: InputProcessor, body: ChatCompletionRequest, params: SamplingParams) -> Prompt:
    """Rendered, then truncated and checked by the input door like any prompt."""
    return inputs.process(render_chat(inputs, body), params, param="messages")


async def _chunks(
    body: ChatCompletionRequest, generation: Generation, response_id: str, created: int, model: str
) -> AsyncIterator[str]:
    """OpenAI's chunk sequence: the role first for every choice, then content deltas (the last with the finish
    reason), then, with ``include_usage``, one chunk of usage and no choices."""
    exclude = None if body.include_usage else {"usage"}
    top = body.top_logprobs or 0

    def chunk(choice: ChatChunkChoice) -> str:
        return ChatCompletionChunk(id=response_id, created=created, model=model, choices=[choice]).model_dump_json(
            exclude=exclude
        )

    for index in range(body.n):
        yield chunk(ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content="")))
    async for d in generation.deltas():
        choice = ChatChunkChoice(
            index=d.index, delta=DeltaMessage(content=d.text), logprobs=_logprobs(d, top), finish_reason=d.finish_reason
        )
        yield chunk(choice)
    if body.include_usage:
        usage = ChatCompletionChunk(id=response_id, created=created, model=model, choices=[], usage=generation.usage())
        yield usage.model_dump_json()


def _logprobs(delta: Delta, top: int) -> ChatLogprobs | None:
    if delta.logprobs is None:
        return None
    return ChatLogprobs(
        content=[
            _token_logprob(entry, token_id, top)
            for token_id, entry in zip(delta.token_ids, delta.logprobs, strict=True)
        ]
    )


def _token_logprob(entry: dict[int, Logprob], token_id: int, top: int) -> TokenLogprob:
    ranked = sorted((lp for lp in entry.values() if lp.rank is not None), key=lambda lp: lp.rank or 0)[:top]
    return TokenLogprob(**_top(entry[token_id]).model_dump(), top_logprobs=[_top(lp) for lp in ranked])


def _top(lp: Logprob) -> TopLogprob:
    token = lp.decoded_token or ""
    return TopLogprob(token=token, logprob=lp.logprob, bytes=list(token.encode()))

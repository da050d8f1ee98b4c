"""``POST /v1/chat/completions``: the model's chat template (with the request's tools), then generation, streamed or
not; tool calls in the output come back as OpenAI's ``tool_calls`` (``jllm.server.tools``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator

from aiohttp import web

from jllm.inputs import InputProcessor, Prompt
from jllm.outputs import Logprob
from jllm.sampling import SamplingParams
from jllm.server.generation import Delta, Generation
from jllm.server.middleware import public_id, request_id
from jllm.server.registry import ServedModel
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
from jllm.server.state import ServerState, server_state
from jllm.server.tools import ToolDeltas, ToolPlan


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    body = ChatCompletionRequest.model_validate_json(await request.read())
    public = public_id(request, body.request_id)
    served, tools, generation = await start_chat(server_state(request), body, request_id(request), public)
    response_id, created = f"chatcmpl-{public}", int(time.time())
    top = body.top_logprobs or 0
    try:
        if body.stream:
            chunks = _chunks(body, tools, generation, response_id, created, body.model or served.name)
            return await send_events(request, chunks)
        deltas = await generation.wait()
        choices = [_choice(d, tools.message(d.text), top) for d in deltas]
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


async def start_chat(
    state: ServerState, body: ChatCompletionRequest, engine_id: str, public: str
) -> tuple[ServedModel, ToolPlan, Generation]:
    """Routes the request, plans its tools, checks its sampling fields and rendered prompt, and admits it; what
    this route and the gRPC ``Generate`` share, so both refuse a bad request with the same message."""
    served = state.route(body.model)
    tools = ToolPlan.of(body, state.config.server)
    forced = tools.forced_schema()
    params = await state.host_work.run(body.constraint_chars(forced), body.sampling_params, forced_call=forced)
    if tools.keep_special_tokens:
        params = dataclasses.replace(params, skip_special_tokens=False)
    inputs = served.engine.inputs
    chars = inputs.check_prompt_size([[m.for_template() for m in body.messages], tools.tools], "messages")
    prompt = await state.host_work.run(chars, _checked_prompt, inputs, body, params, tools)
    generation = await Generation.start(served.engine, engine_id, [prompt], params, served.metrics, public)
    return served, tools, generation


def _choice(delta: Delta, message: AssistantMessage, top: int) -> ChatChoice:
    finish_reason = "tool_calls" if message.tool_calls else delta.finish_reason
    return ChatChoice(
        index=delta.index,
        message=message,
        logprobs=_logprobs(delta, top),
        finish_reason=finish_reason,
        stop_reason=delta.stop_reason,
    )


def render_chat(
    inputs: InputProcessor, body: ChatCompletionRequest | TokenizeRequest, tools: list[dict] | None = None
) -> Prompt:
    """The request's messages through the model's chat template, with its template switches and variables, and the
    tools (transformers' ``apply_chat_template(tools=...)``)."""
    assert body.messages is not None
    options = body.template_options()
    if tools:
        options["tools"] = tools
    return inputs.render_chat(
        [m.for_template() for m in body.messages], add_special_tokens=bool(body.add_special_tokens), **options
    )


def _checked_prompt(
    inputs: InputProcessor, body: ChatCompletionRequest, params: SamplingParams, tools: ToolPlan
) -> Prompt:
    """Rendered, then truncated and checked by the input door like any prompt."""
    return inputs.process(render_chat(inputs, body, tools.tools), params, param="messages")


async def _chunks(
    body: ChatCompletionRequest, tools: ToolPlan, generation: Generation, response_id: str, created: int, model: str
) -> AsyncIterator[str]:
    """OpenAI's chunk sequence: the role first for every choice, then content and tool call deltas (the last with
    the finish reason), then, with ``include_usage``, one chunk of usage and no choices."""
    exclude = None if body.include_usage else {"usage"}
    top = body.top_logprobs or 0

    def chunk(choice: ChatChunkChoice) -> str:
        return ChatCompletionChunk(id=response_id, created=created, model=model, choices=[choice]).model_dump_json(
            exclude=exclude
        )

    streams: dict[int, ToolDeltas] = {}
    for index in range(body.n):
        yield chunk(ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content="")))
    async for d in generation.deltas():
        stream = streams.setdefault(d.index, tools.stream())
        content, calls = stream.feed(d.text, finished=d.finish_reason is not None)
        finish_reason = "tool_calls" if d.finish_reason and stream.num_calls else d.finish_reason
        delta = DeltaMessage(content=content, tool_calls=calls or None)
        yield chunk(
            ChatChunkChoice(index=d.index, delta=delta, logprobs=_logprobs(d, top), finish_reason=finish_reason)
        )
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

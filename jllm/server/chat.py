"""``POST /v1/chat/completions``: the model's chat template (with the request's tools), then generation, streamed or
not; with the model's ``reasoning_parser`` its reasoning comes back apart (``jllm.server.reasoning``), and tool calls
in the answer as OpenAI's ``tool_calls`` (``jllm.server.tools``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from jllm.inputs import InputProcessor, Prompt, checked_cache_salt
from jllm.outputs import Logprob, top_logprobs
from jllm.sampling import SamplingParams
from jllm.server.beam_generation import BeamGeneration
from jllm.server.chat_schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    DeltaMessage,
    DeltaToolCall,
    TokenLogprob,
    TopLogprob,
)
from jllm.server.errors import bad_request
from jllm.server.generation import Delta, Generation, RunningUsage, batched
from jllm.server.info_schemas import TokenizeRequest
from jllm.server.middleware import public_id, request_id
from jllm.server.reasoning import ReplyDeltas, ReplyPlan
from jllm.server.registry import ServedModel
from jllm.server.schemas import MIN_LOGPROB, CompletionTokensDetails, TokenNames, UsageInfo, prompt_logprobs_json
from jllm.server.sse import send_events
from jllm.server.state import ServerState, request_body, server_state
from jllm.server.stream_chunks import ChunkWriter
from jllm.server.tools import ToolPlan
from jllm.speculative import REQUEST_SUPPORT
from jllm.tokenizer import Tokenizer


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    body = await request_body(request, ChatCompletionRequest)
    public = public_id(request, body.request_id)
    served, reply, generation = await start_chat(server_state(request), body, request_id(request), public)
    response_id, created = f"chatcmpl-{public}", int(time.time())
    top, tokenizer = body.top_logprobs or 0, served.engine.inputs.tokenizer
    try:
        if body.stream:
            chunks = _chunks(body, reply, generation, response_id, created, body.model or served.name, tokenizer)
            return await send_events(request, chunks)
        deltas = await generation.wait()
        names, ids = TokenNames(tokenizer, bool(body.return_tokens_as_token_ids)), body.return_token_ids
        choices = [_choice(d, reply.message(d.text), reply.tools, top, names, ids) for d in deltas]
        if echoed := body.echoed:
            for c in choices:
                c.message.content = echoed + (c.message.content or "")
        counts = [reply.reasoning_tokens(d.token_ids, tokenizer) for d in deltas]
        response = ChatCompletionResponse(
            id=response_id,
            created=created,
            model=body.model or served.name,
            choices=choices,
            usage=_usage(generation, counts),
            prompt_logprobs=prompt_logprobs_json(deltas[0].prompt_logprobs) if deltas else None,
            prompt_token_ids=generation.prompts[0].token_ids if ids else None,
            prompt_text=generation.prompts[0].text if body.return_prompt_text else None,
        )
        return web.json_response(text=response.model_dump_json())
    finally:
        generation.close()


async def start_chat(
    state: ServerState, body: ChatCompletionRequest, engine_id: str, public: str
) -> tuple[ServedModel, ReplyPlan, Generation | BeamGeneration]:
    """Routes the request, plans how its reply is read (reasoning, tools), checks its sampling fields and rendered
    prompt, and admits it; what this route and the gRPC ``Generate`` share, so both refuse a bad request with the
    same message."""
    served = state.route_generation(body.model)
    kwargs = served.engine.inputs.template_kwargs(body.chat_template_kwargs, body.reasoning_effort)
    body = body.model_copy(update={"chat_template_kwargs": kwargs})  # the reasoning format reads them too
    reply = ReplyPlan.of(body, state.config.server, served.entry.config.server.reasoning_parser)
    tools = reply.tools
    forced = tools.forced_schema()
    params = await state.host_work.run(
        body.constraint_chars(forced),
        body.sampling_params,
        forced_call=forced,
        defaults=served.engine.sampling_defaults,
    )
    if reply.keep_special_tokens:
        params = dataclasses.replace(params, skip_special_tokens=False)
    inputs = served.engine.inputs
    body.check_template_trusted(state.config.server.trust_request_chat_template)
    chars = inputs.check_prompt_size([[m.for_template() for m in body.messages], tools.tools], "messages")
    content_format = state.config.server.chat_template_content_format
    prompt = await state.host_work.run(chars, _checked_prompt, inputs, body, params, tools.tools, content_format)
    params = inputs.with_default_max_tokens(params, served.engine.sampling_defaults.get("max_tokens"), [prompt])
    gate = reply.reasoning_gate(inputs.tokenizer)
    lora = state.registry.lora_for(body.model)
    if body.use_beam_search:
        beam = body.beam_search_params(params, inputs.max_model_len - len(prompt.token_ids))
        return (
            served,
            reply,
            BeamGeneration.start(served.engine, engine_id, [prompt], params, beam, served.metrics, public, lora),
        )
    thinking = reply.thinking(inputs.tokenizer)
    if thinking is not None and inputs.speculative:
        raise bad_request(
            f"thinking_token_budget is not supported with speculative decoding: {REQUEST_SUPPORT}",
            param="thinking_token_budget",
        )
    generation = await Generation.start(
        served.engine, engine_id, [prompt], params, served.metrics, public, gate, lora, thinking, priority=body.priority
    )
    return served, reply, generation


def _choice(
    delta: Delta, message: AssistantMessage, tools: ToolPlan, top: int, names: TokenNames, ids: bool | None
) -> ChatChoice:
    finish_reason = tools.finish_reason(message.called, delta.finish_reason)
    return ChatChoice(
        index=delta.index,
        message=message,
        logprobs=token_logprobs(delta, top, names),
        finish_reason=finish_reason,
        stop_reason=delta.stop_reason,
        token_ids=delta.token_ids if ids else None,
    )


def render_chat(
    inputs: InputProcessor,
    body: ChatCompletionRequest | TokenizeRequest,
    tools: list[dict] | None = None,
    content_format: str = "auto",
) -> Prompt:
    """The request's messages through the model's chat template, with its template switches and variables, and the
    tools (transformers' ``apply_chat_template(tools=...)``); their content in the server's
    ``chat_template_content_format``."""
    assert body.messages is not None
    options = body.template_options()
    if tools:
        options["tools"] = tools
    messages = [m.for_template() for m in body.messages]
    add_special_tokens = bool(body.add_special_tokens)
    return inputs.render_chat(messages, add_special_tokens=add_special_tokens, content_format=content_format, **options)


def _checked_prompt(
    inputs: InputProcessor,
    body: ChatCompletionRequest,
    params: SamplingParams,
    tools: list[dict] | None,
    content_format: str,
) -> Prompt:
    """Rendered, then truncated and checked by the input door like any prompt."""
    prompt = inputs.process(render_chat(inputs, body, tools, content_format), params, param="messages")
    return dataclasses.replace(prompt, cache_salt=checked_cache_salt(body.cache_salt))


async def _chunks(
    body: ChatCompletionRequest,
    reply: ReplyPlan,
    generation: Generation | BeamGeneration,
    response_id: str,
    created: int,
    model: str,
    tokenizer: Tokenizer,
) -> AsyncIterator[str]:
    """OpenAI's chunk sequence: the role first for every choice, then reasoning, content and tool call deltas (the
    last with the finish reason), then, with ``include_usage``, one chunk of usage and no choices. The role chunks
    wait for the first output, as OpenAI's and vLLM's do: benchmark clients (vLLM's among them) take the first
    chunk with a choice for the first token, so role chunks sent at once made a chat's TTFT read as ~0. A step that
    adds nothing to send (text held back by a reasoning or tool parser) sends no chunk; with ``return_token_ids``
    its tokens go with the choice's next chunk, and the role chunks carry the prompt's (its text with
    ``return_prompt_text``); with ``echo``, the echoed message follows them."""
    exclude = None if body.include_usage else {"usage"}
    top = body.top_logprobs or 0
    writer = ChunkWriter("chat.completion.chunk", response_id, created, model, body.include_usage)

    running = RunningUsage() if body.continuous_usage else None
    names = TokenNames(tokenizer, bool(body.return_tokens_as_token_ids))

    def chunk(
        choice: ChatChunkChoice,
        usage: UsageInfo | None = None,
        prompt_ids: list[int] | None = None,
        prompt_text: str | None = None,
    ) -> str:
        return ChatCompletionChunk(
            id=response_id,
            created=created,
            model=model,
            choices=[choice],
            usage=usage,
            prompt_token_ids=prompt_ids,
            prompt_text=prompt_text,
        ).model_dump_json(exclude=exclude)

    streams: dict[int, ReplyDeltas] = {}
    unsent: dict[int, list[int]] = {}  # return_token_ids: each choice's tokens since its last chunk
    prompt_tokens = 0
    async for d in batched(generation.deltas(), body.stream_interval or 1):
        if not streams:
            prompt_tokens = len(generation.prompts[0].token_ids)
            for payload in _opening(body, generation.prompts[0], running is not None, chunk):
                yield payload
        stream = streams.setdefault(d.index, reply.stream(tokenizer))
        reasoning, content, calls = stream.feed(d.text, d.token_ids, finished=d.finish_reason is not None)
        finish_reason = reply.tools.finish_reason(stream.called, d.finish_reason)
        logprobs = token_logprobs(d, top, names)
        usage = None if running is None else running.after(d, prompt_tokens)
        if body.return_token_ids:
            unsent.setdefault(d.index, []).extend(d.token_ids)
        if not (reasoning or content or calls or finish_reason or logprobs):
            continue  # a step held back (a forced call's text, a marker not yet whole): nothing to send, as vLLM
        if not (calls or logprobs or body.return_token_ids):  # the common chunk: written without pydantic
            yield writer.chat(d.index, content, reasoning, finish_reason, d.stop_reason, usage)
            continue
        *naming, calls = _by_call(calls)
        for named in naming:  # a call's naming entry in a chunk of its own, before its arguments' first fragment
            yield chunk(ChatChunkChoice(index=d.index, delta=DeltaMessage(tool_calls=named)))
        delta = DeltaMessage(content=content, reasoning=reasoning, tool_calls=calls or None)
        choice = ChatChunkChoice(
            index=d.index,
            delta=delta,
            logprobs=logprobs,
            finish_reason=finish_reason,
            stop_reason=d.stop_reason,
            token_ids=unsent.pop(d.index, []) if body.return_token_ids else None,
        )
        yield chunk(choice, usage)
    if body.include_usage:
        usage = _usage(generation, [s.reasoning_tokens for s in streams.values()])
        yield ChatCompletionChunk(
            id=response_id, created=created, model=model, choices=[], usage=usage
        ).model_dump_json()


def _opening(body: ChatCompletionRequest, prompt: Prompt, running: bool, chunk: Callable[..., str]) -> list[str]:
    """A stream's first chunks: each choice's role (with its usage so far where ``running``: the prompt's; the
    prompt's tokens and text where asked for), then the echoed message."""
    tokens = len(prompt.token_ids)
    usage = UsageInfo(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens) if running else None
    ids = prompt.token_ids if body.return_token_ids else None
    text = prompt.text if body.return_prompt_text else None
    roles = [ChatChunkChoice(index=i, delta=DeltaMessage(role="assistant", content="")) for i in range(body.n)]
    return [chunk(role, usage, ids, text) for role in roles] + [chunk(echo) for echo in _echo_choices(body)]


def _echo_choices(body: ChatCompletionRequest) -> list[ChatChunkChoice]:
    """vLLM's chat ``echo`` streamed: the echoed message's text as each choice's first content (none without it)."""
    echoed = body.echoed
    return [ChatChunkChoice(index=i, delta=DeltaMessage(content=echoed)) for i in range(body.n)] if echoed else []


def _by_call(calls: list[DeltaToolCall]) -> list[list[DeltaToolCall]]:
    """A step's call deltas as runs that name each call index at most once (a new run where one comes again, as a
    call's naming entry and its first arguments do): OpenAI's chunks never hold two entries of one call, and clients
    that read ``delta.tool_calls[0]``, or take an entry with an id for the call's start, lost the arguments sent
    with its name. Always at least one run (maybe empty)."""
    runs: list[list[DeltaToolCall]] = [[]]
    for call in calls:
        if any(c.index == call.index for c in runs[-1]):
            runs.append([])
        runs[-1].append(call)
    return runs


def _usage(generation: Generation | BeamGeneration, reasoning_tokens: list[int | None]) -> UsageInfo:
    """The token counts, with the reasoning's (vLLM's ``completion_tokens_details``) where a format read them."""
    usage = generation.usage()
    counted = [n for n in reasoning_tokens if n is not None]
    if counted:
        usage.completion_tokens_details = CompletionTokensDetails(reasoning_tokens=sum(counted))
    return usage


def token_logprobs(delta: Delta, top: int, names: TokenNames) -> ChatLogprobs | None:
    """OpenAI's per-token entries of ``delta`` (the Responses API's ``output_text.logprobs`` are the same)."""
    if delta.logprobs is None:
        return None
    return ChatLogprobs(
        content=[
            _token_logprob(entry, token_id, top, names)
            for token_id, entry in zip(delta.token_ids, delta.logprobs, strict=True)
        ]
    )


def _token_logprob(entry: dict[int, Logprob], token_id: int, top: int, names: TokenNames) -> TokenLogprob:
    return TokenLogprob(
        **_top(token_id, entry[token_id], names).model_dump(),
        top_logprobs=[_top(tid, lp, names) for tid, lp in top_logprobs(entry, top)],
    )


def _top(token_id: int, lp: Logprob, names: TokenNames) -> TopLogprob:
    """OpenAI's token entry: ``bytes`` are the token's own bytes, so a sequence's concatenate to its text's UTF-8
    even where a token holds part of a character; ``token`` is their text, with OpenAI's ``\\xNN`` escapes for
    bytes of an incomplete character (vLLM's U+FFFD there loses them)."""
    logprob = max(lp.logprob, MIN_LOGPROB)
    return TopLogprob(token=names.text(token_id), logprob=logprob, bytes=list(names.bytes(token_id)))

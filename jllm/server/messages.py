"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: Anthropic's Messages API (what Claude Code and the
``anthropic`` SDK speak; vLLM serves it too) on the chat route's machinery. The request becomes the chat request it
stands for (``messages_schemas``) and takes chat's start and ``Generation``; the reply's reasoning, text and calls
come back as content blocks (``thinking``, ``text``, ``tool_use``), whole or as the API's typed events
(``message_start``, per block ``content_block_start`` / ``_delta`` / ``_stop``, ``message_delta``,
``message_stop``). Errors on these routes are Anthropic's JSON (``errors.APIError.anthropic_body``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from aiohttp import web

from jllm.server.chat import start_chat
from jllm.server.chat_schemas import AssistantMessage, ChatCompletionRequest, DeltaToolCall
from jllm.server.errors import APIError, as_api_error
from jllm.server.generation import Delta, Generation
from jllm.server.info import tokenize_body
from jllm.server.info_schemas import TokenizeRequest
from jllm.server.messages_schemas import CHAT_TO_MESSAGES, CountTokensRequest, MessagesRequest
from jllm.server.middleware import public_id, request_id
from jllm.server.reasoning import ReplyPlan
from jllm.server.registry import ServedModel
from jllm.server.sse import send_events
from jllm.server.state import ServerState, request_body, server_state
from jllm.tool_parsers.base import NOT_JSON

ABORTED = "the server stopped the request before it finished (it is draining or unloading the model)"
Event = tuple[str, str]  # (the event's type, its JSON)


async def create_message(request: web.Request) -> web.StreamResponse:
    body = await request_body(request, MessagesRequest)
    public = public_id(request, None)
    served, reply, generation = await _start(server_state(request), body, request_id(request), public)
    view = _MessageView(f"msg_{public}", body.model or served.name, generation)
    try:
        if body.stream:
            return await send_events(request, view.events(reply, served), done=False)
        (delta,) = await generation.wait()
        return web.json_response(view.whole(reply.message(delta.text), delta))
    finally:
        generation.close()


async def count_tokens(request: web.Request) -> web.Response:
    """The prompt's tokens a message request with this conversation and these tools would have."""
    body = await request_body(request, CountTokensRequest)
    try:
        tokenize = TokenizeRequest.model_validate(body.as_tokenize())
        counted = await tokenize_body(server_state(request), tokenize)
    except Exception as e:
        raise as_api_error(e).renamed(CHAT_TO_MESSAGES) from e
    return web.json_response({"input_tokens": counted.count})


async def _start(
    state: ServerState, body: MessagesRequest, engine_id: str, public: str
) -> tuple[ServedModel, ReplyPlan, Generation]:
    """Chat's start on the chat request this one stands for; its errors name this route's fields."""
    try:
        chat = ChatCompletionRequest.model_validate(body.as_chat())
        served, reply, generation = await start_chat(state, chat, engine_id, public)
    except Exception as e:
        raise as_api_error(e).renamed(CHAT_TO_MESSAGES) from e
    assert isinstance(generation, Generation)  # no beam search on this route
    return served, reply, generation


def _stop(delta: Delta, called: bool) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence): ``tool_use`` after calls, a matched stop sequence, ``max_tokens`` when cut
    short, else ``end_turn``; a request the server aborted (a drain) is an error."""
    if delta.finish_reason == "abort":
        raise APIError(503, ABORTED, type="server_error", code="engine_unavailable")
    if called:
        return "tool_use", None
    if delta.finish_reason == "length":
        return "max_tokens", None
    if isinstance(delta.stop_reason, str):
        return "stop_sequence", delta.stop_reason
    return "end_turn", None


def _arguments(text: str) -> dict[str, Any]:
    """A call's arguments as the ``input`` object (arguments that are not a JSON object stay whole under "value")."""
    try:
        value = json.loads(text)
    except NOT_JSON:
        return {"value": text}
    return value if isinstance(value, dict) else {"value": value}


class _MessageView:
    """One request's message, whole or as its stream of events."""

    def __init__(self, message_id: str, model: str, generation: Generation) -> None:
        self.id = message_id
        self.model = model
        self.generation = generation
        self._blocks = 0  # blocks opened so far
        self._open: str | None = None  # the open block's type

    def usage(self, finished: bool = True) -> dict[str, int]:
        """Anthropic's usage: ``input_tokens`` are those the prefix cache did not serve (``cache_read_...``)."""
        u = self.generation.usage()
        cached = self.generation.cached_tokens if finished else 0
        return {
            "input_tokens": u.prompt_tokens - cached,
            "output_tokens": u.completion_tokens if finished else 0,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0,
        }

    def message(self, content: list[dict[str, Any]], stop: tuple[str | None, str | None]) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop[0],
            "stop_sequence": stop[1],
            "usage": self.usage(finished=stop[0] is not None),
        }

    def whole(self, reply: AssistantMessage, delta: Delta) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if reply.reasoning:
            content.append({"type": "thinking", "thinking": reply.reasoning, "signature": ""})
        if reply.content or not reply.tool_calls:
            content.append({"type": "text", "text": reply.content or ""})
        for call in reply.tool_calls:
            content.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.function.name,
                    "input": _arguments(call.function.arguments),
                }
            )
        return self.message(content, _stop(delta, reply.called))

    async def events(self, reply: ReplyPlan, served: ServedModel) -> AsyncIterator[Event]:
        """Anthropic's event sequence; a failure after the headers is an ``error`` event."""
        try:
            yield _event("message_start", message=self.message([], (None, None)))
            stream = reply.stream(served.engine.inputs.tokenizer)
            last: Delta | None = None
            async for d in self.generation.deltas():
                last = d
                for event in self._blocks_of(*stream.feed(d.text, d.token_ids, finished=d.finish_reason is not None)):
                    yield event
            assert last is not None
            for event in self._end(_stop(last, stream.called)):
                yield event
        except Exception as e:
            yield "error", json.dumps(as_api_error(e).anthropic_body(), separators=(",", ":"))

    def _blocks_of(self, reasoning: str | None, content: str | None, calls: list[DeltaToolCall]) -> Iterator[Event]:
        """One delta's events: its reasoning, its text, its calls, each in its block."""
        if reasoning:
            yield from self._delta("thinking", {"type": "thinking_delta", "thinking": reasoning})
        if content:
            yield from self._delta("text", {"type": "text_delta", "text": content})
        for call in calls:
            yield from self._call(call)

    def _end(self, stop: tuple[str, str | None]) -> Iterator[Event]:
        """The last block closed (an empty text block if none came, as the whole message has one), the stop reason
        and usage, the end."""
        if self._blocks == 0:
            yield from self._delta("text", {"type": "text_delta", "text": ""})
        yield from self._close()
        yield _event("message_delta", delta={"stop_reason": stop[0], "stop_sequence": stop[1]}, usage=self.usage())
        yield _event("message_stop")

    def _delta(self, kind: str, delta: dict[str, Any]) -> Iterator[Event]:
        """A delta of a ``kind`` block, opening one (and closing the one before) unless it is open."""
        if self._open != kind:
            yield from self._close()
            empty: dict[str, Any] = {"text": ""} if kind == "text" else {"thinking": "", "signature": ""}
            yield from self._start({"type": kind, **empty})
        if delta.get("text", delta.get("thinking")):
            yield _event("content_block_delta", index=self._blocks - 1, delta=delta)

    def _call(self, call: DeltaToolCall) -> Iterator[Event]:
        """A call's first delta (its id and name) opens its block; later ones add to its input's JSON."""
        if call.id is not None:
            yield from self._close()
            yield from self._start({"type": "tool_use", "id": call.id, "name": call.function.name or "", "input": {}})
        if call.function.arguments:
            delta = {"type": "input_json_delta", "partial_json": call.function.arguments}
            yield _event("content_block_delta", index=self._blocks - 1, delta=delta)

    def _start(self, block: dict[str, Any]) -> Iterator[Event]:
        self._open = block["type"]
        self._blocks += 1
        yield _event("content_block_start", index=self._blocks - 1, content_block=block)

    def _close(self) -> Iterator[Event]:
        if self._open is not None:
            self._open = None
            yield _event("content_block_stop", index=self._blocks - 1)


def _event(kind: str, **fields: Any) -> Event:
    return kind, json.dumps({"type": kind, **fields}, separators=(",", ":"), ensure_ascii=False)

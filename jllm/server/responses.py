"""``POST /v1/responses``: OpenAI's Responses API on the chat route's machinery. The request becomes the chat request
it stands for (``responses_schemas``) and takes chat's start (routing, tools, sampling fields, the chat template,
admission) and ``Generation``; the reply's reasoning (with the model's ``reasoning_parser``), text and calls come
back as output items (``responses_output``: a ``reasoning`` item with ``reasoning_text``, and the same text as its
``summary_text`` where ``reasoning.summary`` asks, a ``message`` with ``output_text``, ``function_call`` items), whole
or as the Responses API's typed events. A finished response is
stored unless asked not to (``response_store``): ``previous_response_id`` continues it, and ``GET`` / ``DELETE
/v1/responses/{id}`` and its ``input_items`` read or drop it.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from aiohttp import web

from jllm.reasoning_parsers import reasoning_format
from jllm.server.chat import start_chat, token_logprobs
from jllm.server.chat_schemas import AssistantMessage, ChatCompletionRequest, DeltaToolCall, TokenLogprob
from jllm.server.errors import APIError, as_api_error, bad_request
from jllm.server.generation import Delta, Generation
from jllm.server.middleware import public_id, request_id
from jllm.server.reasoning import ReplyPlan
from jllm.server.registry import ServedModel
from jllm.server.response_store import ResponseStore, StoredResponse, input_item_page
from jllm.server.responses_output import (
    IncompleteDetails,
    InputTokensDetails,
    OutputFunctionCall,
    OutputItem,
    OutputMessage,
    OutputReasoning,
    OutputText,
    OutputTokensDetails,
    ReasoningText,
    ResponseError,
    ResponseObject,
    ResponseUsage,
    SummaryText,
)
from jllm.server.responses_schemas import CHAT_TO_RESPONSES, LOGPROBS, InputItem, ResponsesRequest
from jllm.server.schemas import TokenNames
from jllm.server.sse import send_events
from jllm.server.state import ServerState, server_state
from jllm.tokenizer import Tokenizer

Status = Literal["completed", "incomplete", "failed"]
ABORTED = "the server stopped the request before it finished (it is draining or unloading the model)"
Event = tuple[str, str]  # (the event's type, its JSON)


async def create_response(request: web.Request) -> web.StreamResponse:
    raw = await request.read()
    state = server_state(request)
    body = await state.host_work.parse(ResponsesRequest, raw)
    previous = _previous(state.responses, body.previous_response_id)
    keeping = _Keeping(state.responses, body.input, previous, len(raw)) if _stores(state.responses, body) else None
    if previous is not None:
        body = body.continuing(previous.conversation)
    public = public_id(request, body.request_id)
    served, reply, generation = await _start(state, body, request_id(request), public)
    tokenizer = served.engine.inputs.tokenizer
    view = _ResponseView(body, f"resp_{public}", body.model or served.name, generation, tokenizer, keeping)
    if body.background:
        response = view.finished("in_progress", [])  # stored now, in progress: GET polls it
        task = state.responses.run(view.id, _generate_in_background(view, reply))
        task.add_done_callback(view.ended_in_background)
        return web.json_response(text=response.model_dump_json())
    try:
        if body.stream:
            return await send_events(request, view.events(reply), done=False)
        (delta,) = await generation.wait()
        return web.json_response(text=view.whole(reply, delta).model_dump_json())
    finally:
        generation.close()


async def _generate_in_background(view: _ResponseView, reply: ReplyPlan) -> None:
    """A background response's generation, stored once it ends: finished, or cancelled (its request aborted)."""
    try:
        (delta,) = await view.generation.wait()
        view.whole(reply, delta)
    except asyncio.CancelledError:
        view.finished("cancelled", [])
    except Exception as e:  # the client is gone: the failure goes into the stored response
        view.finished("failed", [], as_api_error(e).message)


@dataclasses.dataclass(frozen=True)
class _Keeping:
    """Where a response goes once finished: the store, with what it was made from."""

    store: ResponseStore
    own_input: list[InputItem]
    previous: StoredResponse | None  # the response it continues
    body_bytes: int

    def keep(self, response: ResponseObject) -> bool:
        return self.store.put(response, self.own_input, self.previous, self.body_bytes)


def _previous(store: ResponseStore, response_id: str | None) -> StoredResponse | None:
    """The stored response ``previous_response_id`` names (a 404 if it names none; a 400 while it is a background
    response still generating: its conversation has no output yet, so a continuation would follow the input alone)."""
    if response_id is None:
        return None
    previous = store.get(response_id)
    if previous is None:
        raise _not_found(response_id, "previous_response_id", "previous_response_not_found")
    if previous.response.status == "in_progress":
        raise bad_request(
            f"previous_response_id {response_id!r} names a background response still in progress: poll GET "
            f"/v1/responses/{response_id} until its status is no longer in_progress, then continue it",
            "previous_response_id",
        )
    return previous


def _stores(store: ResponseStore, body: ResponsesRequest) -> bool:
    """Whether the response is to be stored: unless ``store: false`` (or the store is off: then ``store: true`` and
    ``background``, which only the store can answer, are a 400)."""
    for asked, name in ((body.store, "store"), (body.background, "background")):
        if asked and not store.enabled:
            raise bad_request(f"{name}: true needs the response store, which responses_store_mb: 0 turns off", name)
    return store.enabled and body.store is not False


def _not_found(response_id: str, param: str, code: str = "not_found") -> APIError:
    return APIError(
        404,
        f"{param} {response_id!r} names no stored response (never stored, made with store: false, deleted, "
        "dropped as the store filled, or made before the server restarted)",
        param=param,
        code=code,
    )


def _stored(request: web.Request) -> StoredResponse:
    response_id = request.match_info["response_id"]
    stored = server_state(request).responses.get(response_id)
    if stored is None:
        raise _not_found(response_id, "response_id")
    return stored


def _check_query(request: web.Request, allowed: dict[str, tuple[str, ...] | None]) -> None:
    """A 400 naming a query parameter this route does not honour (``allowed``: each name's accepted values, None
    for any)."""
    for name, value in request.query.items():
        if name not in allowed or (allowed[name] is not None and value not in allowed[name]):
            raise bad_request(f"query parameter {name}={value!r} is not supported here", param=name)


async def retrieve_response(request: web.Request) -> web.StreamResponse:
    """``GET /v1/responses/{id}``: the stored response as it finished (a stored response cannot be streamed again)."""
    _check_query(request, {"stream": ("false",), "include_obfuscation": None})
    return web.json_response(text=_stored(request).response.model_dump_json())


async def delete_response(request: web.Request) -> web.StreamResponse:
    """Drops a stored response (a background one still generating is cancelled first)."""
    store = server_state(request).responses
    response_id = _stored(request).response.id
    await store.cancel(response_id)
    store.delete(response_id)
    return web.json_response({"id": response_id, "object": "response", "deleted": True})


async def cancel_response(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses/{id}/cancel``: stops a background response still generating (it is then stored
    ``cancelled``); one that has ended is answered as it is. Only background responses can be cancelled."""
    if not _stored(request).response.background:
        raise bad_request("only background responses can be cancelled", param="response_id")
    await server_state(request).responses.cancel(request.match_info["response_id"])
    return web.json_response(text=_stored(request).response.model_dump_json())


async def list_input_items(request: web.Request) -> web.StreamResponse:
    """``GET /v1/responses/{id}/input_items``: the items its request sent (not those of the responses it continued),
    OpenAI's list page: ``order`` desc by default, ``limit`` 1-100 (20), ``after`` an item id."""
    _check_query(request, {"order": ("asc", "desc"), "limit": None, "after": None})
    stored = _stored(request)
    limit = request.query.get("limit", "20")
    if not limit.isdigit() or not 1 <= int(limit) <= 100:
        raise bad_request(f"limit must be an integer in 1..100, got {limit!r}", param="limit")
    items = input_item_page(stored.response.id, stored.input)
    if request.query.get("order", "desc") == "desc":
        items.reverse()
    ids = [item["id"] for item in items]
    after = request.query.get("after")
    if after is not None and after not in ids:
        raise bad_request(f"after {after!r} is not an item of this response's input", param="after")
    start = 0 if after is None else ids.index(after) + 1
    page = items[start : start + int(limit)]
    return web.json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": start + int(limit) < len(items),
        }
    )


async def _start(
    state: ServerState, body: ResponsesRequest, engine_id: str, public: str
) -> tuple[ServedModel, ReplyPlan, Generation]:
    """Chat's start on the chat request this one stands for; its errors name this route's fields. The text's
    logprobs are refused beside a reasoning format: a reply's tokens are not told apart."""
    try:
        chat = ChatCompletionRequest.model_validate(body.as_chat())
        served = state.route(chat.model)
        parser = served.entry.config.server.reasoning_parser
        kwargs = served.engine.inputs.template_kwargs(chat.chat_template_kwargs, chat.reasoning_effort)
        if body.logprobs and parser is not None and reasoning_format(parser, kwargs) is not None:
            raise bad_request(
                f"include: {LOGPROBS!r} is not supported with the model's reasoning_parser {parser!r} (the "
                "reasoning's tokens are not told apart from the text's)",
                param="include",
            )
        return await start_chat(state, chat, engine_id, public)
    except Exception as e:
        raise as_api_error(e).renamed(CHAT_TO_RESPONSES) from e


def _status(finish_reason: str | None) -> Status:
    """``length``: cut at max_output_tokens (or the context); ``abort``: the server ended it (a drain)."""
    if finish_reason == "length":
        return "incomplete"
    return "failed" if finish_reason == "abort" else "completed"


def _item_status(status: Status) -> Literal["completed", "incomplete"]:
    return "completed" if status == "completed" else "incomplete"


def _message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def _call_item(call_id: str, name: str, arguments: str, status: str) -> OutputFunctionCall:
    return OutputFunctionCall(
        id=f"fc_{call_id.removeprefix('call_')}", call_id=call_id, name=name, arguments=arguments, status=status
    )


def _reasoning_id() -> str:
    return f"rs_{uuid.uuid4().hex[:24]}"


def _items(
    message: AssistantMessage, status: Status, logprobs: list[TokenLogprob], summarized: bool
) -> list[OutputItem]:
    """A whole reply's items: its reasoning (``summarized``: its text its summary too), its text as a message (also
    when empty, unless it made calls), then each call. Each item is "completed" but the last, which has the
    response's status, as the stream closes them: an item ends when the next begins, the last when the reply does (a
    message before calls had taken the response's "incomplete" where its stream said "completed")."""
    items: list[OutputItem] = []
    if message.reasoning:
        reasoning = [ReasoningText(text=message.reasoning)]
        summary = [SummaryText(text=message.reasoning)] if summarized else []
        items.append(OutputReasoning(id=_reasoning_id(), status="completed", content=reasoning, summary=summary))
    if message.content or not message.tool_calls:
        text = OutputText(text=message.content or "", logprobs=logprobs)
        items.append(OutputMessage(id=_message_id(), status="completed", content=[text]))
    items += [_call_item(c.id, c.function.name, c.function.arguments, "completed") for c in message.tool_calls]
    items[-1].status = _item_status(status)
    return items


class _ResponseView:
    """One request's response object, and its stream of events (each numbered in ``sequence_number``)."""

    def __init__(
        self,
        body: ResponsesRequest,
        response_id: str,
        model: str,
        generation: Generation,
        tokenizer: Tokenizer,
        keeping: _Keeping | None,
    ) -> None:
        self.body = body
        self.keeping = keeping
        self.tokenizer = tokenizer
        self.id = response_id
        self.model = model
        self.generation = generation
        self.created_at = int(time.time())
        self.reasoning_tokens = 0  # the reply's, once counted
        self.items: list[OutputItem] = []  # streamed so far, the last one perhaps still open
        self._open = False
        self._sequence = 0

    def logprobs(self, delta: Delta) -> list[TokenLogprob]:
        """The entries of ``delta``'s tokens, with ``include`` asking for them."""
        entries = token_logprobs(delta, self.body.top_logprobs or 0, TokenNames(self.tokenizer))
        return [] if entries is None else entries.content

    def whole(self, reply: ReplyPlan, delta: Delta) -> ResponseObject:
        """The finished response of a whole reply (``delta``: its one choice, whole), stored if asked."""
        self.reasoning_tokens = reply.reasoning_tokens(delta.token_ids, self.tokenizer) or 0
        status = _status(delta.finish_reason)
        items = _items(reply.message(delta.text), status, self.logprobs(delta), self.body.summary is not None)
        return self.finished(status, items)

    def ended_in_background(self, task: asyncio.Task[None]) -> None:
        """A background generation's end: its request closed (aborted if unfinished); one cancelled before it began
        is stored cancelled here."""
        self.generation.close()
        if task.cancelled():
            self.finished("cancelled", [])

    def finished(self, status: str, items: list[OutputItem], error: str = ABORTED) -> ResponseObject:
        """The response as it stands (finished, or a background one in progress), stored if asked (``store`` false
        in it when it alone is over the store's bound); ``error``: a failed one's message."""
        response = self.response(status, items, error)
        if self.keeping is not None:
            response.store = self.keeping.keep(response)
        return response

    def response(self, status: str, items: list[OutputItem] | None = None, error: str = ABORTED) -> ResponseObject:
        body, params = self.body, self.generation.params
        usage = None
        if status not in ("in_progress", "cancelled"):
            u = self.generation.usage()
            usage = ResponseUsage(
                input_tokens=u.prompt_tokens,
                input_tokens_details=InputTokensDetails(cached_tokens=self.generation.cached_tokens),
                output_tokens=u.completion_tokens,
                output_tokens_details=OutputTokensDetails(reasoning_tokens=self.reasoning_tokens),
                total_tokens=u.total_tokens,
            )
        choice = body.tool_choice
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status=status,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
            error=ResponseError(code="server_error", message=error) if status == "failed" else None,
            model=self.model,
            output=items or [],
            usage=usage,
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            max_tool_calls=body.max_tool_calls,
            truncation=body.truncation,
            metadata=body.metadata or {},
            parallel_tool_calls=body.parallel_tool_calls,
            previous_response_id=body.previous_response_id,
            store=self.keeping is not None,
            background=body.background,
            reasoning={"effort": body.effort, "summary": body.summary},
            temperature=params.temperature,
            text=body.text_echo(),
            tool_choice=choice if isinstance(choice, str) else choice.model_dump(),
            tools=[t.model_dump(exclude_none=True) for t in body.tools],
            top_p=params.top_p,
            top_logprobs=body.top_logprobs or 0,
            user=body.user,
        )

    async def events(self, reply: ReplyPlan) -> AsyncIterator[Event]:
        """OpenAI's event sequence: created, in_progress; per output item its added event, its deltas and its done
        events; then completed (incomplete, failed). A failure after the headers is an ``error`` event."""
        try:
            yield self._event("response.created", response=self.response("in_progress").model_dump())
            yield self._event("response.in_progress", response=self.response("in_progress").model_dump())
            stream, finish_reason = reply.stream(self.tokenizer), None
            logprobs: list[TokenLogprob] = []  # a token's entry waits for its text (part of a character has none)
            async for d in self.generation.deltas():
                reasoning, content, calls = stream.feed(d.text, d.token_ids, finished=d.finish_reason is not None)
                self.reasoning_tokens = stream.reasoning_tokens or 0
                finish_reason = d.finish_reason or finish_reason
                logprobs += self.logprobs(d)
                if reasoning:
                    for event in self._reasoning(reasoning):
                        yield event
                if content:
                    for event in self._text(content, logprobs):
                        yield event
                    logprobs = []
                for call in calls:
                    for event in self._call(call):
                        yield event
            for event in self._end(_status(finish_reason), logprobs):
                yield event
        except Exception as e:
            error = as_api_error(e)
            yield self._event("error", code=error.code, message=error.message, param=error.param)

    def _end(self, status: Status, logprobs: list[TokenLogprob]) -> Iterator[Event]:
        """The last item's done events (an empty message if nothing came, as the whole reply has one), then the
        response; ``logprobs``: entries of tokens without text (a stop string's), which the whole reply has too."""
        if not any(isinstance(item, OutputMessage | OutputFunctionCall) for item in self.items):
            yield from self._text("", [])
        if self._open and isinstance(self.items[-1], OutputMessage):
            self.items[-1].content[0].logprobs += logprobs
        yield from self._close(status)
        yield self._event(f"response.{status}", response=self.finished(status, self.items).model_dump())

    def _event(self, kind: str, **fields: Any) -> Event:
        payload = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return kind, json.dumps(payload, separators=(",", ":"), ensure_ascii=False)

    def _place(self) -> dict[str, Any]:
        return {"item_id": self.items[-1].id, "output_index": len(self.items) - 1}

    def _add(self, item: OutputItem) -> Iterator[Event]:
        yield from self._close("completed")
        self.items.append(item)
        self._open = True
        yield self._event("response.output_item.added", output_index=len(self.items) - 1, item=item.model_dump())

    def _text(self, text: str, logprobs: list[TokenLogprob]) -> Iterator[Event]:
        if not (self._open and isinstance(self.items[-1], OutputMessage)):
            yield from self._add(OutputMessage(id=_message_id(), status="in_progress", content=[]))
            part = OutputText(text="")
            yield self._event("response.content_part.added", **self._place(), content_index=0, part=part.model_dump())
            self.items[-1].content.append(part)  # type: ignore[union-attr]
        message = self.items[-1]
        assert isinstance(message, OutputMessage)
        part = message.content[0]
        part.text += text
        part.logprobs += logprobs
        if text:
            entries = [e.model_dump() for e in logprobs]
            yield self._event(
                "response.output_text.delta", **self._place(), content_index=0, delta=text, logprobs=entries
            )

    def _reasoning(self, text: str) -> Iterator[Event]:
        """The reasoning's text as ``content``, and with ``reasoning.summary`` asked for as its one summary part too
        (OpenAI's summary events, which the Codex CLI shows)."""
        if not (self._open and isinstance(self.items[-1], OutputReasoning)):
            yield from self._add(OutputReasoning(id=_reasoning_id(), status="in_progress", content=[]))
            part = ReasoningText(text="")
            yield self._event("response.content_part.added", **self._place(), content_index=0, part=part.model_dump())
            self.items[-1].content.append(part)  # type: ignore[union-attr]
            if self.body.summary is not None:
                summary = SummaryText(text="")
                yield self._event(
                    "response.reasoning_summary_part.added", **self._place(), summary_index=0, part=summary.model_dump()
                )
                self.items[-1].summary.append(summary)  # type: ignore[union-attr]
        item = self.items[-1]
        assert isinstance(item, OutputReasoning)
        item.content[0].text += text
        yield self._event("response.reasoning_text.delta", **self._place(), content_index=0, delta=text)
        if item.summary:
            item.summary[0].text += text
            yield self._event("response.reasoning_summary_text.delta", **self._place(), summary_index=0, delta=text)

    def _call(self, call: DeltaToolCall) -> Iterator[Event]:
        """A call's first delta (its id and name) opens its item; later ones add to its arguments."""
        if call.id is not None:
            yield from self._add(_call_item(call.id, call.function.name or "", "", "in_progress"))
        item = self.items[-1]
        assert isinstance(item, OutputFunctionCall)
        if call.function.arguments:
            item.arguments += call.function.arguments
            yield self._event("response.function_call_arguments.delta", **self._place(), delta=call.function.arguments)

    def _close(self, status: Status) -> Iterator[Event]:
        """The open item's done events: its text or arguments whole, then the item."""
        if not self._open:
            return
        self._open = False
        item = self.items[-1]
        if isinstance(item, OutputMessage):
            part = item.content[0]
            entries = [e.model_dump() for e in part.logprobs]
            yield self._event(
                "response.output_text.done", **self._place(), content_index=0, text=part.text, logprobs=entries
            )
            yield self._event("response.content_part.done", **self._place(), content_index=0, part=part.model_dump())
        elif isinstance(item, OutputReasoning):
            part = item.content[0]
            yield self._event("response.reasoning_text.done", **self._place(), content_index=0, text=part.text)
            yield self._event("response.content_part.done", **self._place(), content_index=0, part=part.model_dump())
            if item.summary:
                summary, place = item.summary[0], {**self._place(), "summary_index": 0}
                yield self._event("response.reasoning_summary_text.done", **place, text=summary.text)
                yield self._event("response.reasoning_summary_part.done", **place, part=summary.model_dump())
        else:
            yield self._event(
                "response.function_call_arguments.done", **self._place(), name=item.name, arguments=item.arguments
            )
        item.status = _item_status(status)
        yield self._event("response.output_item.done", output_index=len(self.items) - 1, item=item.model_dump())

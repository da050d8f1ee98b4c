"""The Responses API's store: finished responses kept so that a later request can continue one
(``previous_response_id``) and ``GET`` / ``DELETE /v1/responses/{id}`` (and its ``input_items``) can read or drop it.

OpenAI stores every response unless the request says ``store: false``; so does this server, in memory and bounded:
at most ``responses_store_mb`` of request bodies and response objects, the least recently used dropped first (vLLM's
store, off unless asked, grows without bound). A restart forgets everything.

A stored response keeps its conversation: the items it continued (its predecessor's conversation), its own input,
and its output as input items, which a continuation's input follows. ``instructions`` are not carried over
(OpenAI's rule). Each response's size counts its whole conversation, so a long chain is counted more than once:
the bound errs on the side of memory.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import OrderedDict
from collections.abc import Coroutine, Sequence
from typing import Any

from pydantic import TypeAdapter

from jllm.server.responses_output import OutputItem, ResponseObject
from jllm.server.responses_schemas import InputItem

_INPUT_ITEM: TypeAdapter[InputItem] = TypeAdapter(InputItem)


@dataclasses.dataclass(frozen=True)
class StoredResponse:
    response: ResponseObject
    input: tuple[InputItem, ...]  # the request's own input items (``input_items`` lists them)
    conversation: tuple[InputItem, ...]  # what a continuation follows: earlier turns, the input, the output
    size: int  # bytes counted against the store's bound: the conversation's requests and responses


def as_input(items: Sequence[OutputItem]) -> list[InputItem]:
    """Output items as the input items a client would pass back."""
    return [_INPUT_ITEM.validate_python(item.model_dump()) for item in items]


_ID_PREFIXES = {"message": "msg", "reasoning": "rs", "function_call": "fc", "function_call_output": "fco"}


def input_item_page(response_id: str, items: Sequence[InputItem]) -> list[dict[str, Any]]:
    """A response's input items as OpenAI lists them: each with an id (stable: its place in the input) and a
    message's text as content parts."""
    listed = []
    for i, item in enumerate(items):
        dumped = item.model_dump()
        content = dumped.get("content")
        if dumped["type"] == "message" and isinstance(content, str):
            part = "output_text" if dumped["role"] == "assistant" else "input_text"
            dumped["content"] = [{"type": part, "text": content}]
        prefix = _ID_PREFIXES[dumped["type"]]
        listed.append({"id": f"{prefix}_{response_id.removeprefix('resp_')}_{i}", **dumped})
    return listed


class ResponseStore:
    """Stored responses by id, least recently used first. The event loop alone touches it: no lock."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._responses: OrderedDict[str, StoredResponse] = OrderedDict()
        self._bytes = 0
        self.running: dict[str, asyncio.Task[None]] = {}  # background responses still generating, by id

    def run(self, response_id: str, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Runs a background response's ``work`` until it ends or is cancelled (``cancel``)."""
        task = asyncio.ensure_future(work)
        self.running[response_id] = task
        task.add_done_callback(lambda _: self.running.pop(response_id, None))
        return task

    async def cancel(self, response_id: str) -> None:
        """Stops a background response still generating (its work stores it cancelled) and waits for it."""
        task = self.running.get(response_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self) -> None:
        """Cancels every background response still generating (the server is stopping)."""
        for response_id in list(self.running):
            await self.cancel(response_id)

    @property
    def enabled(self) -> bool:
        return self.capacity_bytes > 0

    def get(self, response_id: str) -> StoredResponse | None:
        stored = self._responses.get(response_id)
        if stored is not None:
            self._responses.move_to_end(response_id)
        return stored

    def put(
        self, response: ResponseObject, own_input: Sequence[InputItem], previous: StoredResponse | None, body_bytes: int
    ) -> bool:
        """Keeps ``response`` (made from ``own_input`` after ``previous``'s conversation, by a request body of
        ``body_bytes``); False when it alone is over the bound, and so not kept."""
        size = (previous.size if previous else 0) + body_bytes + len(response.model_dump_json())
        if size > self.capacity_bytes:
            return False
        earlier = previous.conversation if previous else ()
        conversation = (*earlier, *own_input, *as_input(response.output))
        self.delete(response.id)
        self._responses[response.id] = StoredResponse(response, tuple(own_input), conversation, size)
        self._bytes += size
        while self._bytes > self.capacity_bytes:
            _, dropped = self._responses.popitem(last=False)
            self._bytes -= dropped.size
        return True

    def delete(self, response_id: str) -> bool:
        stored = self._responses.pop(response_id, None)
        if stored is not None:
            self._bytes -= stored.size
        return stored is not None

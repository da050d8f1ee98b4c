"""``POST /v1/completions``: text or token-id prompts (one or a list), streamed or not, with echo and logprobs.

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
from jllm.server.errors import bad_request
from jllm.server.generation import Delta, Generation
from jllm.server.middleware import request_id
from jllm.server.schemas import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse
from jllm.server.sse import send_events
from jllm.server.state import server_state


async def create_completion(request: web.Request) -> web.StreamResponse:
    state = server_state(request)
    body = CompletionRequest.model_validate_json(await request.read())
    state.check_model(body.model)
    if body.echo and body.logprobs is not None:
        raise bad_request("echo together with logprobs is not supported yet (it needs prompt logprobs)", "echo")
    engine = state.require_engine()
    params = body.sampling_params()
    prompts = await asyncio.to_thread(_to_prompts, engine.inputs, body.prompts(), params, body.echo)
    generation = await Generation.start(engine, request_id(request), prompts, params, state.metrics)
    view = _CompletionView(body, prompts, f"cmpl-{request_id(request)}", state.model_name)
    try:
        if body.stream:
            return await send_events(request, view.chunks(generation))
        choices = [view.choice(delta) for delta in await generation.wait()]
        response = CompletionResponse(
            id=view.id, created=view.created, model=view.model, choices=choices, usage=generation.usage()
        )
        return web.json_response(text=response.model_dump_json())
    finally:
        generation.close()


def _to_prompts(
    inputs: InputProcessor, prompts: list[str | list[int]], params: SamplingParams, echo: bool
) -> list[Prompt]:
    """Through the input door off the event loop (a long prompt takes a while to encode); token-id prompts are
    decoded only for ``echo``."""
    return [inputs.process(prompt, params, with_text=echo) for prompt in prompts]


class _CompletionView:
    """Renders one request's deltas as OpenAI completion choices and stream chunks."""

    def __init__(self, body: CompletionRequest, prompts: list[Prompt], response_id: str, model: str) -> None:
        self.body = body
        self.prompts = prompts
        self.id = response_id
        self.model = model
        self.created = int(time.time())
        self._offsets: dict[int, int] = {}  # choice index -> characters of its text sent so far

    async def chunks(self, generation: Generation) -> AsyncIterator[str]:
        exclude = None if self.body.include_usage else {"usage"}
        async for delta in generation.deltas():
            chunk = CompletionResponse(id=self.id, created=self.created, model=self.model, choices=[self.choice(delta)])
            yield chunk.model_dump_json(exclude=exclude)
        if self.body.include_usage:
            last = CompletionResponse(
                id=self.id, created=self.created, model=self.model, choices=[], usage=generation.usage()
            )
            yield last.model_dump_json()

    def choice(self, delta: Delta) -> CompletionChoice:
        """The choice for ``delta``; a choice's first piece carries the echoed prompt."""
        first = delta.index not in self._offsets
        text = (self.prompts[delta.prompt_index].text or "") + delta.text if first and self.body.echo else delta.text
        offset = self._offsets.get(delta.index, 0)
        self._offsets[delta.index] = offset + len(text)
        logprobs = None
        if delta.logprobs is not None:
            logprobs = _logprobs(delta.token_ids, delta.logprobs, offset)
        return CompletionChoice(index=delta.index, text=text, logprobs=logprobs, finish_reason=delta.finish_reason)


def _logprobs(token_ids: list[int], entries: list[dict[int, Logprob]], offset: int) -> CompletionLogprobs:
    """OpenAI's legacy layout: parallel lists, one row per token; ``top_logprobs`` holds the top k and the chosen."""
    out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for token_id, entry in zip(token_ids, entries, strict=True):
        chosen = entry[token_id]
        token = chosen.decoded_token or ""
        out.tokens.append(token)
        out.token_logprobs.append(chosen.logprob)
        out.top_logprobs.append({lp.decoded_token or "": lp.logprob for lp in entry.values()})
        out.text_offset.append(offset)
        offset += len(token)
    return out

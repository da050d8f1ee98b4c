"""``POST /v1/completions``: text or token-id prompts (one or a list), streamed or not, with echo and logprobs
(echo with logprobs returns the prompt's tokens and logprobs too, in the legacy layout vLLM returns).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import codecs
import dataclasses
import time
from collections.abc import AsyncIterator

from aiohttp import web

from jllm.inputs import InputProcessor, Prompt, checked_cache_salt
from jllm.outputs import Logprob
from jllm.sampling import SamplingParams
from jllm.server.beam_generation import BeamGeneration
from jllm.server.completions_schemas import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse
from jllm.server.generation import Delta, Generation, RunningUsage, batched
from jllm.server.middleware import public_id, request_id
from jllm.server.registry import ServedModel
from jllm.server.schemas import MIN_LOGPROB, TokenNames, prompt_logprobs_json
from jllm.server.sse import send_events
from jllm.server.state import ServerState, request_body, server_state
from jllm.server.stream_chunks import ChunkWriter
from jllm.tokenizer import Tokenizer


async def create_completion(request: web.Request) -> web.StreamResponse:
    body = await request_body(request, CompletionRequest)
    public = public_id(request, body.request_id)
    served, prompts, generation = await start_completion(server_state(request), body, request_id(request), public)
    view = _CompletionView(body, prompts, f"cmpl-{public}", body.model or served.name, served.engine.inputs.tokenizer)
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


async def start_completion(
    state: ServerState, body: CompletionRequest, engine_id: str, public: str
) -> tuple[ServedModel, list[Prompt], Generation | BeamGeneration]:
    """Routes the request, checks its sampling fields and prompts, and admits it; what this route and the gRPC
    ``Generate`` share, so both refuse a bad request with the same message."""
    served = state.route_generation(body.model)
    defaults = served.engine.sampling_defaults
    # a grammar is checked here
    params = await state.host_work.run(body.constraint_chars(), body.sampling_params, defaults=defaults)
    inputs = served.engine.inputs
    chars = inputs.check_prompt_size(body.prompts(), "prompt")
    prompts = await state.host_work.run(chars, _to_prompts, inputs, body, params)
    lora = state.registry.lora_for(body.model)
    if body.use_beam_search:
        beam = body.beam_search_params(params, inputs.max_model_len - max(len(p.token_ids) for p in prompts))
        return (
            served,
            prompts,
            BeamGeneration.start(served.engine, engine_id, prompts, params, beam, served.metrics, public, lora),
        )
    generation = await Generation.start(
        served.engine, engine_id, prompts, params, served.metrics, public, None, lora, priority=body.priority
    )
    return served, prompts, generation


def _to_prompts(inputs: InputProcessor, body: CompletionRequest, params: SamplingParams) -> list[Prompt]:
    """Through the input door off the event loop (a long prompt takes a while to encode); token-id prompts are
    decoded only for ``echo``."""
    return [
        dataclasses.replace(
            inputs.process(prompt, params, with_text=body.echo, add_special_tokens=body.add_special_tokens),
            cache_salt=checked_cache_salt(body.cache_salt),
        )
        for prompt in body.prompts()
    ]


class _CompletionView:
    """Renders one request's deltas as OpenAI completion choices and stream chunks."""

    def __init__(
        self,
        body: CompletionRequest,
        prompts: list[Prompt],
        response_id: str,
        model: str,
        tokenizer: Tokenizer,
    ) -> None:
        self.body = body
        self.prompts = prompts
        self.id = response_id
        self.model = model
        self.tokenizer = tokenizer
        self.names = TokenNames(tokenizer, bool(body.return_tokens_as_token_ids))  # how logprobs name tokens
        self.created = int(time.time())
        # choice index -> its tokens' bytes so far as text: a UTF-8 decoder and the characters it has given
        self._texts: dict[int, tuple[codecs.IncrementalDecoder, int]] = {}

    async def chunks(self, generation: Generation | BeamGeneration) -> AsyncIterator[str]:
        exclude: dict = {"choices": {"__all__": {"prompt_logprobs"}}}  # vLLM streams no prompt_logprobs
        if not self.body.include_usage:
            exclude["usage"] = True
        running = RunningUsage() if self.body.continuous_usage else None
        writer = ChunkWriter("text_completion", self.id, self.created, self.model, self.body.include_usage)
        # the common chunk, written without pydantic: its text alone (no logprobs, echo or token ids)
        plain = self.body.logprobs is None and not self.body.echo and not self.body.return_token_ids
        async for delta in batched(generation.deltas(), self.body.stream_interval or 1):
            usage = None if running is None else running.after(delta, len(self.prompts[delta.prompt_index].token_ids))
            if plain and delta.logprobs is None:
                yield writer.text(delta.index, delta.text, delta.finish_reason, delta.stop_reason, usage)
                continue
            choices = [self.choice(delta)]
            chunk = CompletionResponse(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
            yield chunk.model_dump_json(exclude=exclude)
        if self.body.include_usage:
            last = CompletionResponse(
                id=self.id, created=self.created, model=self.model, choices=[], usage=generation.usage()
            )
            yield last.model_dump_json()

    def choice(self, delta: Delta) -> CompletionChoice:
        """The choice for ``delta``; with ``echo``, a choice's first piece carries the prompt first (its text, and
        with logprobs its tokens, the first one's logprob null). ``echo`` with ``max_tokens`` 0 returns the prompt
        alone (one token is generated and dropped, as vLLM does)."""
        first = delta.index not in self._texts
        if first:
            self._texts[delta.index] = (codecs.getincrementaldecoder("utf-8")(errors="replace"), 0)
        text, token_ids, entries = delta.text, delta.token_ids, delta.logprobs
        if self.body.echo and self.body.max_tokens == 0:
            text, token_ids, entries = "", [], [] if entries is not None else None
        generated = token_ids
        if first and self.body.echo:
            prompt = self.prompts[delta.prompt_index]
            text = (prompt.text or "") + text
            token_ids = prompt.token_ids + token_ids
            if entries is not None:
                entries = (delta.prompt_logprobs or [None] * len(prompt.token_ids)) + entries
        ids = self.body.return_token_ids
        return CompletionChoice(
            index=delta.index,
            text=text,
            logprobs=None if entries is None else self._logprobs(delta.index, token_ids, entries),
            finish_reason=delta.finish_reason,
            stop_reason=delta.stop_reason,
            prompt_logprobs=prompt_logprobs_json(delta.prompt_logprobs) if first else None,
            prompt_token_ids=self.prompts[delta.prompt_index].token_ids if ids and first else None,
            token_ids=generated if ids else None,
        )

    def _logprobs(
        self, index: int, token_ids: list[int], entries: list[dict[int, Logprob] | None]
    ) -> CompletionLogprobs:
        """OpenAI's legacy layout: parallel lists, one row per token; ``top_logprobs`` holds the top k and the
        chosen one; a token without logprobs (the prompt's first) has null in both. A token is its text, with
        ``\\xNN`` escapes for the bytes of a character it holds part of (so two such tokens stay two keys of
        ``top_logprobs``; both were U+FFFD, one key); ``text_offset`` is the character its first byte is in."""
        out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        text = self.names.text
        decoder, chars = self._texts[index]
        for token_id, entry in zip(token_ids, entries, strict=True):
            logprob, top = None, None
            if entry is not None:
                logprob = max(entry[token_id].logprob, MIN_LOGPROB)
                top = {text(tid): max(lp.logprob, MIN_LOGPROB) for tid, lp in entry.items()}
            out.tokens.append(text(token_id))
            out.token_logprobs.append(logprob)
            out.top_logprobs.append(top)
            out.text_offset.append(chars)
            chars += len(decoder.decode(self.tokenizer.token_bytes(token_id)))
        self._texts[index] = (decoder, chars)
        return out

"""A request with ``use_beam_search``: vLLM's beam search (``jllm.beam_search``) run on the engine, each step one
``Generation`` of one-token requests (a beam each), the ``n`` best beams of each prompt returned as its choices.

It answers as ``Generation`` does (``deltas``, ``wait``, ``usage``, ``close``), so the completion and chat routes
render it unchanged: each choice arrives whole, in one delta, once the search ends (streamed too, as vLLM does).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from jllm.async_engine import AsyncEngine
from jllm.beam_search import BeamSearch, BeamSearchParams
from jllm.inputs import Prompt
from jllm.lora.request import LoRARequest
from jllm.sampling import SamplingParams
from jllm.server.errors import bad_request
from jllm.server.generation import Delta, Generation
from jllm.server.metrics import ModelMetrics
from jllm.server.schemas import UsageInfo
from jllm.speculative import refuse_beam_search


class BeamGeneration:
    """The search over one request's prompts; the step running now (if any) is aborted by ``close``."""

    def __init__(
        self,
        engine: AsyncEngine,
        request_id: str,
        prompts: list[Prompt],
        params: SamplingParams,
        beam: BeamSearchParams,
        metrics: ModelMetrics,
        public_id: str,
        lora_request: LoRARequest | None,
    ) -> None:
        """``params``: the request's own, checked (what ``Generation.params`` is); ``beam``: the search they ask."""
        self.engine, self.request_id, self.prompts, self.params, self.beam = engine, request_id, prompts, params, beam
        self.metrics, self.public_id, self.lora_request = metrics, public_id, lora_request
        self._step: Generation | None = None
        self._completion_tokens = 0
        self._cached_tokens = 0

    @classmethod
    def start(
        cls,
        engine: AsyncEngine,
        request_id: str,
        prompts: list[Prompt],
        params: SamplingParams,
        beam: BeamSearchParams,
        metrics: ModelMetrics,
        public_id: str,
        lora_request: LoRARequest | None = None,
    ) -> BeamGeneration:
        """Checks the search fits the queue (a step holds every prompt's beams at once); the search itself runs
        as its deltas are read."""
        if engine.inputs.speculative:
            raise refuse_beam_search()
        beams = len(prompts) * beam.beam_width
        if beams > engine.max_queued_requests:
            raise bad_request(
                f"n: {len(prompts)} prompts x {beam.beam_width} beams = {beams} requests a step exceed the server's "
                f"max_queued_requests={engine.max_queued_requests}; send smaller requests",
                param="n",
            )
        return cls(engine, request_id, prompts, params, beam, metrics, public_id, lora_request)

    async def deltas(self) -> AsyncIterator[Delta]:
        """Runs the search step by step, then yields each prompt's beams, best first, as whole choices."""
        tokenizer = self.engine.inputs.tokenizer
        search = BeamSearch([p.token_ids for p in self.prompts], self.beam, set(tokenizer.eos_token_ids))
        step_params = self.beam.step_params()
        while not search.finished:
            salt = self.prompts[0].cache_salt  # the request's, on every prompt
            beams = [Prompt(tokens, cache_salt=salt) for tokens in search.step_prompts()]
            step_id = f"{self.request_id}-beam{search.steps}"
            self._step = await Generation.start(
                self.engine, step_id, beams, step_params, self.metrics, self.public_id, None, self.lora_request
            )
            deltas = await self._step.wait()  # one per beam, in step_prompts' order (n = 1: index = prompt index)
            if search.steps == 0:
                self._cached_tokens = self._step.cached_tokens
            search.advance([delta.logprobs[0] for delta in deltas])
        self._step = None
        width = self.beam.beam_width
        for i, (prompt, output) in enumerate(zip(self.prompts, search.results(), strict=True)):
            for j, beam in enumerate(output.sequences):
                generated = beam.tokens[len(prompt.token_ids) :]
                self._completion_tokens += len(generated)
                text = tokenizer.decode(generated, skip_special_tokens=self.params.skip_special_tokens)
                yield Delta(i * width + j, i, text, generated, None, beam.finish_reason, beam.stop_reason)

    async def wait(self) -> list[Delta]:
        """Every choice, in index order (for a response that is not streamed)."""
        return [delta async for delta in self.deltas()]

    def usage(self) -> UsageInfo:
        """The prompts' tokens and the returned beams' generated tokens (not every candidate the search tried)."""
        prompt = sum(len(p.token_ids) for p in self.prompts)
        return UsageInfo(
            prompt_tokens=prompt,
            completion_tokens=self._completion_tokens,
            total_tokens=prompt + self._completion_tokens,
        )

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens the prefix cache served in the first step."""
        return self._cached_tokens

    def close(self) -> None:
        """Aborts the step running now (the client left or the handler failed); safe to call twice."""
        if self._step is not None:
            self._step.close()

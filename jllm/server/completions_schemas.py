"""The bodies of ``POST /v1/completions`` (OpenAI's legacy text completions, plus vLLM's extra fields): the request
and the reply, which is also each streamed chunk's body.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from jllm.sampling import SamplingParams
from jllm.server.schemas import (
    PromptLogprobs,
    UsageInfo,
    WithTokenIds,
    _GenerationRequest,
    _refused_when_set,
    prompt_list,
)


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16  # OpenAI's and vLLM's default for completions (omitted or null)
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    add_special_tokens: bool = True  # vLLM's: false encodes text prompts without BOS and the like

    _no_suffix = _refused_when_set("suffix", "is not supported: the served models do not fill in the middle")

    def sampling_params(self, defaults: dict[str, Any] | None = None) -> SamplingParams:
        """Echo with logprobs needs the prompt's logprobs: as many top ones as the output's, unless asked apart;
        ``defaults``: the served model's sampling defaults (the completion's own default of 16 tokens stays)."""
        prompt_logprobs = self.prompt_logprobs
        if prompt_logprobs is None and self.echo:
            prompt_logprobs = self.logprobs
        max_tokens = 1 if self.echo and self.max_tokens == 0 else self.max_tokens  # the prompt alone (vLLM)
        return self._sampling_params(
            max_tokens=max_tokens, logprobs=self.logprobs, prompt_logprobs=prompt_logprobs, defaults=defaults
        )

    def prompts(self) -> list[str | list[int]]:
        """One entry per engine request; an empty prompt list is a 400."""
        return prompt_list(self.prompt, "prompt")


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(WithTokenIds):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # vLLM's: the stop string or stop token id that ended it
    prompt_logprobs: PromptLogprobs | None = None  # vLLM's, with prompt_logprobs or echo with logprobs; not streamed
    prompt_token_ids: list[int] | None = None  # vLLM's, with return_token_ids (streamed: a choice's first chunk)
    token_ids: list[int] | None = None  # vLLM's, with return_token_ids: the generated tokens (streamed: the new)


class CompletionResponse(BaseModel):
    """The body of a completion and, streamed, of each chunk (OpenAI uses one object type for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None

"""Request and response bodies of the OpenAI API (plus vLLM's extra sampling fields), as pydantic models.

Requests validate strictly, as OpenAI does: ``"max_tokens": "10"`` is a 400, not a silent cast. Unknown fields are
ignored, as vLLM does, so clients that send newer OpenAI fields keep working; but a known field asking for what this
server cannot do (``logit_bias``, ``tools``, JSON ``response_format``, ``suffix``, ``best_of`` > n) is a 400 naming
it, since ignoring it would return something else than asked for. Range checks stay in ``SamplingParams`` (one
definition of what is allowed); a violation there becomes a 400 naming the field.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_serializer

from jllm.sampling import MAX_LOGPROBS, SamplingParams
from jllm.server.errors import bad_request

MAX_N = 128  # OpenAI's limit on choices per request; also bounds the sequences one request can create


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


def _refused_when_set(field: str, why: str) -> Any:
    """A validator for a known field this server cannot honour: any non-empty value is a 400 saying ``why``
    (ignoring it would return something else than asked for); an empty one (``{}``, ``""``, false) passes."""

    def refuse(cls: type, value: Any) -> Any:
        if value:
            raise ValueError(why)
        return value

    return field_validator(field)(classmethod(refuse))


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]

    @field_validator("type")
    @classmethod
    def _only_text(cls, value: str) -> str:
        if value != "text":
            raise ValueError(f"{value!r} is not supported: this server has no guided decoding; use 'text'")
        return value


class _GenerationRequest(_Request):
    """The fields both generation endpoints share: OpenAI's, then vLLM's extras. None means "the default"."""

    model: str | None = None
    n: int = Field(1, le=MAX_N)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None  # omitted: up to the context limit
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    best_of: int | None = None
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n")
        if value is not None and n is not None and value != n:
            raise ValueError(f"must equal n={n}, got {value}: ranking more samples than are returned is not supported")
        return value

    _no_logit_bias = _refused_when_set("logit_bias", "is not supported by this server; leave it out")

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("is only allowed when stream is true")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def _sampling_params(
        self,
        *,
        max_tokens: int | None,
        logprobs: int | None,
        prompt_logprobs: int | None = None,
        sent_as: dict[str, str] | None = None,
    ) -> SamplingParams:
        """``sent_as`` renames a SamplingParams field in errors to the request field it came from."""
        optional = {
            name: getattr(self, name)
            for name in (
                "temperature",
                "top_p",
                "seed",
                "stop",
                "presence_penalty",
                "frequency_penalty",
                "top_k",
                "min_p",
                "repetition_penalty",
                "min_tokens",
                "ignore_eos",
                "stop_token_ids",
                "skip_special_tokens",
                "include_stop_str_in_output",
            )
            if getattr(self, name) is not None
        }
        try:
            return SamplingParams(
                n=self.n, max_tokens=max_tokens, logprobs=logprobs, prompt_logprobs=prompt_logprobs, **optional
            )
        except ValueError as e:  # SamplingParams' messages start with the field's name
            field, _, rest = str(e).partition(" ")
            field = (sent_as or {}).get(field, field)
            raise bad_request(f"{field} {rest}", param=field if field in type(self).model_fields else None) from e


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None  # None only for the assistant (OpenAI's, beside tool calls)

    @field_validator("content")
    @classmethod
    def _only_the_assistant_says_nothing(cls, value: str | list[TextPart] | None, info: ValidationInfo) -> Any:
        if value is None and info.data.get("role") != "assistant":
            raise ValueError("is required (null is only allowed in an assistant message)")
        return value

    def for_template(self) -> dict[str, str]:
        """The plain {role, content} a chat template expects ("developer" is OpenAI's newer name for "system")."""
        content = self.content or ""
        text = content if isinstance(content, str) else "".join(part.text for part in content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class _ChatTemplateOptions(_Request):
    """vLLM's switches for how chat messages render through the template (chat completions and /tokenize)."""

    add_generation_prompt: bool = True  # False renders the messages without the assistant's opening
    continue_final_message: bool = False  # the reply continues the last message, left open

    @field_validator("continue_final_message")
    @classmethod
    def _continue_without_generation_prompt(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("add_generation_prompt", True):
            raise ValueError("needs add_generation_prompt set to false (the reply continues the last message)")
        return value


class ChatCompletionRequest(_GenerationRequest, _ChatTemplateOptions):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens; wins when both are given
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False  # vLLM's chat echo (the last message before the reply): not supported
    tool_choice: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None

    _no_chat_echo = _refused_when_set("echo", "is not supported for chat completions; leave it out")
    _no_tools = _refused_when_set("tools", "are not supported: this server does not call tools; leave them out")

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_calls(cls, value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if value not in (None, "none"):
            raise ValueError(f"{value!r} is not supported: this server does not call tools; use 'none'")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("needs logprobs set to true")
        return value

    def sampling_params(self) -> SamplingParams:
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        sent_as = {"max_tokens": "max_completion_tokens"} if self.max_completion_tokens is not None else None
        return self._sampling_params(max_tokens=max_tokens, logprobs=logprobs, sent_as=sent_as)


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None

    _no_suffix = _refused_when_set("suffix", "is not supported: the served models do not fill in the middle")

    def sampling_params(self) -> SamplingParams:
        echo_logprobs = self.logprobs if self.echo else None
        return self._sampling_params(max_tokens=self.max_tokens, logprobs=self.logprobs, prompt_logprobs=echo_logprobs)

    def prompts(self) -> list[str | list[int]]:
        """One entry per engine request; an empty prompt list is a 400."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if not self.prompt:
            raise bad_request("prompt is empty: give a string, a list of strings, or token ids", param="prompt")
        if isinstance(self.prompt[0], int):
            return [self.prompt]  # one prompt of token ids
        return list(self.prompt)


class TokenizeRequest(_ChatTemplateOptions):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int]


# ---------------------------------------------------------------------------------------------------- responses


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    """A streamed piece of the assistant message: the role comes once, first; absent keys are left out."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer
    def _present_only(self) -> dict[str, Any]:
        return {k: v for k, v in (("role", self.role), ("content", self.content)) if v is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None  # sent (null until the last chunk) only with stream_options.include_usage


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    """The body of a completion and, streamed, of each chunk (OpenAI uses one object type for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "jllm"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str

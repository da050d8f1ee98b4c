"""The bodies of ``POST /v1/chat/completions`` (OpenAI's, plus vLLM's extra fields): the request with its messages,
tools, tool choice and chat-template options, and the reply, whole or as streamed chunks (the assistant's message,
its tool calls and reasoning, and the chat form of logprobs that the Responses API reuses).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_serializer, model_validator

from jllm.chat_content import TEXT_PART_TYPES
from jllm.sampling import MAX_LOGPROBS, SamplingParams
from jllm.server.errors import bad_request
from jllm.server.schemas import (
    UNSUPPORTED_FIELDS,
    PromptLogprobs,
    UsageInfo,
    WithTokenIds,
    _GenerationRequest,
    _refused_when_set,
    _Request,
    _StrictRequest,
)

# reasoning_effort and chat_template reach the chat template (``InputProcessor.render_chat``); thinking_token_budget
# the reply's reasoning (``jllm.server.reasoning``)
CHAT_FIELDS = ("reasoning_effort", "thinking_token_budget", "chat_template")
CHAT_UNSUPPORTED_FIELDS = {name: why for name, why in UNSUPPORTED_FIELDS.items() if name not in CHAT_FIELDS}


class TextPart(_Request):
    """A text part; the Responses API's ``input_text`` and ``output_text`` parts are text too (as vLLM reads them).
    A null text is a part skipped, as vLLM's chat parser skips it."""

    type: Literal["text", "input_text", "output_text"]
    text: str | None = None


class RefusalPart(_Request):
    """An assistant's earlier refusal, passed back (OpenAI's assistant content part): read as its text, as vLLM
    reads it (null: skipped)."""

    type: Literal["refusal"]
    refusal: str | None = None

    @property
    def text(self) -> str | None:
        return self.refusal


class ThinkingPart(_Request):
    """Reasoning passed back as a content part (vLLM's "thinking" part, Anthropic's block; its ``signature`` or
    ``closed`` ignored): read as its text, as vLLM's chat parser reads it (null: skipped)."""

    type: Literal["thinking"]
    thinking: str | None = None

    @property
    def text(self) -> str | None:
        return self.thinking


# keys that make a part without a type a media part in vLLM's parser (_parse_chat_message_content_mm_part)
MEDIA_PART_KEYS = (
    "image_url", "image_pil", "image_embeds", "audio_embeds", "video_embeds", "prompt_embeds", "audio_url",
    "input_audio", "video_url",
)  # fmt: skip


class FunctionCall(_StrictRequest):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCallIn(_StrictRequest):
    """A call the assistant made earlier in the conversation."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall

    def for_template(self) -> dict[str, Any]:
        """The call as sent: the input door parses its arguments for the template (``inputs.render_chat``)."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.function.name, "arguments": self.function.arguments},
        }


class ChatMessage(_StrictRequest):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # None only for the assistant (OpenAI's, beside tool calls)
    content: str | list[Annotated[TextPart | RefusalPart | ThinkingPart, Field(discriminator="type")]] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None  # the assistant's calls
    tool_call_id: str | None = None  # a tool message: the call it answers
    # the assistant's reasoning before its reply (vLLM's name, and DeepSeek's that templates read), for templates
    # that show earlier turns' reasoning
    reasoning: str | None = None
    reasoning_content: str | None = None
    # an assistant's earlier refusal (OpenAI's message field): its text where the content is empty, as a refusal
    # part is read
    refusal: str | None = None
    # what OpenAI's reply messages carry, passed back as they came: empty, they ask nothing
    annotations: list[Any] | None = None
    audio: dict[str, Any] | None = None
    function_call: dict[str, Any] | None = None

    _no_annotations = _refused_when_set(
        "annotations", "are a reply's citations, which no template reads; leave them out"
    )
    _no_audio = _refused_when_set("audio", "is an earlier spoken reply: the served models take text only")
    _no_function_call = _refused_when_set(
        "function_call", "is OpenAI's deprecated function calling: pass the call in tool_calls"
    )

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        """A part of another type (``image_url``, ``input_audio``, ``file``: what LangChain and the SDKs send for
        images and files; a media key without a type, as vLLM reads one) is refused by name, as vLLM refuses media
        for a text-only model; pydantic's own message listed every member of the union. vLLM's ``tool_reference``
        names a deferred tool (``defer_loading``), which jllm does not have."""
        for i, part in enumerate(value if isinstance(value, list) else []):
            if not isinstance(part, dict):
                continue
            kind = part.get("type")
            if kind is None:
                media = next((key for key in MEDIA_PART_KEYS if key in part), None)
                if media is not None:
                    raise ValueError(f"part {i} has {media!r}: the served models take text parts only")
                raise ValueError(f"part {i} has no type: give each part one of {list(TEXT_PART_TYPES)}")
            if kind == "tool_reference":
                raise ValueError(
                    f"part {i} has type 'tool_reference': this server has no deferred tools (defer_loading) for it to "
                    "name; send the tool in tools"
                )
            if isinstance(kind, str) and kind not in TEXT_PART_TYPES:
                raise ValueError(f"part {i} has type {kind!r}: the served models take text parts only")
        return value

    @model_validator(mode="after")
    def _tool_fields_by_role(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":  # missing or null: a field validator sees only null
            raise ValueError(f"content is required in a {self.role} message (only an assistant's may be left out)")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("tool_calls are only allowed in an assistant message")
        if (self.reasoning is not None or self.reasoning_content is not None) and self.role != "assistant":
            raise ValueError("reasoning is only allowed in an assistant message")
        if (self.tool_call_id is None) == (self.role == "tool"):
            raise ValueError("tool_call_id is required in a tool message, and only there")
        return self

    @property
    def text(self) -> str:
        """The content as one string: text parts joined on a newline, null as empty (vLLM's "string" format)."""
        content = self._content or ""
        return (
            content if isinstance(content, str) else "\n".join(part.text for part in content if part.text is not None)
        )

    @property
    def _content(self) -> str | list[TextPart | RefusalPart | ThinkingPart] | None:
        """The content, or an assistant's ``refusal`` where it has none."""
        return self.refusal if self.content in (None, "", []) and self.refusal is not None else self.content

    def for_template(self) -> dict[str, Any]:
        """What a chat template expects: {role, content} (content as sent, its parts as text parts: the input door
        gives it to the template as one string or as parts, ``jllm.chat_content``; "developer" is OpenAI's newer
        name for "system"), plus the assistant's tool calls and reasoning (as ``reasoning_content``,
        ``reasoning`` and ``thinking``) or the tool result's call id when present."""
        content = self._content
        if isinstance(content, list):
            content = [{"type": "text", "text": part.text} for part in content if part.text is not None]
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content}
        if self.tool_calls:
            message["tool_calls"] = [call.for_template() for call in self.tool_calls]
        reasoning = self.reasoning if self.reasoning is not None else self.reasoning_content
        if reasoning is not None:  # gpt-oss's template reads "thinking"
            message["reasoning_content"] = message["reasoning"] = message["thinking"] = reasoning
        for key in ("tool_call_id", "name"):
            if getattr(self, key) is not None:
                message[key] = getattr(self, key)
        return message


class FunctionDefinition(_StrictRequest):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema of the arguments
    strict: bool | None = None  # forced calls always follow the schema; auto calls are parsed as generated


class ToolDefinition(_StrictRequest):
    type: Literal["function"]
    function: FunctionDefinition
    defer_loading: bool = False  # vLLM's: the tool found by a search tool, which this server does not have

    _loaded = _refused_when_set(
        "defer_loading", "is not supported: this server has no tool search to load a deferred tool; send it loaded"
    )


def tools_for_template(tools: list[ToolDefinition] | None) -> list[dict[str, Any]] | None:
    """A request's tools as chat templates take them: OpenAI's tool objects, unset keys left out."""
    return [t.model_dump(exclude_none=True, exclude={"defer_loading"}) for t in tools] if tools else None


class NamedFunction(_StrictRequest):
    name: str


class NamedToolChoice(_StrictRequest):
    type: Literal["function"]
    function: NamedFunction


class _ChatTemplateOptions(_Request):
    """vLLM's switches for how chat messages render through the template (chat completions and /tokenize)."""

    # None (left out): chat_template_kwargs' key of that name, else True / False; given, they win over it (vLLM's)
    add_generation_prompt: bool | None = None  # False renders the messages without the assistant's opening
    continue_final_message: bool | None = None  # the reply continues the last message, left open
    chat_template_kwargs: dict[str, Any] | None = None  # variables for the template
    documents: list[dict[str, str]] | None = None  # for templates that render retrieved documents (RAG)
    # the request's own Jinja template, in place of the model's: only where the server trusts it
    chat_template: str | None = None
    # the template variable of that name (gpt-oss's); refused where the template does not read it. OpenAI's values
    # and DeepSeek V4's "max", as vLLM takes them
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None

    def template_options(self) -> dict[str, Any]:
        """The arguments of ``InputProcessor.render_chat`` these fields ask for."""
        options: dict[str, Any] = {
            "add_generation_prompt": self.add_generation_prompt,
            "continue_final_message": self.continue_final_message,
            "chat_template_kwargs": self.chat_template_kwargs,
            "reasoning_effort": self.reasoning_effort,
        }
        if self.documents is not None:
            options["documents"] = self.documents
        if self.chat_template is not None:
            options["chat_template"] = self.chat_template
        return options

    def check_template_trusted(self, trusted: bool) -> None:
        """vLLM's rule: a request's ``chat_template`` is refused unless the server was started trusting them
        (a template is code the server runs, in transformers' sandbox)."""
        if self.chat_template is not None and not trusted:
            raise bad_request(
                "chat_template: this server renders with the model's own chat template; start it with "
                "--trust-request-chat-template (trust_request_chat_template: true) to take a request's",
                param="chat_template",
            )

    @field_validator("continue_final_message")
    @classmethod
    def _continue_without_generation_prompt(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        """Both given true: vLLM's check_generation_prompt (left out, the switch may come from chat_template_kwargs:
        the input door checks the two the template gets)."""
        if value and info.data.get("add_generation_prompt") is True:
            raise ValueError("needs add_generation_prompt set to false (the reply continues the last message)")
        return value


class ChatCompletionRequest(_GenerationRequest, _ChatTemplateOptions):
    refused_fields = CHAT_UNSUPPORTED_FIELDS

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens; wins when both are given
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False  # vLLM's chat echo: an assistant's last message repeated before the reply (``echoed``)
    tools: list[ToolDefinition] | None = None
    # None: "auto" with tools, else "none" (OpenAI's default)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None  # None or true: several calls in one reply may come
    include_reasoning: bool = True  # false leaves the reasoning out (with a reasoning parser; else there is none)
    # vLLM's: the reasoning cut at this many tokens by forcing its closing marker (-1: no limit; jllm.thinking_budget)
    thinking_token_budget: int | None = Field(None, ge=-1)
    add_special_tokens: bool = False  # vLLM's: the tokenizer's special tokens on top of the template's
    return_prompt_text: bool | None = None  # vLLM's: the rendered prompt in prompt_text (a stream's role chunks)
    # OpenAI's end-user id under its newer name, as user: for abuse monitoring, nothing in the answer (vLLM's user)
    safety_identifier: str | None = None
    # OpenAI's hint routing requests that share a prefix to one cache: here every request shares the one prefix
    # cache (cache_salt keeps a request's pages apart), so the hint is met as sent
    prompt_cache_key: str | None = None

    @field_validator("tools")
    @classmethod
    def _tools_not_empty(cls, value: list[ToolDefinition] | None) -> list[ToolDefinition] | None:
        """vLLM's check_tool_usage and OpenAI refuse an empty list whatever the tool_choice: no tools is no field."""
        if value == []:
            raise ValueError("must not be an empty array: give at least one tool or leave tools out")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(cls, value: Any, info: ValidationInfo) -> Any:
        """vLLM's rule: every tool_choice but "none" needs tools ("auto" without them had been read as "none");
        a named one must be among them."""
        if value is None or value == "none" or "tools" not in info.data:  # tools refused already: one error
            return value
        names = [t.function.name for t in info.data["tools"] or []]
        if not names:
            shown = f"the function {value.function.name!r}" if isinstance(value, NamedToolChoice) else repr(value)
            raise ValueError(
                f"{shown} needs at least one tool in tools (only 'none' may come without them): send the functions "
                "the model may call, or leave tool_choice out"
            )
        if isinstance(value, NamedToolChoice) and value.function.name not in names:
            raise ValueError(f"names the function {value.function.name!r}, which is not among tools {names}")
        return value

    @property
    def echoed(self) -> str:
        """vLLM's chat ``echo``: the last message's text, which each reply starts with, where that message is the
        assistant's (the reply's role: a start it continues); else nothing."""
        if not self.echo or self.messages[-1].role != "assistant":
            return ""
        return self.messages[-1].text

    @property
    def effective_tool_choice(self) -> str | NamedToolChoice:
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):  # 0 asks for nothing (vLLM accepts it alone)
            raise ValueError("needs logprobs set to true")
        return value

    def sampling_params(
        self, forced_call: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None
    ) -> SamplingParams:
        """``forced_call``: the JSON schema a forced tool call is generated under (``tool_choice``); ``defaults``:
        the served model's sampling defaults."""
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        sent_as = {"max_tokens": "max_completion_tokens"} if self.max_completion_tokens is not None else None
        return self._sampling_params(
            max_tokens=max_tokens,
            logprobs=logprobs,
            prompt_logprobs=self.prompt_logprobs,
            sent_as=sent_as,
            forced_call=forced_call,
            defaults=defaults,
        )


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] = Field(default_factory=list)  # vLLM's: always a list, empty without calls
    reasoning: str | None = None  # with a reasoning parser: the reasoning before the content
    # a forced call cut short by max_tokens: its calls are partial, so the reply did not call (not sent)
    calls_cut_short: bool = Field(False, exclude=True)

    @property
    def called(self) -> bool:
        """Whether the reply made calls: its finish reason is then "tool_calls" (Anthropic's "tool_use")."""
        return bool(self.tool_calls) and not self.calls_cut_short

    @model_serializer(mode="wrap")
    def _reasoning_when_present(self, handler: Any) -> dict[str, Any]:
        return _with_reasoning(handler(self), self.reasoning)


def _with_reasoning(data: dict[str, Any], reasoning: str | None) -> dict[str, Any]:
    """The reasoning under vLLM's current name (``reasoning``) and its first one, DeepSeek's, that most clients
    read (``reasoning_content``); left out when there is none, as without a reasoning parser."""
    data.pop("reasoning", None)
    return data if reasoning is None else {**data, "reasoning": reasoning, "reasoning_content": reasoning}


class ChatChoice(WithTokenIds):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: str | None
    stop_reason: int | str | None = None  # vLLM's: the stop string or stop token id that ended it
    token_ids: list[int] | None = None  # vLLM's, with return_token_ids: the generated tokens


class ChatCompletionResponse(WithTokenIds):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    prompt_logprobs: PromptLogprobs | None = None  # vLLM's, with prompt_logprobs asked for
    prompt_token_ids: list[int] | None = None  # vLLM's, with return_token_ids
    prompt_text: str | None = None  # vLLM's, with return_prompt_text: the prompt the template rendered


class DeltaFunction(BaseModel):
    name: str | None = None  # in a call's first delta
    arguments: str = ""  # a fragment of the arguments' JSON text


class DeltaToolCall(BaseModel):
    """OpenAI's streamed call: the first delta of call ``index`` has its id, type and name; later ones add to its
    arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunction

    @model_serializer
    def _present_only(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out |= {"id": self.id, "type": self.type}
        function = {"arguments": self.function.arguments}
        return out | {"function": function if self.function.name is None else {"name": self.function.name, **function}}


class DeltaMessage(BaseModel):
    """A streamed piece of the assistant message: the role comes once, first; absent keys are left out."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[DeltaToolCall] | None = None

    @model_serializer
    def _present_only(self) -> dict[str, Any]:
        fields = (("role", self.role), ("content", self.content), ("tool_calls", self.tool_calls))
        return _with_reasoning({k: v for k, v in fields if v is not None}, self.reasoning)


class ChatChunkChoice(WithTokenIds):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None  # vLLM's: the stop string or stop token id that ended it (last chunk)
    token_ids: list[int] | None = None  # vLLM's, with return_token_ids: the tokens since the choice's last chunk

    @model_serializer(mode="wrap")
    def _ids_when_asked(self, handler: Any) -> dict[str, Any]:
        """``stop_reason`` in a choice's finishing chunk alone (null there when no stop string or id ended it), as
        vLLM streams it; the chunks before it leave the key out."""
        data = super()._ids_when_asked(handler)
        if self.finish_reason is None:
            del data["stop_reason"]
        return data


class ChatCompletionChunk(WithTokenIds):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    prompt_token_ids: list[int] | None = None  # vLLM's, with return_token_ids: in the first chunk
    prompt_text: str | None = None  # vLLM's, with return_prompt_text: in the first chunk
    usage: UsageInfo | None = None  # with stream_options.include_usage: null until the last (continuous: each)

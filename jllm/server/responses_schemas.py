"""The request body of ``POST /v1/responses`` (OpenAI's Responses API, as vLLM serves it), as pydantic models; the
reply's are ``responses_output``'s.

A request becomes the chat request it stands for (``ResponsesRequest.as_chat``): ``instructions`` a system message
first, ``input`` items messages (``function_call`` items an assistant's ``tool_calls``, ``function_call_output``
items tool messages), flat function tools nested as chat's, ``text.format`` a ``response_format``. So the chat route's
checks, template, tools and structured output serve both, and every field is checked once.

As on the other routes, no field is silently ignored: each is honoured, or refused with a 400 naming it unless it
holds its "nothing" value (``RESPONSES_UNSUPPORTED_FIELDS``); a field the route does not know is a 400 too.
``truncation`` "auto" is vLLM's: the input loses its first tokens to fit the context (``truncate_prompt_tokens``
-1). ``reasoning.summary`` "auto" / "detailed" is the reasoning whole (``ResponsesRequest._effort_and_summary``).
Responses are stored (``response_store``) and
``previous_response_id`` continues one; ``background`` runs one after the POST has answered. OpenAI's conversations
are refused.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from jllm.sampling import MAX_LOGPROBS
from jllm.server.errors import bad_request
from jllm.server.responses_output import ReasoningText
from jllm.server.schemas import (
    _NOTHING,
    UNSUPPORTED_FIELDS,
    Metadata,
    ObfuscationOption,
    _Request,
    refuse_unknown,
    refuse_unsupported,
)

_SHARED_REFUSALS = "mm_processor_kwargs vllm_xargs moderation prompt_cache_retention prompt_cache_options service_tier"
_NOT_STORED = "is not supported: send previous_response_id, or the whole conversation in input"
# OpenAI's and vLLM's Responses fields this server cannot honour: (the values asking for nothing, why)
RESPONSES_UNSUPPORTED_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = (
    {
        "conversation": ((None,), _NOT_STORED),
        "background_options": (_NOTHING, "is not supported: a background response runs as it is"),
        "prompt": ((None,), "is not supported: reusable prompts are stored on OpenAI's platform; send input"),
        "context_management": (_NOTHING, "is not supported: this server does not compact conversations"),
        "access_programs": (_NOTHING, "is not supported by this server"),
        "image": (_NOTHING, "is not supported: the served models generate text only"),
        # vLLM's extras for stateless multi-turn with its harmony models
        "previous_response": (_NOTHING, _NOT_STORED),
        "previous_input_messages": (_NOTHING, "is not supported: send the conversation in input"),
        "enable_response_messages": ((None, False), "is not supported: the output items are the response's messages"),
    }
    | {name: UNSUPPORTED_FIELDS[name] for name in _SHARED_REFUSALS.split()}
    | {"structural_tag": ((None,), "is not a field of this route: send structured_outputs.structural_tag")}
    | {"priority": ((None, 0), "is not supported on this route: chat and completions requests take it")}
    | {"cache_salt": ((None,), "is not supported on this route yet: send it to /v1/chat/completions")}
)
LOGPROBS = "message.output_text.logprobs"
# include values honoured: the output text's logprobs; reasoning items carry their text in the clear (``content``),
# so there is no encrypted reasoning to add
INCLUDE_HONOURED = (LOGPROBS, "reasoning.encrypted_content")
# the chat request's field names in errors (the chat route checks a converted request) -> this route's names
CHAT_TO_RESPONSES = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "response_format": "text",
    "reasoning_effort": "reasoning",
}


class InputText(_Request):
    type: Literal["input_text", "output_text"]  # output_text: an assistant message passed back
    text: str


def _text_parts(value: Any, what: str) -> Any:
    """A part other than text (``input_image``, ``input_file``, ``refusal`` ...) refused by name."""
    for i, part in enumerate(value if isinstance(value, list) else []):
        kind = part.get("type") if isinstance(part, dict) else None
        if isinstance(kind, str) and kind not in ("input_text", "output_text"):
            raise ValueError(f"{what} part {i} has type {kind!r}: the served models take text parts only")
    return value


def _joined(content: str | list[InputText]) -> str:
    """Text parts joined on a newline, as chat's are (``ChatMessage.for_template``)."""
    return content if isinstance(content, str) else "\n".join(part.text for part in content)


class InputMessage(_Request):
    """OpenAI's input message (``type`` may be left out), or an output message passed back (its ``id``,
    ``status`` and the parts' ``annotations`` change nothing)."""

    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputText]

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        return _text_parts(value, "content")


class ReasoningItem(_Request):
    """The model's earlier reasoning (an output ``reasoning`` item passed back): the next assistant turn's, for the
    templates that show it; reasoning this server cannot read (OpenAI's ``encrypted_content``) is refused."""

    type: Literal["reasoning"]
    content: list[ReasoningText] | None = None
    summary: list[dict[str, Any]] = Field(default_factory=list)  # summaries of ``content``: its text is used
    encrypted_content: None = None

    @field_validator("encrypted_content", mode="before")
    @classmethod
    def _readable(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("is OpenAI's encrypted reasoning, which this server cannot read; pass its content")
        return value

    @property
    def text(self) -> str:
        return "".join(part.text for part in self.content or [])


class FunctionCallItem(_Request):
    """A call the model made earlier (an output ``function_call`` item passed back)."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str  # JSON text


def _reasoning_only(message: dict[str, Any]) -> bool:
    """An assistant message a reasoning item opened, with nothing else yet."""
    return message["role"] == "assistant" and message["content"] is None and "tool_calls" not in message


class FunctionCallOutputItem(_Request):
    """The result of a call, for the model's next turn."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputText]

    @field_validator("output", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        return _text_parts(value, "output")


InputItem = Annotated[
    InputMessage | ReasoningItem | FunctionCallItem | FunctionCallOutputItem, Field(discriminator="type")
]


class FunctionTool(_Request):
    """The Responses API's flat function tool (chat nests the same keys under ``function``)."""

    type: Literal["function"]
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def for_chat(self) -> dict[str, Any]:
        return {"type": "function", "function": self.model_dump(exclude={"type"}, exclude_none=True)}


class FunctionChoice(_Request):
    type: Literal["function"]
    name: str


class TextFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None  # the output always follows the schema: strict or not, it is enforced

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> TextFormat:
        if (self.json_schema is None) == (self.type == "json_schema"):
            raise ValueError("schema is required with type 'json_schema', and only with it")
        return self

    def for_chat(self) -> dict[str, Any]:
        if self.type != "json_schema":
            return {"type": self.type}
        schema = {"name": self.name or "response", "schema": self.json_schema, "strict": self.strict}
        return {"type": "json_schema", "json_schema": {k: v for k, v in schema.items() if v is not None}}

    def echo(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class TextConfig(_Request):
    format: TextFormat | None = None
    verbosity: str | None = None

    @field_validator("verbosity")
    @classmethod
    def _medium_only(cls, value: str | None) -> str | None:
        if value not in (None, "medium"):
            raise ValueError(f"verbosity {UNSUPPORTED_FIELDS['verbosity'][1]}")
        return value


_KNOWN_ITEMS = ("message", "reasoning", "function_call", "function_call_output")


class ResponsesRequest(_Request):
    model: str | None = None
    input: list[InputItem]  # a string is one user message
    instructions: str | None = None
    max_output_tokens: int | None = None  # omitted: up to the context limit
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    tools: list[FunctionTool] = Field(default_factory=list)
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    include: list[str] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # with include's LOGPROBS: the top k per token
    reasoning: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None  # echoed in the response, as OpenAI does
    # the Codex CLI's tags for its own telemetry (its installation id), sent on every request: nothing in the answer,
    # so accepted as sent (vLLM ignores it), held to metadata's limits on chat
    client_metadata: Metadata | None = None
    user: str | None = None  # an end-user id for abuse monitoring: echoed, unused (as vLLM)
    safety_identifier: str | None = None  # OpenAI's newer name for user: unused
    prompt_cache_key: str | None = None  # OpenAI's cache-routing hint: one server's prefix cache needs none
    max_tool_calls: int | None = None  # counts calls of built-in tools, which this server has none of
    # "auto": an input past the context loses its first tokens (vLLM's truncate_prompt_tokens -1) rather than a 400
    truncation: Literal["auto", "disabled"] = "disabled"
    store: bool | None = None  # omitted: stored, as OpenAI does (jllm.server.response_store)
    previous_response_id: str | None = None  # a stored response this one continues
    background: bool = False  # answered at once, in progress; GET /v1/responses/{id} polls it, cancel stops it

    @model_validator(mode="after")
    def _background_stored_not_streamed(self) -> ResponsesRequest:
        if self.background and (self.stream or self.store is False):
            raise bad_request(
                "background needs store (not false) and no stream: poll GET /v1/responses/{id} for the result",
                param="background",
            )
        return self

    stream_options: ObfuscationOption | None = None
    # vLLM's extras
    seed: int | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    logit_bias: dict[str, float] | None = None
    structured_outputs: dict[str, Any] | None = None
    request_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        data = refuse_unsupported(data, RESPONSES_UNSUPPORTED_FIELDS)
        return refuse_unknown(cls, data, RESPONSES_UNSUPPORTED_FIELDS)

    @field_validator("input", mode="before")
    @classmethod
    def _known_items(cls, value: Any) -> Any:
        """A string is one user message; items of other types (``reasoning``, ``item_reference``, hosted tools'
        calls) are refused by name; a message may leave its ``type`` out (OpenAI's "easy" input message)."""
        if isinstance(value, str):
            return [{"type": "message", "role": "user", "content": value}]
        if not isinstance(value, list):
            raise ValueError(f"must be a string or a list of items, got {type(value).__name__}")
        items = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                kind = item.get("type", "message")
                if kind not in _KNOWN_ITEMS:
                    raise ValueError(
                        f"item {i} has type {kind!r}: this server takes messages, reasoning, function_call and "
                        "function_call_output items"
                    )
                item = {**item, "type": kind}
            items.append(item)
        if not items:
            raise ValueError("is empty: give a string or at least one item")
        return items

    @field_validator("tools", mode="before")
    @classmethod
    def _functions_only(cls, value: Any) -> Any:
        """A hosted tool (``web_search``, ``file_search`` ...) or a client's tool of another shape (``custom``,
        ``local_shell``) is refused by name: offered to the model, it could never be called here."""
        for i, tool in enumerate(value if isinstance(value, list) else []):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if isinstance(kind, str) and kind != "function":
                hint = ' (the Codex CLI sends web_search unless its config sets web_search = "disabled")'
                raise ValueError(
                    f"tool {i} has type {kind!r}: this server calls functions only (no hosted tools); leave it out"
                    + (hint if kind == "web_search" else "")
                )
        return value

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _function_choice(cls, value: Any) -> Any:
        kind = value.get("type") if isinstance(value, dict) else None
        if isinstance(kind, str) and kind != "function":
            raise ValueError(f"type {kind!r} is not supported: choose 'none', 'auto', 'required' or a function")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(cls, value: Any, info: ValidationInfo) -> Any:
        names = [t.name for t in info.data.get("tools") or []]
        if isinstance(value, FunctionChoice) and value.name not in names:
            raise ValueError(f"names the function {value.name!r}, which is not among tools {names}")
        return value

    @field_validator("include")
    @classmethod
    def _nothing_to_include(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            if name not in INCLUDE_HONOURED:
                raise ValueError(f"{name!r} is not supported: this server includes {list(INCLUDE_HONOURED)} only")
        return value

    @model_validator(mode="after")
    def _top_logprobs_with_logprobs(self) -> ResponsesRequest:
        if self.top_logprobs and not self.logprobs:
            raise bad_request(f"top_logprobs needs include {[LOGPROBS]!r}", param="top_logprobs")
        return self

    @property
    def logprobs(self) -> bool:
        return LOGPROBS in (self.include or [])

    @field_validator("reasoning")
    @classmethod
    def _effort_and_summary(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """``effort`` is chat's ``reasoning_effort`` (for templates that read it, as gpt-oss's). ``summary`` asks for
        the reasoning item's ``summary``: this server has no summarizer, so "auto" (the server's choice, as OpenAI
        gives the most detailed it has) and "detailed" get the reasoning whole as the one summary, beside it in
        ``content`` (where vLLM puts it, leaving the summary empty), streamed as OpenAI's summary events; "concise"
        cannot be honoured. The Codex CLI sends "auto" by default. The rest asks for what this server does not do."""
        asked = value or {}
        summary = asked.get("summary")
        if summary == "concise":
            raise ValueError(
                "summary 'concise' is not supported: this server writes no summaries of its own; 'auto' and "
                "'detailed' give the reasoning whole as its summary"
            )
        if summary not in (None, "auto", "detailed"):
            raise ValueError(f"summary must be 'auto', 'concise' or 'detailed', got {summary!r}")
        others = sorted(k for k, v in asked.items() if v is not None and k not in ("effort", "summary"))
        if others:
            raise ValueError(f"{', '.join(others)}: not supported (reasoning items carry the model's reasoning whole)")
        return value

    @property
    def effort(self) -> str | None:
        return (self.reasoning or {}).get("effort")

    @property
    def summary(self) -> str | None:
        """``reasoning.summary`` as asked ("auto" or "detailed": the reasoning item's summary is its text)."""
        return (self.reasoning or {}).get("summary")

    def chat_messages(self) -> list[dict[str, Any]]:
        """``instructions`` and ``input`` as chat messages; a reasoning item opens an assistant message (its
        ``reasoning``) that the assistant's text after it joins, and consecutive calls join one assistant message
        (the assistant's text before them included), as a parallel call's chat history holds them."""
        messages: list[dict[str, Any]] = []
        if self.instructions is not None:
            messages.append({"role": "system", "content": self.instructions})
        for item in self.input:
            last = messages[-1] if messages else None
            if isinstance(item, ReasoningItem):
                messages.append({"role": "assistant", "content": None, "reasoning": item.text})
            elif isinstance(item, InputMessage):
                if item.role == "assistant" and last is not None and _reasoning_only(last):
                    last["content"] = _joined(item.content)
                else:
                    messages.append({"role": item.role, "content": _joined(item.content)})
            elif isinstance(item, FunctionCallItem):
                call = {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
                if last is not None and last["role"] == "assistant":
                    last.setdefault("tool_calls", []).append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            else:
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": _joined(item.output)})
        return messages

    def continuing(self, conversation: Sequence[InputItem]) -> ResponsesRequest:
        """This request with a stored response's ``conversation`` before its input (``previous_response_id``)."""
        return self.model_copy(update={"input": [*conversation, *self.input]})

    def as_chat(self) -> dict[str, Any]:
        """The chat request this one stands for (validated by ``ChatCompletionRequest`` at the route)."""
        choice = self.tool_choice
        body = {
            "model": self.model,
            "messages": self.chat_messages(),
            "max_completion_tokens": self.max_output_tokens,
            "tools": [t.for_chat() for t in self.tools] or None,
            "tool_choice": {"type": "function", "function": {"name": choice.name}}
            if isinstance(choice, FunctionChoice)
            else choice,
            "parallel_tool_calls": self.parallel_tool_calls,
            "response_format": self.text.format.for_chat() if self.text and self.text.format else None,
            "logprobs": self.logprobs,
            "top_logprobs": self.top_logprobs if self.logprobs else None,
            "reasoning_effort": self.effort,
            "truncate_prompt_tokens": -1 if self.truncation == "auto" else None,
        }
        passed = (
            "temperature top_p seed top_k repetition_penalty stop ignore_eos skip_special_tokens "
            "include_stop_str_in_output logit_bias structured_outputs user"
        ).split()
        body |= {name: getattr(self, name) for name in passed}
        if not self.tools and choice == "auto":
            body["tool_choice"] = None  # chat's default without tools
        return {k: v for k, v in body.items() if v is not None}

    def text_echo(self) -> dict[str, Any]:
        text_format = self.text.format if self.text and self.text.format else TextFormat(type="text")
        return {"format": text_format.echo(), "verbosity": "medium"}

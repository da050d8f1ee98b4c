"""The request bodies of ``POST /v1/messages`` and ``/v1/messages/count_tokens`` (Anthropic's Messages API, as vLLM
serves it), as pydantic models.

A request becomes the chat request it stands for (``MessagesRequest.as_chat``), as the Responses API's does:
``system`` a system message first; a user's ``tool_result`` blocks tool messages (before the user's text), an
assistant's ``tool_use`` blocks its ``tool_calls`` and its ``thinking`` its reasoning, a last assistant message the
start of the reply (Anthropic's prefill: chat's ``continue_final_message``); ``tools`` chat's function
tools; ``tool_choice`` ``any`` chat's ``required``; ``thinking`` with a budget vLLM's ``thinking_token_budget`` (so
the model needs a reasoning parser), ``disabled`` the template's ``enable_thinking: false``; ``output_config``'s
``effort`` chat's ``reasoning_effort`` and its ``format`` (or the beta's ``output_format``) a JSON-schema
``response_format``. So the chat route's checks, template, tools and structured output serve this route too.

No field is silently ignored: each is honoured, or refused with a 400 naming it (``MESSAGES_UNSUPPORTED_FIELDS``:
Anthropic's server-side tools, containers and context management), or changes nothing in the answer
(``metadata``, ``service_tier``, ``cache_control``: the prefix cache needs no hint; ``diagnostics``, the routing
hints); a field the SDK does not send is a 400 naming it (``refuse_unknown``). Blocks other than text, tool use,
tool results and thinking (images, documents, redacted thinking) are refused by name: the served models read text.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from jllm.server.schemas import _NOTHING, _Request, refuse_unknown, refuse_unsupported

# Anthropic's request fields this server cannot honour: (the values that ask for nothing, why)
MESSAGES_UNSUPPORTED_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "container": ((None,), "is not supported: this server runs no code containers"),
    "mcp_servers": (_NOTHING, "is not supported: this server connects to no MCP servers"),
    "context_management": (_NOTHING, "is not supported: this server does not edit the conversation's context"),
}
# chat's field names in errors (the chat route checks the converted request) -> this route's names
CHAT_TO_MESSAGES = {
    "max_completion_tokens": "max_tokens",
    "stop": "stop_sequences",
    "response_format": "output_config",
    "reasoning_effort": "output_config",
    "thinking_token_budget": "thinking",
}


class TextBlock(_Request):
    type: Literal["text"]
    text: str


class ToolUseBlock(_Request):
    """A call the model made earlier (an assistant's), passed back."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Request):
    """A call's result (a user's), for the model's next turn; an error's text says so (chat has no such flag)."""

    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] = ""
    is_error: bool = False

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        return _text_blocks(value, "content")

    @property
    def text(self) -> str:
        text = self.content if isinstance(self.content, str) else "\n".join(block.text for block in self.content)
        return f"Error: {text}" if self.is_error else text


class ThinkingBlock(_Request):
    """The model's earlier reasoning (an assistant's), passed back; its ``signature`` is Anthropic's own."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


ContentBlock = Annotated[TextBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock, Field(discriminator="type")]
_KNOWN_BLOCKS = ("text", "tool_use", "tool_result", "thinking")


def _text_blocks(value: Any, what: str) -> Any:
    """Refuses blocks this server cannot read (images, documents, redacted thinking) by name."""
    for i, block in enumerate(value if isinstance(value, list) else []):
        kind = block.get("type") if isinstance(block, dict) else None
        if isinstance(kind, str) and kind not in _KNOWN_BLOCKS:
            raise ValueError(
                f"{what}[{i}] is a {kind!r} block, which this server cannot read (the served models read text): "
                "send text, tool_use, tool_result or thinking blocks"
            )
    return value


# Roles Claude Code (2.1.154 on) sends beside Anthropic's two, read as the user's, as vLLM reads them
USER_ROLE_ALIASES = ("ctx", "msg")


class Message(_Request):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]

    @field_validator("role", mode="before")
    @classmethod
    def _claude_code_roles(cls, value: Any) -> Any:
        return "user" if value in USER_ROLE_ALIASES else value

    @field_validator("content", mode="before")
    @classmethod
    def _known_blocks(cls, value: Any) -> Any:
        return _text_blocks(value, "content")

    def chat_messages(self) -> list[dict[str, Any]]:
        """This message as chat messages: a user's tool results become tool messages before its text; an
        assistant's text, calls and reasoning one assistant message. Text blocks join on a newline, as vLLM joins
        them (and a tool result's)."""
        if isinstance(self.content, str):
            return [{"role": self.role, "content": self.content}]
        blocks = self.content
        text = "\n".join(b.text for b in blocks if isinstance(b, TextBlock))
        if self.role == "user":
            results = [
                {"role": "tool", "tool_call_id": b.tool_use_id, "content": b.text}
                for b in blocks
                if isinstance(b, ToolResultBlock)
            ]
            has_text = any(isinstance(b, TextBlock) for b in blocks) or not results
            return results + ([{"role": "user", "content": text}] if has_text else [])
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        calls = [b for b in blocks if isinstance(b, ToolUseBlock)]
        if calls:
            message["tool_calls"] = [
                {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
                for b in calls
            ]
        reasoning = "".join(b.thinking for b in blocks if isinstance(b, ThinkingBlock))
        if reasoning:
            message["reasoning"] = reasoning
        return [message]

    @model_validator(mode="after")
    def _blocks_of_its_role(self) -> Message:
        allowed = (TextBlock, ToolResultBlock) if self.role == "user" else (TextBlock, ToolUseBlock, ThinkingBlock)
        for i, block in enumerate(self.content if isinstance(self.content, list) else []):
            if not isinstance(block, allowed):
                raise ValueError(f"content[{i}]: a {self.role} message cannot hold a {block.type!r} block")
        return self


class Tool(_Request):
    """A client tool (Anthropic's server tools, ``web_search_...`` and the like, are refused by name)."""

    type: Literal["custom"] | None = None
    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any]
    strict: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _client_tools_only(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if isinstance(kind, str) and kind != "custom":
            raise ValueError(f"type {kind!r} is a server tool, which this server does not run: send client tools")
        return data

    def for_chat(self) -> dict[str, Any]:
        function = {"name": self.name, "description": self.description, "parameters": self.input_schema}
        function["strict"] = self.strict
        return {"type": "function", "function": {k: v for k, v in function.items() if v is not None}}


class ToolChoice(_Request):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False

    @model_validator(mode="after")
    def _name_with_tool(self) -> ToolChoice:
        if (self.name is None) == (self.type == "tool"):
            raise ValueError("name is required with type 'tool', and only with it")
        return self

    def for_chat(self) -> str | dict[str, Any]:
        if self.type == "tool":
            return {"type": "function", "function": {"name": self.name}}
        return "required" if self.type == "any" else self.type


class Thinking(_Request):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None

    @model_validator(mode="after")
    def _budget_when_enabled(self) -> Thinking:
        if (self.budget_tokens is None) == (self.type == "enabled"):
            raise ValueError("budget_tokens is required with type 'enabled', and only with it")
        return self


class OutputFormat(_Request):
    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Request):
    effort: str | None = None  # chat's reasoning_effort, for the templates that read it
    format: OutputFormat | None = None


class _MessagesBody(_Request):
    """What a message request and a token count share: the conversation and its tools."""

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] = Field(default_factory=list)
    tool_choice: ToolChoice | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # vLLM's
    thinking: Thinking | None = None
    cache_control: dict[str, Any] | None = None  # a prompt-caching hint: the prefix cache needs none
    output_config: OutputConfig | None = None
    output_format: OutputFormat | None = None  # the beta's name of output_config.format (client.beta.messages's)
    # Anthropic's routing and accounting hints: none changes the answer
    speed: str | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        """A field Anthropic's SDK sends that this route cannot honour is a 400 saying why; one it does not know
        (a beta's ``fallbacks``, ``compaction``, a misspelling) a 400 naming it, as Anthropic answers an extra
        input, where it had been dropped and the request answered as if it had not been sent."""
        return refuse_unknown(cls, refuse_unsupported(data, MESSAGES_UNSUPPORTED_FIELDS), MESSAGES_UNSUPPORTED_FIELDS)

    @model_validator(mode="after")
    def _one_output_format(self) -> _MessagesBody:
        if self.output_format is not None and self.output_config is not None and self.output_config.format is not None:
            raise ValueError("output_format is output_config.format's older name: give one of them")
        return self

    @property
    def effort(self) -> str | None:
        return self.output_config.effort if self.output_config is not None else None

    @field_validator("system", mode="before")
    @classmethod
    def _system_text_only(cls, value: Any) -> Any:
        return _text_blocks(value, "system")

    def chat_messages(self) -> list[dict[str, Any]]:
        """The system prompt (none where it is empty, as vLLM reads it: the template's default system prompt, if it
        has one, stays) and each message's chat messages."""
        system = (
            self.system if isinstance(self.system, str | None) else "\n".join(b.text for b in self.system if b.text)
        )
        messages = [{"role": "system", "content": system}] if system else []
        return messages + [m for message in self.messages for m in message.chat_messages()]

    def chat_fields(self) -> dict[str, Any]:
        """The chat request's fields for the conversation, tools and thinking. A last message of the assistant's is
        Anthropic's prefill: the reply continues it (chat's ``continue_final_message``)."""
        choice = self.tool_choice
        if choice is not None and choice.type == "auto" and not self.tools:
            choice = None  # nothing to call: chat refuses a tool_choice but "none" without tools (vLLM's rule)
        kwargs = self.chat_template_kwargs
        if self.thinking is not None and self.thinking.type == "disabled":
            kwargs = {"enable_thinking": False, **(kwargs or {})}
        prefill = self.messages[-1].role == "assistant"
        return {
            "model": self.model,
            "messages": self.chat_messages(),
            "tools": [t.for_chat() for t in self.tools] or None,
            "tool_choice": choice.for_chat() if choice else None,  # chat's default: "auto" with tools
            "parallel_tool_calls": False if choice and choice.disable_parallel_tool_use else None,
            "chat_template_kwargs": kwargs,
            "add_generation_prompt": False if prefill else None,
            "continue_final_message": True if prefill else None,
        }


class MessagesRequest(_MessagesBody):
    max_tokens: int = Field(ge=1)
    stream: bool = False
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: dict[str, Any] | None = None  # user_id: for abuse monitoring, unused
    service_tier: str | None = None  # capacity and price, not the answer
    inference_geo: str | None = None  # where it runs, not the answer
    diagnostics: dict[str, Any] | None = None  # asks for a prompt-cache miss report, which is optional in a reply

    def as_chat(self) -> dict[str, Any]:
        """The chat request this one stands for (validated by ``ChatCompletionRequest`` at the route)."""
        config = self.output_config or OutputConfig()
        if self.output_format is not None:
            config = config.model_copy(update={"format": self.output_format})
        budget = self.thinking.budget_tokens if self.thinking else None
        body = self.chat_fields() | {
            "max_completion_tokens": self.max_tokens,
            "stop": self.stop_sequences,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "reasoning_effort": self.effort,
            "response_format": None
            if config.format is None
            else {"type": "json_schema", "json_schema": {"name": "output", "schema": config.format.json_schema}},
            "thinking_token_budget": budget,
        }
        return {k: v for k, v in body.items() if v is not None}


class CountTokensRequest(_MessagesBody):
    """``/v1/messages/count_tokens``: the prompt a message request with this conversation and these tools would
    have."""

    def as_tokenize(self) -> dict[str, Any]:
        """The ``/tokenize`` request of the same rendered prompt."""
        fields = self.chat_fields() | {"reasoning_effort": self.effort}  # an effort may switch the template's thinking
        kept = ("model", "messages", "tools", "chat_template_kwargs", "add_generation_prompt", "continue_final_message")
        return {k: fields[k] for k in (*kept, "reasoning_effort") if fields[k] is not None}

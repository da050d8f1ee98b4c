"""The reply of ``POST /v1/responses`` (OpenAI's Responses API, as vLLM serves it), as pydantic models: the
``Response`` object, its usage, and its output items (``reasoning``, ``message``, ``function_call``), each of which a
client may pass back as input (``responses_schemas`` reads them there). The streamed events carry these same items.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from jllm.server.chat_schemas import TokenLogprob


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class SummaryText(BaseModel):
    type: Literal["summary_text"] = "summary_text"
    text: str


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[TokenLogprob] = Field(default_factory=list)  # with include's LOGPROBS


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class OutputFunctionCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


class OutputReasoning(BaseModel):
    """The model's reasoning (with the served model's ``reasoning_parser``), before the message it led to."""

    id: str
    type: Literal["reasoning"] = "reasoning"
    # with ``reasoning.summary`` asked for: the reasoning whole as its one summary (this server has no summarizer)
    summary: list[SummaryText] = Field(default_factory=list)
    content: list[ReasoningText]
    encrypted_content: None = None
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = OutputReasoning | OutputMessage | OutputFunctionCall


class InputTokensDetails(BaseModel):
    cached_tokens: int  # prompt tokens the prefix cache served
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0  # with a reasoning format in force: the reasoning's tokens, its markers included


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(BaseModel):
    code: Literal["server_error"]
    message: str


class ResponseObject(BaseModel):
    """OpenAI's ``Response``: the outcome, and the settings it ran with echoed (the SDK's model has them)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed", "cancelled"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    usage: ResponseUsage | None = None
    instructions: str | None
    max_output_tokens: int | None
    max_tool_calls: int | None
    metadata: dict[str, str]
    parallel_tool_calls: bool
    previous_response_id: str | None = None
    reasoning: dict[str, Any] = Field(default_factory=lambda: {"effort": None, "summary": None})
    store: bool = False
    temperature: float | None
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    top_p: float | None
    top_logprobs: int
    truncation: Literal["auto", "disabled"] = "disabled"
    user: str | None
    background: bool = False

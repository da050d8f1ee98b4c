"""The bodies of the routes around generation (``info``): the model list, ``/tokenize`` (a prompt, or chat
messages rendered as a chat request's are) and ``/detokenize``.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, model_serializer, model_validator

from jllm.server.chat_schemas import ChatMessage, ToolDefinition, _ChatTemplateOptions
from jllm.server.errors import bad_request
from jllm.server.schemas import UNSUPPORTED_FIELDS, _Request, refuse_unsupported


class TokenizeRequest(_ChatTemplateOptions):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[ToolDefinition] | None = None  # rendered with the messages, as a chat request's are
    add_special_tokens: bool | None = None  # None: true for a prompt, false for messages (vLLM's two defaults)
    return_token_strs: bool = False  # vLLM's: each id's vocabulary string too (transformers' convert_ids_to_tokens)

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        return refuse_unsupported(data, TOKENIZE_UNSUPPORTED_FIELDS)

    @model_validator(mode="after")
    def _template_fields_with_messages(self) -> TokenizeRequest:
        """A prompt is encoded as it is: a chat template's field beside it (``reasoning_effort``, ``documents``,
        ``tools`` ...) would change nothing, so one asking for something is a 400 naming it."""
        if self.prompt is None or self.messages is not None:  # messages, or both: a 400 of its own
            return self
        switches = {"add_generation_prompt": True, "continue_final_message": False}  # their values left out
        for name in [*_ChatTemplateOptions.model_fields, "tools"]:
            if getattr(self, name) not in (type(self).model_fields[name].default, switches.get(name)):
                raise bad_request(f"{name} reaches the chat template, so it comes with messages, not a prompt", name)
        return self


# vLLM's /tokenize fields this server cannot honour
TOKENIZE_UNSUPPORTED_FIELDS = {name: UNSUPPORTED_FIELDS[name] for name in ("mm_processor_kwargs",)}


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "jllm"
    root: str | None = None  # a LoRA adapter's folder (vLLM's field)
    parent: str | None = None  # a LoRA adapter's base model (vLLM's field); None for a model
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None  # with return_token_strs (left out otherwise)

    @model_serializer(mode="wrap")
    def _strs_when_asked(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("token_strs") is None:
            data.pop("token_strs", None)
        return data


class DetokenizeResponse(BaseModel):
    prompt: str

"""Between the gRPC API's messages (``jllm.v1``) and the HTTP API's request schemas and deltas.

A gRPC request becomes the body the HTTP API would have been sent (``CompletionRequest`` for text or token ids,
``ChatCompletionRequest`` for chat messages, ``TokenizeRequest`` ...) and is validated by the same pydantic models,
so every check and every error message is the HTTP API's. Only the fields a message sets are passed on: an unset
field takes the HTTP API's default, as a JSON body that leaves it out would.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from jllm.outputs import Logprob, top_logprobs
from jllm.server.chat_schemas import ChatCompletionRequest
from jllm.server.completions_schemas import CompletionRequest
from jllm.server.generation import Delta
from jllm.server.info_schemas import DetokenizeRequest, ModelList, TokenizeRequest, TokenizeResponse
from jllm.server.schemas import UsageInfo
from jllm.v1 import generate_pb2 as pb


def _set_fields(message: Message) -> dict[str, Any]:
    """A message of scalars as JSON would carry it: its set fields only, lists as lists, maps keyed by text."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = {str(k): v for k, v in value.items()}  # JSON object keys are text ("logit_bias": {"5": 1.0})
        elif field.is_repeated:
            value = list(value)
        out[field.name] = value
    return out


def _messages(chat: pb.ChatMessages) -> list[dict[str, Any]]:
    return [_set_fields(m) | {"role": m.role, "content": m.content} for m in chat.messages]


def _structured_outputs(constraint: pb.StructuredOutput) -> dict[str, Any]:
    """vLLM's ``structured_outputs`` object (``{"choice": [...]}`` ...); an empty message is a constraint of none,
    which the sampling checks refuse with their message."""
    kind = constraint.WhichOneof("kind")
    if kind is None:
        return {}
    if kind == "choice":
        return {"choice": list(constraint.choice.choices)}
    return {kind: getattr(constraint, kind)}


def generate_body(request: pb.GenerateRequest) -> CompletionRequest | ChatCompletionRequest:
    """The HTTP request this ``Generate`` call stands for (streamed, as a gRPC call always is), validated."""
    body: dict[str, Any] = {"model": request.model or None, "stream": True, **_set_fields(request.sampling)}
    if request.HasField("structured_output"):
        body["structured_outputs"] = _structured_outputs(request.structured_output)
    if request.HasField("add_special_tokens"):
        body["add_special_tokens"] = request.add_special_tokens
    if request.request_id:
        body["request_id"] = request.request_id
    kind = request.WhichOneof("prompt")
    if kind == "chat":
        if "logprobs" in body:  # chat's spelling of "the top k logprobs"
            body |= {"logprobs": True, "top_logprobs": body["logprobs"]}
        return ChatCompletionRequest.model_validate(body | {"messages": _messages(request.chat)})
    # No prompt at all is the HTTP API's empty prompt list: a 400 naming `prompt`.
    prompt = request.text if kind == "text" else list(request.token_ids.ids)
    return CompletionRequest.model_validate(body | {"prompt": prompt})


def tokenize_body(request: pb.TokenizeRequest) -> TokenizeRequest:
    body: dict[str, Any] = {"model": request.model or None}
    kind = request.WhichOneof("input")
    if kind == "text":
        body["prompt"] = request.text
    elif kind == "chat":
        body["messages"] = _messages(request.chat)
    if request.HasField("add_special_tokens"):
        body["add_special_tokens"] = request.add_special_tokens
    return TokenizeRequest.model_validate(body)


def detokenize_body(request: pb.DetokenizeRequest) -> DetokenizeRequest:
    return DetokenizeRequest.model_validate({"model": request.model or None, "tokens": list(request.tokens)})


def delta_message(delta: Delta, top: int) -> pb.GenerateResponse:
    """One choice's new text, ids and (with ``top`` top logprobs asked for) logprobs, and its finish."""
    out = pb.TokenDelta(
        index=delta.index, text=delta.text, token_ids=delta.token_ids, finish_reason=delta.finish_reason or ""
    )
    if delta.logprobs is not None:
        pairs = zip(delta.token_ids, delta.logprobs, strict=True)
        out.logprobs.extend(_token_logprob(entry, token_id, top) for token_id, entry in pairs)
    if isinstance(delta.stop_reason, str):
        out.stop_string = delta.stop_reason
    elif isinstance(delta.stop_reason, int):
        out.stop_token_id = delta.stop_reason
    return pb.GenerateResponse(delta=out)


def _token_logprob(entry: dict[int, Logprob], token_id: int, top: int) -> pb.TokenLogprob:
    """The chosen token's logprob and rank (over the whole vocabulary) and the ``top`` most likely tokens (the entry
    holds those and the chosen one)."""
    chosen = entry[token_id]
    return pb.TokenLogprob(
        token_id=token_id,
        token=chosen.decoded_token or "",
        logprob=chosen.logprob,
        rank=chosen.rank or 0,
        top_logprobs=[
            pb.TopLogprob(token_id=i, token=lp.decoded_token or "", logprob=lp.logprob, rank=lp.rank or 0)
            for i, lp in top_logprobs(entry, top)
        ],
    )


def usage_message(usage: UsageInfo) -> pb.GenerateResponse:
    return pb.GenerateResponse(usage=pb.Usage(**usage.model_dump()))


def tokenize_message(response: TokenizeResponse) -> pb.TokenizeResponse:
    return pb.TokenizeResponse(**response.model_dump())


def models_message(models: ModelList) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(
        models=[pb.Model(id=m.id, max_model_len=m.max_model_len, owned_by=m.owned_by) for m in models.data]
    )

"""A stream's common chunk written straight to JSON: a choice's new text, with no logprobs, tool calls or token ids.

A stream sends a chunk per token, so its encoding is host work per token on the event loop: building and dumping
the pydantic chunk took 9 us (a completion's) to 13 us (a chat's) on a 2-core Xeon, against ~0.3 us here. The
chunk's fixed part (id, object, created, model) is written once per request; per token only the choice's index,
text and finish reason are, strings escaped by the stdlib's JSON escaper as ``json.dumps(ensure_ascii=False)``
escapes them, which is how pydantic writes them too. Every other chunk (a chat's role and echo chunks, tool calls,
logprobs, ``return_token_ids``, the usage chunk after the last) goes through the pydantic models of
``chat_schemas`` / ``completions_schemas``; ``tests/test_stream_chunks.py`` checks that both write the same bytes.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from json.encoder import encode_basestring  # type: ignore[attr-defined]  # json.dumps' escaper (C), no ASCII escapes

from jllm.server.schemas import UsageInfo


def _json(value: str | int | None) -> str:
    """A finish or stop reason: a string, a stop token's id, or null."""
    if value is None:
        return "null"
    return encode_basestring(value) if isinstance(value, str) else str(int(value))


class ChunkWriter:
    """One streamed request's text chunks, as its pydantic chunk (``ChatCompletionChunk`` or a completion's
    ``CompletionResponse``) dumps them: ``include_usage`` keeps the chunk's ``usage`` key (null, or the running
    usage with ``continuous_usage_stats``), as the stream's ``exclude`` does."""

    def __init__(self, kind: str, response_id: str, created: int, model: str, include_usage: bool) -> None:
        self._head = (
            f'{{"id":{encode_basestring(response_id)},"object":"{kind}","created":{created},'
            f'"model":{encode_basestring(model)},"choices":[{{"index":'
        )
        self._include_usage = include_usage

    def chat(
        self,
        index: int,
        content: str | None,
        reasoning: str | None,
        finish_reason: str | None,
        stop_reason: int | str | None,
        usage: UsageInfo | None,
    ) -> str:
        """A ``chat.completion.chunk`` of one choice's content and reasoning (each left out when None; reasoning
        under both its names, ``DeltaMessage``); ``stop_reason`` in a finishing chunk alone (``ChatChunkChoice``)."""
        delta = "" if content is None else f'"content":{encode_basestring(content)}'
        if reasoning is not None:
            text = encode_basestring(reasoning)
            delta += f'{"," if delta else ""}"reasoning":{text},"reasoning_content":{text}'
        stop = "" if finish_reason is None else f',"stop_reason":{_json(stop_reason)}'
        return (
            f'{self._head}{index},"delta":{{{delta}}},"logprobs":null,"finish_reason":{_json(finish_reason)}'
            f"{stop}}}{self._tail(usage)}"
        )

    def text(
        self, index: int, text: str, finish_reason: str | None, stop_reason: int | str | None, usage: UsageInfo | None
    ) -> str:
        """A ``text_completion`` chunk of one choice's text (its ``stop_reason`` always there, null until set)."""
        return (
            f'{self._head}{index},"text":{encode_basestring(text)},"logprobs":null,'
            f'"finish_reason":{_json(finish_reason)},"stop_reason":{_json(stop_reason)}}}{self._tail(usage)}'
        )

    def _tail(self, usage: UsageInfo | None) -> str:
        if not self._include_usage:
            return "]}"
        if usage is None:
            return '],"usage":null}'
        if usage.completion_tokens_details is not None:  # a reasoning count: not in a running usage
            return f'],"usage":{usage.model_dump_json()}}}'
        return (
            f'],"usage":{{"prompt_tokens":{usage.prompt_tokens},"completion_tokens":{usage.completion_tokens},'
            f'"total_tokens":{usage.total_tokens}}}}}'
        )

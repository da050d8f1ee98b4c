"""The formats whose calls are JSON objects ``{"name": ..., "arguments": {...}}`` behind a marker, as vLLM's parsers
of the same names read them (``vllm/tool_parsers/``):

- ``hermes`` (Hermes, Qwen 2.5/3; ``ernie45``, ERNIE 4.5, writes the same): ``<tool_call>{...}</tool_call>``, one
  block per call, text before the first block the message's content (special tokens kept: some models mark the tags
  special);
- ``llama3_json`` (Llama 3.1-3.3): the whole output is ``{"name": ..., "parameters": {...}}`` (``<|python_tag|>``
  first, which decoding drops as a special token), several separated by ``;``;
- ``mistral``: ``[TOOL_CALLS][{...}, ...]`` (a special token);
- ``granite`` (Granite 3.0 / 3.1): the whole output is ``<|tool_call|>[{...}, ...]`` (3.1: ``<tool_call>``);
- ``phi4_mini_json`` (Phi-4-mini): ``functools[{...}, ...]``;
- ``internlm`` (InternLM 2 / 2.5): ``<|action_start|><|plugin|>{"name": ..., "parameters": {...}}<|action_end|>``,
  one call (special tokens);
- ``jamba`` (Jamba 1.5): ``<tool_calls>[{...}, ...]</tool_calls>`` (special tokens).
A call written name first (``{"name": ..., "arguments": {``) streams its arguments as the model writes them
(``partial``), and they are its arguments whole too (vLLM re-serializes them: the same JSON value).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import itertools
import re

from jllm.tool_parsers.base import (
    ToolCall,
    ToolParser,
    item_call,
    json_list_calls,
    json_spans,
    list_partial,
    name_first,
    value_end,
)


class HermesParser(ToolParser):
    starts = ("<tool_call>",)
    keep_special_tokens = True  # some models mark <tool_call> special (vLLM's hermes parser keeps them too)
    _block = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        bodies = self._block.findall(text)
        if final:
            tail = text[text.rfind("</tool_call>") + len("</tool_call>") :] if bodies else text
            if tail.strip().startswith("<tool_call>"):  # an unclosed last block, as vLLM accepts
                bodies.append(tail.strip()[len("<tool_call>") :])
        out = []
        for body in bodies:
            spans, clean, _ = json_spans(body)
            call = item_call(*spans[0]) if len(spans) == 1 and clean else None
            if call is None:
                return None if final else out
            out.append(call)
        return out

    def cut_short(self, text: str) -> bool:
        """The last block is open and empty, or its object has not closed (max_tokens or a stop string came inside
        it)."""
        body = self._open_block(text)
        return body is not None and (not body or (body.startswith("{") and value_end(body, 0) is None))

    def _open_block(self, text: str) -> str | None:
        """The body of the block after the last closed one (stripped), when one opens right there."""
        tail = text[text.rfind("</tool_call>") + len("</tool_call>") :].strip() if "</tool_call>" in text else text
        return tail[len("<tool_call>") :].strip() if tail.startswith("<tool_call>") else None

    def partial(self, text: str) -> tuple[str, str] | None:
        """The open block's call once its name and the start of its arguments have come: the arguments as written
        so far (a prefix of the call's)."""
        body = self._open_block(text)  # the end reads only a block right after the last as a call
        named = None if body is None else name_first(body)
        return None if named is None else (named[0], named[1])


class _WholeOutput(ToolParser):
    """Calls that are the whole output: its first characters (after whitespace) decide, so only leading whitespace
    or a prefix of a marker is held back."""

    prefixes: tuple[str, ...] = ()

    def starts_calls(self, text: str) -> int | None:
        return 0 if text.lstrip().startswith(self.prefixes) else None

    def may_start(self, text: str) -> int:
        stripped = text.lstrip()
        return len(text) if any(p.startswith(stripped) for p in self.prefixes) else 0


class Llama3JsonParser(_WholeOutput):
    prefixes = ("<|python_tag|>", "{")

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        if not final and not re.match(r'\s*(?:\{\s*(?:"|\Z)|\Z)', self._body(text)):
            return None  # "{x} is a set": a call opens with a JSON key, this is text
        spans, clean, _ = json_spans(self._body(text), separator=";")
        calls = [item_call(value, raw, "parameters") for value, raw in spans]
        if final:
            return calls if calls and clean and None not in calls else None  # type: ignore[return-value]
        return list(itertools.takewhile(lambda c: c is not None, calls))  # type: ignore[arg-type]

    def partial(self, text: str) -> tuple[str, str] | None:
        body = self._body(text)
        _, clean, pos = json_spans(body, separator=";")
        named = None if clean else name_first(body[pos:])
        return None if named is None else (named[0], named[1])

    @staticmethod
    def _body(text: str) -> str:
        return text.lstrip().removeprefix("<|python_tag|>")


class GraniteParser(_WholeOutput):
    prefixes = ("<|tool_call|>", "<tool_call>", "[")
    keep_special_tokens = True  # Granite 3.0's <|tool_call|> is a special token

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        body = self._body(text)
        if not final and body.strip() and not re.match(r"\s*\[\s*(?:\{|\Z)", body):
            return None  # a list of calls opens with an object: this is text
        return json_list_calls(body, final)

    def partial(self, text: str) -> tuple[str, str] | None:
        return list_partial(self._body(text))

    @staticmethod
    def _body(text: str) -> str:
        return text.strip().removeprefix("<|tool_call|>").removeprefix("<tool_call>")


class _MarkedList(ToolParser):
    """A JSON list of calls right after a marker (and before an end marker, where the format has one: a list left
    unclosed at the end still counts when it is whole, as its items have streamed)."""

    end = ""
    keep = 0  # trailing characters of the start marker that belong to the list

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        body = text[len(self.starts[0]) - self.keep :]
        if self.end and self.end in body:
            calls = json_list_calls(body.split(self.end, 1)[0], True)
            return calls if final else calls or []
        return json_list_calls(body, final)

    def partial(self, text: str) -> tuple[str, str] | None:
        body = text[len(self.starts[0]) - self.keep :]
        return None if self.end and self.end in body else list_partial(body)


class MistralParser(_MarkedList):
    starts = ("[TOOL_CALLS]",)
    keep_special_tokens = True


class Phi4MiniJsonParser(_MarkedList):
    starts = ("functools[",)  # with its bracket (vLLM's pattern), so prose about Python's functools is not held back
    keep = 1


class JambaParser(_MarkedList):
    starts = ("<tool_calls>",)
    end = "</tool_calls>"
    keep_special_tokens = True


class InternLMParser(ToolParser):
    starts = ("<|action_start|><|plugin|>",)
    keep_special_tokens = True
    end = "<|action_end|>"

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        body = text[len(self.starts[0]) :]
        if self.end not in body and not final:
            return []
        body = body.split(self.end, 1)[0]
        spans, clean, _ = json_spans(body[body.find("{") :] if "{" in body else body)
        call = item_call(*spans[0], "parameters") if len(spans) == 1 and clean else None
        return [call] if call is not None else (None if final else [])

    def partial(self, text: str) -> tuple[str, str] | None:
        body = text[len(self.starts[0]) :]
        named = name_first(body[body.find("{") :]) if "{" in body and self.end not in body else None
        return None if named is None else (named[0], named[1])

"""The formats built of the model's own special tokens, as vLLM's parsers of the same names read them
(``vllm/tool_parsers/``); requests with tools decode with special tokens kept so the parser sees them:

- ``deepseek_v3`` (DeepSeek-V3, R1-0528): ``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
  \\n```json\\nARGUMENTS\\n```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>``;
- ``deepseek_v31`` (DeepSeek-V3.1): the same markers, without the call's type and the ``json`` block:
  ``<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGUMENTS<｜tool▁call▁end｜>``;
- ``kimi_k2`` (Kimi K2): ``<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0
  <|tool_call_argument_begin|>ARGUMENTS<|tool_call_end|>...<|tool_calls_section_end|>``, the call's id
  (``functions.NAME:0``) kept as its OpenAI id, as vLLM keeps it.
The arguments are passed on as the model wrote them (vLLM's rule): deepseek_v3's and deepseek_v31's stream as
written, a kimi_k2 call goes out once its end token arrives (with the model's id, which its chat template reads
back).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import re

from jllm.markers import held_back
from jllm.tool_parsers.base import ToolCall, ToolParser


class DeepSeekV3Parser(ToolParser):
    starts = ("<｜tool▁calls▁begin｜>",)
    keep_special_tokens = True
    _call = re.compile(
        r"<｜tool▁call▁begin｜>[^<]*<｜tool▁sep｜>(?P<name>[^<]*?)\n```json\n(?P<args>.*?)\n```<｜tool▁call▁end｜>",
        re.DOTALL,
    )
    _open = re.compile(r"<｜tool▁call▁begin｜>[^<]*<｜tool▁sep｜>(?P<name>[^<]*?)\n```json\n(?P<args>.*)", re.DOTALL)
    _end = "\n```<｜tool▁call▁end｜>"  # what ends a call's arguments

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        calls = [ToolCall(m["name"].strip(), m["args"]) for m in self._call.finditer(text) if m["name"].strip()]
        return calls if calls or not final else None

    def partial(self, text: str) -> tuple[str, str] | None:
        """The open call's arguments as written so far, less what may begin their end marker."""
        done = text.rfind("<｜tool▁call▁end｜>")
        tail = text[done + len("<｜tool▁call▁end｜>") :] if done >= 0 else text
        match = self._open.search(tail)
        if match is None or not match["name"].strip():
            return None
        arguments = match["args"]
        return match["name"].strip(), arguments[: len(arguments) - held_back(arguments, (self._end,))]


class DeepSeekV31Parser(DeepSeekV3Parser):
    _call = re.compile(r"<｜tool▁call▁begin｜>(?P<name>[^<]*)<｜tool▁sep｜>(?P<args>.*?)<｜tool▁call▁end｜>", re.DOTALL)
    _open = re.compile(r"<｜tool▁call▁begin｜>(?P<name>[^<]*)<｜tool▁sep｜>(?P<args>.*)", re.DOTALL)
    _end = "<｜tool▁call▁end｜>"


class KimiK2Parser(ToolParser):
    starts = ("<|tool_calls_section_begin|>", "<|tool_call_section_begin|>")
    keep_special_tokens = True
    _call = re.compile(
        r"<\|tool_call_begin\|>\s*([^<]+:\d+)\s*<\|tool_call_argument_begin\|>\s*"
        r"((?:(?!<\|tool_call_begin\|>).)*?)\s*<\|tool_call_end\|>",
        re.DOTALL,
    )

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        calls = [
            ToolCall(call_id.split(":")[0].split(".")[-1], arguments, id=call_id.strip())
            for call_id, arguments in self._call.findall(text)
        ]
        return calls if calls or not final else None

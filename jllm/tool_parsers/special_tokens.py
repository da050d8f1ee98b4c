"""The formats built of the model's own special tokens, as vLLM's parsers of the same names read them
(``vllm/tool_parsers/``); requests with tools decode with special tokens kept so the parser sees them:

- ``deepseek_v3`` (DeepSeek-V3, R1-0528): ``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
  \\n```json\\nARGUMENTS\\n```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>``;
- ``kimi_k2`` (Kimi K2): ``<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0
  <|tool_call_argument_begin|>ARGUMENTS<|tool_call_end|>...<|tool_calls_section_end|>``, the call's id
  (``functions.NAME:0``) kept as its OpenAI id, as vLLM keeps it.
The arguments are passed on as the model wrote them (vLLM's rule). Calls stream once their end token arrives.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import re

from jllm.tool_parsers.base import ToolCall, ToolParser


class DeepSeekV3Parser(ToolParser):
    starts = ("<｜tool▁calls▁begin｜>",)
    keep_special_tokens = True
    _call = re.compile(
        r"<｜tool▁call▁begin｜>(.*?)<｜tool▁sep｜>(.*?)\n```json\n(.*?)\n```<｜tool▁call▁end｜>", re.DOTALL
    )

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        calls = [ToolCall(name.strip(), arguments) for _, name, arguments in self._call.findall(text)]
        return calls if calls or not final else None


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

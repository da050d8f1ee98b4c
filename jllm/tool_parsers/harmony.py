"""gpt-oss's calls (vLLM's ``openai`` parser): harmony messages to ``functions.NAME`` (``jllm.harmony``), their bodies
the arguments as the model wrote them (JSON, ``<|constrain|>json`` or not), several per reply. It reads the answer
the ``openai_gptoss`` reasoning format leaves (``HarmonyFormat`` with ``calls``: the content as plain text, each call
kept as a harmony message), so the two go together (``ServerConfig`` checks it). A call streams its name once its
header is read and its arguments as they come; one cut short (``max_tokens``) is no call, and shows no markers.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from jllm.harmony import START, read_messages
from jllm.tool_parsers.base import ToolCall, ToolParser


class OpenAIParser(ToolParser):
    starts = (START,)
    keep_special_tokens = True

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        messages = read_messages(text)
        calls = [ToolCall(h.function, body) for h, body, ended in messages if ended and h.function is not None]
        return calls if calls or not final else None

    def partial(self, text: str) -> tuple[str, str] | None:
        """The call being written: its name and arguments so far (less what may begin its end marker)."""
        messages = read_messages(text, final=False)
        if not messages:
            return None
        header, body, ended = messages[-1]
        return None if ended or header.function is None else (header.function, body)

    def as_content(self, text: str) -> str:
        """A reply whose calls were all cut short: its text before them (the calls' markers are special tokens)."""
        return text.split(START, 1)[0]

"""gpt-oss's calls (vLLM's ``openai`` parser): harmony messages to ``functions.NAME`` (``jllm.harmony``), their bodies
the arguments as the model wrote them (JSON, ``<|constrain|>json`` or not), several per reply. It reads the answer
the ``openai_gptoss`` reasoning format leaves (``HarmonyFormat`` with ``calls``: the content as plain text, each call
kept as a harmony message), so the two go together (``ServerConfig`` checks it). A call streams its name once its
header is read and its arguments as they come. ``<|call|>`` is a stop token, which the text leaves out: at the end, a
last call whose body is one whole JSON value is complete (as hermes' unclosed call is); one cut short (``max_tokens``)
is no call, and shows no markers.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from jllm.harmony import START, read_messages
from jllm.tool_parsers.base import ToolCall, ToolParser, json_values


def _whole_json(body: str) -> bool:
    """Whether a call's body is one whole JSON value (a call whose ``<|call|>``, a stop token, decoding left out)."""
    values, clean = json_values(body)
    return len(values) == 1 and clean


class OpenAIParser(ToolParser):
    starts = (START,)
    keep_special_tokens = True

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        calls = [
            ToolCall(header.function, body)
            for header, body, ended in read_messages(text)
            if header.function is not None and (ended or (final and _whole_json(body)))
        ]
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

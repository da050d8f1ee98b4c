"""gpt-oss's harmony format read from generated text: the reply is a sequence of messages, each a header (channel,
recipient, content type) and a body, written with the o200k_harmony special tokens (kept in the decoded text)::

    <|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather
    <|constrain|>json<|message|>{"city":"Paris"}<|call|>

The prompt ends with ``<|start|>assistant``, so the first header starts at the reply's first character. A header is
read as openai-harmony's parser reads it (``read_header``); a body ends at ``<|end|>``, ``<|return|>`` or ``<|call|>``
(the last two are stop tokens, which decoding may leave out: a body may end with the text). ``MessageReader`` reads
messages as text streams in, holding back what may begin a marker, so any chunking reads the same.

Plain Python: ``reasoning_parsers`` (``openai_gptoss``) and ``tool_parsers.harmony`` (``openai``) read with it.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jllm.markers import first_marker, held_back

START, END, MESSAGE, CHANNEL, CONSTRAIN = "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>"
RETURN, CALL = "<|return|>", "<|call|>"
BODY_ENDS = (END, RETURN, CALL)
FUNCTIONS = "functions."  # the recipient prefix of a call to a request's tool
_CHANNEL_NAME = re.compile(r"[^\s<]*")


@dataclass(frozen=True)
class Header:
    """What a message's header says: its channel (analysis, commentary, final), recipient (``functions.NAME`` for a
    call, a built-in tool's name) and content type (``json``)."""

    channel: str | None
    recipient: str | None = None
    content_type: str | None = None

    @property
    def function(self) -> str | None:
        """The tool a call message calls (its recipient ``functions.NAME``), else None."""
        if self.recipient is None or not self.recipient.startswith(FUNCTIONS):
            return None
        return self.recipient[len(FUNCTIONS) :]


def read_header(text: str) -> Header:
    """A header's text (between ``<|start|>``, or the reply's start, and ``<|message|>``): the channel after
    ``<|channel|>``; of the words left, the role ``assistant`` dropped, then ``to=RECIPIENT`` and the content type
    (after ``<|constrain|>`` or not), in the role's section or the channel's, as openai-harmony reads them."""
    text = text.replace(START, " ", 1) if text.lstrip().startswith(START) else text
    channel = None
    at = text.find(CHANNEL)
    if at >= 0:
        after = text[at + len(CHANNEL) :]
        name = _CHANNEL_NAME.match(after)
        assert name is not None  # the pattern matches the empty string
        channel = name.group() or None
        text = text[:at] + " " + after[name.end() :]
    words = text.replace(CONSTRAIN, " ").split()
    if words and words[0] == "assistant":
        words.pop(0)
    recipient = content_type = None
    if words:
        last = words.pop()
        if last.startswith("to=") or not words:
            recipient = last.removeprefix("to=")
        else:
            content_type, recipient = last, words.pop().removeprefix("to=")
    return Header(channel, recipient, content_type)


Piece = tuple[int, Header, str, bool]  # (message number, its header, more of its body, whether the body ended here)


class MessageReader:
    """Harmony messages as text streams in: each delta's pieces, a message's first piece (empty text) as soon as
    its header is read, then its body as it comes, holding back what may begin a marker until it tells."""

    def __init__(self) -> None:
        self._rest = ""  # text not read yet: a header not closed, or the held-back end of a body
        self._header: Header | None = None  # the message whose body is being read (None: between messages)
        self.count = 0  # messages whose headers were read

    @property
    def reading(self) -> Header | None:
        """The header of the message whose body is being read (None: in a header, or before the first)."""
        return self._header

    def feed(self, delta: str) -> list[Piece]:
        self._rest += delta
        return self._advance(final=False)

    def finish(self) -> list[Piece]:
        """At the end: the held-back text of a body cut short (a header never closed is no message)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> list[Piece]:
        out: list[Piece] = []
        while True:
            if self._header is None:
                at = self._rest.find(MESSAGE)
                if at < 0:
                    return out
                self._header, self.count = read_header(self._rest[:at]), self.count + 1
                self._rest = self._rest[at + len(MESSAGE) :]
                out.append((self.count - 1, self._header, "", False))
                continue
            found = first_marker(self._rest, BODY_ENDS)
            if found is None:
                size = len(self._rest) - (0 if final else held_back(self._rest, BODY_ENDS))
                if size:
                    out.append((self.count - 1, self._header, self._rest[:size], False))
                    self._rest = self._rest[size:]
                return out
            at, marker = found
            out.append((self.count - 1, self._header, self._rest[:at], True))
            self._rest, self._header = self._rest[at + len(marker) :], None


def read_messages(text: str, final: bool = True) -> list[tuple[Header, str, bool]]:
    """A text's messages: (header, body, whether the body ended); without ``final`` (a text still streaming), the
    last body less what may begin its end marker."""
    reader = MessageReader()
    messages: list[tuple[Header, str, bool]] = []
    for index, header, body, ended in reader.feed(text) + (reader.finish() if final else []):
        if index == len(messages):
            messages.append((header, "", False))
        messages[index] = (header, messages[index][1] + body, ended)
    return messages

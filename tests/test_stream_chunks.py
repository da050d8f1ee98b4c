"""``jllm.server.stream_chunks``: the chunks written without pydantic are byte for byte the pydantic models' dumps.

Checked two ways over seeded random text (quotes, backslashes, control characters, line and paragraph separators,
accents, CJK, emoji, empty text): the writer against the models directly, and whole streams of
``/v1/chat/completions`` and ``/v1/completions`` (n > 1, finish and stop reasons, usage chunks, logprobs, echo,
token ids, a reasoning parser) against the same streams with every chunk built and dumped by the models.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fake_runner import TINY_TOKENIZER

from jllm.config import ServerConfig
from jllm.inputs import Prompt
from jllm.outputs import Logprob
from jllm.server import chat, completions
from jllm.server.chat_schemas import ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest, DeltaMessage
from jllm.server.completions_schemas import CompletionChoice, CompletionRequest, CompletionResponse
from jllm.server.generation import Delta
from jllm.server.reasoning import ReplyPlan
from jllm.server.schemas import UsageInfo
from jllm.server.stream_chunks import ChunkWriter
from jllm.tokenizer import Tokenizer

PIECES = [
    "a", " the", "Hello", '"', "\\", '\\"', "\n", "\r\n", "\t", "\x00", "\x01", "\x08", "\x0c", "\x1b", "\x1f", "\x7f",
    "\u2028", "\u2029", "é", "ß", "日本語", "😀", "👩‍💻", "\ufeff", "\ufffd", "</script>", "{}", "[", "null", "'",
    "\u0085", "\u00a0", "<think>", "</think>",
]  # fmt: skip
FINISH_REASONS = ["stop", "length", "abort", "tool_calls"]


class PydanticChunks:
    """``ChunkWriter``'s interface, each chunk built and dumped by the pydantic models as the streams did before."""

    def __init__(self, kind: str, response_id: str, created: int, model: str, include_usage: bool) -> None:
        self.head = dict(id=response_id, created=created, model=model)
        self.include_usage = include_usage

    def chat(
        self,
        index: int,
        content: str | None,
        reasoning: str | None,
        finish_reason: str | None,
        stop_reason: int | str | None,
        usage: UsageInfo | None,
    ) -> str:
        delta = DeltaMessage(content=content, reasoning=reasoning)
        choice = ChatChunkChoice(index=index, delta=delta, finish_reason=finish_reason, stop_reason=stop_reason)
        chunk = ChatCompletionChunk(**self.head, choices=[choice], usage=usage)
        return chunk.model_dump_json(exclude=None if self.include_usage else {"usage"})

    def text(
        self, index: int, text: str, finish_reason: str | None, stop_reason: int | str | None, usage: UsageInfo | None
    ) -> str:
        choice = CompletionChoice(index=index, text=text, finish_reason=finish_reason, stop_reason=stop_reason)
        exclude: dict[str, Any] = {"choices": {"__all__": {"prompt_logprobs"}}}
        if not self.include_usage:
            exclude["usage"] = True
        return CompletionResponse(**self.head, choices=[choice], usage=usage).model_dump_json(exclude=exclude)


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.choice([0, 0, 1, 1, 2, 5])))


def random_reason(rng: random.Random) -> tuple[str | None, int | str | None]:
    finish = rng.choice([None, None, *FINISH_REASONS])
    stop = rng.choice([None, 2, 151645, random_text(rng)]) if finish == "stop" else None
    return finish, stop


def random_usage(rng: random.Random) -> UsageInfo | None:
    if rng.random() < 0.3:
        return None
    prompt, done = rng.randrange(1, 5000), rng.randrange(0, 5000)
    return UsageInfo(prompt_tokens=prompt, completion_tokens=done, total_tokens=prompt + done)


@pytest.mark.parametrize("include_usage", [False, True])
def test_written_chunks_are_the_models_dumps(include_usage: bool) -> None:
    rng = random.Random(include_usage)
    for _ in range(3000):
        model = rng.choice(["m", "org/Model-7B", random_text(rng)])
        head = (f"chatcmpl-{random_text(rng)}", rng.randrange(2**31), model)
        finish, stop = random_reason(rng)
        index, usage = rng.randrange(8), random_usage(rng)
        content = rng.choice([None, random_text(rng)])
        reasoning = rng.choice([None, None, random_text(rng)])
        ours, theirs = (cls("chat.completion.chunk", *head, include_usage) for cls in (ChunkWriter, PydanticChunks))
        assert ours.chat(index, content, reasoning, finish, stop, usage) == theirs.chat(
            index, content, reasoning, finish, stop, usage
        )
        text = random_text(rng)
        ours, theirs = (cls("text_completion", *head, include_usage) for cls in (ChunkWriter, PydanticChunks))
        assert ours.text(index, text, finish, stop, usage) == theirs.text(index, text, finish, stop, usage)


class FakeGeneration:
    """A ``Generation``'s streaming face over scripted deltas."""

    def __init__(self, prompts: list[Prompt], deltas: list[Delta]) -> None:
        self.prompts = prompts
        self._deltas = deltas

    async def deltas(self) -> AsyncIterator[Delta]:
        for delta in self._deltas:
            yield delta

    def usage(self) -> UsageInfo:
        prompt = sum(len(p.token_ids) for p in self.prompts)
        completion = sum(len(d.token_ids) for d in self._deltas)
        return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def random_prompt(rng: random.Random, text: str) -> Prompt:
    return Prompt([rng.randrange(3, 500) for _ in range(rng.randrange(1, 9))], text)


def random_deltas(rng: random.Random, prompts: list[Prompt], n: int, logprobs: bool) -> list[Delta]:
    """Each choice's deltas (1 to 12 of them, the last finishing), interleaved across choices at random."""
    lanes = []
    for prompt_index in range(len(prompts)):
        for sample in range(n):
            count = rng.randrange(1, 13)
            lane = []
            for step in range(count):
                token_ids = [rng.randrange(3, 500) for _ in range(rng.choice([0, 1, 1, 1, 2]))]
                entries = [{t: Logprob(-rng.random() * 5, 1, None)} for t in token_ids] if logprobs else None
                finish, stop = random_reason(rng) if step == count - 1 else (None, None)
                if step == count - 1 and finish is None:
                    finish = "length"
                index = prompt_index * n + sample
                lane.append(Delta(index, prompt_index, random_text(rng), token_ids, entries, finish, stop))
            lanes.append(lane)
    out = []
    while lanes:
        lane = rng.choice(lanes)
        out.append(lane.pop(0))
        if not lane:
            lanes.remove(lane)
    return out


async def collect(chunks: AsyncIterator[str]) -> list[str]:
    return [chunk async for chunk in chunks]


def both_ways(
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    stream: Callable[[FakeGeneration], AsyncIterator[str]],
    generation: FakeGeneration,
) -> tuple[list[str], list[str]]:
    """The stream as sent, and as the pydantic models alone write it."""
    ours = asyncio.run(collect(stream(generation)))
    with monkeypatch.context() as patched:
        patched.setattr(module, "ChunkWriter", PydanticChunks)
        theirs = asyncio.run(collect(stream(generation)))
    return ours, theirs


CHAT_OPTIONS = [
    {},
    {"n": 3},
    {"stream_options": {"include_usage": True}},
    {"n": 2, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    {"logprobs": True, "top_logprobs": 1},
    {"return_token_ids": True, "return_prompt_text": True},
    {"stream_interval": 3, "n": 2},
]


@pytest.mark.parametrize("options", CHAT_OPTIONS + [{"reasoning_parser": "deepseek_r1"}, {"echo": True}])
def test_a_chat_stream_is_the_models_dump(options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = Tokenizer.from_pretrained(TINY_TOKENIZER)
    options = dict(options)
    parser = options.pop("reasoning_parser", None)
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 'He said "'}]
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": messages, "stream": True, **options})
    reply = ReplyPlan.of(body, ServerConfig(), parser)

    def stream(generation: FakeGeneration) -> AsyncIterator[str]:
        return chat._chunks(body, reply, generation, "chatcmpl-x", 1700000000, "m", tokenizer)  # type: ignore[arg-type]

    rng = random.Random(repr(options))
    for _ in range(40):
        prompts = [random_prompt(rng, "prompt")]
        generation = FakeGeneration(prompts, random_deltas(rng, prompts, body.n, bool(body.logprobs)))
        ours, theirs = both_ways(monkeypatch, chat, stream, generation)
        assert ours == theirs


@pytest.mark.parametrize("options", CHAT_OPTIONS + [{"echo": True}, {"logprobs": 0}, {"prompt": ["one", "two"]}])
def test_a_completion_stream_is_the_models_dump(options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = Tokenizer.from_pretrained(TINY_TOKENIZER)
    options = {key: value for key, value in options.items() if key not in ("top_logprobs", "return_prompt_text")}
    if options.get("logprobs") is True:
        options["logprobs"] = 1
    body = CompletionRequest.model_validate({"model": "m", "prompt": "hi", "stream": True, **options})

    def stream(generation: FakeGeneration) -> AsyncIterator[str]:
        view = completions._CompletionView(body, generation.prompts, "cmpl-x", "m", tokenizer)
        return view.chunks(generation)  # type: ignore[arg-type]

    rng = random.Random(repr(options))
    for _ in range(40):
        prompts = [random_prompt(rng, f"p{i}") for i in range(len(body.prompts()))]
        generation = FakeGeneration(prompts, random_deltas(rng, prompts, body.n, body.logprobs is not None))
        ours, theirs = both_ways(monkeypatch, completions, stream, generation)
        assert ours == theirs

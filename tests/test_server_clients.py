"""What third-party clients send and read, over the scripted engine: each test reproduces a client's request
shape (named in it) with the ``openai`` package or raw HTTP, so CI needs neither LangChain, LiteLLM nor Node.

The engine here has a byte-level BPE tokenizer (GPT-2's byte alphabet, one token per byte, as the default model's
rarer characters are) and a script that generates ``TEXT``: every multi-byte character comes as tokens holding part
of it, the case OpenAI's logprob ``bytes`` exist for.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import openai
import pytest
from fake_runner import TINY_TOKENIZER, fake_engine
from server_utils import RunningServer
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers

from jllm.config import load_config
from jllm.engine import LLMEngine

MODEL = "scripted"
TEXT = "猫 😺, é!"  # 3-, 4- and 2-byte characters
CHAT = [{"role": "user", "content": "hi"}]
NODE_PROBE = Path(__file__).parent / "clients" / "openai_node.cjs"


def byte_level_tokenizer(out: Path) -> Path:
    """The tiny tokenizer's specials and chat template over GPT-2's byte-level alphabet, no merges (259 ids)."""
    out.mkdir(parents=True, exist_ok=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab |= {c: 3 + i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = BackendTokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<unk>", "<s>", "</s>"])
    backend.save(str(out / "tokenizer.json"))
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(TINY_TOKENIZER / name, out / name)
    return out


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LLMEngine:
    tokenizer_dir = byte_level_tokenizer(tmp_path_factory.mktemp("byte_level"))
    ids = BackendTokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).encode(TEXT).ids

    def script(prompt: Sequence[int], position: int) -> int:  # TEXT, again and again
        return ids[(position - len(prompt)) % len(ids)]

    return fake_engine(script=script, tokenizer_dir=tokenizer_dir)


@pytest.fixture(scope="module")
def server(engine: LLMEngine) -> Iterator[RunningServer]:
    with RunningServer(engine, load_config(None, served_model_name=MODEL)) as running:
        yield running


@pytest.fixture(autouse=True)
def engine_is_left_empty(engine: LLMEngine) -> Iterator[None]:
    yield
    assert not engine.requests and engine.block_manager.num_allocated_pages == 0


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_chat_logprob_bytes_are_each_tokens_own_and_concatenate_to_the_text(client: openai.OpenAI) -> None:
    """A token holding part of a character had ``bytes`` of U+FFFD (its decoded text re-encoded): the bytes of
    "😺" came out as four replacement characters. Now they are the token's bytes, and ``token`` shows them as
    OpenAI does (``"\\xf0"``)."""
    n = len(TEXT.encode())
    args = dict(model=MODEL, messages=CHAT, max_tokens=n, logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**args)
    entries = whole.choices[0].logprobs.content
    assert whole.choices[0].message.content == TEXT
    assert b"".join(bytes(e.bytes) for e in entries) == TEXT.encode()
    assert [e.token for e in entries[:2]] == ["\\xe7", "\\x8c"]  # the first bytes of 猫
    for e in entries:
        assert e.token == bytes(e.bytes).decode(errors="backslashreplace")
        assert [bytes(t.bytes) for t in e.top_logprobs][:1] == [bytes(e.bytes)]  # the scripted token is the top one

    chunks = list(client.chat.completions.create(**args, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.bytes) for e in streamed] == [(e.token, e.bytes) for e in entries]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT

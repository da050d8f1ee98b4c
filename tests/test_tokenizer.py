"""Tokenizer wrapper and incremental detokenizer, on the bundled default model's tokenizer."""

import json
import random
import shutil
import threading
from pathlib import Path

import pytest
from model_utils import save_char_tokenizer
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models

from jllm.tokenizer import IncrementalDetokenizer, Tokenizer

STREAM_TEXTS = [
    "Plain English, with punctuation!",
    "Emoji 🤗🚀 and a family 👨‍👩‍👧‍👦 plus flags 🇰🇷",
    "中文：你好，世界。日本語：こんにちは。한국어: 안녕하세요",
    "Accents: café naïve résumé Ångström, combining e\u0301",
    "def main() -> None:\n\tprint({'a': [1, 2, 3]})  # code\n\n    return\n",
    "math ∑∫√∞ ≠ ≤ ≥ and arrows → ← ⇒",
]


@pytest.fixture(scope="module")
def tok(default_model_dir: Path) -> Tokenizer:
    return Tokenizer.from_pretrained(default_model_dir)


def stream(detok: IncrementalDetokenizer, ids: list[int], chunks: list[int] | None = None) -> list[str]:
    """Feed `ids` in chunks (one token each by default) and return every delta, the final flush included."""
    deltas, i = [], 0
    for size in chunks or [1] * len(ids):
        deltas.append(detok.add_tokens(ids[i : i + size]))
        i += size
    if not detok.finished:
        deltas.append(detok.flush())
    return deltas


def ids_of(tok: Tokenizer, *pieces: str) -> list[int]:
    """Token ids for `pieces` encoded separately, so a token boundary falls between pieces."""
    return [i for piece in pieces for i in tok.encode(piece, add_special_tokens=False)]


def test_tokenizer_basics(tok: Tokenizer) -> None:
    assert tok.vocab_size == 49152
    assert tok.eos_token_ids == {2}
    assert tok.bos_token_id == 1 and tok.pad_token_id == 2
    assert set(range(17)) <= set(tok.all_special_ids)  # all control tokens, <repo_name> etc. included
    ids = tok.encode("Hello <|im_end|>")
    assert ids[-1] == 2
    assert tok.decode(ids) == "Hello "
    assert tok.decode(ids, skip_special_tokens=False) == "Hello <|im_end|>"


def test_chat_template_renders_chatml(tok: Tokenizer) -> None:
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=False).endswith(
        "assistant\n"
    )


def test_generation_config_eos_list_joins_eos_ids(default_model_dir: Path, tmp_path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / name, tmp_path / name)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    assert Tokenizer.from_pretrained(tmp_path).eos_token_ids == {0, 2}


def test_config_eos_list_joins_eos_ids_where_no_generation_config(default_model_dir: Path, tmp_path: Path) -> None:
    """Without generation_config.json, transformers' ``generate`` and vLLM stop at config.json's eos ids (its
    ``text_config``'s in an image-text config); they had been ignored, so generation ran on past them."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / name, tmp_path / name)
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [0, 7]}))
    assert Tokenizer.from_pretrained(tmp_path).eos_token_ids == {0, 2, 7}
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"eos_token_id": 7}}))
    assert Tokenizer.from_pretrained(tmp_path).eos_token_ids == {2, 7}
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 0}))
    assert Tokenizer.from_pretrained(tmp_path).eos_token_ids == {0, 2}  # generation_config.json's alone


@pytest.mark.slow  # AutoTokenizer's import: 4 s
def test_a_model_directory_without_tokenizer_files_is_named(tmp_path: Path) -> None:
    """transformers' own message ("Couldn't instantiate the backend tokenizer ...") had named no directory."""
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=rf"^{tmp_path}: no tokenizer could be loaded from the model directory"):
        Tokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_streamed_deltas_equal_full_decode(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    rng = random.Random(text)
    for chunks in (None, [rng.randint(1, 4) for _ in ids]):
        detok = IncrementalDetokenizer(tok, prompt_ids=[1, 2, 3])
        deltas = stream(detok, ids, chunks)
        assert "".join(deltas) == tok.decode(ids) == detok.text == text
        assert not any("\ufffd" in delta for delta in deltas)  # never half a character


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_final_only_decodes_once_at_flush(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok, prompt_ids=[1], final_only=True)
    assert detok.defer
    assert stream(detok, ids) == [""] * len(ids) + [text]  # every add releases nothing; the flush all of it
    assert detok.text == text and detok.flush() == ""


def test_final_only_with_stop_strings_still_decodes_as_tokens_arrive(tok: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tok, prompt_ids=[1], stop=["world"], final_only=True)
    assert not detok.defer
    stream(detok, tok.encode("hello world and more"))
    assert detok.finished and detok.text == "hello "


def test_streaming_keeps_special_tokens_when_asked(tok: Tokenizer) -> None:
    ids = tok.encode("<|im_start|>assistant\nSure 👍<|im_end|>")
    for skip in (True, False):
        detok = IncrementalDetokenizer(tok, [], skip_special_tokens=skip)
        assert "".join(stream(detok, ids)) == tok.decode(ids, skip_special_tokens=skip)


def test_partial_utf8_is_held_until_complete(tok: Tokenizer) -> None:
    ids = tok.encode("🤗")
    assert len(ids) > 1  # byte-level: the emoji spans several tokens
    detok = IncrementalDetokenizer(tok, [])
    assert [detok.add_tokens([i]) for i in ids] == [""] * (len(ids) - 1) + ["🤗"]


def test_unfinished_utf8_is_released_by_flush(tok: Tokenizer) -> None:
    ids = tok.encode("ok 🤗")[:-1]  # cut inside the emoji
    full = tok.decode(ids)
    assert full.endswith("\ufffd")
    detok = IncrementalDetokenizer(tok, [])
    released = "".join(detok.add_tokens([i]) for i in ids)
    assert released.startswith("ok") and "\ufffd" not in released
    assert released + detok.flush() == detok.text == full


def test_stop_string_spanning_two_tokens(tok: Tokenizer) -> None:
    ids = ids_of(tok, "The answer is forty", "-two. Done", " and more")
    text = tok.decode(ids)
    stop = "forty-two"  # starts in one token, ends in a later one
    detok = IncrementalDetokenizer(tok, [], stop=[stop])
    deltas = stream(detok, ids)
    assert "".join(deltas) == detok.text == "The answer is "
    assert detok.finished and detok.stop_reason == stop
    assert text.startswith(detok.text + stop)
    assert detok.add_tokens(tok.encode(" more")) == ""  # nothing after a stop


def test_include_stop_str_in_output_keeps_the_stop(tok: Tokenizer) -> None:
    ids = ids_of(tok, "Say hello", " world. Then", " leave")
    detok = IncrementalDetokenizer(tok, [], stop=["lo wor"], include_stop_str_in_output=True)
    assert "".join(stream(detok, ids)) == detok.text == "Say hello wor"
    assert detok.finished and detok.stop_reason == "lo wor"


def test_possible_stop_start_is_held_back_then_released(tok: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tok, [], stop=["<END>"])
    assert detok.add_tokens(ids_of(tok, "abc <EN")) == "abc "  # "<EN" may still become "<END>"
    assert detok.text == "abc "
    assert detok.add_tokens(ids_of(tok, "X")) == "<ENX"  # it cannot any more
    assert detok.add_tokens(ids_of(tok, " <")) == " "
    assert detok.flush() == "<"  # the sequence ended some other way: release the rest
    assert detok.text == "abc <ENX <" and not detok.finished and detok.stop_reason is None


def test_no_hold_back_when_stop_is_included(tok: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tok, [], stop=["<END>"], include_stop_str_in_output=True)
    assert detok.add_tokens(ids_of(tok, "abc <EN")) == "abc <EN"
    assert detok.add_tokens(ids_of(tok, "D> tail")) == "D>"
    assert detok.text == "abc <END>" and detok.stop_reason == "<END>"


def test_earliest_of_several_stops_wins(tok: Tokenizer) -> None:
    ids = ids_of(tok, "one two three four")
    detok = IncrementalDetokenizer(tok, [], stop=["four", "two", "three"])
    assert "".join(stream(detok, ids)) == "one "
    assert detok.stop_reason == "two"


def test_stop_found_when_all_tokens_arrive_at_once(tok: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tok, [], stop=["\n\n"])
    assert detok.add_tokens(ids_of(tok, "para one\n\npara two")) == "para one"
    assert detok.finished and detok.stop_reason == "\n\n"


def test_the_chat_renderer_loads_in_the_background_only_for_a_model_with_a_template(tmp_path: Path) -> None:
    def renderer_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "jllm-chat-renderer"]

    save_char_tokenizer(tmp_path / "chat", 64)
    with_template = Tokenizer.from_pretrained(tmp_path / "chat")
    assert with_template.chat_template and with_template._hf is None  # read without transformers
    with_template.load_chat_renderer_in_background()
    for thread in renderer_threads():
        thread.join(timeout=60)
    assert with_template._hf is not None and with_template._hf.chat_template == with_template.chat_template

    plain_dir = tmp_path / "plain"
    shutil.copytree(tmp_path / "chat", plain_dir)
    config = json.loads((plain_dir / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain_dir / "tokenizer_config.json").write_text(json.dumps(config))
    (plain_dir / "chat_template.jinja").unlink(missing_ok=True)
    plain = Tokenizer.from_pretrained(plain_dir)
    plain.load_chat_renderer_in_background()
    assert plain.chat_template is None and not renderer_threads() and plain._hf is None
    with pytest.raises(ValueError, match="no chat template"):
        plain.apply_chat_template([{"role": "user", "content": "hi"}])
    assert plain._hf is None  # refused without loading transformers' tokenizer


def test_token_bytes_are_each_tokens_raw_bytes(tok: Tokenizer, tmp_path: Path) -> None:
    """OpenAI's logprob ``bytes``: a byte-level token holding part of a character ("😊" is two tokens here) has
    its own bytes, not the U+FFFD its decoded text shows; a text's tokens' bytes concatenate to its UTF-8."""
    for text in [*STREAM_TEXTS, "<|im_start|>user\nhi<|im_end|>"]:
        ids = tok.encode(text, add_special_tokens=False)
        assert b"".join(tok.token_bytes(i) for i in ids) == text.encode()
    assert any("\ufffd" in tok.decode([i]) for i in tok.encode("😊"))
    for i in range(tok.vocab_size):  # where a token's bytes are whole characters, they are its decoded text
        assert tok.token_bytes(i).decode(errors="replace") == tok.decode([i], skip_special_tokens=False)
    # Llama 2's decoder: a <0xNN> piece is one byte; a piece's "▁" is the space decoding it alone strips
    vocab = {"<unk>": 0, "a": 1, "<0xF0>": 2, "\u2581a": 3}
    backend = BackendTokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    backend.decoder = decoders.Sequence(steps)
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text("{}")
    sentencepiece = Tokenizer.from_pretrained(tmp_path)
    assert [sentencepiece.token_bytes(i) for i in range(4)] == [b"<unk>", b"a", b"\xf0", b" a"]
    assert sentencepiece.decode([3]) == "a"

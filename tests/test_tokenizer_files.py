"""A tokenizer directory read without transformers (``jllm.tokenizer_files``) gives what transformers' loader gives:
the same backend (serialized, every id's text with and without special tokens, encodings), the same vocabulary size,
special ids, BOS / PAD / EOS ids, chat template and rendered prompts; transformers is imported only when the chat
template first renders, and the engine starts without it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers

from jllm.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<img>", "hello", "world", "user", "Hi", "!"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
TEXTS = ["hello world !", "Hi <|im_start|> user<|im_end|>", "<s> hello </s> <pad> <img> unknown", ""]
CHATS = [
    [{"role": "user", "content": "hello world"}],
    [
        {"role": "system", "content": "Hi !"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "!"},
    ],
]


def save_word_tokenizer(out: Path, **special: str) -> None:
    """A word-level tokenizer saved by transformers' ``save_pretrained`` (tokenizer.json, tokenizer_config.json,
    chat_template.jinja), with <|im_start|> an added token that is not special."""
    from transformers import PreTrainedTokenizerFast

    backend = BackendTokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **special)
    tok.add_tokens(["<|im_start|>"])
    tok.chat_template = TEMPLATE
    tok.save_pretrained(out)


def edit_json(file: Path, edit: Callable[[dict], object]) -> None:
    data = json.loads(file.read_text()) if file.is_file() else {}
    edit(data)
    file.write_text(json.dumps(data))


def added_token(content: str, special: bool = True) -> dict:
    return {"content": content, "lstrip": False, "rstrip": False, "normalized": not special, "single_word": False,
            "special": special}  # fmt: skip


def template_in_config(d: Path) -> None:
    edit_json(d / "tokenizer_config.json", lambda c: c.update(chat_template=(d / "chat_template.jinja").read_text()))
    (d / "chat_template.jinja").unlink()


def named_templates(d: Path) -> None:
    (d / "additional_chat_templates").mkdir()
    (d / "additional_chat_templates" / "tool_use.jinja").write_text("tools: {{ tools | length }}")


def template_list_in_config(d: Path) -> None:
    (d / "chat_template.jinja").unlink()
    templates = [{"name": "default", "template": TEMPLATE}, {"name": "rag", "template": "{{ documents | length }}"}]
    edit_json(d / "tokenizer_config.json", lambda c: c.update(chat_template=templates))


def no_post_processor(d: Path) -> None:
    edit_json(d / "tokenizer.json", lambda t: t.update(post_processor=None))


def padding_in_tokenizer_json(d: Path) -> None:
    padding = {"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": None, "pad_id": 5,
               "pad_type_id": 0, "pad_token": "<|im_end|>"}  # fmt: skip
    edit_json(d / "tokenizer.json", lambda t: t.update(padding=padding))
    edit_json(d / "tokenizer_config.json", lambda c: c.pop("pad_token"))


# Each case edits the saved word tokenizer (bos <s>, eos </s>, unk <unk>, pad <pad>, its template in a .jinja file).
CASES: dict[str, Callable[[Path], object]] = {
    "as_saved": lambda d: None,
    "eos_as_added_token_dict": lambda d: edit_json(
        d / "tokenizer_config.json", lambda c: c.update(eos_token={"__type": "AddedToken", **added_token("<|im_end|>")})
    ),
    "pad_missing": lambda d: edit_json(d / "tokenizer_config.json", lambda c: c.pop("pad_token")),
    "bos_missing": lambda d: edit_json(d / "tokenizer_config.json", lambda c: c.pop("bos_token")),
    "unk_missing": lambda d: edit_json(d / "tokenizer_config.json", lambda c: c.pop("unk_token")),
    "several_generation_eos": lambda d: edit_json(
        d / "generation_config.json", lambda g: g.update(eos_token_id=[5, 2])
    ),
    "one_generation_eos": lambda d: edit_json(d / "generation_config.json", lambda g: g.update(eos_token_id=5)),
    "template_in_config": template_in_config,
    "template_file_over_config": lambda d: edit_json(
        d / "tokenizer_config.json", lambda c: c.update(chat_template="x")
    ),
    "named_templates": named_templates,
    "template_list_in_config": template_list_in_config,
    "chat_template_json_unread": lambda d: (d / "chat_template.json").write_text(json.dumps({"chat_template": "x"})),
    "added_tokens_decoder_marks_special": lambda d: edit_json(
        d / "tokenizer_config.json",
        lambda c: c.update(added_tokens_decoder={"4": added_token("<|im_start|>"), "5": added_token("<|im_end|>")}),
    ),
    "special_tokens_outside_the_vocabulary": lambda d: edit_json(
        d / "tokenizer_config.json", lambda c: c.update(pad_token="<pad2>", mask_token="<mask>")
    ),
    "model_specific_and_extra_specials": lambda d: edit_json(
        d / "tokenizer_config.json",
        lambda c: c.update(image_token="<img>", additional_special_tokens=["<|im_end|>", "<extra>"]),
    ),
    "extra_specials_mapping": lambda d: edit_json(
        d / "tokenizer_config.json", lambda c: c.update(extra_special_tokens={"image_token": "<img>"})
    ),
    "special_tokens_map": lambda d: (d / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": added_token("<|im_end|>", special=False), "bos_token": "<|im_start|>"})
    ),
    "no_post_processor": no_post_processor,
    "split_special_tokens": lambda d: edit_json(
        d / "tokenizer_config.json", lambda c: c.update(split_special_tokens=True)
    ),
    "padding_in_tokenizer_json": padding_in_tokenizer_json,
}


def transformers_generation_eos(directory: Path) -> int | list[int] | None:
    """The EOS ids transformers' ``generate`` adds: generation_config.json's, else those it derives from config.json
    (``GenerationConfig.from_model_config``; the bundled Llama-3 directories have only config.json)."""
    from transformers import AutoConfig, GenerationConfig

    if (directory / "generation_config.json").is_file():
        return GenerationConfig.from_pretrained(directory).eos_token_id
    if (directory / "config.json").is_file():
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(directory)).eos_token_id
    return None


def assert_same_as_transformers(directory: Path) -> None:
    """Every field against transformers' loader (what ``Tokenizer.from_pretrained`` read before it read the files
    itself), the backends alike to their last flag, and the chat prompts rendered the same."""
    ours = Tokenizer.from_pretrained(directory)
    assert ours._hf is None, "the files were read without transformers"
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast.from_pretrained(str(directory))
    backend = hf.backend_tokenizer
    special = {i for i, tok in backend.get_added_tokens_decoder().items() if tok.special}
    generation_eos = transformers_generation_eos(directory)
    expected_eos = {hf.eos_token_id, *(generation_eos if isinstance(generation_eos, list) else [generation_eos])}
    assert ours.vocab_size == len(hf)
    assert ours.all_special_ids == sorted(special | set(hf.all_special_ids))
    assert (ours.bos_token_id, ours.pad_token_id) == (hf.bos_token_id, hf.pad_token_id)
    assert ours.eos_token_ids == expected_eos - {None}
    assert (ours.chat_template, ours.name_or_path) == (hf.chat_template, hf.name_or_path)
    assert ours.backend.to_str() == backend.to_str()
    assert ours.backend.encode_special_tokens == backend.encode_special_tokens
    every_id = [[i] for i in range(len(hf))]
    for skip in (True, False):
        assert ours.backend.decode_batch(every_id, skip) == backend.decode_batch(every_id, skip)
    for text in TEXTS:
        for add in (True, False):
            assert ours.encode(text, add) == backend.encode(text, add_special_tokens=add).ids
    if hf.chat_template:
        for chat in CHATS:
            for prompt in (True, False):
                text = hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=prompt)
                assert ours.apply_chat_template(chat, add_generation_prompt=prompt) == text
            if isinstance(ours.chat_template, str):  # the template as read renders the same
                assert hf.apply_chat_template(chat, tokenize=False, chat_template=ours.chat_template) == text


@pytest.mark.parametrize("case", CASES)
def test_word_tokenizer_read_without_transformers_matches_its_loader(case: str, tmp_path: Path) -> None:
    save_word_tokenizer(tmp_path, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    CASES[case](tmp_path)
    assert_same_as_transformers(tmp_path)


@pytest.mark.parametrize("name", ["tiny-llama", "llama3-8b", "llama3-70b"])
def test_bundled_configs_read_without_transformers_match_its_loader(name: str) -> None:
    assert_same_as_transformers(ROOT / "configs" / "models" / name)


def test_default_model_read_without_transformers_matches_its_loader(default_model_dir: Path) -> None:
    assert_same_as_transformers(default_model_dir)  # SmolLM2: byte-level BPE, its template in the config


def test_char_tokenizer_read_without_transformers_matches_its_loader(tmp_path: Path) -> None:
    from model_utils import TINY_CONFIG, save_char_tokenizer

    save_char_tokenizer(tmp_path, TINY_CONFIG["vocab_size"])
    assert_same_as_transformers(tmp_path)


UNREAD: dict[str, Callable[[Path], object]] = {
    "fast_tokenizer_files": lambda d: edit_json(
        d / "tokenizer_config.json", lambda c: c.update(fast_tokenizer_files=["tokenizer.json"])
    ),
    "legacy_added_tokens_json": lambda d: (d / "added_tokens.json").write_text(json.dumps({"<new>": len(WORDS)})),
    "special_tokens_map_extra": lambda d: (d / "special_tokens_map.json").write_text(
        json.dumps({"additional_special_tokens": ["<|im_end|>"]})
    ),
}


@pytest.mark.parametrize("case", UNREAD)
def test_settings_the_reader_does_not_read_load_through_transformers(case: str, tmp_path: Path) -> None:
    save_word_tokenizer(tmp_path, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    UNREAD[case](tmp_path)
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok._hf is not None and tok.backend is tok.hf.backend_tokenizer


@pytest.mark.parametrize("config", [{"eos_token": {"content": "</s>"}}, {"extra_special_tokens": [{"content": "!"}]}])
def test_special_tokens_transformers_refuses_are_refused_by_transformers(config: dict, tmp_path: Path) -> None:
    """An AddedToken's fields without ``"__type"``: transformers' loader raises, so loading raises its error."""
    save_word_tokenizer(tmp_path, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    edit_json(tmp_path / "tokenizer_config.json", lambda c: c.update(config))
    with pytest.raises(TypeError):
        Tokenizer.from_pretrained(tmp_path)


def test_loading_imports_no_transformers_until_the_first_chat_prompt(tmp_path: Path) -> None:
    """In a fresh interpreter: loading reads the files alone; the first chat prompt imports transformers and renders
    what transformers' tokenizer renders."""
    save_word_tokenizer(tmp_path, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    code = (
        "import json, sys; from jllm.tokenizer import Tokenizer;"
        f"tok = Tokenizer.from_pretrained({str(tmp_path)!r}); assert 'transformers' not in sys.modules;"
        f"prompt = tok.apply_chat_template({CHATS[1]!r}); assert 'transformers' in sys.modules;"
        "print(json.dumps(prompt))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert json.loads(proc.stdout) == hf.apply_chat_template(CHATS[1], tokenize=False, add_generation_prompt=True)


def test_engine_starts_without_transformers_tokenizer_and_structured_output_loads_it() -> None:
    """The grammar compiler reads transformers' tokenizer on the first structured request, not at construction."""
    from fake_runner import fake_engine

    from jllm.structured_output import StructuredOutputsParams

    engine = fake_engine()
    assert engine.tokenizer._hf is None
    engine.grammars.matcher(StructuredOutputsParams(choice=["Hi", "hello"]))
    assert engine.tokenizer._hf is not None


def test_models_loading_their_chat_renderers_at_once_all_get_one() -> None:
    """A multi-model server starts a renderer thread per model; transformers' lazy imports raced there (ImportError in
    3 of 4 threads) until the import took a lock. A fresh process, so transformers is not imported yet."""
    code = """
import threading
from jllm.tokenizer import Tokenizer

toks = [Tokenizer.from_pretrained("configs/models/tiny-llama") for _ in range(4)]
errors = []

def load(tok):
    try:
        tok.hf
    except Exception as e:
        errors.append(repr(e))

threads = [threading.Thread(target=load, args=(tok,)) for tok in toks]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(errors)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout

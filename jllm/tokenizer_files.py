"""A model directory's tokenizer read as transformers' loader reads it, without transformers (whose import took 4-6 s
of every start on an H200 host, torch included): the Rust backend from tokenizer.json with the special tokens and
settings ``PreTrainedTokenizerFast.from_pretrained`` gives it (transformers 5: ``_from_pretrained`` and
``TokenizersBackend.__init__``), the special tokens' ids and the chat template. What it does not read raises
``NeedsTransformers``, and ``jllm.tokenizer`` loads that directory through transformers.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, processors
from tokenizers import Tokenizer as BackendTokenizer

# transformers' named special tokens (PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES), in its order
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# tokenizer_config.json keys that change the backend in ways only transformers' loader applies
TRANSFORMERS_ONLY_KEYS = frozenset(
    {"fast_tokenizer_files", "fix_mistral_regex", "gguf_file", "merges", "post_processor", "tokenizer_file"}
    | {"tokenizer_object", "tokenizer_padding", "tokenizer_truncation", "vocab"}
)


class NeedsTransformers(Exception):
    """The directory holds something `read_tokenizer_files` does not read: it loads through transformers."""


@dataclass
class TokenizerInfo:
    """What the engine reads of a tokenizer besides its backend (transformers' attributes of the same names)."""

    name_or_path: str
    chat_template: str | dict[str, str] | None
    all_special_ids: list[int | None]  # the named and extra special tokens' (transformers' ``all_special_ids``)
    bos_token_id: int | None
    pad_token_id: int | None
    eos_token_id: int | None


def read_tokenizer_files(path: Path) -> tuple[BackendTokenizer, TokenizerInfo]:
    """The backend and what the engine reads of ``PreTrainedTokenizerFast.from_pretrained(path)``, for a directory
    with a tokenizer.json; ``NeedsTransformers`` for what it does not read."""
    config = _read_json(path / "tokenizer_config.json")
    if unread := sorted(TRANSFORMERS_ONLY_KEYS & config.keys()):
        raise NeedsTransformers(f"tokenizer_config.json sets {unread[0]!r}")
    if "added_tokens_decoder" not in config and (path / "added_tokens.json").is_file():
        raise NeedsTransformers("a legacy added_tokens.json")
    backend = BackendTokenizer.from_file(str(path / "tokenizer.json"))
    named, extra, added = _special_tokens(path, config, backend)
    # The loader adds the config's added tokens and every special token to the backend (one already there keeps its
    # id and takes the flags given: special, say), then sets these two.
    if tokens := _tokens_to_add(backend, named, extra, added):
        backend.add_tokens(tokens)
    backend.encode_special_tokens = config.get("split_special_tokens", False)
    if backend.post_processor is None:  # the loader's update_post_processor, adding neither BOS nor EOS
        backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])

    def token_id(token: str | AddedToken | None) -> int | None:
        """transformers' ``convert_tokens_to_ids``; every special token is in the backend now."""
        return backend.token_to_id(str(token)) if token is not None else None

    all_special = dict.fromkeys(str(token) for token in [*named.values(), *extra])
    specials = TokenizerInfo(
        name_or_path=str(path),
        chat_template=_chat_template(path, config),
        all_special_ids=[token_id(token) for token in all_special],
        bos_token_id=token_id(named.get("bos_token")),
        pad_token_id=token_id(named.get("pad_token")),
        eos_token_id=token_id(named.get("eos_token")),
    )
    return backend, specials


def _special_tokens(
    path: Path, config: dict[str, Any], backend: BackendTokenizer
) -> tuple[dict[str, str | AddedToken], list[str | AddedToken], list[AddedToken]]:
    """The named special tokens (bos_token ... and model-specific ones like image_token, transformers' order), the
    extra ones (``extra_special_tokens``, once ``additional_special_tokens``) and the added tokens the loader adds
    again: the config's ``added_tokens_decoder``, or without it tokenizer.json's own, special_tokens_map.json's
    named tokens then taking the config's place."""
    config = dict(config)
    if "additional_special_tokens" in config and not config.get("extra_special_tokens"):
        config["extra_special_tokens"] = config.pop("additional_special_tokens")
    if "added_tokens_decoder" in config:
        decoder = sorted(config["added_tokens_decoder"].items(), key=lambda item: int(item[0]))
        added = [AddedToken(**token) for _, token in decoder]
    else:
        added = [token for _, token in sorted(backend.get_added_tokens_decoder().items())]
        for key, value in _read_json(path / "special_tokens_map.json").items():
            if key not in NAMED_SPECIAL_TOKENS:
                raise NeedsTransformers(f"special_tokens_map.json sets {key!r}")
            if isinstance(value, dict):
                value = AddedToken(**{k: v for k, v in value.items() if k != "special"}, special=True)
            config[key] = value
    if backend.padding is not None and "pad_token" not in config:  # tokenizer.json's padding names one
        config["pad_token"] = backend.padding["pad_token"]
    named = {key: _token(key, config[key]) for key in NAMED_SPECIAL_TOKENS if config.get(key) is not None}
    # Model-specific named tokens: AddedToken-typed ones, then plain strings, then an extra_special_tokens mapping.
    others = {k: v for k, v in config.items() if k.endswith("_token") and k not in NAMED_SPECIAL_TOKENS}
    named |= {k: _token(k, v) for k, v in others.items() if isinstance(v, dict) and v.get("__type") == "AddedToken"}
    named |= {k: v for k, v in others.items() if isinstance(v, str)}
    extra = config.get("extra_special_tokens") or []
    if isinstance(extra, dict):
        named |= {k: _token(k, v) for k, v in extra.items()}
        extra = []
    elif not isinstance(extra, list):
        raise NeedsTransformers(f"extra_special_tokens is {extra!r}")
    return named, [_token("extra_special_tokens", v) for v in extra], added


def _token(key: str, value: Any) -> str | AddedToken:
    """A special token as the config spells it: a string, or an AddedToken's fields (``"__type": "AddedToken"``)."""
    if isinstance(value, str | AddedToken):
        return value
    if isinstance(value, dict) and value.get("__type") == "AddedToken":
        return AddedToken(**{k: v for k, v in value.items() if k != "__type"})
    raise NeedsTransformers(f"{key} is {value!r}")  # transformers' loader refuses it with its own message


def _tokens_to_add(
    backend: BackendTokenizer,
    named: dict[str, str | AddedToken],
    extra: list[str | AddedToken],
    added: list[AddedToken],
) -> list[AddedToken]:
    """``TokenizersBackend.__init__``'s list: the added tokens, then each special token not among them or the
    backend's added tokens; a string special, a named token special."""
    known = {token.content for token in backend.get_added_tokens_decoder().values()} | {t.content for t in added}
    tokens: list[str | AddedToken] = list(added)
    for token in [*named.values(), *extra]:
        if str(token) not in known and token not in tokens:
            tokens.append(token)
    named_text = {str(token) for token in named.values()}
    for i, token in enumerate(tokens):
        if isinstance(token, str):
            tokens[i] = AddedToken(token, special=True)
        elif not token.special and token.content in named_text:
            token.special = True
    return tokens  # type: ignore[return-value]


def _chat_template(path: Path, config: dict[str, Any]) -> str | dict[str, str] | None:
    """chat_template.jinja and additional_chat_templates/*.jinja (named templates) take the config's place; a
    config's list of named templates becomes a mapping. (transformers' tokenizer loader reads no
    chat_template.json: that is its processors' legacy file.)"""
    templates = {}
    if (path / "chat_template.jinja").is_file():
        templates["default"] = (path / "chat_template.jinja").read_text(encoding="utf-8")
    if (path / "additional_chat_templates").is_dir():
        for file in (path / "additional_chat_templates").glob("*.jinja"):
            templates[file.name.removesuffix(".jinja")] = file.read_text(encoding="utf-8")
    if list(templates) == ["default"]:
        return templates["default"]
    if templates:
        return templates
    template = config.get("chat_template")
    if isinstance(template, list):
        return {entry["name"]: entry["template"] for entry in template}
    return template


def _read_json(file: Path) -> dict[str, Any]:
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}

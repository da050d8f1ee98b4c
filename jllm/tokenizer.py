"""Tokenizer, chat template and the incremental detokenizer with stop strings.

Encoding and decoding go straight to the Rust `tokenizers` backend (fast, and one definition of "the text" that
streaming and full decodes share). A directory with a tokenizer.json loads without transformers (its import took 4-6 s
of every start on an H200 host): `jllm.tokenizer_files` reads it as transformers' loader does. transformers' own
tokenizer (`Tokenizer.hf`) loads on first use: chat templates render with its sandboxed Jinja engine,
`LLM.get_tokenizer` returns it, llguidance reads it. A directory without tokenizer.json, or with a setting
`jllm.tokenizer_files` does not read, loads through transformers at once.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import bisect
import json
import logging
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer

from jllm.tokenizer_files import NeedsTransformers, TokenizerInfo, read_tokenizer_files

logger = logging.getLogger(__name__)

_REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 sequence decodes to
GIL_FREE_ENCODE_CHARS = 4096  # longer texts are encoded with the GIL released


def _generation_eos(path: Path) -> int | list[int] | None:
    """The ids a model directory's generation config adds to the tokenizer's EOS: generation_config.json's, or
    without that file config.json's (its top level's, else its ``text_config``'s), as transformers' ``generate``
    (``GenerationConfig.from_model_config``) and vLLM read them; a directory without either adds none."""
    gen_config, config = path / "generation_config.json", path / "config.json"
    if gen_config.is_file():
        return json.loads(gen_config.read_text()).get("eos_token_id")
    if not config.is_file():
        return None
    model = json.loads(config.read_text())
    eos = model.get("eos_token_id")
    return eos if eos is not None else (model.get("text_config") or {}).get("eos_token_id")


class Tokenizer:
    """A model directory's tokenizer: ids in, ids out, chat prompts, and the ids that end a sequence."""

    def __init__(
        self,
        path: Path,
        backend: BackendTokenizer,
        info: TokenizerInfo,
        generation_eos: int | list[int] | None = None,
        hf_tokenizer: Any = None,
    ) -> None:
        self.path = path
        self.backend = backend
        self.name_or_path = info.name_or_path
        self.chat_template = info.chat_template  # as loaded; rendering reads the transformers tokenizer's
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)  # every id encode can return
        special = {i for i, tok in backend.get_added_tokens_decoder().items() if tok.special}
        self.all_special_ids: list[int] = sorted(special | {i for i in info.all_special_ids if i is not None})
        self.bos_token_id = info.bos_token_id
        self.pad_token_id = info.pad_token_id
        eos = [info.eos_token_id]
        eos += generation_eos if isinstance(generation_eos, list) else [generation_eos]
        self.eos_token_ids: set[int] = {i for i in eos if i is not None}
        self._hf = hf_tokenizer
        self._hf_lock = threading.Lock()  # the first chat requests may race to load it
        self._template_in_place: str | None = None  # use_chat_template's
        self._added = {i: tok.content for i, tok in backend.get_added_tokens_decoder().items()}
        decoders = _decoders(backend)
        self._byte_level = any(d["type"] == "ByteLevel" for d in decoders)
        self._byte_fallback = any(d["type"] == "ByteFallback" for d in decoders)
        self._space_marks = _space_marks(decoders)
        self._bytes: dict[int, bytes] = {}  # token id -> token_bytes, filled as logprobs ask

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Tokenizer:
        """Load the tokenizer of the HF-style model directory `path`; transformers only where the files need it."""
        path = Path(path)
        eos = _generation_eos(path)
        if (path / "tokenizer.json").is_file():
            try:
                return cls(path, *read_tokenizer_files(path), eos)
            except NeedsTransformers as e:
                logger.info("%s: %s, which only transformers' loader reads: loading it with transformers", path, e)
        hf = _load_transformers(path)
        info = TokenizerInfo(
            hf.name_or_path, hf.chat_template, hf.all_special_ids, hf.bos_token_id, hf.pad_token_id, hf.eos_token_id
        )
        return cls(path, hf.backend_tokenizer, info, eos, hf)

    @property
    def hf(self) -> Any:
        """transformers' tokenizer of the directory, loaded on first use (its import takes seconds): the chat
        template renders with it, ``LLM.get_tokenizer`` returns it, llguidance reads it. Where the files were read
        without transformers its backend is a second copy; ``encode`` and ``decode`` use ``backend``."""
        with self._hf_lock:
            if self._hf is None:
                self._hf = _load_transformers(self.path)
                if self._template_in_place is not None:
                    self._hf.chat_template = self._template_in_place
            return self._hf

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Long texts go through ``encode_batch``, which releases the GIL (``encode`` holds it throughout: seconds
        for a megabyte, during which the event loop and the engine thread stand still)."""
        if len(text) <= GIL_FREE_ENCODE_CHARS:
            return self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        return self.backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    def encode_pair(self, text: str, pair: str) -> list[int]:
        """transformers' ``tokenizer(text, text_pair)["input_ids"]``: both texts through the post-processor's pair
        template (a cross-encoder's input); long ones with the GIL released, as ``encode``."""
        if len(text) + len(pair) <= GIL_FREE_ENCODE_CHARS:
            return self.backend.encode(text, pair).ids
        return self.backend.encode_batch([(text, pair)])[0].ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of `ids`, without transformers' optional space clean-up, so streaming can reproduce it."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for, as OpenAI's logprob ``bytes`` gives them: a byte-level BPE token
        may hold part of a UTF-8 character (an emoji's first two bytes), which ``decode([token_id])`` turns into
        U+FFFD; concatenated over a sequence's tokens these bytes are its text's UTF-8. Read from the vocabulary
        (ByteLevel's byte alphabet, ByteFallback's ``<0xNN>`` pieces, SentencePiece's pieces with the space their
        "▁" stands for, which decoding one token alone strips); added tokens are their text; other tokenizers'
        pieces are their decoded text."""
        cached = self._bytes.get(token_id)
        if cached is None:
            cached = self._bytes[token_id] = self._token_bytes(token_id)
        return cached

    def token_text(self, token_id: int) -> str:
        """A token as OpenAI's logprobs show it: its bytes as UTF-8 text, with ``\\xNN`` escapes for the bytes of a
        character it holds part of (decoding it alone gives U+FFFD there, the same for every such token)."""
        return self.token_bytes(token_id).decode(errors="backslashreplace")

    def _token_bytes(self, token_id: int) -> bytes:
        if token_id in self._added:
            return self._added[token_id].encode()
        piece = self.backend.id_to_token(token_id)
        if piece is None:
            return self.decode([token_id], skip_special_tokens=False).encode()
        if self._byte_level and all(c in _BYTE_OF_CHAR for c in piece):
            return bytes(_BYTE_OF_CHAR[c] for c in piece)
        byte = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece) if self._byte_fallback else None
        if byte is not None:
            return bytes([int(byte.group(1), 16)])
        if self._space_marks:  # decoding the piece alone would strip the space its mark stands for
            for mark, text in self._space_marks:
                piece = piece.replace(mark, text)
            return piece.encode()
        return self.decode([token_id], skip_special_tokens=False).encode()

    def use_chat_template(self, template: str) -> None:
        """Renders with ``template`` in place of the model's (vLLM's ``--chat-template``)."""
        self.chat_template = self._template_in_place = template
        with self._hf_lock:
            if self._hf is not None:
                self._hf.chat_template = template

    def load_chat_renderer_in_background(self) -> None:
        """Loads ``hf`` on a daemon thread if the model has a chat template (a server, once its model is up): its
        import took 4-6 s on an H200 host, which the first chat request would otherwise spend on the event loop."""
        if self.chat_template:
            threading.Thread(target=lambda: self.hf, name="jllm-chat-renderer", daemon=True).start()

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kwargs) -> str:
        """Render `messages` with the model's chat template (transformers' sandboxed Jinja engine)."""
        if not self.chat_template and "chat_template" not in kwargs:
            raise ValueError(f"{self.name_or_path}: this tokenizer has no chat template; send a plain prompt")
        return self.hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, char -> byte: printable bytes stand for themselves, the rest for 256 + n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1)]
    printable += range(ord("\u00ae"), ord("\u00ff") + 1)
    chars, shifted = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + shifted)] = b
            shifted += 1
    return chars


_BYTE_OF_CHAR = _byte_level_alphabet()


def _decoders(backend: BackendTokenizer) -> list[dict[str, Any]]:
    """The backend's decoder and every decoder in its ``Sequence``, as their JSON objects."""
    if backend.decoder is None:
        return []
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("type"), str):
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(backend.decoder.__getstate__()))
    return found


def _space_marks(decoders: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """What SentencePiece decoders put back in a piece's text: Metaspace's and Replace's (string) marks."""
    marks = []
    for d in decoders:
        if d["type"] == "Metaspace" and isinstance(d.get("replacement"), str):
            marks.append((d["replacement"], " "))
        elif d["type"] == "Replace" and isinstance(d.get("pattern", {}).get("String"), str):
            marks.append((d["pattern"]["String"], str(d.get("content", ""))))
    return marks


# transformers' lazy top-level module is not thread-safe: two models' renderer threads importing from it at once
# got ImportError ("cannot import name 'PreTrainedTokenizerFast'") in 3 of 4 threads. Every import of transformers, or
# of a module that imports it (llguidance.hf), takes this lock.
TRANSFORMERS_IMPORT = threading.Lock()


def _load_transformers(path: Path) -> Any:
    """With a tokenizer.json the generic fast class is enough; otherwise AutoTokenizer builds one from whatever the
    directory has. (transformers 5 imports torch either way where it is installed.)"""
    with TRANSFORMERS_IMPORT:
        if (path / "tokenizer.json").is_file():
            from transformers import PreTrainedTokenizerFast as loader
        else:
            from transformers import AutoTokenizer as loader
    try:
        hf = loader.from_pretrained(str(path))
    except (OSError, ValueError) as e:  # a directory without tokenizer files: transformers' message names none
        raise ValueError(
            f"{path}: no tokenizer could be loaded from the model directory; it needs a tokenizer.json (or the files "
            f"transformers' AutoTokenizer reads). transformers said: {e}"
        ) from e
    if getattr(hf, "backend_tokenizer", None) is None:
        raise ValueError(f"{path}: the tokenizer has no fast (Rust) backend; add a tokenizer.json to the directory")
    return hf


class IncrementalDetokenizer:
    """Turns one sequence's generated ids into text deltas as they arrive, and applies its stop strings.

    Decoding follows vLLM's prefix/read offsets: re-decode a small window of recent ids and release only what the
    window adds, and only once it no longer ends in an incomplete UTF-8 character. Because the window starts
    where the previous release ended, the deltas concatenate to exactly `tokenizer.decode(output_ids)`.

    Text is decoded from the output ids alone (the prompt is accepted for API parity with vLLM but does not seed
    the window), so the result equals the full decode of the output for every tokenizer, sentencepiece included.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int],
        skip_special_tokens: bool = True,
        stop: Sequence[str] | str | None = (),
        include_stop_str_in_output: bool = False,
        min_tokens: int = 0,
        final_only: bool = False,
        detokenize: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = len(prompt_ids)
        self.skip_special_tokens = skip_special_tokens
        self.stop = [s for s in ([stop] if isinstance(stop, str) else stop or ()) if s]
        self._stops = StopStrings(self.stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        self.min_tokens = min_tokens  # stop strings count only once this many ids were generated (vLLM)
        self.detokenize = detokenize  # False (vLLM's SamplingParams.detokenize): no text at all, no stop strings
        # Nobody reads deltas and no stop string needs the text: decode once, in flush (or never).
        self.defer = (final_only or not detokenize) and not self.stop
        self.output_ids: list[int] = []
        self.finished = False  # a stop string matched; later tokens are ignored
        self.stop_reason: str | None = None
        self._prefix_offset = 0  # output_ids[prefix:read] were decoded last time, as context for the next window
        self._read_offset = 0
        self._decoded = ""  # all decoded text, stop strings not yet cut
        self._released = 0  # chars of _decoded handed out so far

    @property
    def text(self) -> str:
        """The output text released so far: the concatenation of every delta returned."""
        return self._decoded[: self._released]

    def add_tokens(self, new_ids: Sequence[int]) -> str:
        """Append generated ids; return the text they finalise (possibly empty)."""
        if self.finished:
            return ""
        self.output_ids.extend(new_ids)
        if self.defer:
            return ""
        checked = len(self._decoded)
        self._decode_window(final=False)
        return self._release(checked, final=False)

    def flush(self) -> str:
        """Release everything still held back (a trailing partial character, a possible stop-string start).

        Call once when the sequence ends for a reason other than a stop string (EOS, max_tokens, abort).
        """
        if self.finished or not self.detokenize:
            return ""
        checked = len(self._decoded)
        self._decode_window(final=True)
        return self._release(checked, final=True)

    def _decode_window(self, final: bool) -> None:
        ids, skip = self.output_ids, self.skip_special_tokens
        prefix_text = self.tokenizer.decode(ids[self._prefix_offset : self._read_offset], skip)
        new_text = self.tokenizer.decode(ids[self._prefix_offset :], skip)
        if len(new_text) > len(prefix_text) and (final or not new_text.endswith(_REPLACEMENT)):
            self._decoded += new_text[len(prefix_text) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(ids)

    def _release(self, checked: int, final: bool) -> str:
        """Cut at the first stop string that ends in the new text, else release all that cannot start one."""
        end = len(self._decoded)
        if self.stop and end > checked:
            hit = self._stops.first_match(self._decoded, checked) if len(self.output_ids) >= self.min_tokens else None
            if hit is not None:
                index, stop = hit
                end = index + len(stop) if self.include_stop_str_in_output else index
                self._decoded = self._decoded[:end]
                self.finished, self.stop_reason = True, stop
            elif not final and not self.include_stop_str_in_output:
                end -= self._stops.partial_len(self._decoded)
        elif self.stop and not final and not self.include_stop_str_in_output:
            end = self._released  # no new text: what was held back stays held back
        delta = self._decoded[self._released : max(end, self._released)]
        self._released += len(delta)
        return delta


class StopStrings:
    """A request's stop strings, matched incrementally: a token's cost depends on the new text and the stops, never
    on how long the output has grown.

    A match must end in the new text, so ``first_match`` looks up, for each new end position and each distinct stop
    length, one slice in a set; ``partial_len`` finds the longest tail that begins a stop by bisecting the sorted
    stops for each tail shorter than the longest stop. Both run their inner work in C (hashing, comparing)."""

    def __init__(self, stops: list[str]) -> None:
        self._set = frozenset(stops)
        self._sorted = sorted(self._set)
        self._lengths = sorted({len(s) for s in self._set}, reverse=True)  # longest first: it wins a tie
        self._longest = self._lengths[0] if self._lengths else 0

    def first_match(self, text: str, checked: int) -> tuple[int, str] | None:
        """(start, stop) of the earliest match ending after ``text[:checked]`` (the longest stop at that start)."""
        best: tuple[int, str] | None = None
        for end in range(checked + 1, len(text) + 1):
            for length in self._lengths:
                start = end - length
                if start >= 0 and (best is None or (start, -length) < (best[0], -len(best[1]))):
                    if text[start:end] in self._set:
                        best = (start, text[start:end])
        return best

    def partial_len(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of some stop string."""
        for start in range(max(0, len(text) - self._longest + 1), len(text)):
            tail = text[start:]
            i = bisect.bisect_right(self._sorted, tail)  # the stops after ``tail``: those it may begin
            if i < len(self._sorted) and self._sorted[i].startswith(tail):
                return len(tail)
        return 0

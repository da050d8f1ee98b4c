"""Structured output on the host: a request's constraint becomes a grammar, each sequence's grammar a matcher, and
each step the matchers fill a packed token bitmask the device sampler applies.

The grammar engine is llguidance (what vLLM uses by default for many cases): a Rust library with no torch
dependency, a NumPy bitmask API (``[rows, ceil(vocab / 32)]`` int32, bit ``t % 32`` of word ``t // 32`` set when
token ``t`` is allowed) and a thread pool that fills a batch's rows in parallel. It takes JSON schemas, regular
expressions, Lark grammars (GBNF converted), choices and structural tags (``jllm.structural_tag``);
``StructuredOutputsParams`` carries vLLM's names for them.
A matcher may wait behind a ``GrammarGate`` (a thinking model's reasoning, ``jllm.reasoning_parsers``): until the
gate opens its sequence samples freely and the grammar sees none of those tokens, as vLLM constrains only the answer.

A matcher consumes every token its sequence appends (``GrammarMatcher.accept``, called by the scheduler); once its
grammar is complete (no token but EOS could follow) the sequence ends with finish reason "stop". A grammar that
breaks mid-generation (llguidance past its limits) ends its sequence with finish reason "error" (vLLM's), which the
server turns into an error for the client (``jllm.errors.GrammarFailedError``). The mask for a
step depends on the token the step before sampled: the runner queues the step's forward first, the engine takes that
token meanwhile, and the mask is filled while the device runs the forward (``ModelRunner.launch``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import logging
import threading
from collections.abc import Callable, Collection, Iterable
from typing import Any, Protocol

import llguidance
import llguidance.numpy
import numpy as np
import pydantic_core

from jllm.structural_tag import structural_tag_grammar
from jllm.tokenizer import TRANSFORMERS_IMPORT, Tokenizer

logger = logging.getLogger(__name__)

KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")  # vLLM's StructuredOutputsParams
# Compact JSON: no optional whitespace between tokens. A small model let free to emit whitespace tends to loop on
# newlines until max_tokens, leaving the JSON unfinished; vLLM's ``disable_any_whitespace`` switches it back.
JSON_OPTIONS = {"whitespace_flexible": False}
JSON_KINDS = (
    "json",
    "json_object",
    "structural_tag",
)  # whose JSON's whitespace JSON_OPTIONS or whitespace_pattern shape
# llguidance's parser limits for every grammar. Its default initial lexer fuel (1,000,000) lets one request's regex hold
# the engine thread for its first mask: 0.26 s for `a{1000000}`, 0.56-0.97 s for `(a{1000}){1000}` on the default
# model's tokenizer (2026-12-04, this repository's CPU machine). The fuel bounds an eager precomputation, past which the
# lexer works lazily, so at 50,000 those first masks take 8-18 ms and ordinary grammars stay as fast
# (`scripts/bench_structured_output.py` times both limits side by side).
GRAMMAR_LIMITS = llguidance.LLParserLimits(initial_lexer_fuel=50_000)


@dataclasses.dataclass
class StructuredOutputsParams:
    """vLLM's ``StructuredOutputsParams``: exactly one constraint. ``json`` is a JSON schema (a dict or its JSON
    text); ``grammar`` is Lark or GBNF/EBNF (llguidance's grammar syntax); ``json_object`` any JSON object;
    ``structural_tag`` free text with JSON structures after triggers (a dict or its JSON text, jllm.structural_tag)."""

    json: str | dict[str, Any] | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | dict[str, Any] | None = None
    disable_any_whitespace: bool = True  # jllm's default is compact JSON (see JSON_OPTIONS); false allows whitespace
    whitespace_pattern: str | None = None  # JSON's whitespace as this regex (vLLM's; over disable_any_whitespace)

    def __post_init__(self) -> None:
        if self.disable_any_whitespace is None:  # null: the default, as for a request's top-level fields
            self.disable_any_whitespace = True
        for switch in ("json_object", "disable_any_whitespace"):  # "false" or 0 would read as its truth value
            value = getattr(self, switch)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"structured_outputs.{switch} must be true or false, got {value!r}")
        given = [kind for kind in KINDS if getattr(self, kind) not in (None, False)]
        if len(given) != 1:
            raise ValueError(f"structured_outputs must set exactly one of {', '.join(KINDS)}, got {given or 'none'}")
        self._grammar = self._compile()  # validates: a bad schema, regex or grammar is refused at the door

    @property
    def kind(self) -> str:
        return next(kind for kind in KINDS if getattr(self, kind) not in (None, False))

    @classmethod
    def of(cls, value: Any) -> StructuredOutputsParams:
        """From an instance or a dict of vLLM's keys (the offline API accepts both)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"structured_outputs must be a StructuredOutputsParams or a dict, got {value!r}")
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"structured_outputs: {unknown[0]!r} is not supported; the keys are {', '.join(KINDS)}")
        return cls(**value)

    def grammar_text(self, is_special: Callable[[str], bool] | None = None) -> str:
        """The llguidance grammar for the constraint. ``is_special`` says whether a text is one special token of the
        tokenizer: a structural tag's ``<...>`` triggers that are match as those tokens (checked without it)."""
        if self.kind != "structural_tag" or is_special is None:
            return self._grammar
        return structural_tag_grammar(self.structural_tag, self._schema_of, is_special)

    def _compile(self) -> str:
        """The grammar, checked (without a tokenizer); ValueError names the key."""
        kind = self.kind
        pattern = self.whitespace_pattern
        if pattern is not None and (not isinstance(pattern, str) or not pattern or kind not in JSON_KINDS):
            raise ValueError(
                f"structured_outputs.whitespace_pattern must be a non-empty regex beside {', '.join(JSON_KINDS)}, got "
                f"{pattern!r} beside {kind}"
            )
        if pattern and (error := llguidance.LLMatcher.validate_grammar(llguidance.grammar_from("regex", pattern))):
            raise ValueError(f"structured_outputs.whitespace_pattern is invalid: {_brief(error)}")
        try:
            if kind == "structural_tag":
                text = structural_tag_grammar(self.structural_tag, self._schema_of)
            else:
                text = _grammar(kind, getattr(self, kind), self._json_options())
        except (ValueError, TypeError) as e:
            raise ValueError(f"structured_outputs.{kind} is invalid: {e}") from e
        error = llguidance.LLMatcher.validate_grammar(text, limits=GRAMMAR_LIMITS)
        if error:
            raise ValueError(f"structured_outputs.{kind} is invalid: {_brief(error)}")
        return text

    def _json_options(self) -> dict[str, Any] | None:
        """llguidance's JSON compile options: the whitespace between JSON's tokens."""
        if self.whitespace_pattern:
            return {"whitespace_pattern": self.whitespace_pattern}
        return JSON_OPTIONS if self.disable_any_whitespace else None

    def _schema_of(self, schema: dict[str, Any]) -> dict[str, Any]:
        """A structural tag's schema as llguidance reads it inside a grammar: options in its ``x-guidance`` key."""
        options = self._json_options()
        schema = nullable_as_union(schema)
        return {**schema, "x-guidance": {**schema.get("x-guidance", {}), **options}} if options else schema


def _grammar(kind: str, value: Any, options: dict[str, Any] | None) -> str:
    """``options``: llguidance's JSON compile options (whitespace), for the JSON kinds."""
    if kind == "json":
        # JSON text parsed as a request's body is (its nesting limit; json.loads raised RecursionError ~1,000 deep)
        schema = pydantic_core.from_json(value) if isinstance(value, str) else value
        if not isinstance(schema, dict):
            raise ValueError(f"a JSON schema is an object, got {type(schema).__name__}")
        return llguidance.LLMatcher.grammar_from_json_schema(nullable_as_union(schema), overrides=options)
    if kind == "json_object":
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, overrides=options)
    if kind == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
            raise ValueError("choice must be a non-empty list of non-empty strings")
        return llguidance.grammar_from("choice", value)
    if not isinstance(value, str):
        raise ValueError(f"{kind} must be a string")
    return llguidance.grammar_from("regex" if kind == "regex" else "grammar", value)


_DATA_KEYWORDS = frozenset({"enum", "const", "default", "examples"})  # their values are JSON data, not schemas
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_ROOT_KEYWORDS = ("$schema", "$id", "$defs", "definitions")  # stay at the root, where "#/$defs/..." finds them


def nullable_as_union(schema: Any) -> Any:
    """OpenAPI's ``"nullable": true`` as JSON Schema's union with null, everywhere in ``schema``. The OpenAI Node
    SDK's zod helper writes it for ``.nullable()`` fields and OpenAI honours it; llguidance ignores the keyword, so
    null could never be generated there."""
    if isinstance(schema, list):
        return [nullable_as_union(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _DATA_KEYWORDS:
            out[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: nullable_as_union(s) for name, s in value.items()}
        else:
            out[key] = nullable_as_union(value)
    nullable = out.pop("nullable") if isinstance(out.get("nullable"), bool) else False  # a boolean: the keyword
    if not nullable:
        return out
    root = {key: out.pop(key) for key in _ROOT_KEYWORDS if key in out}
    return {**root, "anyOf": [out, {"type": "null"}]}


class GrammarGate(Protocol):
    """What a grammar waits for before it holds: told each sampled token, it says when the grammar starts."""

    def opens_after(self, token_id: int) -> bool:
        """Whether the grammar holds from the token after ``token_id`` on (once True, never asked again)."""
        ...

    def fork(self) -> GrammarGate: ...


class GrammarMatcher:
    """One sequence's place in its grammar: what it may sample next, and whether the grammar is complete."""

    def __init__(self, matcher: llguidance.LLMatcher, gate: GrammarGate | None = None) -> None:
        self.matcher = matcher
        self.gate = gate  # while set, the grammar waits: tokens are sampled freely and not consumed
        self.error: str | None = None  # why the grammar broke, once it has: the sequence then ends with an error

    @property
    def holds(self) -> bool:
        """Whether the grammar masks the next token (its gate, if any, has opened)."""
        return self.gate is None

    def gated(self, gate: GrammarGate) -> GrammarMatcher:
        """This grammar, held back until ``gate`` opens."""
        return GrammarMatcher(self.matcher, gate)

    def accept(self, token_id: int) -> bool:
        """Consumes a sampled token; True when the sequence must end here: its grammar is complete, or broken
        (``error`` then says why: llguidance refused the token, or ran past its limits). Behind a gate, the token
        only tells the gate."""
        if self.gate is not None:
            if self.gate.opens_after(token_id):
                self.gate = None
            return False
        if not self.matcher.consume_token(token_id) or self.matcher.is_error():
            self.error = _brief(self.matcher.get_error(), lines=1) or f"the grammar cannot follow token {token_id}"
            logger.warning("grammar failed on sampled token %d: %s", token_id, self.error)
            return True
        return self.matcher.is_stopped()

    def fork(self) -> GrammarMatcher:
        return GrammarMatcher(self.matcher.deep_copy(), None if self.gate is None else self.gate.fork())


def _brief(error: str, lines: int = 3, line_chars: int = 200) -> str:
    """llguidance's error, bounded: it quotes the grammar's source line (the whole of a 100,000-choice grammar,
    megabytes, went back in a 400) or follows the error with the parser's whole state."""
    kept = error.strip().removeprefix("Error: ").splitlines()[:lines]
    return "\n".join(line if len(line) <= line_chars else line[:line_chars] + " ..." for line in kept)


class GrammarCompiler:
    """Matchers for one engine's tokenizer. The llguidance tokenizer takes about a second to build, from
    transformers' tokenizer (``Tokenizer.hf``, itself loaded on first use), so it is built on the first structured
    request, not at start-up."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_token_ids: Collection[int]) -> None:
        self.source = tokenizer
        self.vocab_size = vocab_size  # the model's logit width: the mask's
        self.eos_token_ids = sorted(eos_token_ids)
        self._lock = threading.Lock()  # the server builds matchers on worker threads: the tokenizer is built once
        self._tokenizer: llguidance.LLTokenizer | None = None

    @property
    def tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._build_tokenizer()
            return self._tokenizer

    def _build_tokenizer(self) -> llguidance.LLTokenizer:
        with TRANSFORMERS_IMPORT:  # beside a chat renderer's load, whose import it broke (a 500 on either request)
            import llguidance.hf  # imports transformers (~1 s): only here, never with jllm (tests/test_startup.py)

        hf_tokenizer = self.source.hf
        try:
            return llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=self.vocab_size, eos_token=self.eos_token_ids)
        except ValueError as e:  # a decoder llguidance cannot read (a bare Fuse, say)
            logger.warning("llguidance cannot read this tokenizer (%s); taking each token's text as its bytes", e)
            texts = _TokenTexts(hf_tokenizer, self.eos_token_ids[0], self.vocab_size)
            wrapper = llguidance.TokenizerWrapper(texts)
            return llguidance.LLTokenizer(wrapper, n_vocab=self.vocab_size, eos_token=self.eos_token_ids)

    def matcher(self, params: StructuredOutputsParams) -> GrammarMatcher:
        text = params.grammar_text(self.is_special_token)
        matcher = llguidance.LLMatcher(self.tokenizer, text, limits=GRAMMAR_LIMITS)
        if matcher.is_error():
            raise ValueError(f"structured_outputs.{params.kind} is invalid: {_brief(matcher.get_error())}")
        return GrammarMatcher(matcher)

    def is_special_token(self, text: str) -> bool:
        """Whether ``text`` is one token that llguidance counts as special (its grammars name it ``<...>``)."""
        ids = self.source.encode(text, add_special_tokens=False)
        return len(ids) == 1 and self.tokenizer.is_special_token(ids[0])


class _TokenTexts:
    """The tokenizer surface llguidance's ``TokenizerWrapper`` reads: each token's bytes from decoding it alone,
    which is exact for tokenizers whose tokens are whole text pieces (not byte-level BPE, which llguidance reads)."""

    def __init__(self, hf_tokenizer: Any, eos_token_id: int, vocab_size: int) -> None:
        """Ids past the tokenizer's, up to the model's ``vocab_size``, are special tokens no grammar allows."""
        self.hf = hf_tokenizer
        self.eos_token_id = eos_token_id
        self.bos_token_id = hf_tokenizer.bos_token_id
        known = len(hf_tokenizer)
        self.tokens = [hf_tokenizer.decode([i]).encode() for i in range(known)]
        self.tokens += [f"<|unused_{i}|>".encode() for i in range(known, vocab_size)]
        self.special_token_ids = sorted(set(hf_tokenizer.all_special_ids) | set(range(known, vocab_size)))

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError("text only")
        return self.hf.backend_tokenizer.encode(text, add_special_tokens=False).ids


@functools.cache
def _executor() -> llguidance.LLExecutor:
    # Dropped before the interpreter's teardown: its threads destroyed during finalisation abort the process
    # ("terminate called without an active exception") once JAX's runtime is up.
    atexit.register(_executor.cache_clear)
    return llguidance.LLExecutor()


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


MaskRow = tuple[int, GrammarMatcher | None, list[int] | None]  # (row, its matcher, its allowed_token_ids)


def fill_bitmask(rows: list[MaskRow], num_rows: int, vocab_size: int) -> np.ndarray:
    """The step's packed mask ``[num_rows, ceil(vocab / 32)]`` int32; rows not in ``rows`` (padding included) and
    rows with neither constraint (or a grammar behind its gate) allow every token (-1: all bits set). Matchers fill
    their rows in parallel."""
    mask = np.full((num_rows, bitmask_words(vocab_size)), -1, np.int32)
    matchers = [(matcher.matcher, row) for row, matcher, _ in rows if matcher is not None and matcher.holds]
    if matchers:
        llguidance.numpy.fill_next_token_bitmask_par(_executor(), matchers, mask)
    for row, _, allowed in rows:
        if allowed is not None:
            mask[row] &= allowed_bitmask(allowed, vocab_size)
    return mask


def allowed_bitmask(token_ids: Iterable[int], vocab_size: int) -> np.ndarray:
    """vLLM's ``allowed_token_ids`` as one packed mask row ``[ceil(vocab / 32)]`` int32."""
    bits = np.zeros(bitmask_words(vocab_size) * 32, np.bool_)
    bits[list(token_ids)] = True
    return np.packbits(bits, bitorder="little").view(np.int32)

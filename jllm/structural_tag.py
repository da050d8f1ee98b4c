"""vLLM's structural tag: text is free until one of its ``triggers`` starts, then the structure that trigger begins
(its ``begin`` text, JSON following its ``schema``, its ``end`` text), then free text again. Tool-calling clients use
it to let a model decide whether to call a tool while holding each call's arguments to the tool's schema.

Two forms are read. vLLM's (``{"structures": [{"begin", "schema", "end"}, ...], "triggers": [...]}``, also sent as
``response_format: {"type": "structural_tag", ...}``), the one vLLM's llguidance backend reads, goes through
llguidance's ``StructTag.to_grammar`` with each schema handed over as a schema (vLLM hands it the schema's compiled
grammar, which that function reads as a schema of no keywords: any JSON passes) and jllm's JSON whitespace options
beside it. xgrammar's ``{"format": {...}}`` tree (what vLLM's xgrammar backend reads) is compiled to one llguidance
grammar (``format_grammar``): strings, JSON schemas, regexes, grammars and free text, their sequences, alternatives
and repetitions, tags, triggered tags and separated tags; its token-level formats, non-JSON argument styles and free
text bounded in tokens or characters are refused by name. A trigger written ``<...>`` that is one special token of
the model's tokenizer is matched as that token, the way the model writes it; otherwise triggers are text.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any

import llguidance
import pydantic_core

_KEYS = ("type", "structures", "triggers")
_STRUCTURE_KEYS = ("begin", "schema", "end")


@dataclasses.dataclass(frozen=True)
class Structure:
    trigger: str  # the first of the triggers that ``begin`` starts with
    begin: str
    schema: dict[str, Any]
    end: str


def structural_tag_grammar(
    value: Any,
    schema_of: Callable[[dict[str, Any]], dict[str, Any]],
    is_special: Callable[[str], bool] = lambda text: False,
) -> str:
    """The llguidance grammar of a structural tag (a dict or its JSON text), in either form; ``schema_of`` readies
    each schema (jllm's nullable rule, whitespace options); ``is_special`` says whether a text is one special token
    of the tokenizer. ValueError names the key at fault."""
    # JSON text parsed as a request's body is (its nesting limit; json.loads raised RecursionError ~1,000 deep)
    spec = pydantic_core.from_json(value) if isinstance(value, str) else value
    if not isinstance(spec, dict):
        raise ValueError(f"a structural tag is an object (structures and triggers, or a format), got {spec!r:.80}")
    if "format" not in spec:
        return _structures_grammar(_structures(spec), schema_of, is_special)
    unknown = sorted(set(spec) - {"type", "format"})
    if unknown or spec.get("type", "structural_tag") != "structural_tag":
        raise ValueError(f"a format structural tag takes type 'structural_tag' and format; got {sorted(spec)}")
    return format_grammar(spec["format"], schema_of, is_special)


def _structures(spec: dict[str, Any]) -> list[Structure]:
    """vLLM's form's structures; ValueError names the key at fault."""
    unknown = sorted(set(spec) - set(_KEYS))
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a structural tag key; the keys are {', '.join(_KEYS)}")
    if spec.get("type", "structural_tag") != "structural_tag":
        raise ValueError(f"type must be 'structural_tag', got {spec['type']!r}")
    triggers = _texts(spec.get("triggers"), "triggers", nonempty=True)
    structures = spec.get("structures")
    if not isinstance(structures, list) or not structures:
        raise ValueError(f"structures must be a non-empty list, got {structures!r}")
    return [_structure(s, f"structures[{i}]", triggers) for i, s in enumerate(structures)]


def _structure(value: Any, where: str, triggers: list[str]) -> Structure:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object with {', '.join(_STRUCTURE_KEYS)}, got {value!r}")
    missing = [key for key in _STRUCTURE_KEYS if key not in value]
    unknown = sorted(set(value) - set(_STRUCTURE_KEYS))
    if missing or unknown:
        raise ValueError(f"{where} takes exactly {', '.join(_STRUCTURE_KEYS)}; missing {missing}, unknown {unknown}")
    begin, schema, end = (value[key] for key in _STRUCTURE_KEYS)
    if not isinstance(begin, str) or not isinstance(end, str):
        raise ValueError(f"{where}.begin and {where}.end must be strings")
    if not isinstance(schema, dict):
        raise ValueError(f"{where}.schema must be a JSON schema (an object), got {type(schema).__name__}")
    trigger = next((t for t in triggers if begin.startswith(t)), None)
    if trigger is None:
        raise ValueError(f"{where}.begin {begin!r} starts with none of the triggers {triggers}")
    return Structure(trigger, begin, schema, end)


def _structures_grammar(
    structures: list[Structure],
    schema_of: Callable[[dict[str, Any]], dict[str, Any]],
    is_special: Callable[[str], bool],
) -> str:
    """vLLM's form through llguidance's ``StructTag.to_grammar``."""
    tags = [
        llguidance.StructTag(trigger=s.trigger, begin=s.begin, grammar=schema_of(s.schema), end=s.end)
        for s in structures
    ]
    special = _bracketed_are_tokens([s.trigger for s in structures], is_special)
    return llguidance.StructTag.to_grammar(tags, assume_special=special)


def _bracketed(trigger: str) -> bool:
    return trigger.startswith("<") and trigger.endswith(">")


def _bracketed_are_tokens(triggers: list[str], is_special: Callable[[str], bool]) -> bool:
    """Whether the ``<...>`` triggers are matched as special tokens: where each is one of the tokenizer's (llguidance
    takes every ``<...>`` trigger as a special token or none)."""
    bracketed = [t for t in triggers if _bracketed(t)]
    return bool(bracketed) and all(map(is_special, bracketed))


# xgrammar's structural-tag format language: each format's keys (the first ones required)
FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "const_string": (("value",), ()),
    "json_schema": (("json_schema",), ("style", "any_order")),
    "regex": (("pattern",), ()),
    "grammar": (("grammar",), ()),
    "any_text": ((), ("excludes", "max_tokens", "max_chars")),
    "sequence": (("elements",), ()),
    "or": (("elements",), ()),
    "optional": (("content",), ()),
    "plus": (("content",), ()),
    "star": (("content",), ()),
    "repeat": (("min", "max", "content"), ()),
    "tag": (("begin", "content", "end"), ()),
    "triggered_tags": (("triggers", "tags"), ("at_least_one", "stop_after_first", "excludes")),
    "tags_with_separator": (("tags", "separator"), ("at_least_one", "stop_after_first")),
}
TOKEN_LEVEL = ("token", "exclude_token", "any_tokens", "token_triggered_tags", "token_dispatch", "dispatch")
_ANY = r"(.|\n)*"


def format_grammar(
    fmt: Any, schema_of: Callable[[dict[str, Any]], dict[str, Any]], is_special: Callable[[str], bool]
) -> str:
    """xgrammar's ``{"type": "structural_tag", "format": {...}}`` as one llguidance grammar: its primitives
    (strings, JSON schemas, regexes, grammars, free text), their compositions, tags and triggered tags. Token-level
    formats, non-JSON argument styles and free text bounded in tokens or characters are refused by name."""
    return _FormatGrammar(schema_of, is_special).build(fmt)


class _FormatGrammar:
    def __init__(self, schema_of: Callable[[dict[str, Any]], dict[str, Any]], is_special: Callable[[str], bool]):
        self.schema_of = schema_of
        self.is_special = is_special
        self.rules: list[str] = []
        self.side: list[dict[str, str]] = []  # the grammar formats' own grammars, named g0, g1 ...

    def build(self, fmt: Any) -> str:
        start = self.rule(fmt, "format")
        main = "%llguidance {}\nstart: " + start + "\n" + "\n".join(self.rules) + "\n"
        if not self.side:
            return main
        return json.dumps({"grammars": [{"name": "structural_tag", "lark_grammar": main}, *self.side]})

    def new(self, body: str, lazy: bool = False) -> str:
        name = f"f{len(self.rules)}"
        self.rules.append(f"{name}{'[lazy]' if lazy else ''}: {body}")
        return name

    def token(self, regex: str) -> str:
        name = f"T{len(self.rules)}"
        self.rules.append(f"{name}: {regex}")
        return name

    def rule(self, fmt: Any, where: str) -> str:
        """The rule matching ``fmt`` (found at ``where``, which errors name)."""
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind in TOKEN_LEVEL:
            raise ValueError(f"{where}: {kind!r} formats are not supported (matched at token boundaries)")
        if kind not in FORMATS:
            raise ValueError(f"{where}.type must be one of {', '.join(FORMATS)}, got {kind!r}")
        required, optional = FORMATS[kind]
        missing = [key for key in required if key not in fmt]
        unknown = sorted(set(fmt) - {"type", *required, *optional})
        if missing or unknown:
            raise ValueError(f"{where} ({kind}) misses {missing} / has unknown {unknown}")
        return getattr(self, "_" + kind)(fmt, where)

    def _const_string(self, fmt: dict[str, Any], where: str) -> str:
        return self.new(json.dumps(_text(fmt["value"], f"{where}.value")))

    def _json_schema(self, fmt: dict[str, Any], where: str) -> str:
        if fmt.get("style", "json") != "json" or fmt.get("any_order", False):
            raise ValueError(f"{where}: only style 'json' with any_order false is supported")
        schema = fmt["json_schema"]
        if not isinstance(schema, dict):
            raise ValueError(f"{where}.json_schema must be a JSON schema (an object)")
        return self.new("%json " + json.dumps(self.schema_of(schema)))

    def _regex(self, fmt: dict[str, Any], where: str) -> str:
        return self.new("/" + _text(fmt["pattern"], f"{where}.pattern").replace("/", "\\/") + "/")

    def _grammar(self, fmt: dict[str, Any], where: str) -> str:
        name = f"g{len(self.side)}"
        lark = llguidance.grammar_from("grammar", _text(fmt["grammar"], f"{where}.grammar"))
        self.side.append({"name": name, "lark_grammar": lark})
        return self.new("@" + name)

    def _any_text(self, fmt: dict[str, Any], where: str) -> str:
        return self.new(self.token(self._free_text(fmt, where)))

    def _free_text(self, fmt: dict[str, Any], where: str) -> str:
        """Free text's regex: ``excludes`` never appear in it."""
        if fmt.get("max_tokens") is not None or fmt.get("max_chars") is not None:
            raise ValueError(f"{where}: max_tokens and max_chars are not supported")
        excludes = _texts(fmt.get("excludes", []), f"{where}.excludes")
        if not excludes:
            return f"/{_ANY}/"
        banned = "|".join(re.escape(e).replace("/", "\\/") for e in excludes)
        return f"/{_ANY}/ & ~/{_ANY}({banned}){_ANY}/"

    def _sequence(self, fmt: dict[str, Any], where: str) -> str:
        return self.new(" ".join(self._rules(fmt["elements"], f"{where}.elements")))

    def _or(self, fmt: dict[str, Any], where: str) -> str:
        return self.new(" | ".join(self._rules(fmt["elements"], f"{where}.elements")))

    def _optional(self, fmt: dict[str, Any], where: str) -> str:
        return self.new(self.rule(fmt["content"], f"{where}.content") + "?")

    def _plus(self, fmt: dict[str, Any], where: str) -> str:
        return self.new(self.rule(fmt["content"], f"{where}.content") + "+")

    def _star(self, fmt: dict[str, Any], where: str) -> str:
        return self.new(self.rule(fmt["content"], f"{where}.content") + "*")

    def _repeat(self, fmt: dict[str, Any], where: str) -> str:
        low, high = fmt["min"], fmt["max"]
        if not (isinstance(low, int) and isinstance(high, int) and 0 <= low and (high == -1 or high >= low)):
            raise ValueError(f"{where}: min must be >= 0 and max >= min (or -1: unbounded), got {low}, {high}")
        content = self.rule(fmt["content"], f"{where}.content")
        return self.new(f"{content}{{{low},{'' if high == -1 else high}}}")

    def _tag(self, fmt: dict[str, Any], where: str, skip: str = "") -> str:
        """``begin content end`` (``skip``: the part of begin already matched, a trigger); free text inside ends at
        the first end string."""
        begin = _text(fmt["begin"], f"{where}.begin")[len(skip) :]
        ends = _texts(fmt["end"], f"{where}.end", nonempty=True) if isinstance(fmt["end"], list) else [fmt["end"]]
        end = "(" + " | ".join(json.dumps(_text(e, f"{where}.end")) for e in ends) + ")"
        content = fmt["content"]
        opening = json.dumps(begin) if begin else ""
        if isinstance(content, dict) and content.get("type") == "any_text":
            text = self.token(self._free_text(content, f"{where}.content"))
            return self.new(f"{opening} {text} {end}", lazy=True)
        return self.new(f"{opening} {self.rule(content, f'{where}.content')} {end}")

    def _triggered_tags(self, fmt: dict[str, Any], where: str) -> str:
        """Free text until a trigger, then the tag it begins; again and again (``stop_after_first``: once;
        ``at_least_one``: a tag first, no text before it)."""
        triggers = _texts(fmt["triggers"], f"{where}.triggers", nonempty=True)
        text = self.token(self._free_text({"excludes": fmt.get("excludes", [])}, where))
        special = _bracketed_are_tokens(triggers, self.is_special)
        led, bare = [], []
        for i, tag in enumerate(self._tags(fmt["tags"], f"{where}.tags")):
            trigger = next((t for t in triggers if tag["begin"].startswith(t)), None)
            if trigger is None:
                raise ValueError(f"{where}.tags[{i}].begin {tag['begin']!r} starts with none of the triggers")
            body = self._tag(tag, f"{where}.tags[{i}]", skip=trigger)
            as_token = special and _bracketed(trigger)
            mark = trigger if as_token else json.dumps(trigger)
            led.append(
                self.new(f"{text} {mark} {body}")
                if as_token
                else self.new(f"{self.new(f'{text} {mark}', lazy=True)} {body}")
            )
            bare.append(self.new(f"{mark} {body}"))
        any_led, any_bare = " | ".join(led), " | ".join(bare)
        first, again = fmt.get("at_least_one", False), not fmt.get("stop_after_first", False)
        if first:
            return self.new(f"({any_bare}) ({any_led})* {text}" if again else f"({any_bare})")
        return self.new(f"({any_led})* {text}" if again else f"({any_led}) | {text}")

    def _tags_with_separator(self, fmt: dict[str, Any], where: str) -> str:
        one = " | ".join(
            self._tag(t, f"{where}.tags[{i}]") for i, t in enumerate(self._tags(fmt["tags"], f"{where}.tags"))
        )
        separator = json.dumps(_text(fmt["separator"], f"{where}.separator"))
        first, again = fmt.get("at_least_one", False), not fmt.get("stop_after_first", False)
        listed = f"({one}) ({separator} ({one}))*" if again else f"({one})"
        return self.new(listed if first else f"({listed})?")

    def _tags(self, tags: Any, where: str) -> list[dict[str, Any]]:
        if not isinstance(tags, list) or not tags:
            raise ValueError(f"{where} must be a non-empty list of tag formats")
        for i, tag in enumerate(tags):
            if (
                not isinstance(tag, dict)
                or tag.get("type", "tag") != "tag"
                or not {"begin", "content", "end"} <= set(tag)
            ):
                raise ValueError(f"{where}[{i}] must be a tag format (begin, content, end)")
        return tags

    def _rules(self, formats: Any, where: str) -> list[str]:
        if not isinstance(formats, list) or not formats:
            raise ValueError(f"{where} must be a non-empty list of formats")
        return [self.rule(f, f"{where}[{i}]") for i, f in enumerate(formats)]


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string (token begins and ends are not supported), got {value!r}")
    return value


def _texts(value: Any, where: str, nonempty: bool = False) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) or (nonempty and not value):
        raise ValueError(
            f"{where} must be a {'non-empty ' if nonempty else ''}list of non-empty strings, got {value!r}"
        )
    return value

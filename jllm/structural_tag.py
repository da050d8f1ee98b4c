"""vLLM's structural tag: text is free until one of its ``triggers`` starts, then the structure that trigger begins
(its ``begin`` text, JSON following its ``schema``, its ``end`` text), then free text again. Tool-calling clients use
it to let a model decide whether to call a tool while holding each call's arguments to the tool's schema.

This reads vLLM's form (``{"structures": [{"begin", "schema", "end"}, ...], "triggers": [...]}``, also sent as
``response_format: {"type": "structural_tag", ...}``), the one vLLM's llguidance backend reads; xgrammar's newer
``format`` form is refused by name. The grammar is llguidance's ``StructTag.to_grammar``, with each schema handed
over as a schema (vLLM hands it the schema's compiled grammar, which that function reads as a schema of no keywords:
any JSON passes) and jllm's JSON whitespace options beside it. A trigger written ``<...>`` that is one special token
of the model's tokenizer is matched as that token, the way the model writes it; otherwise triggers are text.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import llguidance

_KEYS = ("type", "structures", "triggers")
_STRUCTURE_KEYS = ("begin", "schema", "end")


@dataclasses.dataclass(frozen=True)
class Structure:
    trigger: str  # the first of the triggers that ``begin`` starts with
    begin: str
    schema: dict[str, Any]
    end: str


def read_structural_tag(value: Any) -> list[Structure]:
    """The structures of a structural tag (a dict or its JSON text); ValueError names the key at fault."""
    spec = json.loads(value) if isinstance(value, str) else value
    if not isinstance(spec, dict):
        raise ValueError(f"a structural tag is an object with structures and triggers, got {type(spec).__name__}")
    if "format" in spec:
        raise ValueError("the 'format' form (xgrammar's) is not supported: send structures and triggers")
    unknown = sorted(set(spec) - set(_KEYS))
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a structural tag key; the keys are {', '.join(_KEYS)}")
    if spec.get("type", "structural_tag") != "structural_tag":
        raise ValueError(f"type must be 'structural_tag', got {spec['type']!r}")
    triggers = spec.get("triggers")
    if not isinstance(triggers, list) or not triggers or not all(isinstance(t, str) and t for t in triggers):
        raise ValueError(f"triggers must be a non-empty list of non-empty strings, got {triggers!r}")
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


def structural_tag_grammar(
    structures: list[Structure],
    schema_of: Callable[[dict[str, Any]], dict[str, Any]],
    is_special: Callable[[str], bool] = lambda text: False,
) -> str:
    """The llguidance grammar: ``schema_of`` readies each schema (jllm's nullable rule, whitespace options);
    ``is_special`` says whether a text is one special token of the tokenizer."""
    tags = [
        llguidance.StructTag(trigger=s.trigger, begin=s.begin, grammar=schema_of(s.schema), end=s.end)
        for s in structures
    ]
    bracketed = [s.trigger for s in structures if s.trigger.startswith("<") and s.trigger.endswith(">")]
    # llguidance takes every <...> trigger as a special token or none: as tokens only where all of them are
    special = bool(bracketed) and all(map(is_special, bracketed))
    return llguidance.StructTag.to_grammar(tags, assume_special=special)

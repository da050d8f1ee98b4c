"""What every jllm settings file stands on (the engine's keys in ``jllm.config``, ``serve_config``'s models list,
job files, run specs, sweeps): the error that names the bad key, the hint for a misspelt one, a section dataclass that
type-checks its fields against their annotations, and a YAML reader that refuses a key given twice.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Hashable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A setting is unknown or out of range; the message names the key and what is allowed. ``key`` is the key's
    name (dotted inside a job file's sections), so a job file can add the line it was written on."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def unknown_key_error(key: str, allowed: Iterable[str], where: str = "key") -> ConfigError:
    """The error for a misspelt key: names it, suggests the closest allowed key, lists them all."""
    allowed = sorted(allowed)
    spelt = {a.replace("-", "_"): a for a in allowed}  # dashes and underscores count as the same letter
    close = difflib.get_close_matches(str(key).replace("-", "_"), spelt, n=1)
    hint = f" (did you mean {spelt[close[0]]!r}?)" if close else ""
    return ConfigError(f"unknown {where} {key!r}{hint}; allowed: {', '.join(allowed)}", key=str(key))


def allowed_values(tp: Any) -> tuple[tuple[type, ...], tuple[Any, ...] | None, bool]:
    """(python types accepted, literal choices or None, None allowed) for a field annotation."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        allow_none = type(None) in args
        inner = [allowed_values(a) for a in args if a is not type(None)]
        return tuple(k for kinds, _, _ in inner for k in kinds), inner[0][1], allow_none
    if typing.get_origin(tp) in (list, dict):  # the elements are the section's own check
        return (typing.get_origin(tp),), None, False
    if typing.get_origin(tp) is Literal:
        return (type(args[0]),), args, False
    if tp is float:
        return (int, float), None, False
    return (tp,), None, False


class Section:
    """Type-checks every field against its annotation before the section's own range checks run."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            kinds, choices, allow_none = allowed_values(hints[f.name])
            if value is None and allow_none:
                continue
            ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
            if choices is not None and value not in choices:
                ok = False
            if not ok:
                allowed = (
                    " or ".join(repr(c) for c in choices)
                    if choices
                    else " or ".join(k.__name__ for k in kinds) + (" or null" if allow_none else "")
                )
                raise ConfigError(f"{f.name}={value!r} is not allowed: expected {allowed}", key=f.name)
            if float in kinds and isinstance(value, int):
                setattr(self, f.name, float(value))  # YAML's `1` for a float key
        self.validate()

    def validate(self) -> None:
        """Range checks of one section."""

    def _require(self, ok: bool, key: str, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={getattr(self, key)!r} is not allowed: {allowed}", key=key)


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a config file that says a key twice is a mistake to point out."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                break  # SafeLoader's own check names the unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line, placed by line and column: PyYAML's own message spans several lines, quoting the
    text with a caret under it and calling the file "<unicode string>"."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return where + " ".join(" ".join(str(part).split()) for part in (error.context, error.problem) if part)
    return " ".join(str(error).split())


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; every way of failing is a one-line ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {str(path)!r} {what}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not readable YAML: {yaml_problem(e)}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} is not readable YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values, got {type(data).__name__}")
    return data

"""A run's dataset: rows read from JSONL, CSV, Parquet, plain text or an inline list, and its fields mapped to
inputs (an id, a prompt or a chat, a reference continuation).

Everything is read and checked when the job file is, so a missing file or a field the rows lack fails before the
engine starts, naming the key and the fields the dataset has.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jllm.config import ConfigError

FORMATS = (".jsonl", ".csv", ".parquet", ".txt")
Row = dict[str, Any]


@dataclass(frozen=True)
class RunInput:
    """One dataset row as the run sees it."""

    row: int  # the row's number in the dataset (names its hidden-state file)
    id: str | int  # the id_field's value, or the row's number
    prompt: str | None  # a plain prompt (or the single user message when `chat` is on) ...
    messages: list[dict[str, Any]] | None  # ... or a whole conversation
    reference: str | None  # the continuation to score (reference_field)

    def inputs(self) -> dict[str, Any]:
        """What results.jsonl shows of the input."""
        shown: dict[str, Any] = {"prompt": self.prompt} if self.messages is None else {"messages": self.messages}
        if self.reference is not None:
            shown["reference"] = self.reference
        return shown


@dataclass(frozen=True)
class FieldMap:
    prompt_field: str | None
    messages_field: str | None
    id_field: str | None
    reference_field: str | None


def read_rows(source: Any) -> list[Row]:
    """The rows of ``run.dataset``: a path (by its suffix) or an inline list of strings or mappings."""
    if isinstance(source, list):
        return _inline_rows(source)
    if not isinstance(source, str):
        raise ConfigError(f"run.dataset must be a file path or a list, got {source!r}", key="run.dataset")
    path = Path(source)
    if path.suffix not in FORMATS:
        raise ConfigError(
            f"run.dataset={source!r}: unknown format {path.suffix!r}; allowed: {', '.join(FORMATS)}", key="run.dataset"
        )
    if not path.is_file():
        raise ConfigError(f"run.dataset={source!r}: no such file", key="run.dataset")
    try:
        rows = _READERS[path.suffix](path)
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as e:  # pyarrow's errors are ValueErrors too
        raise ConfigError(f"run.dataset={source!r} cannot be read: {e}", key="run.dataset") from e
    if not rows:
        raise ConfigError(f"run.dataset={source!r} holds no rows", key="run.dataset")
    return rows


def _inline_rows(items: list[Any]) -> list[Row]:
    if not items:
        raise ConfigError("run.dataset is an empty list", key="run.dataset")
    rows = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            rows.append({"prompt": item})
        elif isinstance(item, dict):
            rows.append(item)
        else:
            raise ConfigError(f"run.dataset[{i}] must be a string or a mapping, got {item!r}", key=f"run.dataset.{i}")
    return rows


def _lines(path: Path) -> list[str]:
    """The file's lines, split at newlines alone: str.splitlines also splits at U+2028, U+0085 or a form feed, which
    a JSON string or a prompt may hold."""
    return path.read_text(encoding="utf-8").split("\n")  # read_text turns \r\n and \r into \n


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    for number, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {number} is not valid JSON: {e}") from e
        if not isinstance(row, dict):
            raise ValueError(f"line {number} is not a JSON object")
        rows.append(row)
    return rows


def _read_csv(path: Path) -> list[Row]:
    """A row with more fields than the header (most often a prompt's comma outside quotes) is refused: csv keeps the
    extra fields under the key None, so the prompt would be cut at the comma without a word."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = []
        for row in reader:
            if None in row:
                raise ValueError(
                    f"line {reader.line_num} has {len(reader.fieldnames or ()) + len(row[None])} fields, the header "
                    f"{len(reader.fieldnames or ())} (quote a field that holds a comma)"
                )
            rows.append(row)
        return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq  # only Parquet datasets need it

    return pq.read_table(path).to_pylist()


def _read_text(path: Path) -> list[Row]:
    return [{"prompt": line} for line in _lines(path) if line.strip()]


_READERS = {".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": _read_parquet, ".txt": _read_text}


def map_fields(rows: list[Row], fields: FieldMap) -> list[RunInput]:
    """Each row as a RunInput; a field a row lacks, a wrong type or a repeated id fails naming the key."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    for key in ("prompt_field", "messages_field", "id_field", "reference_field"):
        name = getattr(fields, key)
        missing = [i for i, row in enumerate(rows) if name is not None and name not in row]
        if missing:
            raise ConfigError(
                f"run.{key}={name!r}: row {missing[0]} of the dataset has no such field; its fields: "
                f"{', '.join(map(str, columns))}",
                key=f"run.{key}",
            )
    inputs = [_input(i, row, fields) for i, row in enumerate(rows)]
    seen: dict[Any, int] = {}
    for i, item in enumerate(inputs):
        if item.id in seen:
            raise ConfigError(
                f"run.id_field={fields.id_field!r}: rows {seen[item.id]} and {i} share the id {item.id!r}; ids must "
                "be unique (results are resumed by id)",
                key="run.id_field",
            )
        seen[item.id] = i
    return inputs


def _input(index: int, row: Row, fields: FieldMap) -> RunInput:
    def value(key: str, check: Any, allowed: str) -> Any:
        name = getattr(fields, key)
        if name is None:
            return None
        if not check(row[name]):
            raise ConfigError(
                f"run.{key}={name!r}: row {index} holds {row[name]!r}, expected {allowed}", key=f"run.{key}"
            )
        return row[name]

    def is_id(v: Any) -> bool:
        return isinstance(v, str | int) and not isinstance(v, bool)

    messages = value(
        "messages_field", _is_conversation, "a list of {role, content} messages (content: text or text parts)"
    )
    return RunInput(
        row=index,
        id=index if fields.id_field is None else value("id_field", is_id, "a string or an integer"),
        prompt=value("prompt_field", lambda v: isinstance(v, str) and v != "", "a non-empty string"),
        messages=messages,
        reference=value("reference_field", lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    )


def _is_conversation(value: Any) -> bool:
    """Messages the chat door takes (``inputs``: a content is text, text parts or null), so a row it would refuse
    fails with the job file, before the engine starts, not mid-run."""
    return (
        isinstance(value, list)
        and value != []
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in value)
        and all(_is_content(m["content"]) for m in value)
    )


def _is_content(content: Any) -> bool:
    if isinstance(content, list):
        return all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content)
    return content is None or isinstance(content, str)

"""The ``run:`` section of a job file: the dataset and its fields, sampling, what to record and where.

Every error is a ConfigError whose ``key`` is the dotted key (``run.record.logprobs``), so the job file can say on
which line the key was written. The key tree (``RUN_SCHEMA``) is also what ``--set`` and ``sweep:`` keys resolve in.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jllm.config import ConfigError, unknown_key_error
from jllm.datasets import FieldMap, RunInput, map_fields, read_rows
from jllm.sampling import MAX_LOGPROBS, SamplingParams

# Logprob counts are asked under run.record (what to record), so sampling does not take them a second time.
SAMPLING_KEYS = tuple(
    f.name
    for f in dataclasses.fields(SamplingParams)
    if f.name not in ("output_kind", "logprobs", "prompt_logprobs", "seed")
)
HIDDEN_KEYS = ("layers", "format")
RECORD_KEYS = ("text", "token_ids", "logprobs", "prompt_logprobs", "perplexity", "score", "hidden_states")
FIELD_KEYS = ("prompt_field", "messages_field", "id_field", "reference_field")
RUN_KEYS = ("dataset", *FIELD_KEYS, "chat", "sampling", "record", "seed", "batch_size", "output_dir")
# The key tree below ``run``: a name maps to its own tree, or to None for a leaf.
RUN_SCHEMA: dict[str, Any] = {
    **dict.fromkeys(RUN_KEYS),
    "sampling": dict.fromkeys(SAMPLING_KEYS),
    "record": {**dict.fromkeys(RECORD_KEYS), "hidden_states": dict.fromkeys(HIDDEN_KEYS)},
}
# SamplingParams fields a run sets elsewhere: what to record, and one seed per input derived from the run's.
MOVED = {"logprobs": "run.record.logprobs", "prompt_logprobs": "run.record.prompt_logprobs", "seed": "run.seed"}
HIDDEN_FORMATS = ("npy", "npz")  # one .npy per input, or one .npz per batch


@dataclass(frozen=True)
class RecordSpec:
    text: bool = True
    token_ids: bool = True  # the prompt's and each output's
    logprobs: int | None = None  # top-k alternatives per generated token (0: the chosen token's logprob only)
    prompt_logprobs: int | None = None  # the same per prompt token
    perplexity: bool = False  # exp(-mean prompt token logprob)
    score: bool = False  # the reference continuation's logprob given the prompt (LLM.score)
    hidden_layers: list[int] | None = None  # hidden states of these layers (LLM.encode's indices), or none
    hidden_format: str = "npy"


@dataclass(frozen=True)
class RunSpec:
    inputs: list[RunInput]
    chat: bool  # a prompt is sent as one user message through the chat template
    sampling: SamplingParams  # logprob counts from `record`, no seed (each input gets its own from `seed`)
    record: RecordSpec
    seed: int  # the run's seed: an input's requests are seeded from it and the input's id
    batch_size: int  # inputs per LLM call, and per write to results.jsonl
    output_dir: Path
    resolved: dict[str, Any]  # the section with every default filled in, for the run's config.yaml


def parse_run(run: Any, engine_seed: int) -> RunSpec:
    """Checks the ``run:`` mapping and reads its dataset now, so a bad job fails before the engine starts."""
    if not isinstance(run, dict):
        raise ConfigError(f"run must be a mapping with keys {', '.join(RUN_KEYS)}, got {run!r}", key="run")
    _check_keys(run, RUN_SCHEMA, "run")
    if "dataset" not in run:
        raise ConfigError("run.dataset is missing: a file (.jsonl, .csv, .parquet, .txt) or an inline list", key="run")
    fields = _field_map(run)
    inputs = map_fields(read_rows(run["dataset"]), fields)
    chat = _typed(run, "chat", bool, False, "true or false")
    if chat and fields.messages_field is not None:
        raise ConfigError("run.chat: messages_field already gives conversations; leave chat out", key="run.chat")
    record = _record(run.get("record") or {}, fields)
    sampling = _sampling(run.get("sampling") or {}, record)
    seed = _typed(run, "seed", int, engine_seed, "an integer (default: the engine's seed)")
    batch_size = _typed(run, "batch_size", int, 64, "an integer >= 1")
    if batch_size < 1:
        raise ConfigError(f"run.batch_size={batch_size} is not allowed: expected an integer >= 1", key="run.batch_size")
    output_dir = _output_dir(run.get("output_dir"))
    resolved = {
        **{k: v for k, v in run.items() if k not in ("sampling", "record")},
        **dataclasses.asdict(fields),
        "chat": chat,
        "seed": seed,
        "batch_size": batch_size,
        "output_dir": str(output_dir),
        "sampling": {k: getattr(sampling, k) for k in SAMPLING_KEYS if k not in ("output_kind",)},
        "record": dataclasses.asdict(record),
    }
    return RunSpec(inputs, chat, sampling, record, seed, batch_size, output_dir, resolved)


def _check_keys(values: dict[str, Any], schema: dict[str, Any], where: str) -> None:
    for key, value in values.items():
        if where == "run.sampling" and key in MOVED:
            raise ConfigError(f"run.sampling.{key}: give it as {MOVED[key]} in a run", key=f"{where}.{key}")
        if key not in schema:
            error = unknown_key_error(key, schema, where=f"{where} key")
            raise ConfigError(str(error), key=f"{where}.{key}")
        if isinstance(schema[key], dict) and isinstance(value, dict):
            _check_keys(value, schema[key], f"{where}.{key}")


def _typed(values: dict[str, Any], key: str, kind: type, default: Any, allowed: str, where: str = "run") -> Any:
    value = values.get(key, default)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"{where}.{key}={value!r} is not allowed: expected {allowed}", key=f"{where}.{key}")
    return value


def _field_map(run: dict[str, Any]) -> FieldMap:
    names = {}
    for key in FIELD_KEYS:
        value = run.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"run.{key}={value!r} is not allowed: expected a field name", key=f"run.{key}")
        names[key] = value
    if names["messages_field"] is not None and names["prompt_field"] is not None:
        raise ConfigError("run.prompt_field: give prompt_field or messages_field, not both", key="run.prompt_field")
    if names["messages_field"] is None and names["prompt_field"] is None:
        names["prompt_field"] = "prompt"
    return FieldMap(**names)


def _record(values: Any, fields: FieldMap) -> RecordSpec:
    if not isinstance(values, dict):
        raise ConfigError(f"run.record must be a mapping of {', '.join(RECORD_KEYS)}, got {values!r}", key="run.record")
    where = "run.record"
    flags = {k: _typed(values, k, bool, getattr(RecordSpec, k), "true or false", where) for k in ("text", "token_ids")}
    counts = {}
    for key in ("logprobs", "prompt_logprobs"):
        value = values.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 20):
            raise ConfigError(
                f"{where}.{key}={value!r} is not allowed: expected the number of top alternatives per token, "
                f"0..{MAX_LOGPROBS} (0: the chosen token's logprob only), or null",
                key=f"{where}.{key}",
            )
        counts[key] = value
    flags |= {k: _typed(values, k, bool, False, "true or false", where) for k in ("perplexity", "score")}
    if flags["score"] and fields.reference_field is None:
        raise ConfigError(
            "run.record.score needs run.reference_field: the dataset field holding the continuation to score",
            key=f"{where}.score",
        )
    return RecordSpec(**flags, **counts, **_hidden(values.get("hidden_states")))


def _hidden(values: Any) -> dict[str, Any]:
    """``hidden_states: {layers: [0, -1], format: npy}`` (layers as LLM.encode: 0 = embeddings, -1 = final normed)."""
    where = "run.record.hidden_states"
    if values is None:
        return {}
    if not isinstance(values, dict) or "layers" not in values:
        raise ConfigError(f"{where} must be a mapping with layers (and format), got {values!r}", key=where)
    layers = values["layers"]
    if not isinstance(layers, list) or not layers or not all(type(x) is int for x in layers):
        raise ConfigError(
            f"{where}.layers={layers!r} is not allowed: expected a non-empty list of layer indices "
            "(0 = embeddings, i = after layer i, -1 = the final normed states)",
            key=f"{where}.layers",
        )
    form = values.get("format", "npy")
    if form not in HIDDEN_FORMATS:
        raise ConfigError(
            f"{where}.format={form!r} is not allowed: expected npy (a file per input) or npz (a file per batch)",
            key=f"{where}.format",
        )
    return {"hidden_layers": layers, "hidden_format": form}


def _sampling(values: Any, record: RecordSpec) -> SamplingParams:
    if not isinstance(values, dict):
        raise ConfigError(
            f"run.sampling must be a mapping of SamplingParams fields, got {values!r}", key="run.sampling"
        )
    prompt_logprobs = record.prompt_logprobs
    if record.perplexity and prompt_logprobs is None:
        prompt_logprobs = 0  # perplexity is read from the prompt tokens' own logprobs
    try:
        return SamplingParams(**values, logprobs=record.logprobs, prompt_logprobs=prompt_logprobs)
    except (ValueError, TypeError) as e:
        name = str(e).split()[0].split("=")[0]
        raise ConfigError(f"run.sampling.{e}", key=f"run.sampling.{name}" if name in values else "run.sampling") from e


def _output_dir(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"run.output_dir={value!r} is not allowed: expected a directory path", key="run.output_dir")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run.output_dir={value!r} is a file, not a directory", key="run.output_dir")
    return path

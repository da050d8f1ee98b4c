"""A job file for `jllm run`: YAML read with the line of every key, ``--set`` overrides, and errors saying where.

The file holds engine keys at the top level (as ``--config`` takes them), a ``run:`` section (``jllm.run_spec``) and
an optional ``sweep:`` section (``jllm.sweep``). A key is written dotted (``run.sampling.temperature``) or, where
that is unambiguous, by its own name: an engine key, a ``run`` key or a sampling field (``temperature``). ``--set``
values are parsed as YAML, so ``--set temperature=0.7`` gives a float and ``--set stop=[a, b]`` a list.

Every point of the sweep is checked, dataset included, before any engine starts; an error names the key, where it
was written (``job.yaml line 12``, ``--set temperature=3``, ``sweep.temperature (job.yaml line 20)``) and what is
allowed.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jllm.config import OFFLINE_SECTIONS, ConfigError, EngineConfig, engine_keys, unknown_key_error
from jllm.config_base import UniqueKeyLoader, yaml_problem
from jllm.run_spec import RUN_SCHEMA, SAMPLING_KEYS, RunSpec, parse_run
from jllm.sweep import SweepPoint, expand_sweep

KeyPath = tuple[str, ...]
SECTIONS = ("run", "sweep")


def _schema() -> dict[str, Any]:
    return {**dict.fromkeys(engine_keys(*OFFLINE_SECTIONS)), "run": RUN_SCHEMA}


@dataclass
class JobFile:
    """The document as written, and where each key was written (key path -> "job.yaml line 12")."""

    path: Path
    values: dict[str, Any]
    origins: dict[KeyPath, str]
    given: dict[KeyPath, str] = field(default_factory=dict)  # the keys set on the command line, and where

    def where(self, key: str | None) -> str:
        """Where the key (or the closest enclosing key) was written; the file itself when nowhere."""
        path = tuple(_norm(p) for p in (key or "").split(".") if p)
        while path:
            if path in self.origins:
                return self.origins[path]
            path = path[:-1]
        return str(self.path)

    def located(self, error: ConfigError) -> ConfigError:
        return ConfigError(f"{self.where(error.key)}: {error}", key=error.key)


def _norm(part: str) -> str:
    return part.replace("-", "_")


def load_job_file(path: str | Path) -> JobFile:
    """Reads the YAML, keeping each key's line (PyYAML's composed nodes carry their marks)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"job file {str(path)!r} {what}")
    try:
        loader = UniqueKeyLoader(path.read_text(encoding="utf-8"))
        try:
            node = loader.get_single_node()
            values = loader.construct_document(node) if node is not None else {}
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        raise ConfigError(f"job file {str(path)!r} is not readable YAML: {yaml_problem(e)}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"job file {str(path)!r} is not readable YAML: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"job file {str(path)!r} must hold a mapping of keys to values, got {type(values).__name__}")
    origins: dict[KeyPath, str] = {}
    _note_lines(node, (), origins, path.name)
    _datasets_beside(values, path.parent)
    return JobFile(path, values, origins)


def _datasets_beside(values: dict[str, Any], folder: Path) -> None:
    """A dataset path written in the file (``run.dataset`` or a sweep over it) is relative to the file's folder."""

    def beside(value: Any) -> Any:
        return str(folder / Path(value).expanduser()) if isinstance(value, str) else value

    run, sweep = values.get("run"), values.get("sweep")
    if isinstance(run, dict) and "dataset" in run:
        run["dataset"] = beside(run["dataset"])
    if isinstance(sweep, dict):
        for key, swept in sweep.items():
            if isinstance(swept, list) and str(key) in ("dataset", "run.dataset"):
                sweep[key] = [beside(v) for v in swept]


def _note_lines(node: yaml.Node | None, at: KeyPath, origins: dict[KeyPath, str], name: str) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = at + (_norm(str(key_node.value)),)
            origins[key] = f"{name} line {key_node.start_mark.line + 1}"
            _note_lines(value_node, key, origins, name)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            origins[at + (str(i),)] = f"{name} line {item.start_mark.line + 1}"
            _note_lines(item, at + (str(i),), origins, name)


def resolve_key(dotted: str) -> KeyPath:
    """A dotted key (or a short name) as its full path in the key tree; an unknown one fails naming the allowed."""
    parts = tuple(_norm(p) for p in dotted.split("."))
    schema = _schema()
    if len(parts) == 1 and parts[0] not in schema:
        if parts[0] in RUN_SCHEMA:
            parts = ("run", parts[0])
        elif parts[0] in SAMPLING_KEYS:
            parts = ("run", "sampling", parts[0])
        else:  # a misspelt short name is most likely a run or sampling key's: suggest among every name taken here
            raise unknown_key_error(parts[0], {*schema, *RUN_SCHEMA, *SAMPLING_KEYS})
    tree: Any = schema
    for i, part in enumerate(parts):
        if tree is None:
            raise ConfigError(f"{'.'.join(parts[:i])} takes a value, not keys", key=".".join(parts[:i]))
        if part not in tree:
            raise unknown_key_error(part, tree, where=".".join(parts[:i]) + " key" if i else "key")
        tree = tree[part]
    return parts


def set_value(values: dict[str, Any], key: KeyPath, value: Any) -> None:
    """Sets a nested key, making the sections on the way; a section that is not a mapping is reported."""
    at = values
    for i, part in enumerate(key[:-1]):
        at = at.setdefault(part, {})
        if not isinstance(at, dict):
            raise ConfigError(f"{'.'.join(key[: i + 1])} must be a mapping to set {'.'.join(key)}", key=".".join(key))
    for written in [k for k in at if k != key[-1] and _norm(str(k)) == key[-1]]:
        del at[written]  # the file spelt it with dashes: the new value replaces it, not joins it
    at[key[-1]] = value


def apply_sets(job: JobFile, sets: list[str]) -> None:
    """``--set KEY=VALUE`` overrides, in order; the value is YAML (``0.7``, ``true``, ``[a, b]``, ``null``)."""
    for item in sets:
        dotted, eq, text = item.partition("=")
        if not eq or not dotted:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set run.sampling.temperature=0.7")
        if _norm(dotted.split(".")[0]) == "sweep":
            raise ConfigError(f"--set {item}: the sweep: section is the job file's alone; edit it there", key="sweep")
        try:
            key = resolve_key(dotted)
            value = yaml.safe_load(text)
        except ConfigError as e:
            raise ConfigError(f"--set {item}: {e}", key=e.key) from e
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item}: the value is not YAML: {yaml_problem(e)}", key=dotted) from e
        if key == ("run", "dataset") and isinstance(value, str):
            value = str(Path(value).expanduser().absolute())  # given on the command line: from the working directory
        try:
            set_value(job.values, key, value)
        except ConfigError as e:  # a section of the file that is no mapping: where the file wrote it
            raise ConfigError(f"{job.where(e.key)}: {e} (--set {item})", key=e.key) from e
        job.origins[key] = job.given[key] = f"--set {item}"


@dataclass
class JobPoint:
    """One run: its sweep point (empty without a sweep), engine and run section."""

    point: SweepPoint
    engine: EngineConfig
    run: RunSpec

    def resolved(self) -> dict[str, Any]:
        """The whole config this run used, for its config.yaml."""
        return {**self.engine.to_flat(*OFFLINE_SECTIONS), "run": self.run.resolved}


def plan_job(job: JobFile, **engine_overrides: Any) -> list[JobPoint]:
    """Every run of the job, checked: the engine keys (overrides from command-line options win), the run section
    and each sweep point. Nothing here starts an engine."""
    values = dict(job.values)
    if "run" not in values:
        raise ConfigError(f"job file {str(job.path)!r} has no `run:` section (see configs/examples/)")
    allowed = (*engine_keys(*OFFLINE_SECTIONS), *SECTIONS)
    for key in values:
        if _norm(str(key)) not in allowed:
            raise job.located(unknown_key_error(key, allowed))
    sweep = values.pop("sweep", None)
    for key, value in engine_overrides.items():
        if value is not None:
            path = resolve_key(key)
            set_value(values, path, value)
            job.origins[path] = job.given[path] = f"command-line option --{key.replace('_', '-')}"
    try:
        points = expand_sweep(sweep, resolve_key, job.origins)
    except ConfigError as e:
        raise job.located(e) from e
    _check_not_swept(job, points[0])
    return [_point(job, values, point) for point in points]


def _check_not_swept(job: JobFile, point: SweepPoint) -> None:
    """A key set on the command line that the sweep sets too (or a section holding it) would be replaced by every
    point's value without a word."""
    for given, origin in job.given.items():
        for swept in point.values:
            common = min(len(given), len(swept))
            if given[:common] == swept[:common]:
                raise ConfigError(
                    f"{origin}: {'.'.join(given)} is swept ({point.origins[swept]}), and each point's value would "
                    "replace it; change the sweep instead",
                    key=".".join(given),
                )


def _point(job: JobFile, values: dict[str, Any], point: SweepPoint) -> JobPoint:
    values = copy.deepcopy(values)
    for key, value in point.values.items():
        set_value(values, key, value)
    run = values.pop("run")
    try:
        engine = EngineConfig.from_flat(values)
        spec = parse_run(run, engine.model.seed)
    except ConfigError as e:
        where = _swept(point, e.key) or job.where(e.key)
        raise ConfigError(f"{where}: {e}", key=e.key) from e
    if point.values:
        spec = point.place(spec)
    return JobPoint(point, engine, spec)


def _swept(point: SweepPoint, key: str | None) -> str | None:
    """The sweep entry that gave the key its value, if one did."""
    path = tuple(_norm(p) for p in (key or "").split("."))
    for swept, value in point.values.items():
        if path[: len(swept)] == swept:
            return f"{point.origins[swept]} (sweep value {value!r})"
    return None

"""What `jllm serve` serves: the server's settings and a list of models, each a full engine config of its own.

A config file without a ``models:`` key is one model, exactly as before (command line > file > defaults). With
``models:``, the top-level keys are the server's settings and every model's defaults, and each entry holds one
model's own engine keys (``served_model_name`` as a name or a list of name and aliases, ``model``, ``dtype``,
``tensor_parallel_size``, ``gpu_memory_utilization`` / ``num_pages``, scheduler limits ..., and
``reasoning_parser``, the family's reasoning format), which win over the defaults. Command-line engine options are
defaults too: they win over the file's top level, not over an entry.
The admin API's ``POST /v1/admin/models`` takes one entry in the same form.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from jllm.config import ConfigError, EngineConfig, ServerConfig, engine_keys, load_yaml, merge_config, unknown_key_error
from jllm.model_source import DEFAULT_MODEL

# The step token budget of a server whose file and command line leave max_num_batched_tokens unset (null): offline
# runs take 2048. A new prompt waits behind the prefill chunks of the step running, and every step decodes the running
# streams whatever its size, so smaller steps cut the time to first token at no cost to TPOT: 32 streams of 1,024-token
# prompts on an H100 (2026-12-07, docs/benchmarks.md) had TTFT p50 / p99 156 / 513 ms at 2048, 116 / 123 at 1024, 82 /
# 120 at 512, 68 / 120 at 384 and 198 / 201 at 256, TPOT 11.6-12.2 ms and the most output tok/s at 512 and 256.
SERVING_MAX_NUM_BATCHED_TOKENS = 512

# The keys a `models:` entry may hold: every engine key but the server's, plus the model's public name(s) and its
# family's reasoning format (the top level's is every entry's default).
PER_MODEL_SERVER_KEYS = frozenset({"served_model_name", "reasoning_parser"})
ENTRY_KEYS = frozenset(engine_keys("model", "cache", "scheduler", "parallel", "limits", "lora")) | PER_MODEL_SERVER_KEYS
SERVER_KEYS = frozenset(f.name for f in fields(ServerConfig)) - PER_MODEL_SERVER_KEYS


@dataclass(frozen=True)
class ModelEntry:
    """One served model: the names clients send as ``model`` (the first is its name in metrics and logs) and the
    engine config it is built from."""

    names: tuple[str, ...]
    config: EngineConfig

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass(frozen=True)
class ServeConfig:
    """The server's settings (``config.server``, with every model's defaults in ``config``'s other sections) and
    the models it starts with."""

    config: EngineConfig
    models: tuple[ModelEntry, ...]

    @property
    def server(self) -> ServerConfig:
        return self.config.server


def entry_of(config: EngineConfig) -> ModelEntry:
    """A single-model config as a model entry: its served name(s), else the model's path or alias."""
    names = config.server.served_names or (config.model.model or DEFAULT_MODEL,)
    return ModelEntry(names, config)


def parse_entry(raw: Any, defaults: EngineConfig, where: str = "model entry") -> ModelEntry:
    """One ``models:`` entry (or an admin request's body) over ``defaults``; errors name ``where`` and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of engine keys, got {type(raw).__name__}")
    own = {str(k).replace("-", "_"): v for k, v in raw.items()}
    if own.get("max_num_batched_tokens", 0) is None:  # null: the server's default, as at the top level
        del own["max_num_batched_tokens"]
    for key in own:
        if key in SERVER_KEYS:
            raise ConfigError(f"{where}: {key!r} is a server setting; give it at the top level, not per model")
        if key not in ENTRY_KEYS:
            raise ConfigError(f"{where}: {unknown_key_error(key, ENTRY_KEYS)}")
    if "model" not in own:
        raise ConfigError(f"{where}: 'model' is required (a model directory, a .gguf file or {DEFAULT_MODEL!r})")
    base = {k: v for k, v in defaults.to_flat().items() if k not in ("model", "served_model_name")}
    try:
        config = EngineConfig.from_flat({**base, **own})
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    return entry_of(config)


def load_serve_config(path: str | Path | None = None, **overrides: Any) -> ServeConfig:
    """The file's models (or the one model of a flat config) with the command line's options; every bad key or
    value is a ConfigError naming it (and the entry, for a key of ``models:``)."""
    values = load_yaml(path) if path is not None else {}
    values = with_serving_budget(values, overrides)
    if "models" not in values:  # a models: key left empty is a list to refuse below, not the default model
        config = merge_config(values, **overrides)
        return ServeConfig(config, (entry_of(config),))
    raw_models = values.pop("models")
    for key in ("model", "served_model_name"):
        if values.get(key) is not None or overrides.get(key) is not None:
            raise ConfigError(f"{key!r} cannot be given beside a models: list; give it in each entry of models:")
    if not isinstance(raw_models, list) or not raw_models:
        raise ConfigError(
            f"models must be a non-empty list of model entries (each a mapping of engine keys), got {raw_models!r:.80}"
        )
    defaults = merge_config(values, **overrides)
    if defaults.parallel.distributed_coordinator is not None and len(raw_models) > 1:
        raise ConfigError("distributed_coordinator: a multi-process server (jax.distributed) serves one model")
    entries = tuple(parse_entry(raw, defaults, f"models[{i}]") for i, raw in enumerate(raw_models))
    check_unique_names(entries)
    return ServeConfig(defaults, entries)


def with_serving_budget(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The file's ``values`` with ``SERVING_MAX_NUM_BATCHED_TOKENS`` where neither they nor the command line's
    ``overrides`` set max_num_batched_tokens (a null is unset)."""
    key = "max_num_batched_tokens"
    given = [v for k, v in (*values.items(), *overrides.items()) if str(k).replace("-", "_") == key]
    if any(v is not None for v in given):
        return values
    return {**{k: v for k, v in values.items() if str(k).replace("-", "_") != key}, key: SERVING_MAX_NUM_BATCHED_TOKENS}


def check_unique_names(entries: tuple[ModelEntry, ...]) -> None:
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        for name in entry.names:
            if name in seen:
                raise ConfigError(
                    f"models[{i}]: served_model_name {name!r} is already the name of models[{seen[name]}]; "
                    "every served name must be unique"
                )
            seen[name] = i

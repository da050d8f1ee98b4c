"""A job's ``sweep:`` section: lists of values for any keys, run as their product, one subfolder per point.

Engine keys (``model``, ``tensor_parallel_size`` ...) vary slowest, so consecutive points share an engine for as long
as they can and it is rebuilt only when an engine key changes.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jllm.config import ConfigError

if TYPE_CHECKING:
    from jllm.run_spec import RunSpec

KeyPath = tuple[str, ...]


@dataclass(frozen=True)
class SweepPoint:
    values: dict[KeyPath, Any] = field(default_factory=dict)  # key path -> this point's value
    origins: dict[KeyPath, str] = field(default_factory=dict)  # key path -> where its list was written
    name: str = ""  # the subfolder of output_dir ("" without a sweep)

    def place(self, spec: RunSpec) -> RunSpec:
        """The run with its output in this point's subfolder."""
        output_dir = spec.output_dir / self.name
        return dataclasses.replace(
            spec, output_dir=output_dir, resolved={**spec.resolved, "output_dir": str(output_dir)}
        )


def expand_sweep(sweep: Any, resolve: Callable[[str], KeyPath], origins: dict[KeyPath, str]) -> list[SweepPoint]:
    """The product of the sweep's lists (one point, empty, without a sweep). ``resolve`` turns a written key into
    its path, failing on a key that does not exist; ``origins`` says where each sweep key was written."""
    if sweep is None:
        return [SweepPoint()]
    if not isinstance(sweep, dict) or not sweep:
        raise ConfigError(f"sweep must be a mapping of keys to lists of values, got {sweep!r}", key="sweep")
    axes: dict[KeyPath, list[Any]] = {}
    where: dict[KeyPath, str] = {}
    for written, values in sweep.items():
        sweep_key = f"sweep.{written}"
        try:
            path = resolve(str(written))
        except ConfigError as e:
            raise ConfigError(f"{sweep_key}: {e}", key=sweep_key) from e
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{sweep_key} must be a non-empty list of values, got {values!r}", key=sweep_key)
        if path in axes:
            raise ConfigError(f"{sweep_key} sweeps {'.'.join(path)} a second time", key=sweep_key)
        axes[path] = values
        where[path] = origins.get(("sweep", str(written).replace("-", "_")), "sweep")
    order = sorted(axes, key=lambda p: len(p) > 1)  # engine keys (top level, one part) first: they vary slowest
    points = []
    for i, combo in enumerate(itertools.product(*(axes[p] for p in order))):
        values = dict(zip(order, combo, strict=True))
        name = f"{i:03d}-" + ",".join(f"{p[-1]}={_label(v)}" for p, v in values.items())
        points.append(SweepPoint(values, where, name))
    return points


def _label(value: Any) -> str:
    """A value as part of a folder name: path separators and odd characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", str(value))[:40]

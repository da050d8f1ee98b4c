"""Python bytecode for jllm's imports kept in jllm's cache where the environment keeps none.

An image whose packages were installed without ``.pyc`` files, and whose environment forbids writing them
(``PYTHONDONTWRITEBYTECODE``) or whose ``site-packages`` is read-only, compiles JAX, Flax and NumPy from source in
every process: importing ``jllm.llm`` took 3.1-3.3 s that way on the 2-core CPU host against 0.95-1.0 s with the
bytecode present (2026-12-05), and a warm start's import on the H200 host was 3.6-3.9 s. There, and only there, the
bytecode goes to ``$JLLM_CACHE/pycache`` (Python's ``sys.pycache_prefix``: nothing is written beside the sources), so
the second start reads it. ``JLLM_BYTECODE_CACHE=0`` turns this off.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from jllm.model_source import cache_dir

PROBE_MODULE = "jax"  # the largest import: where its bytecode is, so is the rest of site-packages'


def prefix_needed(source: str, dont_write_bytecode: bool) -> bool:
    """Whether a module at ``source`` compiles from source in every process: no ``.pyc`` beside it, and Python may
    not write one there (``dont_write_bytecode``, or a directory it cannot write)."""
    cached = Path(importlib.util.cache_from_source(source))
    if cached.exists():
        return False
    writable_dir = cached.parent if cached.parent.exists() else cached.parent.parent
    return dont_write_bytecode or not os.access(writable_dir, os.W_OK)


def enable(probe_module: str = PROBE_MODULE) -> Path | None:
    """Points Python's bytecode cache at ``$JLLM_CACHE/pycache`` where ``probe_module``'s bytecode is neither
    present nor writable beside its source; returns that directory, or None where nothing changed (an existing
    prefix is kept, and the opt-out honoured)."""
    if os.environ.get("JLLM_BYTECODE_CACHE", "1") == "0" or sys.pycache_prefix is not None:
        return None
    spec = importlib.util.find_spec(probe_module)
    if spec is None or not (spec.origin or "").endswith(".py"):
        return None
    if not prefix_needed(spec.origin, sys.dont_write_bytecode):
        return None
    directory = cache_dir() / "pycache"
    sys.pycache_prefix = str(directory)
    sys.dont_write_bytecode = False  # written under the prefix alone, never beside the sources
    return directory

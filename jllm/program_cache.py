"""Compiled step programs kept on disk, so a warm start skips tracing and lowering, not only XLA's compile.

JAX's persistent compilation cache is keyed by the lowered program, so every start still traces each bucket's forward
and sampler programs (the larger part of a warm start: 11.5 of 21.9 s for the default model on a 2-core CPU). Here a
program is keyed by what its tracing depends on instead: the program's kind, input layout and sampler variant, the
model's arguments, the avals and shardings of the parameters and pool, the devices, the compiler options, the JAX
version, and a hash of jllm's and the kernels' source. Any change to those gives a new key, so a stale program is
never loaded; an unreadable entry is recompiled and overwritten.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import jax
from jax.experimental.serialize_executable import deserialize_and_load, serialize

logger = logging.getLogger(__name__)

_SOURCE_ROOTS = ("jllm", "pallas_kernels")


def source_hash() -> str:
    """sha256 of every Python file of jllm and pallas_kernels, in path order: a code change invalidates the cache."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in _SOURCE_ROOTS:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprint(*parts: Any) -> str:
    """The cache's namespace for one engine: its ``parts`` (whose ``repr``s must be deterministic) plus the JAX
    version, the devices and the source hash."""
    devices = [(d.platform, d.device_kind, d.id) for d in jax.devices()]
    text = repr((jax.__version__, devices, source_hash(), *parts))
    return hashlib.sha256(text.encode()).hexdigest()


class ProgramCache:
    """Serialized ``jax.stages.Compiled`` programs under ``directory``, one file per key."""

    def __init__(self, directory: Path, namespace: str) -> None:
        self.directory = directory
        self.namespace = namespace

    def _path(self, key: Any) -> Path:
        return self.directory / (hashlib.sha256(repr((self.namespace, key)).encode()).hexdigest() + ".bin")

    def load(self, key: Any) -> jax.stages.Compiled | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            payload, in_tree, out_tree = pickle.loads(path.read_bytes())
            return deserialize_and_load(payload, in_tree, out_tree)
        except Exception as e:  # a torn or foreign file: compile again and overwrite it
            logger.warning(
                "compiled program %s unreadable (%s: %s); compiling it again", path.name, type(e).__name__, e
            )
            return None

    def store(self, key: Any, compiled: jax.stages.Compiled) -> None:
        path = self._path(key)
        try:
            data = pickle.dumps(serialize(compiled))
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic: a reader sees the whole file or none
        except Exception as e:  # a full disk or an unserializable program costs the next start a compile, no more
            logger.warning("could not save compiled program %s (%s: %s)", path.name, type(e).__name__, e)

"""jllm's cache of compiled step programs, in front of JAX's persistent compilation cache: a warm start loads each
step program's serialized executable without tracing or lowering it. JAX's cache needs the lowered module to form
its key, so a warm start still traced and lowered all 52 programs of the default model (~17 s of a ~29 s start on
this CPU); here the key is computed from what the program is made of, before any tracing.
The encoder's programs (``jllm.pooling``) come through it as the step programs do; the loader's dummy-weight programs
too (``load_or_compile``), keyed without the engine's settings: each is described whole by its statics.

A wrong hit must be impossible by construction, so the key is the full text of everything a traced program is a
function of, and an entry keeps that text (its file name is its SHA-256; a different text read back is a miss):
- the program: the function's name, every static it closes over (graph definitions, input layouts, shardings with
  their device ids, the sampler variant) and every argument's shape, dtype, weak type, layout and sharding, the jit
  options and the compiler options (``describe_program``);
- the start (``Context``): the source of ``jllm/`` and ``pallas_kernels/`` (a hash of every file), every installed
  distribution's name and version, Python, JAX's configuration values, the environment variables JAX, XLA and the
  GPU libraries read, the platform, its version and every device (id, kind, process), and the engine's settings
  (the model's config.json, its ``ModelArgs``, every engine key but the server's).
A text that names an object by its address ("at 0x..."), which another process may reuse for something else, is
never cached. The source is read from disk: code patched in memory (a test's monkeypatch of a traced function) is
not in the key, so an engine built over such a patch needs ``executable_cache: false``. Entries are written whole
(a temporary file renamed over the entry); an unreadable or corrupt one is logged once at WARNING and its program
traced and compiled as before, then written again.

Off (``open_cache`` gives None) without JAX's cache, with ``executable_cache: false``, with a remote cache
directory, and under ``jax.distributed`` (more than one process): there each process loads programs that span other
processes' devices, which JAX's own cache coordinates and a per-process file cannot. Off on a CPU unless
``executable_cache: true``: an XLA:CPU program compiled in a process that already held another engine's programs was
stored without some of its kernels (it ran where compiled, but loaded, even into a fresh process, it failed with
"Function concatenate_bitcast_fusion not found"; 2026-12-03, jax 0.11.2, tests/test_multi_model.py's reload). A
process that compiles its one engine's step programs first (a fresh ``jllm serve`` or ``LLM`` of one model) stores
whole programs, which is where the tests and ``scripts/profile_startup.py --set executable_cache=true`` turn it
on. Like JAX's cache, an entry is unpickled on load: the directory must be one only this user writes.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import pickle
import platform
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import serialize_executable

logger = logging.getLogger(__name__)

FORMAT = 1  # the entry's layout; bumped when it changes
SUBDIRECTORY = "jllm-executables"
MANIFESTS = "manifests"  # under SUBDIRECTORY: per engine, the entries its last start read or stored
SOURCE_PACKAGES = ("jllm", "pallas_kernels")
# Environment variables read by JAX, XLA, the GPU/TPU runtimes and Triton, which can change a compiled program.
ENV_PREFIXES = ("JAX_", "XLA_", "TF_", "CUDA", "NVIDIA_", "NCCL_", "TRITON_", "TPU_", "LIBTPU", "PJRT_", "ROCM", "HIP_")
ENV_NAMES = ("LD_LIBRARY_PATH",)
ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclasses.dataclass(frozen=True)
class ProgramCall:
    """A program as jit will trace it: ``jax.jit(fn on treedef's leaves, donate_argnums=donate)(*args)``, or with
    ``treedef`` None, ``jax.jit(fn, donate_argnums=donate)(*args)``; and the options XLA compiles it with."""

    fn: functools.partial  # the pure function with its statics bound
    treedef: Any  # the state's tree, whose leaves come first in ``args``; None: no state
    donate: tuple[int, ...]
    args: tuple[Any, ...]
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # ``Lowered.compile``'s compiler options


@dataclasses.dataclass(frozen=True)
class Entry:
    """What a file holds: the key's full text, JAX's serialized executable and its trees, and the output avals (a
    forward's tell the logits programs their input shapes before the executable is loaded)."""

    key: str
    executable: bytes
    in_tree: Any
    out_tree: Any
    out_avals: tuple[tuple[tuple[int, ...], np.dtype], ...]  # (shape, dtype) per output leaf
    device_ids: tuple[int, ...]  # the executable's devices, in its order
    format: int = FORMAT


def describe_program(call: ProgramCall) -> str:
    """The program's part of the key: its function, statics, arguments and options, as text."""
    fn = call.fn
    lines = [
        f"function: {fn.func.__module__}.{fn.func.__qualname__}",
        *(f"static {i}: {_describe(a)}" for i, a in enumerate(fn.args)),
        *(f"static {k}: {_describe(v)}" for k, v in sorted(fn.keywords.items())),
        f"state tree: {call.treedef}",
        f"donate: {call.donate}",
        f"compiler options: {sorted(call.options.items())}",
        f"argument tree: {jax.tree.structure(call.args)}",
        *(f"argument {i}: {_describe_leaf(x)}" for i, x in enumerate(jax.tree.leaves(call.args))),
    ]
    return "\n".join(lines)


def _describe(value: Any) -> str:
    """A static's text: its repr, numpy arrays in full, shardings with their device ids."""
    if isinstance(value, jax.sharding.Sharding):
        return _describe_sharding(value)
    with np.printoptions(threshold=sys.maxsize):
        return repr(value)


def _describe_sharding(sharding: jax.sharding.Sharding | None) -> str:
    if sharding is None:  # a ShapeDtypeStruct's, unset
        return "sharding=None"
    mesh = getattr(sharding, "mesh", None)
    ids = mesh.device_ids.tolist() if mesh is not None else sorted(d.id for d in sharding.device_set)
    return f"{sharding!r} devices={ids}"


def _describe_leaf(x: Any) -> str:
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
        layout = getattr(x.format, "layout", x.format)
        return f"{x.dtype}{list(x.shape)} weak={x.weak_type} layout={layout} {_describe_sharding(x.sharding)}"
    return f"{type(x).__name__} {_describe(x)}"


ROOT = Path(__file__).resolve().parents[1]


def source_digest(root: Path = ROOT) -> str:
    """SHA-256 over every file of jllm's packages under ``root`` (path and bytes): editing the engine never loads a
    stale program."""
    digest = hashlib.sha256()
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(f"{path.relative_to(root)}\0{path.stat().st_size}\0".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def _distributions() -> list[str]:
    """Every installed distribution as ``name-version`` (the ``.dist-info`` folders' names: no metadata read)."""
    found = set()
    for entry in sys.path:
        if os.path.isdir(entry):
            found.update(n for n in os.listdir(entry) if n.endswith((".dist-info", ".egg-info", ".egg-link")))
    return sorted(found)


def _devices() -> list[str]:
    backend = jax.devices()[0].client
    lines = [f"platform: {backend.platform} {backend.platform_version}"]
    lines += [f"processes: {jax.process_count()}, this one {jax.process_index()}"]
    lines += [f"device {d.id}: {d.platform} {d.device_kind} process {d.process_index} {d}" for d in jax.devices()]
    return lines


def context_text(settings: Mapping[str, Any]) -> str:
    """The start's part of the key: code, libraries, JAX's configuration, environment, devices and ``settings``."""
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}
    lines = [
        f"format: {FORMAT}",
        f"source: {source_digest()}",
        f"python: {sys.version} {platform.machine()} {platform.system()}",
        f"jax: {jax.__version__}",
        f"distributions: {_distributions()}",
        f"jax config: {sorted(jax.config.values.items())}",
        f"environment: {sorted(env.items())}",
        *_devices(),
        *(f"setting {k}: {_describe(v)}" for k, v in sorted(settings.items())),
    ]
    return "\n".join(lines)


class ExecutableCache:
    """One file per program under ``directory``; every program's key starts with the start's ``context``."""

    def __init__(self, directory: Path, context: str, prefetch: Prefetch | None = None) -> None:
        self.directory = directory
        self.context = context
        self.prefetched = 0  # programs whose executables the prefetch had loaded
        self._prefetch = prefetch
        self._prefetched: dict[str, jax.stages.Compiled | None] = {}  # by key: taken from the prefetch, not yet loaded
        self._used: list[str] = []  # entry file names read or stored: the next start's manifest
        self._store_failed = False
        self._lock = threading.Lock()

    def key(self, program: str) -> str | None:
        """The full key of a program described by ``describe_program``; None when it cannot be cached."""
        text = f"{self.context}\n{program}"
        return None if ADDRESS.search(text) else text

    def path(self, key: str) -> Path:
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()}.jllm"

    def read(self, key: str) -> Entry | None:
        """The entry stored under ``key``, or None (none, or unreadable: logged at WARNING). One the prefetch loaded
        is taken from it, its executable kept for ``load``."""
        path = self.path(key)
        taken = None if self._prefetch is None else self._prefetch.take(path.name)
        entry, compiled = taken if taken is not None else (read_entry(path), None)
        if entry is None or entry.key != key:  # another key of the same hash: a miss
            return None
        if taken is not None:  # loaded, or failed to (logged): not loaded twice
            self._prefetched[key] = compiled
        self._used.append(path.name)
        return entry

    def load(self, entry: Entry) -> jax.stages.Compiled | None:
        """The entry's executable loaded onto its devices (by the prefetch, or now), or None (logged at WARNING) if
        it cannot be."""
        if entry.key not in self._prefetched:
            return load_entry(entry, self.path(entry.key))
        compiled = self._prefetched.pop(entry.key)
        with self._lock:
            self.prefetched += compiled is not None
        return compiled

    def write_manifest(self) -> None:
        """Records the entries this start read or stored, for the next start's prefetch (a failure is logged once at
        WARNING, as a store's)."""
        if self._prefetch is not None:
            self._write(self._prefetch.manifest, "\n".join(sorted(set(self._used))).encode())

    def store(self, key: str, compiled: jax.stages.Compiled) -> None:
        """Writes ``compiled`` under ``key``, whole or not at all; a failure is logged once at WARNING."""
        try:
            executable, in_tree, out_tree = serialize_executable.serialize(compiled)
            out_avals = tuple((tuple(o.shape), o.dtype) for o in jax.tree.leaves(compiled.out_info))
            # The devices it runs on, in its order: what JAX's own cache hands back to the loader too.
            device_ids = tuple(d.id for d in compiled._executable._unloaded_executable.device_list)
            data = pickle.dumps(
                Entry(key, executable, in_tree, out_tree, out_avals, device_ids), pickle.HIGHEST_PROTOCOL
            )
        except Exception as e:  # an argument tree with a static that does not pickle too
            self._warn_store(e)
            return
        if self._write(self.path(key), data):
            self._used.append(self.path(key).name)

    def _write(self, path: Path, data: bytes) -> bool:
        try:
            _write_atomically(path, data)
        except Exception as e:
            self._warn_store(e)
            return False
        return True

    def _warn_store(self, error: Exception) -> None:
        with self._lock:
            warn, self._store_failed = not self._store_failed, True
        if warn:
            logger.warning(
                "executable cache: cannot store programs in %s (%s: %s)", self.directory, type(error).__name__, error
            )


def read_entry(path: Path) -> Entry | None:
    """The entry in ``path``, or None (none, or unreadable: logged at WARNING)."""
    try:
        with path.open("rb") as f:
            entry = pickle.load(f)
        if not isinstance(entry, Entry) or entry.format != FORMAT:
            raise ValueError(f"not a format-{FORMAT} entry")
    except FileNotFoundError:
        return None
    except Exception as e:  # a cut or corrupt file, a class renamed since: traced and compiled again
        logger.warning(
            "executable cache entry %s is unreadable (%s: %s); compiling it again", path, type(e).__name__, e
        )
        return None
    return entry


def load_entry(entry: Entry, path: Path) -> jax.stages.Compiled | None:
    """``entry``'s executable (read from ``path``) loaded onto its devices, or None (logged at WARNING)."""
    try:
        by_id = {d.id: d for d in jax.devices()}
        devices = [by_id[i] for i in entry.device_ids]
        return serialize_executable.deserialize_and_load(
            entry.executable, entry.in_tree, entry.out_tree, devices[0].client, devices
        )
    except Exception as e:
        logger.warning("executable cache entry %s did not load (%s: %s); compiling it again", path, type(e).__name__, e)
        return None


class Prefetch:
    """The entries an earlier start of the same engine read or stored (its manifest), read and loaded on threads
    while this start loads its weights: a warm Llama-3-8B start on an H100 spent 2.3 s on dummy weights, then 2.7 s
    loading its 60 programs (2026-12-05). The warm-up takes an entry only where its full key is the program's
    (``ExecutableCache.read``), so a stale manifest costs loads, never a wrong program."""

    def __init__(self, directory: Path, name: str, pool: Executor) -> None:
        self.manifest = directory / MANIFESTS / f"{name}.txt"
        try:
            names = self.manifest.read_text().split()
        except OSError:
            names = []
        self._pending = {n: pool.submit(self._read_and_load, directory / n) for n in names}

    @staticmethod
    def _read_and_load(path: Path) -> tuple[Entry | None, jax.stages.Compiled | None]:
        entry = read_entry(path)
        return entry, None if entry is None else load_entry(entry, path)

    def take(self, name: str) -> tuple[Entry | None, jax.stages.Compiled | None] | None:
        """The entry file ``name`` and its executable, once loaded; None if the manifest did not list it."""
        future = self._pending.pop(name, None)
        return None if future is None else future.result()


def load_or_compile(cache: ExecutableCache | None, call: ProgramCall, out_sharding: Any = None) -> jax.stages.Compiled:
    """A stateless program (``call.treedef`` None; its output on ``out_sharding``) from
    ``cache``, or else traced and compiled here (through JAX's cache) and stored in ``cache``: the loader's
    dummy-weight initializers, whose tracing a warm start would otherwise pay for each of them."""
    program = f"{describe_program(call)}\nout sharding: {_describe(out_sharding)}"
    key = None if cache is None else cache.key(program)
    entry = None if key is None else cache.read(key)
    compiled = None if entry is None else cache.load(entry)
    if compiled is None:
        jitted = jax.jit(call.fn, donate_argnums=call.donate, out_shardings=out_sharding)
        compiled = jitted.lower(*call.args).compile(call.options)
        if key is not None:
            cache.store(key, compiled)
    return compiled


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def cache_directory(enabled: bool | None) -> Path | None:
    """Where the executable cache keeps its entries, or None where it is off (the module's docstring): ``enabled``
    None means on except on a CPU."""
    directory = jax.config.jax_compilation_cache_dir
    if enabled is None:
        enabled = jax.devices()[0].platform != "cpu"
    if not (enabled and jax.config.jax_enable_compilation_cache and directory) or jax.process_count() > 1:
        return None
    if "://" in str(directory):
        logger.info("executable cache off: the compilation cache %s is not a local directory", directory)
        return None
    return Path(directory) / SUBDIRECTORY


def start_prefetch(enabled: bool | None, settings: Mapping[str, Any], pool: Executor) -> Prefetch | None:
    """The prefetch of the entries the last start with the same ``settings`` (and code, libraries, devices) used,
    started on ``pool``; None where the cache is off."""
    directory = cache_directory(enabled)
    if directory is None:
        return None
    return Prefetch(directory, hashlib.sha256(context_text(settings).encode()).hexdigest(), pool)


def open_cache(
    enabled: bool | None, settings: Callable[[], Mapping[str, Any]], prefetch: Prefetch | None = None
) -> ExecutableCache | None:
    """The executable cache beside JAX's compilation cache, or None where it is off (``cache_directory``).
    ``settings``: the engine's, called only when the cache is on; ``prefetch``: entries being loaded already."""
    directory = cache_directory(enabled)
    if directory is None:
        return None
    return ExecutableCache(directory, context_text(settings()), prefetch)

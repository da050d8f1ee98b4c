"""jllm's bytecode cache: where packages come without ``.pyc`` files and Python may not write them, a fresh process
writes them under ``$JLLM_CACHE/pycache`` and the next one reads them; elsewhere nothing changes."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jllm import bytecode_cache
from jllm.bytecode_cache import prefix_needed

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_prefix_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """``prefix_needed`` runs where no prefix is set (``enable`` keeps one), so ``cache_from_source`` names the file
    beside the source; tests/conftest.py may have set one for the suite's own bytecode."""
    monkeypatch.setattr(sys, "pycache_prefix", None)


def _probe_package(root: Path) -> Path:
    """A package with no bytecode beside its source, standing for an image's ``site-packages``."""
    package = root / "site" / "probe_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 42\n")
    return package / "__init__.py"


def _run(root: Path, flags: list[str], **env: str) -> subprocess.CompletedProcess:
    """A fresh interpreter that imports jllm first (as every entry point does), then the probe package."""
    code = (
        "import sys, jllm.bytecode_cache as b; print(b.enable('probe_pkg')); import probe_pkg; "
        "print(probe_pkg.VALUE, sys.pycache_prefix)"
    )
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPYCACHEPREFIX", "JLLM_BYTECODE_CACHE")}
    environ.update(PYTHONPATH=f"{REPO}{os.pathsep}{root / 'site'}", JLLM_CACHE=str(root / "cache"), **env)
    return subprocess.run([sys.executable, *flags, "-c", code], env=environ, capture_output=True, text=True, check=True)


def test_bytecode_present_beside_the_source_needs_no_prefix(tmp_path: Path) -> None:
    source = _probe_package(tmp_path)
    cached = Path(importlib.util.cache_from_source(str(source)))
    cached.parent.mkdir()
    cached.write_bytes(b"")
    assert not prefix_needed(str(source), dont_write_bytecode=True)


def test_missing_bytecode_python_may_write_needs_no_prefix(tmp_path: Path) -> None:
    assert not prefix_needed(str(_probe_package(tmp_path)), dont_write_bytecode=False)


def test_missing_bytecode_that_python_may_not_write_needs_the_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _probe_package(tmp_path)
    assert prefix_needed(str(source), dont_write_bytecode=True)
    monkeypatch.setattr(bytecode_cache.os, "access", lambda path, mode: Path(path) != source.parent)
    assert prefix_needed(str(source), dont_write_bytecode=False)  # a read-only site-packages


def test_second_process_reads_the_bytecode_the_first_wrote_under_the_cache(tmp_path: Path) -> None:
    source = _probe_package(tmp_path)
    first = _run(tmp_path, ["-B"])  # -B: PYTHONDONTWRITEBYTECODE
    prefix = tmp_path / "cache" / "pycache"
    assert first.stdout.split() == [str(prefix), "42", str(prefix)]
    written = (
        prefix / source.parent.relative_to(source.anchor) / Path(importlib.util.cache_from_source(str(source))).name
    )
    assert written.is_file()
    assert not (source.parent / "__pycache__").exists()  # nothing beside the source
    second = _run(tmp_path, ["-B", "-v"])  # -v names the file each module's code object is read from
    assert f"code object from '{written}'" in second.stderr
    assert second.stdout.split()[1] == "42"


def test_opt_out_and_an_existing_prefix_are_kept(tmp_path: Path) -> None:
    _probe_package(tmp_path)
    assert _run(tmp_path, ["-B"], JLLM_BYTECODE_CACHE="0").stdout.split() == ["None", "42", "None"]
    elsewhere = str(tmp_path / "elsewhere")
    assert _run(tmp_path, ["-B"], PYTHONPYCACHEPREFIX=elsewhere).stdout.split() == ["None", "42", elsewhere]
    assert not (tmp_path / "cache" / "pycache").exists()

"""Shared fixtures, and the threads of a pytest-xdist worker."""

import os
from pathlib import Path

import pytest


def _one_thread_per_worker() -> None:
    """With as many xdist workers as cores, each worker's torch and XLA:CPU run on one thread: two workers each
    spreading every matmul over both cores only contend for them (a 4-file slice on CI's 2-core machine: 215 -> 197 s,
    2026-12-06). Set before torch or JAX is imported (conftest loads first); subprocesses inherit it."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2 or workers < (os.cpu_count() or 1):
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()


_one_thread_per_worker()


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled default model (SmolLM2-135M-Instruct), converted once per test run into a temporary cache. Under
    pytest-xdist the workers share that cache (their temporary directories' parent): the conversion (~12 s, 517 MB)
    holds a file lock and renames its directory into place when done, so the second worker waits and reuses it."""
    from jllm.model_source import resolve_model

    root = tmp_path_factory.getbasetemp()
    cache = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "jllm_cache"
    cache.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JLLM_CACHE", str(cache))
        return resolve_model(None)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (tests/model_utils.py's TINY_CONFIG) with a character-level tokenizer and chat template."""
    from model_utils import TINY_CONFIG, save_char_tokenizer, save_tiny_checkpoint

    out = save_tiny_checkpoint("LlamaForCausalLM", TINY_CONFIG, tmp_path_factory.mktemp("tiny_char") / "tiny")
    save_char_tokenizer(out, TINY_CONFIG["vocab_size"])
    return out

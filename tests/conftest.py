"""Shared fixtures, and the threads of a pytest-xdist worker."""

import os
import sys
from pathlib import Path
from typing import Any

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


def _keep_bytecode_in_the_jllm_cache() -> None:
    """pytest keeps each test module's assert-rewritten bytecode, and Python jllm's, beside the sources, unless
    bytecode may not be written (``PYTHONDONTWRITEBYTECODE``, as on the 2-core machine the suite is timed on): there
    every xdist worker rewrote and compiled the ~230 modules again at each run, 6 of its 19 CPU seconds of collection
    (2026-12-07). As ``jllm.bytecode_cache`` does for an image's site-packages, it goes to ``$JLLM_CACHE/pycache``
    instead (nothing beside the sources; ``JLLM_BYTECODE_CACHE=0`` turns it off). Test modules imported after this,
    not the plugins pytest loaded before it."""
    from jllm.model_source import cache_dir  # importing jllm first: its own bytecode_cache.enable() decides first

    if sys.dont_write_bytecode and sys.pycache_prefix is None and os.environ.get("JLLM_BYTECODE_CACHE", "1") != "0":
        sys.pycache_prefix = str(cache_dir() / "pycache")
        sys.dont_write_bytecode = False


_keep_bytecode_in_the_jllm_cache()


@pytest.fixture(scope="session", autouse=True)
def compilation_cache() -> None:
    """JAX's persistent compilation cache for every test, as an engine's start turns it on (under ``$JLLM_CACHE/xla``,
    every program however quick): before, only the tests after a worker's first engine used it, so a kernel's or
    the sampler's programs compiled again at every run of the fast tier, 40% of its test time (83 of 204 CPU s,
    2026-12-07), or not, depending on which worker ran what. A first run pays for writing the entries."""
    from jllm.build import enable_compilation_cache

    enable_compilation_cache()


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


@pytest.fixture
def h200_lowering(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Pallas lowers for an H200 here, on the CPU (jit(...).trace(...).lower(lowering_platforms=("cuda",))); the
    Triton IR of each kernel it lowers is appended to the list returned."""
    from jax._src.pallas.triton import gpu_info  # private: the GPU Pallas asks for, and the IR it makes
    from jax._src.pallas.triton import pallas_call_registration as triton_call

    monkeypatch.setattr(
        triton_call.gpu_info_lib, "get_gpu_info", lambda: gpu_info.get_gpu_info_from_version(gpu_info.GpuVersion.H200)
    )
    modules: list[str] = []
    lower = triton_call.lowering.lower_jaxpr_to_triton_module

    def keep(*args: Any, **kw: Any) -> Any:
        result = lower(*args, **kw)
        modules.append(result.module.operation.get_asm())
        return result

    monkeypatch.setattr(triton_call.lowering, "lower_jaxpr_to_triton_module", keep)
    return modules

"""jllm's executable cache (``jllm.executable_cache``): a second start in a fresh process loads every step program
from it, traces none and samples what the first start did; a changed setting, source file or argument misses; a
corrupt entry is compiled again with a warning; store and read round-trip a program that computes the same."""

from __future__ import annotations

import dataclasses
import functools
import logging
import pickle
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec
from model_utils import run_worker
from test_startup import ARGS, SAMPLING, TINY

from jllm import executable_cache
from jllm.executable_cache import ExecutableCache, ProgramCall, describe_program, open_cache, source_digest

PROGRAMS = 14  # ARGS' buckets: tests/test_startup.py


@pytest.fixture(scope="module")
def xla_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xla")


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rng = np.random.default_rng(int(time.time()))
    return [rng.integers(3, 512, size=n).tolist() for n in (3, 9, 14)]


def start(xla_dir: Path, prompts: list[list[int]], **overrides: object) -> dict:
    """An engine started in a fresh process on ``xla_dir`` (JAX's cache, and the executable cache inside it); its
    warm-up figures, warnings and outputs (tests/executable_cache_worker.py)."""
    args = {**ARGS, "executable_cache": True, **overrides}  # on the CPU, for a fresh process's one engine
    case = {"model": TINY, "engine_args": args, "prompts": prompts, "sampling": SAMPLING}
    (result,) = run_worker("executable_cache_worker.py", [case], JAX_COMPILATION_CACHE_DIR=str(xla_dir))
    return result


@pytest.fixture(scope="module")
def cold(xla_dir: Path, prompts: list[list[int]]) -> dict:
    return start(xla_dir, prompts)


def entries(xla_dir: Path, module: str = "jllm.step_programs") -> list[str]:
    """The entries of ``module``'s programs: the step programs, or the loader's dummy-weight initializers."""
    paths = sorted((xla_dir / executable_cache.SUBDIRECTORY).glob("*.jllm"))
    return [str(p) for p in paths if f"\nfunction: {module}." in pickle.loads(p.read_bytes()).key]


@pytest.fixture(scope="module")
def warm(xla_dir: Path, prompts: list[list[int]], cold: dict) -> dict:
    """The second start, and the entries the first one wrote (other tests add their own)."""
    return start(xla_dir, prompts) | {"entries": entries(xla_dir), "initializers": entries(xla_dir, "jllm.loader")}


@pytest.mark.slow
def test_a_warm_start_loads_every_program_untraced_and_samples_what_the_cold_one_did(xla_dir, cold, warm):
    assert (cold["programs"], cold["loaded"], cold["compiled"], cold["prefetched"]) == (PROGRAMS, 0, PROGRAMS, 0)
    assert (warm["programs"], warm["loaded"], warm["compiled"]) == (PROGRAMS, PROGRAMS, PROGRAMS)
    assert warm["prefetched"] == PROGRAMS  # the cold start's manifest: all loaded beside the weights
    assert warm["cache_hits"] == 0  # nothing lowered, so nothing asked of JAX's cache
    for times in warm["kinds"].values():
        assert times["trace_s"] == times["lower_s"] == times["compile_s"] == 0 < times["load_s"]
        assert times["loaded"] == times["programs"]
    assert len(warm["entries"]) == PROGRAMS and not cold["warnings"] and not warm["warnings"]
    # The dummy weights' programs: every parameter's key, and an initializer per kind (embedding, qkv, o, gate-up,
    # down, LM head, norm scales), loaded by the warm start (tests/test_models.py checks the values)
    assert len(warm["initializers"]) == 8
    # Greedy and seeded random samples with logprobs and prompt logprobs on fresh random prompts: the loaded
    # executables are the compiled ones, so tokens and logprobs match exactly.
    assert warm["outputs"] == cold["outputs"]


@pytest.mark.slow
def test_a_changed_setting_misses_though_the_program_is_the_same(xla_dir, prompts, warm):
    """On a CPU ``auto`` is the reference attention already: the same programs (all 14 read from JAX's cache by
    their HLO), but a setting the key holds changed, so none is loaded from the executable cache."""
    changed = start(xla_dir, prompts, attention_backend="reference")
    assert (changed["programs"], changed["loaded"], changed["cache_hits"]) == (PROGRAMS, 0, PROGRAMS)
    assert changed["prefetched"] == 0  # another engine's manifest: none yet
    assert len(entries(xla_dir)) == 2 * PROGRAMS and changed["outputs"] == warm["outputs"]
    assert entries(xla_dir, "jllm.loader") == warm["initializers"]  # no engine setting in their keys: shared


@pytest.mark.slow
def test_a_corrupt_entry_is_compiled_again_with_one_warning_and_written_again(xla_dir, prompts, warm):
    cut, broken = map(Path, warm["entries"][:2])
    cut.write_bytes(cut.read_bytes()[:100])  # unreadable: a cut file
    entry = pickle.loads(broken.read_bytes())  # readable, but its executable does not load
    broken.write_bytes(pickle.dumps(dataclasses.replace(entry, executable=b"not an executable")))
    result = start(xla_dir, prompts)
    assert result["outputs"] == warm["outputs"]
    assert (result["programs"], result["loaded"], result["compiled"]) == (PROGRAMS, PROGRAMS - 2, PROGRAMS)
    assert result["prefetched"] == PROGRAMS - 2  # the two bad ones failed in the prefetch, warned once each
    assert len(result["warnings"]) == 2
    assert any(str(cut) in w and "unreadable" in w for w in result["warnings"])
    assert any(str(broken) in w and "did not load" in w for w in result["warnings"])
    for path in (cut, broken):  # compiled again and stored whole
        assert pickle.loads(path.read_bytes()).executable != b"not an executable"


@pytest.mark.slow
def test_a_classifiers_warm_start_loads_its_pooling_programs_and_classifies_the_same(tmp_path):
    """Both starts in one fresh process: the first compiles the encoder's 5 buckets (1..16 tokens) and stores them,
    the second's prefetch loads them all from its manifest."""
    from model_utils import TINY_CONFIG
    from test_classify import ENGINE_ARGS, classifier_checkpoint

    args = {**ENGINE_ARGS, "max_model_len": 16, "compile_at_start": True, "executable_cache": True}
    case = {"model": str(classifier_checkpoint(tmp_path, "Llama")), "engine_args": args, "classify": True}
    case["prompts"] = np.random.default_rng().integers(3, TINY_CONFIG["vocab_size"], (3, 5)).tolist()
    cold, warm = run_worker("executable_cache_worker.py", [case, case], JAX_COMPILATION_CACHE_DIR=str(tmp_path))
    assert (cold["programs"], cold["loaded"], cold["compiled"], set(cold["kinds"])) == (5, 0, 5, {"pooling"})
    assert (warm["programs"], warm["loaded"], warm["prefetched"], warm["compiled"]) == (5, 5, 5, 5)
    assert warm["kinds"]["pooling"]["trace_s"] == 0 and not cold["warnings"] and not warm["warnings"]
    assert warm["outputs"] == cold["outputs"]


# ---------------------------------------------------------------- the key and the entries, in this process


def scale(factor: float, x: jax.Array) -> jax.Array:
    return x * factor


def program(factor: float, x: jax.Array) -> ProgramCall:
    return ProgramCall(functools.partial(scale, factor), jax.tree.structure([]), (), ([], x))


def compiled_program(call: ProgramCall) -> jax.stages.Compiled:
    def fn(leaves: list, x: jax.Array) -> jax.Array:
        return call.fn(x)

    return jax.jit(fn, donate_argnums=call.donate).trace(*call.args).lower().compile()


def test_the_key_changes_with_every_argument_property_static_and_option():
    mesh = jax.make_mesh((1,), ("x",))
    x = jnp.zeros((4, 2), jnp.float32)
    variants = [
        describe_program(program(2.0, x)),
        describe_program(program(3.0, x)),  # a static
        describe_program(program(2.0, jnp.zeros((4, 3), jnp.float32))),  # a shape
        describe_program(program(2.0, x.astype(jnp.bfloat16))),  # a dtype
        describe_program(program(2.0, jax.ShapeDtypeStruct((4, 2), jnp.float32, weak_type=True))),
        describe_program(program(2.0, jax.device_put(x, NamedSharding(mesh, PartitionSpec("x"))))),  # sharding
        describe_program(dataclasses.replace(program(2.0, x), donate=(1,))),
        describe_program(dataclasses.replace(program(2.0, x), options={"xla_gpu_enable_triton_gemm": False})),
    ]
    assert len(set(variants)) == len(variants)
    assert describe_program(program(2.0, jnp.ones((4, 2)))) == variants[0]  # values are not part of it
    assert "devices=[" in variants[5]


def test_the_start_context_holds_source_libraries_config_devices_and_settings(monkeypatch):
    text = executable_cache.context_text({"engine": {"dtype": "float32"}})
    for part in ("source: " + source_digest(), f"jax: {jax.__version__}", "jax config: ", "device 0: cpu", "float32"):
        assert part in text
    assert executable_cache.context_text({"engine": {"dtype": "bfloat16"}}) != text
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")
    assert executable_cache.context_text({"engine": {"dtype": "float32"}}) != text


def test_the_source_digest_changes_when_any_file_of_the_packages_changes(tmp_path):
    root = executable_cache.ROOT
    for package in executable_cache.SOURCE_PACKAGES:
        shutil.copytree(root / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_digest(tmp_path) == source_digest(root)
    (tmp_path / "pallas_kernels" / "reference.py").write_text("# edited\n", encoding="utf-8")
    edited = source_digest(tmp_path)
    (tmp_path / "jllm" / "new_module.py").write_text("", encoding="utf-8")
    added = source_digest(tmp_path)
    assert len({source_digest(root), edited, added}) == 3


def test_a_key_that_names_an_object_by_its_address_is_never_cached(tmp_path):
    cache = ExecutableCache(tmp_path, "context")
    x = jnp.zeros(3)
    assert cache.key(describe_program(program(2.0, x))) is not None
    unnamed = ProgramCall(functools.partial(scale, object()), jax.tree.structure([]), (), ([], x))
    assert cache.key(describe_program(unnamed)) is None


def test_a_stored_program_loads_and_computes_the_same_and_a_cut_entry_is_a_miss(tmp_path, caplog):
    # stored, read, loaded and run in a fresh process, JAX's own cache off (see the worker's docstring)
    case = {"cache": str(tmp_path / "cache"), "seed": int(time.time())}
    (result,) = run_worker("executable_roundtrip_worker.py", [case], JAX_ENABLE_COMPILATION_CACHE="false")
    assert result["key_matches"] and result["out_avals"] == [[[4, 2], "float32"]]
    np.testing.assert_array_equal(np.asarray(result["got"]), np.asarray(result["want"]))
    cache, key = ExecutableCache(tmp_path / "cache", "context"), result["key"]
    assert cache.read(key) is not None and cache.read(key + " ") is None  # another key: a miss, without a warning
    cache.path(key).write_bytes(cache.path(key).read_bytes()[:-10])
    with caplog.at_level(logging.WARNING, logger="jllm.executable_cache"):
        assert cache.read(key) is None
    (record,) = caplog.records
    assert str(cache.path(key)) in record.getMessage() and "unreadable" in record.getMessage()
    assert list(cache.directory.iterdir()) == [cache.path(key)]  # no temporary file left behind


def test_the_prefetch_hands_over_only_the_entry_of_the_program_asked_for(tmp_path):
    """The manifest names entry files; an entry is taken only by the key it is stored under (its file name is that
    key's hash and its text that key), so a stale manifest's entries are loaded for nothing, never handed over."""
    case = {"cache": str(tmp_path / "cache"), "seed": int(time.time())}
    (result,) = run_worker("executable_roundtrip_worker.py", [case], JAX_ENABLE_COMPILATION_CACHE="false")
    directory, key = tmp_path / "cache", result["key"]
    with ThreadPoolExecutor(2) as pool:
        first = ExecutableCache(directory, "context", executable_cache.Prefetch(directory, "engine", pool))
        assert first.read(key) is not None  # no manifest yet: read from its file
        first.write_manifest()
        manifest = directory / executable_cache.MANIFESTS / "engine.txt"
        assert manifest.read_text().split() == [first.path(key).name]
        cache = ExecutableCache(directory, "context", executable_cache.Prefetch(directory, "engine", pool))
        assert cache.read(key + " ") is None  # another program: its own file, not in the manifest
        compiled = cache.load(cache.read(key))
    assert (first.prefetched, cache.prefetched) == (0, 1) and compiled is not None
    x = np.asarray(np.random.default_rng(case["seed"]).normal(size=(4, 2)), np.float32)  # the worker's input
    np.testing.assert_allclose(np.asarray(compiled([], x)), np.asarray(result["want"]), rtol=1e-6)


def test_a_failing_store_warns_once(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    cache = ExecutableCache(tmp_path / "file" / "cache", "context")  # under a file: no folder can be made
    call = program(2.0, jnp.zeros(3))
    compiled = compiled_program(call)
    with caplog.at_level(logging.WARNING, logger="jllm.executable_cache"):
        cache.store(cache.key(describe_program(call)), compiled)
        cache.store(cache.key(describe_program(call)) + "2", compiled)
    assert len(caplog.records) == 1 and "cannot store" in caplog.records[0].getMessage()


@pytest.fixture
def jax_cache_dir(tmp_path: Path):
    """JAX's cache folder set to ``tmp_path`` for the test (JAX's own cache, already started, keeps its own)."""
    before = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    yield tmp_path
    jax.config.update("jax_compilation_cache_dir", before)


def test_the_cache_is_off_when_asked_on_a_cpu_by_default_without_jax_s_cache_and_over_processes(
    jax_cache_dir, monkeypatch
):
    settings = dict  # the engine's settings, read only when the cache is on
    cache = open_cache(True, settings)
    assert cache is not None and cache.directory == jax_cache_dir / executable_cache.SUBDIRECTORY
    assert open_cache(False, settings) is None
    assert open_cache(None, settings) is None  # the default is off on a CPU (the module's docstring says why)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert open_cache(True, settings) is None
    monkeypatch.undo()
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        assert open_cache(True, settings) is None
    finally:
        jax.config.update("jax_enable_compilation_cache", True)


def test_an_entry_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "entry.jllm"
    path.write_bytes(b"old")

    def fail(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(executable_cache.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        executable_cache._write_atomically(path, b"new")
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


@pytest.mark.slow
def test_a_tensor_parallel_warm_start_loads_every_program_and_samples_the_same(tmp_path, prompts):
    """TP 2 over 8 fake CPU devices: the programs' shardings and device lists come back as they were stored."""
    args = {**ARGS, "tensor_parallel_size": 2, "executable_cache": True}
    case = {"model": TINY, "engine_args": args, "prompts": prompts, "sampling": SAMPLING}
    env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path), "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    (cold,) = run_worker("executable_cache_worker.py", [case], **env)
    (warm,) = run_worker("executable_cache_worker.py", [case], **env)
    assert (cold["loaded"], warm["loaded"], warm["programs"]) == (0, PROGRAMS, PROGRAMS)
    assert warm["outputs"] == cold["outputs"] and not warm["warnings"]

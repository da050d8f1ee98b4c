"""Start-up: the warm-up compiles (on a thread pool) exactly the programs steps would compile on first use, and they
compute the same; its optional first runs run each bucket's forward once; each phase logs a
line with its figures (``jllm.timing``); ``scripts/profile_startup.py`` reads a cold start, then a warm one whose
every program comes from the persistent compilation cache."""

from __future__ import annotations

import collections
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from model_utils import Records, assert_only_warmup_programs, run_worker
from startup_lazy_worker import request

import jllm.runner
from jllm import SamplingParams
from jllm.llm import LLM
from jllm.runner import COMPILER_OPTIONS, autotune_options, gemm_options
from jllm.timing import CACHE_HIT_EVENT, StageTimes, WarmupReport, log_phase, timed

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "models" / "tiny-llama")
# Buckets of 1, 2, 4 and 8 tokens, row counts 1 and 2: 14 programs, a few seconds of compiling.
ARGS = dict(
    load_format="dummy", dtype="float32", max_model_len=64, num_pages=16, max_num_seqs=2, max_num_batched_tokens=8
)
PHASES = {
    "model found", "weights loaded", "tokenizer loaded", "KV pool allocated", "warm-up", "worker ready", "heap frozen"
}  # fmt: skip


@pytest.fixture(scope="module")
def warmed() -> tuple[LLM, list[logging.LogRecord]]:
    """An engine warmed up at start-up, every program traced and compiled (the executable cache is off on a CPU:
    tests/test_executable_cache.py turns it on), and the log records of its start-up."""
    handler, logger = Records(), logging.getLogger("jllm")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        llm = LLM(TINY, **ARGS)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return llm, handler.records


SAMPLING = [
    dict(max_tokens=6, temperature=0, logprobs=3, prompt_logprobs=2),
    dict(max_tokens=6, temperature=0.8, top_p=0.9, top_k=40, seed=7, logprobs=2),
]


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rng = np.random.default_rng(int(time.time()))
    return [rng.integers(3, 512, size=n).tolist() for n in (3, 9, 14)]


@pytest.fixture(scope="module")
def lazy(prompts) -> dict:
    """The same engine without warm-up in a subprocess with the persistent cache off (tests/startup_lazy_worker.py):
    every program compiled serially on first use, none read from what ``warmed`` wrote; its programs and outputs."""
    case = {"model": TINY, "engine_args": ARGS, "prompts": prompts, "sampling": SAMPLING}
    (result,) = run_worker("startup_lazy_worker.py", [case], JAX_ENABLE_COMPILATION_CACHE="false")
    return result


@pytest.mark.slow
def test_warmup_compiles_exactly_what_steps_compile_on_first_use(warmed, lazy):
    runner = warmed[0].engine.runner
    assert_only_warmup_programs(runner)
    assert sorted(f"{name} {layout}" for name, layout, _ in runner.compiled_programs()) == lazy["programs"]
    # The logits programs take the LM head's kernel alone (the model's own array), not every parameter.
    assert len(runner.head_params) == 1 and any(runner.head_params[0] is p for p in runner.params)
    for name, _, compiled in runner.compiled_programs():
        forward_inputs = len(runner.params) + len(runner.kv_caches) + 2  # the pool, the step buffer, the last tokens
        assert compiled.in_tree.num_leaves == (forward_inputs if name == "forward" else 3), name


@pytest.mark.slow
def test_concurrently_compiled_programs_compute_what_serially_compiled_ones_do(warmed, lazy, prompts):
    """Greedy and seeded random samples with logprobs and prompt logprobs, on fresh random prompts: the same tokens
    and the same logprobs (to 1e-6) from the warm-up's programs as from the serially compiled ones."""
    llm = warmed[0]
    for params, theirs in zip(SAMPLING, lazy["outputs"], strict=True):
        ours = [request(out) for out in llm.generate(prompts, SamplingParams(**params), use_tqdm=False)]
        for a, b in zip(ours, theirs, strict=True):
            assert a["tokens"] == b["tokens"]
            for ours_step, their_step in zip(a["logprobs"] + a["prompt"], b["logprobs"] + b["prompt"], strict=True):
                assert (ours_step or {}).keys() == (their_step or {}).keys()
                for token, logprob in (ours_step or {}).items():
                    assert logprob == pytest.approx(their_step[token], abs=1e-6)
    assert_only_warmup_programs(llm.engine.runner)  # and nothing compiled since


@pytest.mark.slow
def test_first_runs_run_each_bucket_forward_once_and_compile_nothing(warmed, monkeypatch):
    runner = warmed[0].engine.runner
    calls: collections.Counter[str] = collections.Counter()

    def counted(name: str):
        method = getattr(runner, name)

        def call(*args):
            calls[name] += 1
            return method(*args)

        return call

    for name in ("_forward", "_sample"):
        monkeypatch.setattr(runner, name, counted(name))
    compiled = runner.num_compilations
    report = runner.warmup(show_progress=False, run=True)
    plans = sum(len(runner.warmup_plans(bucket)) for bucket in runner.buckets)
    assert calls == {"_forward": len(runner.buckets), "_sample": plans}
    assert runner.num_compilations == compiled and report.programs == compiled
    assert report.run_s > 0


@pytest.mark.slow
def test_warmup_lowers_every_forward_before_any_smaller_program(warmed, monkeypatch):
    """The forwards compile longest, so each is queued for its compile before a sampler or prompt-logprobs program
    is traced; every program is still compiled once."""
    runner = warmed[0].engine.runner
    programs = dict(runner._programs)
    lowered: list[str] = []
    lower = runner.lower

    def recorded(call, kind, report):
        lowered.append(kind)
        return lower(call, kind, report)

    monkeypatch.setattr(runner, "lower", recorded)
    monkeypatch.setattr(runner, "_programs", {})
    report = runner.warmup(show_progress=False, run=False)
    forwards = len(runner.buckets)
    assert lowered[:forwards] == ["forward"] * forwards and "forward" not in lowered[forwards:]
    assert len(lowered) == report.programs == len(programs) and runner._programs.keys() == programs.keys()


@pytest.mark.slow
def test_a_steps_inputs_stay_on_the_host_and_run_the_warmed_programs(warmed):
    """On one process ``put`` leaves a step's packed inputs as NumPy arrays, which each program's call moves itself
    (cheaper on the host than a ``device_put`` first): the programs the warm-up traced on their shapes run them,
    and nothing compiles again."""
    runner = warmed[0].engine.runner
    compiled = runner.num_compilations
    for bucket in (runner.buckets[0], runner.buckets[-1]):
        step = runner.put(runner.warmup_plans(bucket)[0])
        assert isinstance(step.buffer, np.ndarray) and isinstance(step.sampler_buffer, np.ndarray)
        jax.block_until_ready(runner.dispatch(step))
    assert runner.num_compilations == compiled


@pytest.mark.slow
def test_programs_whose_matmuls_have_many_rows_compile_without_xla_triton_gemms(warmed, monkeypatch):
    """A forward's and the prompt logprobs' matmuls have a row a token, a sampler's a row a sampled sequence: above
    ``TRITON_GEMM_MAX_ROWS`` (2 here) the program compiles with XLA's Triton GEMMs off."""
    runner = warmed[0].engine.runner
    monkeypatch.setattr(jllm.runner, "TRITON_GEMM_MAX_ROWS", 2)
    options: dict[str, dict] = {}
    compile = runner.compile

    def recorded(lowered, program_options, kind, cache_key, report, name):
        options[name] = program_options
        return compile(lowered, program_options, kind, cache_key, report, name)

    monkeypatch.setattr(runner, "compile", recorded)
    monkeypatch.setattr(runner, "_programs", {})
    runner.warmup(show_progress=False, run=False)
    assert len(options) == runner.num_compilations
    for name, program_options in options.items():
        kind, shape = name.split(" ")
        tokens, seqs = map(int, shape.split("x"))
        rows = seqs if kind.startswith("sampler") else tokens
        expected = COMPILER_OPTIONS | ({"xla_gpu_enable_triton_gemm": False} if rows > 2 else {})
        assert program_options == expected, name
    assert {"forward 8x2", "forward 2x2"} <= options.keys()
    assert options["forward 8x2"] != options["forward 2x2"]


def test_xla_triton_gemms_stay_on_for_few_rows_quantized_weights_and_a_user_flag() -> None:
    off = {"xla_gpu_enable_triton_gemm": False}
    assert gemm_options(16, quantized=False, xla_flags="") == {}
    assert gemm_options(17, quantized=False, xla_flags="") == off
    assert gemm_options(2048, quantized=False, xla_flags="--xla_force_host_platform_device_count=8") == off
    assert gemm_options(2048, quantized=True, xla_flags="") == {}
    assert gemm_options(2048, quantized=False, xla_flags="--xla_gpu_enable_triton_gemm=true") == {}


@pytest.mark.slow
def test_warmup_compiles_with_the_pool_freed_and_gives_it_back_where_it_was(warmed, monkeypatch):
    """XLA's autotuner takes its scratch from the device memory beside what is allocated, so no pool array is alive
    while a program compiles; after the warm-up the pool is back, of the same shapes, dtypes and placements."""
    runner = warmed[0].engine.runner
    before = [(x.shape, x.dtype, x.sharding) for x in jax.tree.leaves(runner.kv_caches)]
    old_arrays = jax.tree.leaves(runner.kv_caches)
    seen: list[set[type]] = []
    compile_program = runner.compile

    def recorded(*args):
        seen.append({type(x) for x in jax.tree.leaves(runner.kv_caches)})
        return compile_program(*args)

    monkeypatch.setattr(runner, "compile", recorded)
    monkeypatch.setattr(runner, "_programs", {})
    runner.warmup(show_progress=False, run=True)
    assert seen and all(kinds == {jax.ShapeDtypeStruct} for kinds in seen)
    assert all(x.is_deleted() for x in old_arrays)
    after = jax.tree.leaves(runner.kv_caches)
    assert all(isinstance(x, jax.Array) and not x.is_deleted() for x in after)
    assert [(x.shape, x.dtype) for x in after] == [(shape, dtype) for shape, dtype, _ in before]
    # The same placement: a forward's first run may hand the pool back as an equivalent sharding of another spec
    # (one device: P() for P(None, "tp", ...)).
    assert all(x.sharding.is_equivalent_to(s, x.ndim) for x, (_, _, s) in zip(after, before, strict=True))


@pytest.mark.slow
def test_each_start_up_phase_logs_its_time_and_the_warmup_its_stages(warmed):
    llm, records = warmed
    phases = {r.startup_phase: r for r in records if hasattr(r, "startup_phase")}
    assert set(phases) == PHASES
    assert all(r.seconds >= 0 and f"{r.startup_phase} in " in r.getMessage() for r in phases.values())
    # the tokenizer loads on a thread beside the weights: the other phases follow one another (the heap is frozen
    # once the worker is ready)
    sequential = PHASES - {"worker ready", "tokenizer loaded", "heap frozen"}
    assert phases["worker ready"].seconds >= sum(phases[p].seconds for p in sequential)
    assert phases["worker ready"].seconds >= phases["tokenizer loaded"].seconds
    report = phases["warm-up"].warmup
    assert report.programs == llm.engine.runner.num_compilations == 14
    assert set(report.kinds) == {"forward", "sampler", "prompt_logprobs"}
    assert all(t.trace_s > 0 and t.lower_s > 0 and t.compile_s > 0 for t in report.kinds.values())
    assert f"{report.programs} programs" in phases["warm-up"].getMessage()
    assert {r.getMessage().split(":")[0] for r in records if r.getMessage().startswith("warm-up ")} >= {
        "warm-up forward",
        "warm-up sampler",
        "warm-up prompt_logprobs",
    }


def test_timed_measures_the_block_and_log_phase_carries_its_figures(caplog):
    with timed() as elapsed:
        time.sleep(0.05)
    assert 0.05 <= elapsed.seconds < 1.0
    with caplog.at_level(logging.INFO, logger="jllm.test"):
        log_phase(logging.getLogger("jllm.test"), "weights loaded", 1.234, "2.5 GB", extra_figure=3)
    (record,) = caplog.records
    assert record.getMessage() == "weights loaded in 1.23 s (2.5 GB)"
    assert (record.startup_phase, record.seconds, record.extra_figure) == ("weights loaded", 1.234, 3)


def test_warmup_report_counts_cache_hits_only_inside_its_block():
    report = WarmupReport(threads=2)
    jax.monitoring.record_event(CACHE_HIT_EVENT)
    with report.counting_cache_hits():
        jax.monitoring.record_event(CACHE_HIT_EVENT)
        jax.monitoring.record_event("/jax/compilation_cache/cache_misses")
        jax.monitoring.record_event(CACHE_HIT_EVENT)
    jax.monitoring.record_event(CACHE_HIT_EVENT)
    assert report.cache_hits == 2
    report.kinds["forward"] = StageTimes(2, 0.5, 0.25, 3.0)
    report.kinds["sampler"] = StageTimes(3, 0.25, 0.5, 1.0)
    report.add_compile("sampler", 0.5, "sampler_0_greedy 1x1")
    report.add_compile("forward", 2.0, "forward 64x64")
    report.add_load("forward", 0.25)
    assert report.summary() == (
        "6 programs, 1 from the executable cache (load 0.25 s), trace 0.75 s, lower 0.75 s, compile 6.50 s over 2 "
        "threads, 2 from the compilation cache"
    )
    assert report.slowest_compiles(1) == [(2.0, "forward 64x64")]
    assert (report.programs, report.loaded, report.kinds["forward"].programs) == (6, 1, 3)


@pytest.mark.slow
def test_profile_startup_script_reads_a_cold_start_then_a_warm_one_from_the_cache(tmp_path, monkeypatch):
    """The warm start loads every program from the executable cache (none traced, none read from JAX's cache); the
    cold one wrote each there, and to JAX's cache (whose default would skip programs compiled under 1 s)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    profile_startup = __import__("profile_startup")
    monkeypatch.chdir(ROOT)
    out = tmp_path / "startup.json"
    sets = [f"--set={key}={value}" for key, value in {**ARGS, "executable_cache": True}.items()]
    profile_startup.main(["--model", TINY, *sets, "--json", str(out)])
    cold, warm = json.loads(out.read_text())["runs"]
    assert (cold["name"], warm["name"]) == ("cold", "warm 1")
    assert cold["warmup"]["programs"] == warm["warmup"]["programs"] == 14
    assert cold["warmup"]["cache_hits"] == 0 and cold["warmup"]["loaded"] == 0
    assert warm["warmup"]["loaded"] == 14 and warm["warmup"]["cache_hits"] == 0
    slowest = cold["warmup"]["slowest_compiles"]  # every program compiled cold, by name; none warm
    assert len(slowest) == 10 and [s for s, _ in slowest] == sorted((s for s, _ in slowest), reverse=True)
    assert all(s > 0 for s, _ in slowest) and any(name.startswith("forward ") for _, name in slowest)
    assert warm["warmup"]["slowest_compiles"] == []
    assert all(
        k["trace_s"] == k["lower_s"] == k["compile_s"] == 0 < k["load_s"] for k in warm["warmup"]["kinds"].values()
    )
    assert "main_thread_profile" not in cold
    for run in (cold, warm):
        assert set(run["phases"]) == PHASES
        assert run["ready_s"] > run["phases"]["worker ready"] > run["phases"]["warm-up"] > 0 and run["cpu_s"] > 0


@pytest.mark.slow
def test_profile_startup_script_profiles_the_main_thread_when_asked(tmp_path, monkeypatch, capsys):
    """``--main-thread-profile N``: the main thread sampled through the start-up, the N functions with the most wall
    time (with what they call), longest first, the warm-up and its lowering among them."""
    sys.path.insert(0, str(ROOT / "scripts"))
    profile_startup = __import__("profile_startup")
    monkeypatch.chdir(ROOT)
    out = tmp_path / "startup.json"
    sets = [f"--set={key}={value}" for key, value in ARGS.items()]
    profile_startup.main(
        ["--model", TINY, *sets, "--warm-runs", "0", "--main-thread-profile", "40", "--json", str(out)]
    )
    (cold,) = json.loads(out.read_text())["runs"]
    profile = cold["main_thread_profile"]
    assert len(profile) == 40 and [s for s, _ in profile] == sorted((s for s, _ in profile), reverse=True)
    names = [name for _, name in profile]
    assert any(name.endswith("(warmup)") for name in names) and any(name.endswith("(lower)") for name in names)
    warmup = next(s for s, name in profile if name.endswith("(warmup)"))
    assert 0 < warmup <= cold["ready_s"]
    assert "the main thread's wall time by function" in capsys.readouterr().out


def test_the_jllm_command_shows_jllm_info_lines_and_keeps_other_libraries_quiet():
    """In a fresh interpreter: logging is configured once, before anything else (a configured root is left alone)."""
    code = (
        "import logging; from jllm.timing import show_info_logs; show_info_logs('jllm');"
        "logging.getLogger('jllm.build').info('weights loaded'); logging.getLogger('jax').info('tpu probe');"
        "logging.getLogger('jax').warning('a warning'); show_info_logs(); logging.getLogger('aiohttp').info('request')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == ["INFO jllm.build: weights loaded", "WARNING jax: a warning"]


@pytest.mark.slow  # a fresh interpreter importing JAX and flax: ~3 s
def test_importing_jllm_and_its_llm_leaves_transformers_unimported():
    """transformers takes ~1 s to import (1.5 s on the H200's host): only building a tokenizer imports it, so that a
    start can load it beside the weights, and the CLI's argument parsing never pays for it."""
    code = (
        "import sys, jllm; from jllm import LLM, SamplingParams, StructuredOutputsParams;"
        "print([m for m in ('transformers', 'torch') if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]"]


@pytest.mark.slow  # a fresh interpreter building an engine (programs compiled on first use): ~10 s
def test_building_an_engine_and_generating_leave_transformers_unimported():
    """A tokenizer.json is read without transformers (jllm.tokenizer_files); its import (4-6 s of a start on an H200
    host, torch included) waits for a feature that needs it: here the first chat prompt."""
    code = (
        "import sys; from jllm import LLM, SamplingParams;"
        f"llm = LLM({TINY!r}, compile_at_start=False, **{ARGS!r});"
        "llm.generate([[5, 6, 7]], SamplingParams(max_tokens=2), use_tqdm=False);"
        "print('transformers' in sys.modules);"
        "llm.chat([{'role': 'user', 'content': 'Hi'}], SamplingParams(max_tokens=2), use_tqdm=False);"
        "print('transformers' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]


def test_xla_autotunes_gemms_at_level_1_unless_xla_flags_sets_a_level() -> None:
    """Level 1 (timing only) cut a cold Llama-3-8B start from 35.0 to 23.2 s on an H100; a level in XLA_FLAGS is the
    user's, and a compile option would override it."""
    assert autotune_options("") == {"xla_gpu_autotune_level": 1}
    assert autotune_options("--xla_force_host_platform_device_count=8") == {"xla_gpu_autotune_level": 1}
    assert autotune_options("--xla_gpu_autotune_level=4") == {}

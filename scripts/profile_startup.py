"""Start-up time, cold and warm: ``LLM(...)`` in fresh processes, the first on an empty persistent compilation cache
(a temporary directory), the rest on the same directory again. Per run: the time to import jllm, each start-up
phase (the INFO lines of ``jllm.build``, read from their log records), and within the warm-up, per program kind,
tracing, lowering and compiling (compile seconds summed over the compiling threads), programs loaded from jllm's
executable cache (and the seconds loading them, summed over the threads), and JAX's cache hits; the longest compiles
by program (kind, sampler variant, bucket); and the process's CPU seconds at ready (all threads), steadier than wall
time where other work shares the cores.

    PYTHONPATH=. python scripts/profile_startup.py                       # the default model, 1 cold + 1 warm
    PYTHONPATH=. python scripts/profile_startup.py --config configs/bench-tiny-cpu.yaml --warm-runs 2 --json s.json
    PYTHONPATH=. python scripts/profile_startup.py --set max_model_len=2048 --set max_num_batched_tokens=512
    PYTHONPATH=. python scripts/profile_startup.py --warm-runs 0 --main-thread-profile 25   # where tracing goes

``--main-thread-profile N`` samples the main thread's stack every 5 ms during each start-up: the tracing and lowering
that every compile waits on (the compiles run on other threads), each function's wall time with what it calls, the N
largest. cProfile cannot say this: since Python 3.12 it sees every thread (``sys.monitoring``), and a cold start's
compile threads swamped it (an H100, 2026-12-05).

The converted default model stays in ``$JLLM_CACHE``; only the XLA cache is fresh (``JAX_COMPILATION_CACHE_DIR``),
and with it jllm's executable cache (a folder inside it; off on a CPU unless ``--set executable_cache=true``).
``--set executable_cache=false`` times warm starts that trace every program and read only JAX's cache.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import bench_common as common

KINDS = ("forward", "sampler", "prompt_logprobs")
SLOWEST = 10  # compiles listed per run, longest first


class PhaseRecords(logging.Handler):
    """Keeps the figures of each start-up phase's log record (``jllm.timing.log_phase``)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.phases: dict[str, dict[str, Any]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        phase = getattr(record, "startup_phase", None)
        if phase is not None:
            self.phases[phase] = {"seconds": record.seconds, "warmup": getattr(record, "warmup", None)}


class MainThreadSampler(threading.Thread):
    """Every ``interval`` seconds, the main thread's stack: the wall time since the last look goes to each function
    on it (inclusive time, as a profiler's cumulative column)."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(daemon=True, name="main-thread-sampler")
        self.interval = interval
        self.seconds: collections.Counter[str] = collections.Counter()
        self._done = threading.Event()

    def run(self) -> None:
        main = threading.main_thread().ident
        last = time.perf_counter()
        while not self._done.wait(self.interval):
            now = time.perf_counter()
            frame, functions = sys._current_frames().get(main), set()
            while frame is not None:
                code = frame.f_code
                functions.add(f"{code.co_filename}:{code.co_firstlineno}({code.co_name})")
                frame = frame.f_back
            for function in functions:
                self.seconds[function] += now - last
            last = now

    def stop(self) -> None:
        self._done.set()
        self.join()

    def report(self, top: int) -> list[tuple[float, str]]:
        return [(round(seconds, 3), name) for name, seconds in self.seconds.most_common(top)]


def child(model: str | None, config: str | None, overrides: dict[str, Any], profile_top: int) -> dict[str, Any]:
    """One start-up in this (fresh) process; its figures, JSON-ready. ``profile_top`` > 0: the main thread sampled,
    the ``profile_top`` functions with the most wall time."""
    sampler = MainThreadSampler() if profile_top else None
    start = time.perf_counter()
    if sampler is not None:
        sampler.start()
    import jllm.llm

    imported = time.perf_counter() - start
    records = PhaseRecords()
    logging.getLogger("jllm").addHandler(records)
    logging.getLogger("jllm").setLevel(logging.INFO)
    jllm.llm.LLM(model, config=config, **overrides)
    ready = time.perf_counter() - start
    if sampler is not None:
        sampler.stop()
    # CPU seconds of every thread since the process started: steadier than wall time on a machine shared with other work
    out: dict[str, Any] = {"import_s": imported, "ready_s": ready, "cpu_s": time.process_time(), "phases": {}}
    for phase, figures in records.phases.items():
        out["phases"][phase] = figures["seconds"]
        report = figures["warmup"]
        if report is not None:
            out["warmup"] = {
                "programs": report.programs,
                "threads": report.threads,
                "cache_hits": report.cache_hits,
                "loaded": report.loaded,
                "run_s": report.run_s,
                "kinds": {kind: vars(times) for kind, times in report.kinds.items()},
                "slowest_compiles": report.slowest_compiles(SLOWEST),
            }
    if sampler is not None:
        out["main_thread_profile"] = sampler.report(profile_top)
    return out


def run_once(args: argparse.Namespace, cache: str) -> dict[str, Any]:
    path = os.pathsep.join([str(common.ROOT), os.environ.get("PYTHONPATH", "")])  # the caller's packages too
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, "PYTHONPATH": path}
    given = [args.model, args.config, args.overrides, args.main_thread_profile]
    cmd = [sys.executable, __file__, "--child", json.dumps(given)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"start-up failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(runs: list[dict[str, Any]]) -> None:
    phases = list(dict.fromkeys(p for run in runs for p in run["phases"]))
    print("| run | import s | " + " | ".join(f"{p} s" for p in phases) + " | ready s | CPU s |")
    print("| --- " * (len(phases) + 4) + "|")
    for run in runs:
        cells = [f"{run['import_s']:.2f}", *(f"{run['phases'].get(p, 0):.2f}" for p in phases)]
        cells += [f"{run['ready_s']:.2f}", f"{run['cpu_s']:.1f}"]
        print(f"| {run['name']} | " + " | ".join(cells) + " |")
    print("\n| run | kind | programs | loaded | load s (threads) | trace s | lower s | compile s (threads) |")
    print("| --- " * 8 + "|")
    for run in runs:
        warmup = run.get("warmup")
        if warmup is None:
            continue
        for kind in KINDS:
            t = warmup["kinds"].get(kind)
            if t:
                row = [run["name"], kind, t["programs"], t["loaded"]]
                row += [f"{t[k]:.2f}" for k in ("load_s", "trace_s", "lower_s", "compile_s")]
                print("| " + " | ".join(map(str, row)) + " |")
        print(f"| {run['name']} | JAX cache hits | {warmup['cache_hits']} of {warmup['programs']} |" + " |" * 5)
    for run in runs:
        slowest = (run.get("warmup") or {}).get("slowest_compiles")
        if slowest:
            what = "program, bucket tokens x rows: seconds on one thread"
            print(f"\n{run['name']}: the {len(slowest)} longest compiles ({what})")
            print("  " + ", ".join(f"{name}: {seconds:.2f}" for seconds, name in slowest))
    for run in runs:
        if "main_thread_profile" in run:
            print(f"\n{run['name']}: the main thread's wall time by function (with what it calls), sampled")
            print("\n".join(f"  {seconds:8.3f} s  {name}" for seconds, name in run["main_thread_profile"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model (default: the default model)")
    parser.add_argument("--config", default=None, help="a YAML of engine keys")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an engine key (repeat)")
    parser.add_argument("--warm-runs", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--main-thread-profile", type=int, default=0, metavar="N", help="sample the main thread; print N functions"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(*json.loads(args.child))))
        return
    args.overrides = common.engine_overrides(parser, args.set)
    runs = []
    with tempfile.TemporaryDirectory(prefix="jllm-xla-") as cache:
        for name in ["cold", *(f"warm {i + 1}" for i in range(args.warm_runs))]:
            runs.append({"name": name, **run_once(args, cache)})
            print(f"{name}: ready in {runs[-1]['ready_s']:.2f} s", file=sys.stderr)
    print_table(runs)
    common.write_json(
        args.json, {"model": args.model, "config": args.config, "overrides": args.overrides, "runs": runs}
    )


if __name__ == "__main__":
    main()

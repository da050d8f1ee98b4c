"""Start-up's clock: how long each phase took, said in the INFO lines a user reads (as vLLM says "Loading weights
took 2.3 s"), and the warm-up's tally per program kind: tracing and lowering (Python, on the calling thread) against
compiling (XLA, on worker threads), how many programs came from the persistent compilation cache, and how many were
loaded from jllm's executable cache (neither traced, lowered nor compiled) and in how long.

Each phase's line carries its figures as log-record attributes (``startup_phase``, ``seconds``, ``warmup``), so a
script reads them from a logging handler instead of parsing text (``scripts/profile_startup.py``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator

CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"  # jax.monitoring's, once per program read from the cache


def show_info_logs(name: str | None = None) -> None:
    """INFO lines of logger ``name`` (None: every logger) to stderr, unless the caller configured logging: the
    `jllm` command's start-up phases (``"jllm"``), the server's address and request lines (every logger)."""
    if logging.getLogger().handlers:
        return
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger(name).setLevel(logging.INFO)


@dataclasses.dataclass
class Elapsed:
    seconds: float = 0.0


@contextlib.contextmanager
def timed() -> Iterator[Elapsed]:
    """Wall-clock seconds of the block, in the yielded ``Elapsed`` once it ends."""
    elapsed, start = Elapsed(), time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed.seconds = time.perf_counter() - start


def log_phase(logger: logging.Logger, phase: str, seconds: float, detail: str = "", **figures: object) -> None:
    """``<phase> in <seconds> s (<detail>)`` at INFO; the figures ride on the record for scripts."""
    suffix = f" ({detail})" if detail else ""
    logger.info("%s in %.2f s%s", phase, seconds, suffix, extra={"startup_phase": phase, "seconds": seconds, **figures})


@dataclasses.dataclass
class StageTimes:
    """One program kind's warm-up: how many, how many of them loaded from the executable cache, and seconds spent
    tracing, lowering and compiling the others and loading those (compile and load seconds are summed over the worker
    threads, so they can exceed the warm-up's wall time)."""

    programs: int = 0
    trace_s: float = 0.0
    lower_s: float = 0.0
    compile_s: float = 0.0
    loaded: int = 0
    load_s: float = 0.0


@dataclasses.dataclass
class WarmupReport:
    """The warm-up's figures: per program kind ("forward", "sampler", "prompt_logprobs"), and the cache hits."""

    kinds: dict[str, StageTimes] = dataclasses.field(default_factory=lambda: collections.defaultdict(StageTimes))
    cache_hits: int = 0
    threads: int = 1
    run_s: float = 0.0  # running each program once after compiling (off a CPU)
    compiles: list[tuple[float, str]] = dataclasses.field(default_factory=list)  # (seconds, program) per compile
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    @property
    def programs(self) -> int:
        return sum(k.programs for k in self.kinds.values())

    @property
    def loaded(self) -> int:
        """Programs loaded from the executable cache (neither traced nor compiled)."""
        return sum(k.loaded for k in self.kinds.values())

    def add_compile(self, kind: str, seconds: float, program: str) -> None:
        """From a compiling worker thread: ``program`` (its name) of ``kind`` compiled in ``seconds``."""
        with self._lock:
            self.kinds[kind].compile_s += seconds
            self.compiles.append((seconds, program))

    def slowest_compiles(self, count: int) -> list[tuple[float, str]]:
        """The ``count`` longest compiles, longest first: where a cold start's compile time goes."""
        return sorted(self.compiles, reverse=True)[:count]

    def add_load(self, kind: str, seconds: float) -> None:
        """From a loading worker thread: one program of ``kind`` loaded from the executable cache."""
        with self._lock:
            times = self.kinds[kind]
            times.programs += 1
            times.loaded += 1
            times.load_s += seconds

    @contextlib.contextmanager
    def counting_cache_hits(self) -> Iterator[None]:
        """Counts the persistent cache's hits (any thread's) while the block runs."""
        import jax  # here: the `jllm` command imports this module before it loads JAX

        def listener(event: str, **_: object) -> None:
            if event == CACHE_HIT_EVENT:
                with self._lock:
                    self.cache_hits += 1

        jax.monitoring.register_event_listener(listener)
        try:
            yield
        finally:
            jax.monitoring.unregister_event_listener(listener)

    def summary(self) -> str:
        """``N programs, e from the executable cache (load l s), trace a s, lower b s, compile c s over t threads,
        h from the compilation cache``."""
        fields = [f.name for f in dataclasses.fields(StageTimes)]
        total = StageTimes(*(sum(getattr(k, f) for k in self.kinds.values()) for f in fields))
        runs = f", first runs {self.run_s:.2f} s" if self.run_s else ""
        return f"{_stages(total)} over {self.threads} threads, {self.cache_hits} from the compilation cache{runs}"

    def log(self, logger: logging.Logger, seconds: float) -> None:
        """The warm-up's line, then one per program kind."""
        log_phase(logger, "warm-up", seconds, self.summary(), warmup=self)
        for kind, times in self.kinds.items():
            logger.info("warm-up %s: %s", kind, _stages(times))


def _stages(times: StageTimes) -> str:
    return (
        f"{times.programs} programs, {times.loaded} from the executable cache (load {times.load_s:.2f} s), "
        f"trace {times.trace_s:.2f} s, lower {times.lower_s:.2f} s, compile {times.compile_s:.2f} s"
    )

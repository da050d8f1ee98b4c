"""The worker threads that compile (or load) programs at start-up while one thread traces and lowers them.

A warm-up is a pipeline: the main thread traces and lowers each program (holding the GIL), a worker compiles it.
On a many-core GPU host the main thread is the critical path: an H100's cold Llama-3-8B start (2026-12-06) spent
17.4 s of its 21.9 s warm-up tracing and lowering 40 programs on the main thread, while the same programs lower in
a fraction of that on a quiet machine (``scripts/compile_for_gpu.py``: a sampler 0.01-0.11 s against 0.43 s on
average there): the compiles, and the threads XLA's compiler starts for each (autotuning, parallel codegen), crowd
the cores. So the workers run at a lower CPU priority (a higher nice value; Linux sets it per thread, and threads
a worker starts inherit it): the main thread takes a core when it needs one, the compiles every cycle it leaves.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

# Each program compiles on one worker thread, using about one core: a cold Llama-3-8B start on a 16-core H200 host
# (2026-12-04) spent 276 s compiling 60 programs over 8 threads in a 43 s warm-up, 7 of its 16 cores busy.
MAX_COMPILE_THREADS = 16
# How far below the main thread the workers run (nice 0 -> 10: CFS weighs a nice-10 thread at about a tenth).
WORKER_NICENESS = 10


def compile_threads() -> int:
    """Threads that compile or load programs at start: one a core, at most ``MAX_COMPILE_THREADS``."""
    return min(MAX_COMPILE_THREADS, os.cpu_count() or 1)


def compile_pool(threads: int | None = None) -> ThreadPoolExecutor:
    """``threads`` workers (default ``compile_threads()``), each below the calling thread's CPU priority."""
    return ThreadPoolExecutor(threads or compile_threads(), thread_name_prefix="jllm-compile", initializer=_lower)


def _lower() -> None:
    """This worker's nice value raised by ``WORKER_NICENESS`` (where the platform has per-thread priorities)."""
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICENESS)
    except (AttributeError, OSError):  # no per-thread priorities here (not Linux): the workers run as they are
        pass

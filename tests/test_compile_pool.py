"""The start-up's compile workers yield the CPU to the thread that traces and lowers for them."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from jllm.compile_pool import WORKER_NICENESS, compile_pool


def _niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")
def test_workers_run_below_the_thread_that_feeds_them() -> None:
    caller = _niceness()
    with compile_pool(2) as pool:
        workers = {pool.submit(_niceness).result() for _ in range(4)}
    assert workers == {min(caller + WORKER_NICENESS, 19)}
    assert _niceness() == caller  # the caller's own priority untouched


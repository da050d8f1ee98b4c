"""Where each engine step's wall time goes, one JSON line a step (``step_timeline_path``), so a server whose streams
run slower than its steps' device time can say why: scheduling, launching, waiting for the device (the step before,
which ran while this one was scheduled) and turning tokens into outputs, beside what the step carried (decode rows,
prefill tokens). With async scheduling, ``wait_s`` near 0 on every step means the host,
not the device, sets the pace.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TextIO

from jllm.sequence import SchedulerOutput


@dataclasses.dataclass
class StepTimes:
    """One step's clock, filled in as ``LLMEngine.step`` runs (seconds, ``time.perf_counter``)."""

    start: float = dataclasses.field(default_factory=time.perf_counter)
    schedule_s: float = 0.0
    launch_s: float = 0.0
    wait_s: float = 0.0  # blocked on the device: the previous step's (or this one's, synchronous) tokens
    process_s: float = 0.0  # the scheduler's token bookkeeping and the detokenizer, after the wait
    launched: SchedulerOutput | None = None  # what the step carried: counted only when a timeline writes it


class StepTimeline:
    """Appends each step's ``StepTimes`` to a file as a JSON line (``t``: seconds since the timeline opened)."""

    def __init__(self, path: str) -> None:
        self._file: TextIO = open(path, "a", buffering=1)  # noqa: SIM115 (open for the engine's life)
        self._origin = time.perf_counter()

    def write(self, times: StepTimes) -> None:
        """The step's clock beside what it carried: rows computing one token each, and the other rows' tokens."""
        decode_rows = prefill_tokens = 0
        for s in times.launched.scheduled if times.launched is not None else ():
            if s.num_new_tokens == 1 + len(s.draft_token_ids):
                decode_rows += 1
            else:
                prefill_tokens += s.num_new_tokens
        seconds = {k: getattr(times, k) for k in ("schedule_s", "launch_s", "wait_s", "process_s")}
        record = {
            "t": times.start - self._origin,
            **seconds,
            "decode_rows": decode_rows,
            "prefill_tokens": prefill_tokens,
            "total_s": time.perf_counter() - times.start,
        }
        self._file.write(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in record.items()}) + "\n")

    def close(self) -> None:
        self._file.close()

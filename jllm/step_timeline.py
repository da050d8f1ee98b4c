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
    decode_rows: int = 0
    prefill_tokens: int = 0

    def carried(self, output: SchedulerOutput) -> None:
        """What the launched step carried: rows computing one token each, and the other rows' tokens."""
        for s in output.scheduled:
            if s.num_new_tokens == 1 + len(s.draft_token_ids):
                self.decode_rows += 1
            else:
                self.prefill_tokens += s.num_new_tokens


class StepTimeline:
    """Appends each step's ``StepTimes`` to a file as a JSON line (``t``: seconds since the timeline opened)."""

    def __init__(self, path: str) -> None:
        self._file: TextIO = open(path, "a", buffering=1)  # noqa: SIM115 (open for the engine's life)
        self._origin = time.perf_counter()

    def write(self, times: StepTimes) -> None:
        record = dataclasses.asdict(times)
        record["t"] = round(record.pop("start") - self._origin, 6)
        record["total_s"] = round(time.perf_counter() - times.start, 6)
        self._file.write(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in record.items()}) + "\n")

    def close(self) -> None:
        self._file.close()

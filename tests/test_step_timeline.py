"""The step timeline: one line per launched step, what it carried adding up to what the scheduler ran, and the
clock saying where the time went (a fake device step of known length against next to no host work)."""

from __future__ import annotations

import importlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

from fake_runner import fake_engine, run_requests

from jllm.config import EngineConfig
from jllm.sampling import SamplingParams
from jllm.step_timeline import StepTimeline

STEP_SECONDS = 0.05
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # as when run as `python scripts/summarize_step_timeline.py`
summary = importlib.import_module("summarize_step_timeline")


def test_each_launched_step_writes_what_it_carried_and_where_its_time_went(tmp_path):
    path = tmp_path / "steps.jsonl"
    engine = fake_engine(step_seconds=STEP_SECONDS, max_num_batched_tokens=16)
    engine.timeline = StepTimeline(str(path))
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    done = run_requests(engine, {"long": (list(range(3, 40)), params), "short": ([5, 6, 7], params)})
    engine.release()
    assert all(len(out.outputs[0].token_ids) == 6 for out in done.values())

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    launched = engine.runner.launched
    assert len(lines) == len(launched)
    for line, output in zip(lines, launched, strict=True):
        assert line["decode_rows"] + line["prefill_tokens"] == output.num_batched_tokens
        assert line["decode_rows"] == sum(s.num_new_tokens == 1 for s in output.scheduled)
        parts = line["schedule_s"] + line["launch_s"] + line["wait_s"] + line["process_s"]
        assert 0 <= parts <= line["total_s"] + 1e-6
    assert sum(line["prefill_tokens"] for line in lines) >= 37 + 3 - 2  # each prompt, its last token maybe alone
    assert [line["t"] for line in lines] == sorted(line["t"] for line in lines)
    # The host's work is tiny beside a 50 ms device step: a pipelined step's wall time is the wait for the one before.
    waits = [line["wait_s"] for line in lines[1:]]
    assert statistics.median(waits) > 0.5 * STEP_SECONDS
    table = subprocess.run(
        [sys.executable, str(SCRIPTS / "summarize_step_timeline.py"), str(path)], capture_output=True, text=True
    )
    assert table.returncode == 0, table.stderr
    counts = {row.split("|")[1].strip(): int(row.split("|")[2]) for row in table.stdout.splitlines()[2:]}
    assert sum(counts.values()) == len(lines) and "decode" in counts


def test_the_key_is_an_engine_option():
    config = EngineConfig.from_flat({"step-timeline-path": "/tmp/steps.jsonl"})
    assert config.scheduler.step_timeline_path == "/tmp/steps.jsonl"
    assert config.llm_kwargs()["step_timeline_path"] == "/tmp/steps.jsonl"


def test_the_summary_groups_steps_by_what_they_carried():
    step = {"t": 0.0, "schedule_s": 0.001, "launch_s": 0.002, "wait_s": 0.004, "process_s": 0.001, "total_s": 0.009}
    steps = [
        {**step, "decode_rows": 32, "prefill_tokens": 0},
        {**step, "decode_rows": 32, "prefill_tokens": 480, "wait_s": 0.010, "total_s": 0.015},
        {**step, "decode_rows": 30, "prefill_tokens": 0, "wait_s": 0.002, "total_s": 0.007},
    ]
    rows = {row["group"]: row for row in summary.summarize(steps)}
    assert rows.keys() == {"decode", "prefill 256+"}
    assert rows["decode"]["steps"] == 2 and rows["decode"]["decode_rows"] == 31
    assert abs(rows["decode"]["total_ms"] - 8.0) < 1e-9 and abs(rows["decode"]["wait_ms"] - 3.0) < 1e-9
    assert abs(rows["prefill 256+"]["host_ms"] - 4.0) < 1e-9 and rows["prefill 256+"]["prefill_tokens"] == 480

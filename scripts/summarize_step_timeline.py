"""A step timeline's steps grouped by what they carried (``step_timeline_path``, jllm.step_timeline): per group the
steps' count and mean wall time beside its parts (the host's scheduling, launching and token processing, and the wait
for the device). Under async scheduling a step's wait is the device time the host did not cover: where it is near 0
the host sets the pace.

    python scripts/summarize_step_timeline.py steps.jsonl [--skip-s 5]
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

PREFILL_BINS = (0, 1, 128, 256, 512, 1024, 2048, 4096, 8192)  # a group's prefill tokens: at least this many


def group_of(step: dict) -> str:
    """``decode``, or the prefill tokens' bin (``prefill 256+``)."""
    tokens = step["prefill_tokens"]
    if tokens == 0:
        return "decode"
    return f"prefill {max(b for b in PREFILL_BINS if b <= tokens)}+"


def summarize(steps: list[dict]) -> list[dict]:
    """One row per group, in the order groups first appear: counts and mean milliseconds."""
    groups: dict[str, list[dict]] = collections.defaultdict(list)
    for step in steps:
        groups[group_of(step)].append(step)
    rows = []
    for name, members in groups.items():

        def mean_ms(key: str, members: list[dict] = members) -> float:
            return 1e3 * sum(s[key] for s in members) / len(members)

        rows.append(
            {
                "group": name,
                "steps": len(members),
                "decode_rows": sum(s["decode_rows"] for s in members) / len(members),
                "prefill_tokens": sum(s["prefill_tokens"] for s in members) / len(members),
                "total_ms": mean_ms("total_s"),
                "wait_ms": mean_ms("wait_s"),
                "host_ms": mean_ms("schedule_s") + mean_ms("launch_s") + mean_ms("process_s"),
                "schedule_ms": mean_ms("schedule_s"),
                "launch_ms": mean_ms("launch_s"),
                "process_ms": mean_ms("process_s"),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("timeline", type=Path)
    parser.add_argument("--skip-s", type=float, default=0.0, help="leave out the steps of the first seconds")
    args = parser.parse_args()
    steps = [json.loads(line) for line in args.timeline.read_text().splitlines() if line.strip()]
    steps = [s for s in steps if s["t"] >= args.skip_s]
    columns = ["group", "steps", "decode_rows", "prefill_tokens", "total_ms", "wait_ms", "host_ms"]
    columns += ["schedule_ms", "launch_ms", "process_ms"]
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for row in summarize(steps):
        print("| " + " | ".join(f"{row[c]:.2f}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()

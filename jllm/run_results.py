"""A run's files: ``results.jsonl`` (one line per input, appended per batch, resumed by id), ``summary.json`` and
``config.yaml``, and the table printed at the end.

A line is written whole and flushed, so after a kill the file holds complete lines and at most one cut one, which
resuming drops. A folder that holds another config's results is refused rather than mixed into.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from jllm.config import ConfigError
from jllm.config_base import yaml_problem
from jllm.datasets import RunInput
from jllm.outputs import (
    CompletionOutput,
    ContinuationScore,
    Logprob,
    PoolingRequestOutput,
    RequestOutput,
    top_logprobs,
)
from jllm.run_spec import RecordSpec

RESULTS, SUMMARY, CONFIG, HIDDEN = "results.jsonl", "summary.json", "config.yaml", "hidden_states"
Record = dict[str, Any]
RECORD_KEYS = ("id", "prompt_tokens", "completion_tokens")  # what resuming and summarize read of every line
START_AGAIN = "give another output_dir, or delete the folder to start again"


def check_output_dir(output_dir: Path, resolved: dict[str, Any]) -> None:
    """Before any engine starts: the folder can be made, and what it holds is this config's results (a folder of
    another config cannot be resumed into: say which key differs)."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"run.output_dir={str(output_dir)!r} cannot be created: {e.strerror} ({e.filename})", key="run.output_dir"
        ) from e
    read_results(output_dir)
    path = output_dir / CONFIG
    if not path.is_file():
        return
    try:
        before = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        problem = yaml_problem(e) if isinstance(e, yaml.YAMLError) else str(e)
        raise ConfigError(f"{path} is not readable YAML ({problem}); {START_AGAIN}", key="run.output_dir") from e
    if before == resolved:
        return
    flat_before, flat_now = _flatten(before), _flatten(resolved)
    changed = sorted(k for k in flat_before.keys() | flat_now.keys() if flat_before.get(k) != flat_now.get(k))
    raise ConfigError(
        f"run.output_dir={str(output_dir)!r} holds results of another config ({', '.join(changed[:5])} differ); "
        + START_AGAIN,
        key="run.output_dir",
    )


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to leaf values."""
    if not isinstance(values, dict):
        return {prefix: values}
    return {k: v for key, sub in values.items() for k, v in _flatten(sub, f"{prefix}.{key}".lstrip(".")).items()}


def write_config(output_dir: Path, resolved: dict[str, Any]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / CONFIG).write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True), encoding="utf-8")


def read_results(output_dir: Path) -> list[Record]:
    """The complete lines of results.jsonl; a line cut by a kill is removed from the file, any other line that is not
    a run's record is refused naming it."""
    path = output_dir / RESULTS
    if not path.is_file():
        return []
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with path.open("r+b") as f:
            f.truncate(len(whole))
    records = []
    for number, line in enumerate(whole.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)  # UTF-8 bytes
        except ValueError as e:  # not JSON, or not UTF-8
            raise ConfigError(f"{path} line {number} is not JSON ({e}); {START_AGAIN}", key="run.output_dir") from e
        if not isinstance(record, dict) or not all(k in record for k in RECORD_KEYS):
            raise ConfigError(
                f"{path} line {number} is not a result of jllm run (an object with {', '.join(RECORD_KEYS)}); "
                + START_AGAIN,
                key="run.output_dir",
            )
        records.append(record)
    return records


def append_results(output_dir: Path, records: list[Record]) -> None:
    with (output_dir / RESULTS).open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def make_record(item: RunInput, output: RequestOutput, record: RecordSpec) -> Record:
    """One input's line: id, inputs, outputs, token counts, timings, and the logprobs asked for."""
    line: Record = {"id": item.id, "inputs": item.inputs(), "prompt_tokens": len(output.prompt_token_ids)}
    if record.token_ids:
        line["prompt_token_ids"] = output.prompt_token_ids
    line["outputs"] = [_completion(c, record) for c in output.outputs]
    line["completion_tokens"] = sum(len(c.token_ids) for c in output.outputs)
    if output.prompt_logprobs is not None:
        chosen = _chosen(output.prompt_token_ids, output.prompt_logprobs)
        if record.prompt_logprobs is not None:
            line["prompt_logprobs"] = chosen
            if record.prompt_logprobs > 0:
                k = record.prompt_logprobs
                line["prompt_top_logprobs"] = [None if e is None else _top(e, k) for e in output.prompt_logprobs]
        if record.perplexity:
            line["perplexity"] = perplexity(chosen)
    metrics = output.metrics
    line["timing"] = {
        "ttft_s": metrics.get("time_to_first_token"),
        "latency_s": metrics["last_token_time"] - metrics["arrival_time"] if "last_token_time" in metrics else None,
    }
    return line


def score_entry(score: ContinuationScore) -> Record:
    """The reference continuation's log-probability given the prompt, summed and per token."""
    return {
        "logprob": score.logprob,
        "token_logprobs": score.token_logprobs,
        "tokens": len(score.continuation_token_ids),
        "is_greedy": score.is_greedy,
    }


def save_hidden_states(
    output_dir: Path, items: list[RunInput], encoded: list[PoolingRequestOutput], form: str
) -> list[Record]:
    """Writes a batch's hidden states (``[layers, prompt tokens, hidden]`` float32 per input) before its lines, so
    a line never names a missing file; returns each line's reference: file (relative to output_dir), key in a .npz."""
    folder = output_dir / HIDDEN
    folder.mkdir(exist_ok=True)
    refs: list[Record] = []
    if form == "npz":
        name = f"{HIDDEN}/batch-{items[0].row:06d}.npz"
        np.savez(
            output_dir / name, **{str(item.row): out.outputs.data for item, out in zip(items, encoded, strict=True)}
        )
        refs = [{"file": name, "key": str(item.row)} for item in items]
    else:
        for item, out in zip(items, encoded, strict=True):
            name = f"{HIDDEN}/{item.row:06d}.npy"
            np.save(output_dir / name, out.outputs.data)
            refs.append({"file": name})
    return [
        {**ref, "layers": out.layers, "shape": list(out.outputs.data.shape)}
        for ref, out in zip(refs, encoded, strict=True)
    ]


def _completion(c: CompletionOutput, record: RecordSpec) -> Record:
    out: Record = {"index": c.index}
    if record.text:
        out["text"] = c.text
    if record.token_ids:
        out["token_ids"] = c.token_ids
    if record.logprobs is not None and c.logprobs is not None:
        out["logprobs"] = _chosen(c.token_ids, c.logprobs)
        if record.logprobs > 0:
            out["top_logprobs"] = [_top(e, record.logprobs) for e in c.logprobs]
    out |= {"finish_reason": c.finish_reason, "completion_tokens": len(c.token_ids)}
    return out


def _chosen(token_ids: list[int], entries: list[dict[int, Logprob] | None]) -> list[float | None]:
    """Each token's own logprob (None where there is none: a prompt's first token)."""
    return [None if e is None else e[t].logprob for t, e in zip(token_ids, entries, strict=True)]


def _top(entry: dict[int, Logprob], k: int) -> list[Record]:
    return [{"token_id": tid, "token": lp.decoded_token, "logprob": lp.logprob} for tid, lp in top_logprobs(entry, k)]


def perplexity(logprobs: list[float | None]) -> float | None:
    """exp of the mean negative logprob of the tokens that have one (a one-token prompt has none)."""
    known = [lp for lp in logprobs if lp is not None]
    return math.exp(-sum(known) / len(known)) if known else None


def summarize(records: list[Record], total_inputs: int, new_records: list[Record], elapsed_s: float) -> Record:
    """Counts over the whole file; throughput over what this invocation generated (resumed lines excluded)."""
    summary: Record = {
        "inputs": total_inputs,
        "completed": len(records),
        "resumed": len(records) - len(new_records),
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "completion_tokens": sum(r["completion_tokens"] for r in records),
        "elapsed_s": elapsed_s,
    }
    new_tokens = sum(r["prompt_tokens"] + r["completion_tokens"] for r in new_records)
    rate = elapsed_s > 0 and new_records
    summary["requests_per_s"] = len(new_records) / elapsed_s if rate else None
    summary["output_tokens_per_s"] = sum(r["completion_tokens"] for r in new_records) / elapsed_s if rate else None
    summary["total_tokens_per_s"] = new_tokens / elapsed_s if rate else None
    perplexities = [r["perplexity"] for r in records if r.get("perplexity") is not None]
    if any("perplexity" in r for r in records):
        summary["mean_perplexity"] = sum(perplexities) / len(perplexities) if perplexities else None
    if any("score" in r for r in records):
        summary["mean_score"] = sum(r["score"]["logprob"] for r in records) / len(records)
    return summary


def write_summary(output_dir: Path, summary: Record) -> None:
    (output_dir / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def format_table(rows: list[tuple[str, Record]]) -> str:
    """One line per run: its folder, counts, throughput, and mean perplexity and score where asked."""
    header = ("run", "inputs", "prompt tok", "output tok", "out tok/s", "mean ppl", "mean score")
    lines = [header]
    for name, s in rows:
        ppl, score, rate = s.get("mean_perplexity"), s.get("mean_score"), s["output_tokens_per_s"]
        lines.append(
            (
                name,
                f"{s['completed']}/{s['inputs']}",
                str(s["prompt_tokens"]),
                str(s["completion_tokens"]),
                "-" if rate is None else f"{rate:.1f}",
                "-" if ppl is None else f"{ppl:.3f}",
                "-" if score is None else f"{score:.3f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)

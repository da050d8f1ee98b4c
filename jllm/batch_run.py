"""`jllm run job.yaml`: every run of a job file (one, or one per sweep point) through one engine at a time.

A run sends its pending inputs in batches of ``run.batch_size`` and appends each batch's lines to results.jsonl, so
a killed run resumes where it stopped: inputs already in the file are skipped. Each input's requests are seeded from
the run's seed and the input's id, so a resumed run writes what an uninterrupted one would. An engine is built for the
first run and rebuilt only when a sweep point changes an engine key; a point that changes only the model to another
checkpoint of the same one swaps the weights instead (``LLM.load_weights``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from tqdm.auto import tqdm

from jllm.config import EngineConfig
from jllm.datasets import RunInput
from jllm.errors import InputError
from jllm.job_file import JobPoint
from jllm.outputs import RequestOutput
from jllm.run_results import (
    append_results,
    check_output_dir,
    format_table,
    make_record,
    read_results,
    save_hidden_states,
    score_entry,
    summarize,
    write_config,
    write_summary,
)
from jllm.run_spec import RunSpec
from jllm.sampling import SamplingParams

if TYPE_CHECKING:  # the engine (and JAX) load only when a job runs, not while it is checked
    from jllm.llm import LLM


def input_seed(run_seed: int, input_id: str | int) -> int:
    """An input's sampling seed: the same for the same run seed and id, whatever the batch or the order."""
    digest = hashlib.sha256(f"{run_seed}:{json.dumps(input_id)}".encode()).digest()
    return int.from_bytes(digest[:4], "little")  # the sampler keys on 32 bits


def run_job(points: list[JobPoint], make_llm: Callable[[EngineConfig], LLM], out: TextIO | None = None) -> None:
    """Runs every point, rebuilding the engine only when its config changes, then prints the table."""
    for point in points:  # before any engine starts
        check_output_dir(point.run.output_dir, point.resolved())
    llm: LLM | None = None
    built: EngineConfig | None = None
    rows = []
    for point in points:
        if llm is not None and built is not None and _only_the_model_changes(built, point.engine):
            built = _swapped(llm, built, point.engine)
        if llm is None or point.engine != built:
            if llm is not None:
                llm.engine.release()
            llm, built = make_llm(point.engine), point.engine
        rows.append((str(point.run.output_dir), run_point(llm, point.run, point.resolved())))
    out = out or sys.stdout  # looked up now, so a test's captured stdout gets the table
    out.write(format_table(rows) + "\n")
    out.flush()


def _only_the_model_changes(built: EngineConfig, wanted: EngineConfig) -> bool:
    model = dataclasses.replace(built.model, model=wanted.model.model)
    return built.model.model != wanted.model.model and dataclasses.replace(built, model=model) == wanted


def _swapped(llm: LLM, built: EngineConfig, wanted: EngineConfig) -> EngineConfig:
    """The config ``llm`` runs after trying ``wanted``'s checkpoint as new weights (``LLM.load_weights``): a sweep
    over checkpoints of one model starts one engine; another model needs a new one (``built`` stays)."""
    from jllm.weight_swap import WeightsMismatch

    try:
        llm.load_weights(wanted.model.model)
    except WeightsMismatch as e:
        tqdm.write(f"a new engine for {wanted.model.model}: {e}")
        return built
    return wanted


def run_point(llm: LLM, spec: RunSpec, resolved: dict[str, Any]) -> dict[str, Any]:
    """One run into its folder; returns its summary."""
    write_config(spec.output_dir, resolved)
    done = {json.dumps(r["id"]) for r in read_results(spec.output_dir)}
    pending = [item for item in spec.inputs if json.dumps(item.id) not in done]
    new_records = []
    start = time.monotonic()
    with tqdm(total=len(spec.inputs), initial=len(spec.inputs) - len(pending), desc=str(spec.output_dir)) as bar:
        for first in range(0, len(pending), spec.batch_size):
            batch = pending[first : first + spec.batch_size]
            try:
                outputs = _generate(llm, spec, batch)
            except InputError as e:
                raise _at_input(batch, e) from e
            records = [make_record(item, o, spec.record) for item, o in zip(batch, outputs, strict=True)]
            _add_pooled(llm, spec, batch, outputs, records)
            append_results(spec.output_dir, records)
            new_records += records
            bar.update(len(batch))
    summary = summarize(read_results(spec.output_dir), len(spec.inputs), new_records, time.monotonic() - start)
    write_summary(spec.output_dir, summary)
    return summary


def _at_input(batch: list[RunInput], error: InputError) -> InputError:
    """The engine's refusal of an input (a prompt past the context ...) naming its dataset row and id: LLM's
    ``prompts[i]`` counts within the batch."""
    index = re.fullmatch(r"prompts\[(\d+)\]", error.param or "")
    if index is None and len(batch) > 1:
        where = f"one of run.dataset rows {', '.join(str(item.row) for item in batch)}"
    else:
        item = batch[0 if index is None else int(index.group(1))]
        where = f"run.dataset row {item.row} (id {item.id!r})"
    return type(error)(f"{where}: {str(error).removeprefix(f'{error.param}: ')}", param=error.param)


def _add_pooled(
    llm: LLM, spec: RunSpec, batch: list[RunInput], outputs: list[RequestOutput], records: list[dict[str, Any]]
) -> None:
    """The reference's score and the prompt's hidden states, over the very prompt tokens the batch generated from
    (a chat's rendered template included)."""
    prompts = [o.prompt_token_ids for o in outputs]
    if spec.record.score:
        scores = llm.score(prompts, [item.reference for item in batch], use_tqdm=False)
        for record, score in zip(records, scores, strict=True):
            record["score"] = score_entry(score)
    if spec.record.hidden_layers is not None:
        encoded = llm.encode(prompts, layers=spec.record.hidden_layers, use_tqdm=False)
        refs = save_hidden_states(spec.output_dir, batch, encoded, spec.record.hidden_format)
        for record, ref in zip(records, refs, strict=True):
            record["hidden_states"] = ref


def _generate(llm: LLM, spec: RunSpec, batch: list[RunInput]) -> list[RequestOutput]:
    params: list[SamplingParams] = [
        dataclasses.replace(spec.sampling, seed=input_seed(spec.seed, item.id)) for item in batch
    ]
    if batch[0].messages is not None:
        return llm.chat([item.messages for item in batch], params, use_tqdm=False)
    if spec.chat:
        return llm.chat([[{"role": "user", "content": item.prompt}] for item in batch], params, use_tqdm=False)
    return llm.generate([item.prompt for item in batch], params, use_tqdm=False)

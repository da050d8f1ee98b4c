"""`jllm run job.yaml`: a batch of prompts and how to sample them, in one YAML file beside the engine keys.

A job file is a config file (engine keys at the top level, exactly as ``--config`` takes them) plus one ``run:``
mapping::

    model: smollm2-135m-instruct      # any engine key, e.g. max_model_len, dtype, max_num_seqs
    max_model_len: 2048
    run:
      prompts:                        # a list of strings, or instead:
        - "The capital of France is"
      # prompts_file: prompts.txt     # one prompt per line (blank lines skipped), or .jsonl of {"prompt": ...}
      chat: false                     # true: each prompt is one user message, sent through the chat template
      sampling:                       # any SamplingParams field
        temperature: 0
        max_tokens: 64
      output: out.jsonl               # default: stdout

Each completion becomes one JSON line ``{"prompt", "index", "text", "token_ids", "finish_reason"}`` (``index`` is
the sample number, 0 unless ``sampling.n`` > 1), in prompt order. Relative paths are relative to the working
directory, as ``model`` is. Everything is checked before the engine starts; a bad key fails naming it.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jllm.config import ConfigError, EngineConfig, load_yaml, merge_config, unknown_key_error
from jllm.sampling import SamplingParams

if TYPE_CHECKING:  # the engine (and JAX) load only when a job runs, not while it is checked
    from jllm.llm import LLM

RUN_KEYS = ("prompts", "prompts_file", "chat", "sampling", "output")


@dataclasses.dataclass
class RunSpec:
    prompts: list[str]
    chat: bool
    sampling: SamplingParams
    output: Path | None  # None = stdout


def load_job(path: str | Path, **overrides: Any) -> tuple[EngineConfig, RunSpec]:
    """The engine config (command line > file > defaults) and the ``run:`` section of a job file."""
    values = load_yaml(path)
    if "run" not in values:
        raise ConfigError(f"job file {str(path)!r} has no `run:` section (see configs/example-run.yaml)")
    run = values.pop("run")
    return merge_config(values, **overrides), parse_run(run)


def parse_run(run: Any) -> RunSpec:
    """Checks the ``run:`` mapping and reads its prompts now, so a bad job fails before the engine starts."""
    if not isinstance(run, dict):
        raise ConfigError(f"run must be a mapping with keys {', '.join(RUN_KEYS)}, got {type(run).__name__}")
    for key in run:
        if key not in RUN_KEYS:
            raise unknown_key_error(key, RUN_KEYS, where="run key")
    prompts = parse_prompts(run)
    chat = run.get("chat", False)
    if not isinstance(chat, bool):
        raise ConfigError(f"run.chat={chat!r} is not allowed: expected true or false")
    output = parse_output(run.get("output"))
    return RunSpec(prompts, chat, parse_sampling(run.get("sampling") or {}), output)


def parse_prompts(run: dict[str, Any]) -> list[str]:
    """The prompts given inline or in ``prompts_file`` (exactly one of the two); either way, non-empty strings."""
    if ("prompts" in run) == ("prompts_file" in run):
        raise ConfigError("run needs exactly one of prompts (a list of strings) and prompts_file (a path)")
    if "prompts_file" in run:
        if not isinstance(run["prompts_file"], str):
            raise ConfigError(f"run.prompts_file must be a path, got {run['prompts_file']!r}")
        prompts = read_prompts(Path(run["prompts_file"]))
        if not prompts:
            raise ConfigError(f"run.prompts_file={str(run['prompts_file'])!r} holds no prompts")
    else:
        prompts = run["prompts"]
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p for p in prompts):
        raise ConfigError(f"run.prompts must be a non-empty list of non-empty strings, got {prompts!r}")
    return prompts


def parse_output(output: Any) -> Path | None:
    """The output file, checked now rather than when writing it after the whole batch has run; None = stdout."""
    if output is None:
        return None
    path = Path(str(output))
    if not path.parent.is_dir():
        raise ConfigError(f"run.output={str(path)!r}: directory {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise ConfigError(f"run.output={str(path)!r} is a directory; give a file path")
    return path


def parse_sampling(values: Any) -> SamplingParams:
    if not isinstance(values, dict):
        raise ConfigError(f"run.sampling must be a mapping of SamplingParams fields, got {type(values).__name__}")
    names = [f.name for f in dataclasses.fields(SamplingParams) if f.name != "output_kind"]  # LLM.generate sets it
    for key in values:
        if key not in names:
            raise unknown_key_error(key, names, where="sampling key")
    try:
        return SamplingParams(**values)
    except ValueError as e:
        raise ConfigError(f"run.sampling: {e}") from e


def read_prompts(path: Path) -> list[str]:
    """One prompt per non-blank line, or per line of a .jsonl file (``{"prompt": "..."}``)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"run.prompts_file={str(path)!r} cannot be read: {e}") from e
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{number}: not valid JSON: {e}") from e
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ConfigError(f'{path}:{number}: expected an object with a string "prompt", got {line.strip()!r}')
        prompts.append(record["prompt"])
    return prompts


def run_job(llm: LLM, spec: RunSpec) -> None:
    """Generates every prompt and writes the JSON lines to ``spec.output`` (or stdout)."""
    if spec.chat:
        outputs = llm.chat([[{"role": "user", "content": p}] for p in spec.prompts], spec.sampling)
    else:
        outputs = llm.generate(spec.prompts, spec.sampling)
    text = "".join(
        json.dumps(
            {
                "prompt": prompt,
                "index": c.index,
                "text": c.text,
                "token_ids": c.token_ids,
                "finish_reason": c.finish_reason,
            },
            ensure_ascii=False,
        )
        + "\n"
        for prompt, out in zip(spec.prompts, outputs, strict=True)
        for c in out.outputs
    )
    if spec.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        spec.output.write_text(text, encoding="utf-8")

"""`jllm run` experiments over the scripted fake engine: job files with line numbers, --set, datasets, sweeps,
results/summary/config files and resuming. Real numerics (perplexity against transformers, a killed subprocess, the
shipped examples) are in tests/test_runs_models.py."""

from __future__ import annotations

import io
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from fake_runner import fake_engine

from jllm import cli
from jllm.batch_run import input_seed, run_job
from jllm.config import ConfigError, EngineConfig
from jllm.errors import InputError
from jllm.job_file import apply_sets, load_job_file, plan_job
from jllm.llm import LLM
from jllm.outputs import PoolingOutput, PoolingRequestOutput
from jllm.run_results import read_results


class Builds:
    """``make_llm`` for run_job: an LLM over the fake engine, counting how many were built and for which config."""

    def __init__(self) -> None:
        self.configs: list[EngineConfig] = []
        self.llms: list[LLM] = []

    def __call__(self, config: EngineConfig) -> LLM:
        llm = LLM.__new__(LLM)  # the public API over the scripted engine: no model, no device
        llm.engine, llm._ids = fake_engine(), itertools.count()
        self.configs.append(config)
        self.llms.append(llm)
        return llm


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def plan(path: Path, *sets: str, **engine: object):
    job = load_job_file(path)
    apply_sets(job, list(sets))
    return plan_job(job, **engine)


def run(path: Path, *sets: str) -> Builds:
    builds = Builds()
    run_job(plan(path, *sets), builds, out=io.StringIO())
    return builds


JOB = """\
max_num_seqs: 4
run:
  dataset: data.jsonl
  prompt_field: question
  id_field: qid
  sampling:
    temperature: 0.8
    max_tokens: 5
  record:
    logprobs: 2
    prompt_logprobs: 1
    perplexity: true
  batch_size: 2
  output_dir: out
"""


@pytest.fixture
def job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    rows = [{"qid": f"q{i}", "question": f"Question number {i}?", "extra": i + 0.5} for i in range(5)]
    write(tmp_path / "data.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return write(tmp_path / "job.yaml", JOB)


def lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "timing"} for r in records]


# ------------------------------------------------------------------ results, summary, config


def test_run_writes_one_line_per_input_with_what_was_asked(job: Path, tmp_path: Path) -> None:
    run(job)
    records = lines(tmp_path / "out")
    assert [r["id"] for r in records] == [f"q{i}" for i in range(5)]
    tokenizer = fake_engine().tokenizer
    for i, r in enumerate(records):
        assert r["inputs"] == {"prompt": f"Question number {i}?"}
        prompt_ids = tokenizer.encode(f"Question number {i}?")
        assert r["prompt_tokens"] == len(prompt_ids) and r["prompt_token_ids"] == prompt_ids
        [out] = r["outputs"]
        assert out["completion_tokens"] == len(out["token_ids"]) == 5 == r["completion_tokens"]
        assert out["text"] == tokenizer.decode(out["token_ids"])
        assert len(out["logprobs"]) == 5 and len(out["top_logprobs"]) == 5
        assert all(len(top) == 2 for top in out["top_logprobs"])
        # the fake model gives every prompt token after the first logprob -1 (tests/fake_runner.py)
        assert r["prompt_logprobs"] == [None] + [-1.0] * (len(prompt_ids) - 1)
        assert [len(t) for t in r["prompt_top_logprobs"][1:]] == [1] * (len(prompt_ids) - 1)
        assert r["perplexity"] == pytest.approx(math.e)
        assert r["timing"]["latency_s"] >= r["timing"]["ttft_s"] >= 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["inputs"] == summary["completed"] == 5 and summary["resumed"] == 0
    assert summary["prompt_tokens"] == sum(r["prompt_tokens"] for r in records)
    assert summary["completion_tokens"] == 25 and summary["output_tokens_per_s"] > 0
    assert summary["mean_perplexity"] == pytest.approx(math.e)
    config = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert config["max_num_seqs"] == 4 and config["page_size"] == 16  # engine keys resolved, defaults included
    assert config["run"]["sampling"]["temperature"] == 0.8 and config["run"]["sampling"]["top_p"] == 1.0
    assert config["run"]["record"]["perplexity"] is True and config["run"]["seed"] == 0


def test_each_input_is_seeded_from_the_run_seed_and_its_id(job: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real_generate = LLM.generate

    def spy(self, prompts, params, use_tqdm=True):
        seen.extend(p.seed for p in params)
        return real_generate(self, prompts, params, use_tqdm)

    monkeypatch.setattr(LLM, "generate", spy)
    run(job, "run.seed=7")
    assert seen == [input_seed(7, f"q{i}") for i in range(5)]
    assert len(set(seen)) == 5 and input_seed(7, "q0") != input_seed(8, "q0")


def test_rerun_skips_done_inputs_and_drops_a_cut_line(job: Path, tmp_path: Path, monkeypatch) -> None:
    run(job)
    whole = (tmp_path / "out" / "results.jsonl").read_text()
    kept = whole.splitlines(keepends=True)[:3]
    cut = whole.splitlines(keepends=True)[3][:10]  # a line the kill cut short
    (tmp_path / "out" / "results.jsonl").write_text("".join(kept) + cut)
    sent: list[str] = []
    real_generate = LLM.generate
    monkeypatch.setattr(
        LLM, "generate", lambda self, p, params, use_tqdm=True: sent.extend(p) or real_generate(self, p, params, False)
    )
    run(job)
    assert sent == ["Question number 3?", "Question number 4?"]
    assert without_timing(lines(tmp_path / "out")) == without_timing([json.loads(line) for line in whole.splitlines()])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert (summary["completed"], summary["resumed"]) == (5, 3)


def test_an_input_the_engine_refuses_is_named_by_its_row_and_id(job: Path, tmp_path: Path) -> None:
    """LLM names a prompt by its place in the batch; the run names the dataset row, after the batches before it."""
    rows = [{"qid": f"q{i}", "question": "x" * (200 if i == 3 else 5)} for i in range(5)]
    write(tmp_path / "data.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"^run.dataset row 3 \(id 'q3'\): This model's maximum context length is 128"):
        run(job)
    assert [r["id"] for r in lines(tmp_path / "out")] == ["q0", "q1"]


def test_an_input_error_of_no_known_prompt_names_the_batch_rows(job: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self, prompts, params, use_tqdm=True):
        raise InputError("conversation 1: messages[0].content: no", param="messages[0].content")

    monkeypatch.setattr(LLM, "generate", refuse)
    with pytest.raises(InputError, match=r"^one of run.dataset rows 0, 1: conversation 1: messages\[0\]"):
        run(job)


def test_output_dir_of_another_config_is_refused(job: Path) -> None:
    run(job)
    with pytest.raises(ConfigError, match=r"holds results of another config \(run.sampling.temperature differ"):
        run(job, "temperature=0.5")


# ------------------------------------------------------------------ datasets


def test_a_csv_row_with_more_fields_than_the_header_is_refused(job: Path, tmp_path: Path) -> None:
    """csv keeps the extra fields under the key None: the prompt had been cut at its comma without a word."""
    write(tmp_path / "data.csv", 'qid,question\nq0,"Hello, world?"\nq1,Hello, world?\n')
    with pytest.raises(ConfigError) as error:
        plan(job, "run.dataset=data.csv")
    assert "run.dataset=" in str(error.value)
    assert "cannot be read: line 3 has 3 fields, the header 2 (quote a field that holds a comma)" in str(error.value)
    write(tmp_path / "data.csv", 'qid,question\nq0,"Hello, world?"\n')
    [point] = plan(job, "run.dataset=data.csv")
    assert point.run.inputs[0].prompt == "Hello, world?"


@pytest.mark.parametrize("kind", ["csv", "parquet", "inline"])
def test_csv_parquet_and_inline_datasets_give_the_same_inputs(kind: str, job: Path, tmp_path: Path) -> None:
    rows = [{"qid": f"q{i}", "question": f"Question number {i}?"} for i in range(5)]
    if kind == "csv":
        write(tmp_path / "data.csv", "qid,question\n" + "".join(f"{r['qid']},{r['question']}\n" for r in rows))
        dataset = "run.dataset=data.csv"
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data.parquet")
        dataset = "run.dataset=data.parquet"
    else:
        dataset = "run.dataset=" + json.dumps(rows)
    run(job, "run.output_dir=jsonl")
    run(job, dataset, f"run.output_dir={kind}")
    assert without_timing(lines(tmp_path / kind)) == without_timing(lines(tmp_path / "jsonl"))


def test_chat_dataset_goes_through_the_chat_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    chats = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": f"hi {i}"}] for i in range(3)]
    write(tmp_path / "chats.jsonl", "".join(json.dumps({"messages": m}) + "\n" for m in chats))
    path = write(tmp_path / "job.yaml", "run:\n  dataset: chats.jsonl\n  messages_field: messages\n  output_dir: o\n")
    builds = run(path)
    records = lines(tmp_path / "o")
    tokenizer = builds.llms[0].engine.tokenizer
    for record, chat in zip(records, chats, strict=True):
        assert record["inputs"] == {"messages": chat}
        assert record["prompt_tokens"] == len(
            tokenizer.hf.apply_chat_template(chat, add_generation_prompt=True)["input_ids"]
        )


@pytest.mark.parametrize(
    "content", [5, {"text": "hi"}, [{"type": "image_url", "image_url": "x"}], [{"type": "text", "text": 5}]]
)
def test_a_chat_row_the_chat_door_would_refuse_fails_with_the_job(content: object, tmp_path: Path, monkeypatch) -> None:
    """It had passed the job's checks and failed only once the engine was up, mid-run."""
    monkeypatch.chdir(tmp_path)
    good = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    bad = {"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": content}]}
    write(tmp_path / "chats.jsonl", json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    path = write(tmp_path / "job.yaml", "run:\n  dataset: chats.jsonl\n  messages_field: messages\n  output_dir: o\n")
    with pytest.raises(ConfigError, match=r"job.yaml line 3: run.messages_field='messages': row 1 holds .*, expected"):
        plan(path)


# ------------------------------------------------------------------ sweeps


def test_two_by_two_sweep_runs_four_points_and_builds_one_engine_per_engine_value(job: Path, tmp_path: Path) -> None:
    with job.open("a") as f:
        f.write("sweep:\n  temperature: [0, 0.7]\n  max_num_seqs: [2, 3]\n")
    builds = run(job)
    assert [c.scheduler.max_num_seqs for c in builds.configs] == [2, 3]  # rebuilt only when the engine key changes
    assert builds.llms[0].engine.runner.released and not builds.llms[1].engine.runner.released
    folders = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert folders == [
        "000-max_num_seqs=2,temperature=0",
        "001-max_num_seqs=2,temperature=0.7",
        "002-max_num_seqs=3,temperature=0",
        "003-max_num_seqs=3,temperature=0.7",
    ]
    for name in folders:
        config = yaml.safe_load((tmp_path / "out" / name / "config.yaml").read_text())
        seqs, temperature = name[4:].split(",")
        assert config["max_num_seqs"] == int(seqs.split("=")[1])
        assert config["run"]["sampling"]["temperature"] == float(temperature.split("=")[1])
        assert config["run"]["output_dir"] == str(Path("out") / name)
        assert len(read_results(tmp_path / "out" / name)) == 5


def test_swept_datasets_are_found_beside_the_job_file(job: Path, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "job.yaml").write_text(job.read_text() + "sweep:\n  dataset: [../data.jsonl, ../data.csv]\n")
    write(tmp_path / "data.csv", "qid,question\nc0,From the CSV?\n")
    points = plan(tmp_path / "sub" / "job.yaml")
    assert [len(p.run.inputs) for p in points] == [5, 1]


def test_sweeping_only_run_keys_builds_one_engine(job: Path) -> None:
    with job.open("a") as f:
        f.write("sweep:\n  run.sampling.top_p: [0.5, 1.0]\n  run.record.logprobs: [0, 1]\n")
    assert len(run(job).configs) == 1


# ------------------------------------------------------------------ bad files: key, line, what is allowed


@pytest.mark.parametrize(
    ("edit", "sets", "message"),
    [
        (("  batch_size: 2", "  batch_sise: 2"), (), "job.yaml line 13: unknown run key 'batch_sise' (did you mean"),
        (("temperature: 0.8", "temperature: hot"), (), "job.yaml line 7: run.sampling.temperature must be"),
        (("max_num_seqs: 4", "max_num_seqs: 0"), (), "job.yaml line 1: max_num_seqs=0 is not allowed: must be >= 1"),
        (
            ("max_num_seqs: 4", "max_num_seqs: four"),
            (),
            "job.yaml line 1: max_num_seqs='four' is not allowed: expected",
        ),
        (("data.jsonl", "nope.jsonl"), (), "job.yaml line 3: run.dataset="),
        (("question", "questoin"), (), "job.yaml line 4: run.prompt_field='questoin': row 0 of the dataset has no"),
        (("logprobs: 2", "logprobs: 50"), (), "job.yaml line 10: run.record.logprobs=50 is not allowed: expected"),
        (("perplexity: true", "perplexity: 1"), (), "job.yaml line 12: run.record.perplexity=1 is not allowed"),
        (("  batch_size: 2", "  batch_size: 0"), (), "job.yaml line 13: run.batch_size=0 is not allowed"),
        (("max_num_seqs: 4", "max_num_seq: 4"), (), "job.yaml line 1: unknown key 'max_num_seq' (did you mean"),
        (
            (),
            ("temperature=-1",),
            "--set temperature=-1: run.sampling.temperature must be in [0, 3.4e+38] (float32), got -1",
        ),
        ((), ("run.sampling.temprature=1",), "--set run.sampling.temprature=1: unknown run.sampling key 'temprature'"),
        ((), ("nosuchkey=1",), "--set nosuchkey=1: unknown key 'nosuchkey'"),
        # a misspelt short name is matched against the run and sampling keys too, not only the engine's
        ((), ("temprature=1",), "--set temprature=1: unknown key 'temprature' (did you mean 'temperature'?)"),
        ((), ("batch_sise=1",), "--set batch_sise=1: unknown key 'batch_sise' (did you mean 'batch_size'?)"),
        (("max_tokens: 5", "seed: 3"), (), "job.yaml line 8: run.sampling.seed: give it as run.seed in a run"),
        ((), ("temperature",), "expected KEY=VALUE"),
        (
            ("    temperature: 0.8\n    max_tokens: 5", "    - 0.8"),
            ("temperature=0",),
            "job.yaml line 6: run.sampling must be a mapping to set run.sampling.temperature (--set temperature=0)",
        ),
        (
            (),
            ("temperature=[1",),
            "--set temperature=[1: the value is not YAML: line 1, column 3: while parsing a flow",
        ),
        ((), ("sweep.temperature=[0, 1]",), "--set sweep.temperature=[0, 1]: the sweep: section is the job file's"),
        ((), ("run.dataset.x=1",), "--set run.dataset.x=1: run.dataset takes a value, not keys"),
        ((), ("max_num_seqs.x=1",), "--set max_num_seqs.x=1: max_num_seqs takes a value, not keys"),
        ((), ("run.id_field=extra",), "--set run.id_field=extra: run.id_field='extra': row 0 holds 0.5, expected"),
    ],
)
def test_bad_job_names_key_line_and_what_is_allowed(job: Path, edit: tuple, sets: tuple, message: str) -> None:
    if edit:
        job.write_text(job.read_text().replace(*edit))
    with pytest.raises(ConfigError) as error:
        plan(job, *sets)
    assert message in str(error.value)


def test_a_job_file_that_is_not_yaml_is_named_on_one_line(job: Path) -> None:
    job.write_text(job.read_text() + "  batch_size: 3\n")  # the run section's batch_size a second time
    with pytest.raises(ConfigError) as error:
        plan(job)
    assert str(error.value).startswith(f"job file '{job}' is not readable YAML: line ")
    assert str(error.value).endswith("key 'batch_size' is given twice")
    assert "<unicode string>" not in str(error.value)


def test_bad_sweep_names_its_key_and_line(job: Path) -> None:
    text = job.read_text()
    write(job, text + "sweep:\n  temperature: [0, 1]\n  tempreature: [0, 1]\n")
    with pytest.raises(
        ConfigError,
        match=r"job.yaml line 17: sweep.tempreature: unknown key 'tempreature' \(did you mean 'temperature'\?\)",
    ):
        plan(job)
    write(job, text + "sweep:\n  temperature: [0, -1]\n")
    with pytest.raises(
        ConfigError,
        match=r"job.yaml line 16 \(sweep value -1\): run.sampling.temperature must be in \[0, 3.4e\+38\] \(float32\)",
    ):
        plan(job)
    write(job, text + "sweep:\n  temperature: 0.5\n")
    with pytest.raises(ConfigError, match=r"job.yaml line 16: sweep.temperature must be a non-empty list"):
        plan(job)


def test_a_command_line_value_of_a_swept_key_is_refused_not_replaced(job: Path) -> None:
    write(job, job.read_text() + "sweep:\n  temperature: [0, 1]\n  max_num_seqs: [1, 2]\n")
    with pytest.raises(
        ConfigError, match=r"--set temperature=0.5: run.sampling.temperature is swept \(job.yaml line 16\)"
    ):
        plan(job, "temperature=0.5")
    with pytest.raises(
        ConfigError, match=r"command-line option --max-num-seqs: max_num_seqs is swept \(job.yaml line 17"
    ):
        plan(job, max_num_seqs=3)
    with pytest.raises(ConfigError, match=r"--set run.sampling={top_p: 0.5}: run.sampling is swept"):
        plan(job, "run.sampling={top_p: 0.5}")
    assert len(plan(job, "top_p=0.5", max_model_len=64)) == 4  # keys the sweep leaves alone


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("run.record.score=true",), "run.record.score needs run.reference_field"),
        (("run.record.hidden_states={layers: []}",), "run.record.hidden_states.layers=[] is not allowed"),
        (("run.record.hidden_states={layers: [0], format: pt}",), "run.record.hidden_states.format='pt' is not"),
        (("run.record.hidden_states=[0]",), "run.record.hidden_states must be a mapping with layers"),
    ],
)
def test_bad_score_and_hidden_state_records(job: Path, sets: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=f"--set {re.escape(sets[0])}: {re.escape(message)}"):
        plan(job, *sets)


# ------------------------------------------------------------------ scores and hidden states: the file plumbing


def test_score_records_the_reference_continuation(job: Path, tmp_path: Path) -> None:
    rows = [{"qid": i, "question": f"Q{i}?", "answer": "ab" * (i + 1)} for i in range(3)]
    write(tmp_path / "data.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    run(job, "run.reference_field=answer", "run.record.score=true")
    records = lines(tmp_path / "out")
    for i, r in enumerate(records):
        assert r["inputs"] == {"prompt": f"Q{i}?", "reference": "ab" * (i + 1)}
        # the fake model gives every prompt token after the first logprob -1, ranked second (tests/fake_runner.py)
        tokens = 2 * (i + 1)  # one id per character
        assert r["score"] == {
            "logprob": -tokens,
            "token_logprobs": [-1.0] * tokens,
            "tokens": tokens,
            "is_greedy": False,
        }
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mean_score"] == pytest.approx(-4.0)


@pytest.mark.parametrize("form", ["npy", "npz"])
def test_hidden_states_are_saved_and_referenced_from_each_line(
    form: str, job: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LLM.encode's values are tested against transformers in tests/test_pooling.py; here: what it returns for the
    prompt the batch generated from lands in the file the line names."""
    returned: dict[tuple[int, ...], np.ndarray] = {}

    def encode(self, prompts, layers, use_tqdm=True):
        outputs = []
        for ids in prompts:
            data = np.random.default_rng(len(returned)).standard_normal((len(layers), len(ids), 8)).astype(np.float32)
            returned[tuple(ids)] = data
            outputs.append(PoolingRequestOutput("e", list(ids), PoolingOutput(data), list(layers)))
        return outputs

    monkeypatch.setattr(LLM, "encode", encode)
    run(job, f"run.record.hidden_states={{layers: [0, -1], format: {form}}}")
    for r in lines(tmp_path / "out"):
        ref = r["hidden_states"]
        stored = np.load(tmp_path / "out" / ref["file"])
        data = stored[ref["key"]] if form == "npz" else stored
        np.testing.assert_array_equal(data, returned[tuple(r["prompt_token_ids"])])
        assert ref["layers"] == [0, -1] and ref["shape"] == [2, r["prompt_tokens"], 8]
    files = sorted(p.name for p in (tmp_path / "out" / "hidden_states").iterdir())
    expected = ["batch-000000.npz", "batch-000002.npz", "batch-000004.npz"] if form == "npz" else None
    assert files == (expected or [f"{i:06d}.npy" for i in range(5)])


def test_set_replaces_a_key_the_file_spelt_with_dashes(job: Path) -> None:
    job.write_text(job.read_text().replace("max_num_seqs: 4", "max-num-seqs: 4"))
    [point] = plan(job, "max_num_seqs=3")
    assert point.engine.scheduler.max_num_seqs == 3
    [point] = plan(job, max_num_seqs=2)  # a command-line engine option
    assert point.engine.scheduler.max_num_seqs == 2


def test_cli_run_fails_before_any_engine_with_exit_2(job: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli, "make_llm", lambda *a: pytest.fail("an engine was built for a bad job"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", str(job), "--set", "run.dataset=missing.csv"])
    assert exit_info.value.code == 2
    assert "jllm: error: --set run.dataset=missing.csv: run.dataset=" in capsys.readouterr().err


def test_cli_run_with_set_and_engine_option(job: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    builds = Builds()
    monkeypatch.setattr(cli, "make_llm", builds)
    assert (
        cli.main(["run", str(job), "--set", "run.output_dir=o2", "--set", "max_tokens=3", "--max-num-seqs", "3"]) == 0
    )
    assert builds.configs[0].scheduler.max_num_seqs == 3
    assert all(r["completion_tokens"] == 3 for r in lines(tmp_path / "o2"))
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == [
        "run",
        "inputs",
        "prompt",
        "tok",
        "output",
        "tok",
        "out",
        "tok/s",
        "mean",
        "ppl",
        "mean",
        "score",
    ]
    assert out.splitlines()[1].split()[:4] == ["o2", "5/5", "90", "15"]


def test_every_engine_option_of_jllm_run_is_a_job_key(job: Path) -> None:
    """``jllm run`` offers the limits section's options (``--max-stop-strings``): a job file and --set take them."""
    [point] = plan(job, "max_stop_strings=3", max_prompt_chars=100)
    assert (point.engine.limits.max_stop_strings, point.engine.limits.max_prompt_chars) == (3, 100)
    assert point.resolved()["max_stop_strings"] == 3


@pytest.mark.parametrize(
    ("folder", "results", "config", "message"),
    [
        ("job.yaml/out", None, None, r"run.output_dir='job.yaml/out' cannot be created: Not a directory"),
        ("out", b"not json\n", None, r"results.jsonl line 1 is not JSON .*; give another output_dir, or delete"),
        ("out", b'{"id": "\xff"}\n', None, r"results.jsonl line 1 is not JSON \('utf-8' codec"),
        ("out", b'{"x": 1}\n', None, r"results.jsonl line 1 is not a result of jllm run \(an object with id, prompt"),
        (
            "out",
            None,
            "run: [\n",
            r"config.yaml is not readable YAML \(line 2, column 1: while parsing .*\); give another output_dir",
        ),
    ],
)
def test_output_dir_that_cannot_be_written_or_resumed_fails_before_any_engine(
    job: Path, tmp_path: Path, folder: str, results: bytes | None, config: str | None, message: str
) -> None:
    if results is not None or config is not None:
        (tmp_path / folder).mkdir()
    if results is not None:
        (tmp_path / folder / "results.jsonl").write_bytes(results)
    if config is not None:
        (tmp_path / folder / "config.yaml").write_text(config)
    builds = Builds()
    with pytest.raises(ConfigError, match=message):
        run_job(plan(job, f"run.output_dir={folder}"), builds, out=io.StringIO())
    assert builds.configs == []


def test_results_whose_text_holds_unicode_line_separators_resume(job: Path, tmp_path: Path) -> None:
    """JSON keeps U+2028 and U+0085 unescaped in a string (results are written with ensure_ascii off): a line is
    a newline's, not whatever str.splitlines splits at."""
    run(job)
    path = tmp_path / "out" / "results.jsonl"
    records = read_results(tmp_path / "out")
    records[0]["outputs"][0]["text"] = "a\u2028b\x85c"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert read_results(tmp_path / "out") == records


@pytest.mark.parametrize("suffix", ["jsonl", "txt"])
def test_dataset_lines_end_at_newlines_alone(suffix: str, job: Path, tmp_path: Path) -> None:
    """JSON keeps U+2028 unescaped in a string, and a prompt may hold a form feed: neither ends a line."""
    prompts = ["a\u2028b", "c\x0cd\x85e"]
    if suffix == "jsonl":
        text = "".join(json.dumps({"question": p}, ensure_ascii=False) + "\r\n" for p in prompts)
    else:
        text = "\n".join(prompts) + "\n"
    (tmp_path / f"data.{suffix}").write_text(text, encoding="utf-8")
    sets = [f"run.dataset=data.{suffix}", "run.id_field=null"] + (["run.prompt_field=null"] if suffix == "txt" else [])
    [point] = plan(job, *sets)
    assert [item.prompt for item in point.run.inputs] == prompts

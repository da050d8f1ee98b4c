"""`jllm run` with real models: perplexity against transformers' own logits, a run killed in a subprocess and
resumed, and every example in configs/examples/ on the default model (one engine shared by all of them)."""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from jllm import cli
from jllm.batch_run import run_job
from jllm.config import EngineConfig
from jllm.job_file import apply_sets, load_job_file, plan_job
from jllm.run_results import read_results

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parents[1] / "configs" / "examples"
TINY_ENGINE = dict(max_model_len=64, max_num_batched_tokens=16, max_num_seqs=2, num_pages=32)  # few buckets to compile
LOGPROB_ATOL = 2e-4  # float32 on both sides: per-token logprob
PERPLEXITY_RTOL = 1e-4


@functools.cache
def hf_model(model_dir: Path):
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_forward(model_dir: Path, token_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """transformers' float32 logits ``[T, vocab]`` and ``output_hidden_states`` ``[layers + 1, T, hidden]``."""
    import torch

    with torch.no_grad():
        out = hf_model(model_dir)(torch.tensor([token_ids]), output_hidden_states=True)
    return out.logits[0].numpy(), torch.stack(out.hidden_states)[:, 0].numpy()


def reference_logprobs(model_dir: Path, token_ids: list[int]) -> np.ndarray:
    """log p(token t | tokens before it) for t >= 1, from transformers' float32 logits."""
    logits = hf_forward(model_dir, token_ids)[0].astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    logprobs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return logprobs[np.arange(len(token_ids) - 1), token_ids[1:]]


def assert_perplexity_matches(model_dir: Path, records: list[dict], atol: float, rtol: float) -> None:
    for record in records:
        ids = record["prompt_token_ids"]
        expected = reference_logprobs(model_dir, ids)
        assert record["prompt_logprobs"][0] is None
        np.testing.assert_allclose(record["prompt_logprobs"][1:], expected, atol=atol, rtol=0)
        np.testing.assert_allclose(record["perplexity"], np.exp(-expected.mean()), rtol=rtol)


def assert_hidden_states_match(model_dir: Path, folder: Path, records: list[dict], atol: float) -> None:
    """Each line's file holds transformers' hidden states of the line's prompt at the asked layers."""
    for record in records:
        ref = record["hidden_states"]
        stored = np.load(folder / ref["file"])
        data = stored[ref["key"]] if "key" in ref else stored
        expected = hf_forward(model_dir, record["prompt_token_ids"])[1][ref["layers"]]
        assert data.shape == expected.shape == tuple(ref["shape"])
        np.testing.assert_allclose(data, expected, atol=atol, rtol=atol)


def random_texts(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    alphabet = list("abcdefghijklmnopqrstuvwxyz ,.ABCDE0123456789")
    return ["".join(rng.choice(alphabet, size=rng.integers(12, 40))) for _ in range(count)]


def write_job(path: Path, model: Path, run: dict) -> Path:
    path.write_text(yaml.safe_dump({"model": str(model), **TINY_ENGINE, "run": run}))
    return path


@pytest.fixture(scope="module")
def tiny_llm(tiny_model: Path):
    """One engine for the tiny model's runs in this process (a job with TINY_ENGINE's keys gets this config)."""
    return cli.make_llm(EngineConfig.from_flat({"model": str(tiny_model), **TINY_ENGINE}))


def run_in_process(job: Path, llm, *sets: str) -> None:
    loaded = load_job_file(job)
    apply_sets(loaded, list(sets))

    def same_engine(config: EngineConfig):
        assert config == llm.config
        return llm

    run_job(plan_job(loaded), same_engine)


def test_perplexity_score_and_hidden_states_equal_transformers_on_a_tiny_llama(
    tiny_model: Path, tiny_llm, tmp_path: Path
) -> None:
    texts = random_texts(6, seed=int(time.time()))
    run = {
        "dataset": [{"text": t[:-5], "rest": t[-5:]} for t in texts],
        "prompt_field": "text",
        "reference_field": "rest",
        "sampling": {"temperature": 0, "max_tokens": 1},
        "record": {"perplexity": True, "prompt_logprobs": 0, "score": True, "hidden_states": {"layers": [0, 1, -1]}},
        "batch_size": 4,
        "output_dir": str(tmp_path / "out"),
    }
    run_in_process(write_job(tmp_path / "job.yaml", tiny_model, run), tiny_llm)
    records = read_results(tmp_path / "out")
    assert [r["inputs"] for r in records] == [{"prompt": t[:-5], "reference": t[-5:]} for t in texts]
    assert_perplexity_matches(tiny_model, records, LOGPROB_ATOL, PERPLEXITY_RTOL)
    assert_hidden_states_match(tiny_model, tmp_path / "out", records, atol=1e-4)
    for record in records:  # the character tokenizer: one id per character of the reference
        continuation = tiny_llm.get_tokenizer().encode(record["inputs"]["reference"], add_special_tokens=False)
        whole = reference_logprobs(tiny_model, record["prompt_token_ids"] + continuation)
        expected = whole[len(record["prompt_token_ids"]) - 1 :]
        np.testing.assert_allclose(record["score"]["token_logprobs"], expected, atol=LOGPROB_ATOL, rtol=0)
        assert record["score"]["logprob"] == pytest.approx(expected.sum(), abs=5 * LOGPROB_ATOL)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["mean_perplexity"] == pytest.approx(np.mean([r["perplexity"] for r in records]))
    assert summary["mean_score"] == pytest.approx(np.mean([r["score"]["logprob"] for r in records]))


def run_cli(job: Path, *args: str) -> subprocess.CompletedProcess:
    """The same jllm cache (and so XLA's compilation cache) as this process: tiny_llm's programs are reused."""
    command = [sys.executable, "-m", "jllm.cli", "run", str(job), *args]
    return subprocess.run(command, cwd=job.parent, capture_output=True, text=True, timeout=400)


def test_killed_run_resumes_to_the_file_of_an_uninterrupted_one(
    tiny_model: Path, tiny_llm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sampled (temperature 1), so equal files show the per-input seeds, not greedy decoding, make them equal."""
    run = {
        "dataset": random_texts(16, seed=1),
        "sampling": {"temperature": 1.0, "max_tokens": 16, "ignore_eos": True},
        "record": {"logprobs": 1},
        "batch_size": 2,
        "output_dir": "killed",
    }
    job = write_job(tmp_path / "job.yaml", tiny_model, run)
    log = tmp_path / "killed.log"  # a file, not a pipe: tqdm's output must never block the run
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "jllm.cli", "run", str(job)], cwd=tmp_path, stderr=stderr)
    results = tmp_path / "killed" / "results.jsonl"
    deadline = time.monotonic() + 400
    while not (results.is_file() and results.read_text().count("\n") >= 4):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(read_results(tmp_path / "killed"))
    assert 4 <= done_at_kill < 16
    resumed = run_cli(job)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    monkeypatch.chdir(tmp_path)
    run_in_process(job, tiny_llm, "run.output_dir=whole")

    def without_timing(folder: str) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "timing"} for r in read_results(tmp_path / folder)]

    assert without_timing("killed") == without_timing("whole")
    assert len(without_timing("whole")) == 16
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert (summary["completed"], summary["resumed"]) == (16, done_at_kill)


def test_every_example_runs_on_the_default_model(default_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    jobs = {f.stem: plan_job(load_job_file(f), model=str(default_model_dir)) for f in sorted(EXAMPLES.glob("*.yaml"))}
    assert set(jobs) == {"chat", "hidden-states", "perplexity", "sampling-sweep"}
    engine = jobs["perplexity"][0].engine
    assert all(point.engine == engine for points in jobs.values() for point in points), "examples share an engine"
    llm = cli.make_llm(engine)
    for points in jobs.values():
        run_job(points, lambda config: llm)

    perplexity = read_results(tmp_path / "runs" / "perplexity")
    assert len(perplexity) == len((EXAMPLES / "tiny-text.txt").read_text().splitlines())
    # 30 layers in float32: per-token logprobs agree to 1e-3, perplexity to 1e-3 relative
    assert_perplexity_matches(default_model_dir, perplexity, atol=1e-3, rtol=1e-3)

    hidden = read_results(tmp_path / "runs" / "hidden-states")
    assert [r["hidden_states"]["layers"] for r in hidden] == [[0, 15, -1]] * 2
    assert_hidden_states_match(default_model_dir, tmp_path / "runs" / "hidden-states", hidden, atol=1e-3)

    sweep = sorted((tmp_path / "runs" / "sampling-sweep").iterdir())
    assert len(sweep) == 4
    outputs = {p.name: [r["outputs"][0] for r in read_results(p)] for p in sweep}
    greedy = [outputs[name] for name in outputs if "temperature=0," in name]
    assert greedy[0] == greedy[1]  # greedy ignores top_p
    assert all(len(o["top_logprobs"][0]) == 2 for o in greedy[0])

    chat = read_results(tmp_path / "runs" / "chat")
    tokenizer = llm.get_tokenizer()
    for record, row in zip(chat, map(json.loads, (EXAMPLES / "chat.jsonl").read_text().splitlines()), strict=True):
        assert record["id"] == row["id"] and record["inputs"] == {"messages": row["messages"]}
        template = tokenizer.apply_chat_template(row["messages"], add_generation_prompt=True)["input_ids"]
        assert record["prompt_token_ids"] == list(template)
        assert record["outputs"][0]["text"].strip()


def test_a_sweep_over_checkpoints_of_one_model_starts_one_engine(tiny_model: Path, tmp_path: Path) -> None:
    """Points that change only the model swap in a same-shaped checkpoint's weights (``LLM.load_weights``), with
    the outputs an engine started on it gives; a model of another shape gets an engine of its own."""
    from model_utils import TINY_CONFIG, save_char_tokenizer, save_tiny_checkpoint

    from jllm.llm import LLM
    from jllm.sampling import SamplingParams

    others = {}
    for name, seed, config in [("other", 1, {}), ("wide", 2, {"hidden_size": 96})]:
        others[name] = save_tiny_checkpoint("LlamaForCausalLM", {**TINY_CONFIG, **config}, tmp_path / name, seed=seed)
        save_char_tokenizer(others[name], TINY_CONFIG["vocab_size"])
    texts = random_texts(3, seed=2)
    run = {"dataset": texts, "sampling": {"temperature": 0, "max_tokens": 6}, "output_dir": str(tmp_path / "out")}
    job = write_job(tmp_path / "job.yaml", tiny_model, run)
    job.write_text(
        job.read_text() + yaml.safe_dump({"sweep": {"model": [str(tiny_model), *map(str, others.values())]}})
    )
    built: list[str] = []

    def make_llm(config: EngineConfig):
        built.append(config.model.model)
        return cli.make_llm(config)

    run_job(plan_job(load_job_file(job)), make_llm)
    assert built == [str(tiny_model), str(others["wide"])]
    started = LLM(str(others["other"]), **TINY_ENGINE).generate(texts, SamplingParams(temperature=0, max_tokens=6))
    swept = sorted((tmp_path / "out").iterdir())[1]  # the sweep's second point
    assert [r["outputs"][0]["token_ids"] for r in read_results(swept)] == [o.outputs[0].token_ids for o in started]

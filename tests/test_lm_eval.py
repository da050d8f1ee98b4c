"""lm-evaluation-harness end to end: a small local multiple-choice task (``tests/data/lm_eval/``) through
``local-completions`` against the server, whose per-choice log-likelihoods (from ``echo`` + ``logprobs``) must equal
the engine's own prompt logprobs for the same tokens. The model is the tests' tiny chat model (random weights, the
default model's tokenizer): the check is the plumbing, not the answers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from server_utils import ENGINE_ARGS, RunningServer, engine_config, tiny_chat_model

from jllm.llm import LLM
from jllm.sampling import SamplingParams

pytestmark = pytest.mark.slow  # a real engine, a server and lm-eval's imports (datasets, pandas)

TASK_DIR = Path(__file__).parent / "data" / "lm_eval"
TASK = "jllm_tiny_mc"
MODEL = "tiny-chat"


def task_copy(into: Path) -> Path:
    """The shipped task with its dataset path made absolute (``datasets`` resolves relative paths from the cwd)."""
    config = yaml.safe_load((TASK_DIR / "tiny_mc.yaml").read_text())
    shutil.copy(TASK_DIR / "tiny_mc.jsonl", into / "tiny_mc.jsonl")
    config["dataset_kwargs"]["data_files"]["test"] = str(into / "tiny_mc.jsonl")
    (into / "tiny_mc.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    return into


def engine_loglikelihoods(llm: LLM, tokenizer, docs: list[dict]) -> list[list[float]]:
    """Each doc's per-choice log-likelihood from ``LLM.generate``'s prompt logprobs, on the tokens lm-eval sends:
    the whole context + " choice" encoded, the continuation being what follows the context's own encoding."""
    prompts, spans = [], []
    for doc in docs:
        context = f"Question: {doc['question']}\nAnswer:"
        for choice in doc["choices"]:
            whole = tokenizer(context + " " + choice, add_special_tokens=False).input_ids
            prompts.append({"prompt_token_ids": whole})
            spans.append((len(tokenizer(context, add_special_tokens=False).input_ids), whole))
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=1)
    outputs = llm.generate(prompts, params, use_tqdm=False)
    sums = [
        sum(out.prompt_logprobs[i][whole[i]].logprob for i in range(start, len(whole)))
        for out, (start, whole) in zip(outputs, spans, strict=True)
    ]
    it = iter(sums)
    return [[next(it) for _ in doc["choices"]] for doc in docs]


def test_lm_eval_local_completions_multiple_choice(
    default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer

    model_dir = tiny_chat_model(tmp_path_factory.getbasetemp(), default_model_dir)
    llm = LLM(str(model_dir), **ENGINE_ARGS)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    docs = [json.loads(line) for line in (TASK_DIR / "tiny_mc.jsonl").read_text().splitlines()]
    expected = engine_loglikelihoods(llm, tokenizer, docs)

    config = engine_config(model_dir, served_model_name=MODEL)
    with RunningServer(llm.engine, config) as server:
        results = simple_evaluate(
            model="local-completions",
            model_args=(
                f"model={MODEL},base_url={server.url}/v1/completions,tokenizer_backend=huggingface,"
                f"tokenizer={model_dir},num_concurrent=1,max_retries=1"
            ),
            tasks=[TASK],
            task_manager=TaskManager(include_path=str(task_copy(tmp_path_factory.mktemp("lm_eval_task")))),
            log_samples=True,
        )
        assert not llm.engine.has_unfinished_requests()

    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    assert len(samples) == len(docs)
    for sample, want in zip(samples, expected, strict=True):
        got = [resp[0][0] for resp in sample["resps"]]  # one (loglikelihood, is_greedy) per choice
        assert got == pytest.approx(want, abs=1e-4)  # float32 on both sides; the server sums lm-eval's slice
    accuracy = results["results"][TASK]["acc,none"]
    correct = [max(range(len(w)), key=w.__getitem__) == d["answer"] for w, d in zip(expected, docs, strict=True)]
    assert math.isclose(accuracy, sum(correct) / len(docs))

"""No client-chosen compile (issue 23, finding 2): request fields that set a compiled width take one of a few fixed
values (capped: a request beyond a cap is a 400), warm-up compiles every program a request can pick, and /metrics
counts programs compiled after start-up (0 after any request mix).

Prompts of 2^k - 1 tokens with ``repetition_penalty`` (k = 4..12) each compiled a new penalty width (8.9-21.5 s
apiece, every stream waiting); ``stop_token_ids`` lists of 2^k ids a new banned width each.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_runner import TINY_TOKENIZER, fake_engine
from model_utils import TINY_CONFIG, assert_only_warmup_programs, save_tiny_checkpoint
from server_utils import RunningServer, http, metrics

from jllm.build import build_engine
from jllm.config import LimitsConfig, load_config
from jllm.engine import LLMEngine
from jllm.inputs import Prompt
from jllm.sampler import banned_cap
from jllm.sampling import SamplingParams
from jllm.sequence import ScheduledSequence, Sequence
from jllm.step_inputs import pick_variant, sampler_widths

VOCAB = 512


def _seq(params: SamplingParams, prompt_len: int, output_len: int = 0) -> Sequence:
    return Sequence(
        seq_id=0,
        request_id="r",
        sample_index=0,
        prompt_token_ids=list(range(prompt_len)),
        sampling_params=params,
        arrival_time=0.0,
        sampling_seed=0,
        output_token_ids=list(range(output_len)),
    )


def _widths(seqs: list[Sequence], context_len: int = 4096) -> tuple[int, int]:
    """The sampler widths the runner would give the batch (with the default stop-id cap and one EOS id)."""
    variant = pick_variant([ScheduledSequence(seq, 1) for seq in seqs], VOCAB, {2})
    cap = banned_cap(LimitsConfig().max_stop_token_ids, {2})
    return sampler_widths(seqs, variant, context_len=context_len, eos_token_ids={2}, general_banned=cap)


def test_penalty_widths_chosen_by_prompt_length_are_two() -> None:
    rep = SamplingParams(repetition_penalty=1.3)
    widths = {_widths([_seq(rep, 2**k - 1)]) for k in range(4, 13)}
    rng = random.Random(0)
    pres = SamplingParams(presence_penalty=0.5)
    widths |= {_widths([_seq(pres, 10, rng.randrange(4096))]) for _ in range(50)}
    assert widths == {(128, 64), (4096, 64)}


def test_stop_token_ids_under_the_cap_take_one_banned_width() -> None:
    """Up to the cap, any count of stop ids fits the base samplers' 8 bans or the general sampler's cap-wide ones."""
    cap = LimitsConfig().max_stop_token_ids
    widths = {
        _widths([_seq(SamplingParams(stop_token_ids=list(range(3, 3 + n)), min_tokens=5), 4)]) for n in range(cap + 1)
    }
    assert widths == {(0, 8), (128, 64)}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with RunningServer(fake_engine(), load_config(None, served_model_name="scripted")) as running:
        yield running


def test_stop_token_ids_over_the_cap_are_a_400(server: RunningServer) -> None:
    cap = LimitsConfig().max_stop_token_ids
    body = {"model": "scripted", "prompt": "hi", "max_tokens": 2, "stop_token_ids": list(range(3, 4 + cap))}
    reply = http("POST", f"{server.url}/v1/completions", json_body=body)
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert error["param"] == "stop_token_ids" and f"max_stop_token_ids={cap}" in error["message"]
    body["stop_token_ids"] = body["stop_token_ids"][:cap]
    assert http("POST", f"{server.url}/v1/completions", json_body=body).status == 200


def test_metrics_count_programs_compiled_after_startup(server: RunningServer) -> None:
    before = metrics(server.url)["jllm:programs_compiled_after_startup_total"]
    server.engine.runner.num_compilations += 3  # as a runner meeting three new shapes would
    http("POST", f"{server.url}/v1/completions", json_body={"model": "scripted", "prompt": "hi", "max_tokens": 2})
    assert metrics(server.url)["jllm:programs_compiled_after_startup_total"] == before + 3


@pytest.mark.slow  # builds and warms a tiny model's engine (seconds of compiling on the CPU)
def test_no_request_mix_compiles_a_program_after_warm_up(tmp_path: Path) -> None:
    """A tiny real model's engine, then requests with and without penalties over prompt lengths 1..200 (both
    penalty widths), logit biases up to the whole vocabulary, stop ids with min_tokens, logprobs, prompt logprobs,
    allowed ids, grammars, top-k/top-p and n > 1, mixed in the same steps: not one program is compiled after warm-up
    (before, each penalty width, banned width, bias width and sampler variant compiled on first use, every stream
    waiting). The general sampler leaves a plain row alone: a greedy request gives the tokens beside the mix that it
    gives alone."""
    model_dir = save_tiny_checkpoint("LlamaForCausalLM", {**TINY_CONFIG, "vocab_size": VOCAB}, tmp_path / "model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_TOKENIZER / name, model_dir / name)
    config = load_config(
        None, model=str(model_dir), dtype="float32", max_model_len=256, max_num_batched_tokens=32, max_num_seqs=4,
        num_pages=160,
    )  # fmt: skip
    engine = build_engine(config, show_progress=False)
    warm = engine.runner.num_compilations
    plain = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    alone = _generate(engine, {"plain": ([5, 6, 7], plain)})["plain"]
    rng = random.Random(0)
    requests = {f"r{i}": _random_request(rng) for i in range(40)} | {
        "plain": ([5, 6, 7], plain),
        "long-penalty": (list(range(3, 203)), SamplingParams(repetition_penalty=1.2, max_tokens=4)),  # 256 wide
        "widest-bias": ([9], SamplingParams(logit_bias=dict.fromkeys(range(VOCAB), 0.5), max_tokens=4)),
    }
    done = _generate(engine, requests)
    assert len(done) == len(requests)
    assert done["plain"] == alone
    assert engine.runner.num_compilations == warm
    assert_only_warmup_programs(engine.runner)


def _generate(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, list[int]]:
    for rid, (prompt, params) in requests.items():
        engine.add_request(rid, Prompt(prompt), params)
    done = {}
    while engine.has_unfinished_requests():
        done |= {o.request_id: o.outputs[0].token_ids for o in engine.step() if o.finished}
    return done


def _random_request(rng: random.Random) -> tuple[list[int], SamplingParams]:
    """A prompt of 1..200 ids and a random pick of the sampling fields that used to choose a compiled shape."""
    options: dict[str, Any] = {
        "repetition_penalty": rng.uniform(0.8, 1.5),
        "presence_penalty": rng.uniform(-1, 1),
        "frequency_penalty": rng.uniform(-1, 1),
        "logit_bias": {rng.randrange(VOCAB): rng.uniform(-5, 5) for _ in range(rng.choice([1, 17, 300, 1024]))},
        "stop_token_ids": rng.sample(range(3, VOCAB), rng.randint(1, 32)),
        "min_tokens": rng.randint(1, 4),
        "logprobs": rng.randint(0, 20),
        "prompt_logprobs": rng.randint(0, 5),
        "allowed_token_ids": rng.sample(range(3, VOCAB), 20),
        "structured_outputs": {"regex": "[0-9]{2,4}x"},
        "temperature": rng.uniform(0.5, 1.5),
        "top_k": rng.randint(1, 50),
        "top_p": rng.uniform(0.5, 0.99),
        "n": 2,
    }
    fields = {k: options[k] for k in rng.sample(sorted(options), rng.randint(0, 3))}
    if "structured_outputs" in fields:
        fields.pop("allowed_token_ids", None)  # a grammar and an id list could leave no token allowed
        fields.pop("logit_bias", None)
    prompt = [rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 200))]
    return prompt, SamplingParams(max_tokens=rng.randint(1, 12), seed=rng.randrange(1000), **fields)

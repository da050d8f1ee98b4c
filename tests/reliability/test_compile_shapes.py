"""No client-chosen compile (issue 23, finding 2): request fields that set a compiled width are bucketed into a
few values and capped, a request beyond a cap is a 400, and /metrics counts programs compiled after start-up.

Prompts of 2^k - 1 tokens with ``repetition_penalty`` (k = 4..12) each compiled a new penalty width (8.9-21.5 s
apiece, every stream waiting); ``stop_token_ids`` lists of 2^k ids a new banned width each.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_runner import TINY_TOKENIZER, fake_engine
from model_utils import TINY_CONFIG, save_tiny_checkpoint
from server_utils import RunningServer, http, metrics

from jllm.build import build_engine
from jllm.config import LimitsConfig, load_config
from jllm.inputs import Prompt
from jllm.sampler import banned_width, penalty_width
from jllm.sampling import SamplingParams
from jllm.sequence import Sequence


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


def test_penalty_widths_chosen_by_prompt_length_are_two() -> None:
    rep = SamplingParams(repetition_penalty=1.3)
    widths = {penalty_width([_seq(rep, 2**k - 1)], 4096) for k in range(4, 13)}
    rng = random.Random(0)
    pres = SamplingParams(presence_penalty=0.5)
    widths |= {penalty_width([_seq(pres, 10, rng.randrange(4096))], 4096) for _ in range(50)}
    assert widths == {128, 4096}


def test_banned_widths_under_the_stop_id_cap_are_few() -> None:
    cap = LimitsConfig().max_stop_token_ids
    widths = {
        banned_width([_seq(SamplingParams(stop_token_ids=list(range(3, 3 + n)), min_tokens=5), 4)], {2})
        for n in range(cap + 1)
    }
    assert widths <= {8, 16, 32, 64}


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
def test_repetition_penalty_over_client_chosen_prompt_lengths_compiles_nothing_new(tmp_path: Path) -> None:
    """Prompts of 2^k - 1 tokens (k = 4..7) with a repetition penalty on a real runner: once the buckets they use
    have their penalty programs (k = 5 adds the 32-token bucket's), 63 and 127 tokens compile nothing (before, each
    length was a new penalty width: a new forward and sampler per bucket). Penalty widths reach only the sampler's
    packed inputs, so the forwards stay the ones warm-up compiled, one per bucket."""
    model_dir = save_tiny_checkpoint("LlamaForCausalLM", {**TINY_CONFIG, "vocab_size": 512}, tmp_path / "model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_TOKENIZER / name, model_dir / name)
    config = load_config(
        None, model=str(model_dir), dtype="float32", max_model_len=256, max_num_batched_tokens=32, max_num_seqs=4,
        num_pages=96,
    )  # fmt: skip
    engine = build_engine(config, show_progress=False)
    params = SamplingParams(repetition_penalty=1.3, max_tokens=3, temperature=0.0)
    counts = []
    for k in range(4, 8):
        engine.add_request(f"r{k}", Prompt(list(range(3, 3 + 2**k - 1))), params)
        while engine.has_unfinished_requests():
            engine.step()
        counts.append(engine.runner.num_compilations)
    assert counts[1] == counts[2] == counts[3], counts
    forwards = [layout for variant, layout, _ in engine.runner.compiled_programs() if variant is None]
    assert len(forwards) == len(engine.runner.buckets)

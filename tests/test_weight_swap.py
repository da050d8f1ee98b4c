"""``LLM.load_weights``: another checkpoint of the same model runs from the next request as if the engine had been
started on it, nothing compiled again; another model, tokenizer or generation config is refused by name, before
anything changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from model_utils import TINY_CONFIG, save_char_tokenizer, save_tiny_checkpoint

from jllm.llm import LLM
from jllm.sampling import SamplingParams
from jllm.weight_swap import WeightsMismatch

pytestmark = pytest.mark.slow

KEYS = dict(
    dtype="float32", max_model_len=64, max_num_batched_tokens=32, max_num_seqs=4, num_pages=48, compile_at_start=False
)
PROMPTS = ["Hello world", "x = [1, 2]", "abc"]
GREEDY = SamplingParams(temperature=0, max_tokens=8)


def checkpoint(root: Path, name: str, seed: int, **config: int) -> Path:
    out = save_tiny_checkpoint("LlamaForCausalLM", {**TINY_CONFIG, **config}, root / name, seed=seed)
    save_char_tokenizer(out, TINY_CONFIG["vocab_size"])
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("swap")
    return {
        "a": checkpoint(root, "a", 0),
        "b": checkpoint(root, "b", 1),
        "wide": checkpoint(root, "wide", 2, hidden_size=96),
    }


def tokens(llm: LLM) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]


def test_swapped_weights_generate_what_an_engine_started_on_them_does(models: dict[str, Path]) -> None:
    expected = tokens(LLM(str(models["b"]), **KEYS))
    llm = LLM(str(models["a"]), **KEYS)
    before = tokens(llm)  # also fills the prefix cache with the old weights' K/V
    compiled = llm.engine.runner.num_compilations
    llm.load_weights(models["b"])
    assert tokens(llm) == expected != before
    assert llm.engine.runner.num_compilations == compiled  # the same programs, run on the new weights
    assert llm.config.model.model == str(models["b"]) and llm.engine.runner.loaded.model_dir == models["b"]


def test_another_model_or_tokenizer_is_refused_and_the_running_weights_stay(
    models: dict[str, Path], tmp_path: Path
) -> None:
    llm = LLM(str(models["a"]), **KEYS)
    before = tokens(llm)
    with pytest.raises(WeightsMismatch, match="differs from the running one in hidden_size"):
        llm.load_weights(models["wide"])
    other_config = tmp_path / "b-sampling"
    shutil.copytree(models["b"], other_config)
    (other_config / "generation_config.json").write_text(json.dumps({"temperature": 0.3}))
    with pytest.raises(WeightsMismatch, match="generation_config.json differs"):
        llm.load_weights(other_config)
    assert tokens(llm) == before and llm.config.model.model == str(models["a"])


def test_weights_are_not_swapped_under_running_requests(models: dict[str, Path]) -> None:
    llm = LLM(str(models["a"]), **KEYS)
    llm.engine.add_request("running", llm.engine.inputs.process("Hello", GREEDY), GREEDY)
    with pytest.raises(RuntimeError, match="between requests"):
        llm.load_weights(models["b"])


def test_a_level_one_sleep_frees_the_device_arrays_and_wakes_to_the_same_tokens(models: dict[str, Path]) -> None:
    llm = LLM(str(models["a"]), **KEYS)
    before, compiled = tokens(llm), llm.engine.runner.num_compilations
    held = [*llm.engine.runner.params, *llm.engine.runner.kv_caches]
    llm.sleep(level=1)
    assert llm.is_sleeping() and all(x.is_deleted() for x in held)
    with pytest.raises(RuntimeError, match="asleep: wake_up"):
        tokens(llm)
    with pytest.raises(RuntimeError, match="asleep: wake_up"):
        llm.embed(["abc"])
    llm.wake_up()
    assert not llm.is_sleeping() and tokens(llm) == before
    assert llm.engine.runner.num_compilations == compiled


def test_a_level_two_sleep_takes_new_weights_after_waking(models: dict[str, Path]) -> None:
    expected = tokens(LLM(str(models["b"]), **KEYS))
    llm = LLM(str(models["a"]), **KEYS)
    tokens(llm)
    llm.sleep(level=2)
    with pytest.raises(RuntimeError, match="asleep: wake_up"):
        llm.load_weights(models["b"])
    llm.wake_up()
    with pytest.raises(RuntimeError, match="no weights since its level-2 sleep: load_weights first"):
        tokens(llm)
    llm.load_weights(models["b"])
    assert tokens(llm) == expected
    with pytest.raises(ValueError, match="sleep level must be 1"):
        llm.sleep(level=3)


def test_the_admin_route_swaps_a_served_model_s_weights(models: dict[str, Path]) -> None:
    from server_utils import RunningServer, http

    from jllm.build import build_engine
    from jllm.config import load_config

    expected = [o.outputs[0].text for o in LLM(str(models["b"]), **KEYS).generate(PROMPTS, GREEDY, use_tqdm=False)]
    config = load_config(None, model=str(models["a"]), api_key="key", served_model_name="tiny", **KEYS)
    auth = {"Authorization": "Bearer key"}
    with RunningServer(build_engine(config, show_progress=False), config) as server:
        url = f"{server.url}/v1/admin/models/tiny/weights"
        reply = http("POST", url, json_body={"model": str(models["b"])}, headers=auth)
        assert reply.status == 200 and reply.json()["model"] == str(models["b"]), reply.body
        body = {"max_tokens": 8, "temperature": 0}
        completions = [
            http("POST", f"{server.url}/v1/completions", json_body={**body, "prompt": p}, headers=auth) for p in PROMPTS
        ]
        assert all(c.status == 200 for c in completions), completions[0].body
        texts = [c.json()["choices"][0]["text"] for c in completions]
        assert texts == expected
        wide = http("POST", url, json_body={"model": str(models["wide"])}, headers=auth)
        assert wide.status == 400 and "hidden_size" in wide.json()["error"]["message"]
        unknown = http("POST", f"{server.url}/v1/admin/models/zz/weights", json_body={"model": "x"}, headers=auth)
        assert unknown.status == 404
        assert http("POST", url, json_body={"path": "x"}, headers=auth).status == 400

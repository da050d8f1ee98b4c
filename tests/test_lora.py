"""Multi-LoRA: adapters read from PEFT folders match PEFT's forward, mixed batches, slots, refusals by name."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from fake_runner import fake_engine
from lora_utils import ALL_TARGETS, ENGINE_KEYS, lora_logits, lora_manager, peft_logits, save_adapter, save_llama
from model_utils import relative_error, run_tp_worker
from server_utils import RunningServer, http

from jllm import LLM, SamplingParams
from jllm.block_manager import BlockManager
from jllm.build import build_engine
from jllm.config import load_config
from jllm.loader import load_model
from jllm.lora import LoRARequest
from jllm.lora.peft_files import AdapterError, check_architecture, slots_bytes
from jllm.lora.slots import LoRASlots
from jllm.memory_plan import plan_model
from jllm.parallel import make_mesh
from jllm.scheduler import Scheduler
from jllm.sequence import Sequence, SequenceStatus


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A tiny random Llama (4 query heads over 2 KV heads) and two adapters: every target at r=4, and q/v/down at
    r=8 with rsLoRA's scaling."""
    pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("lora")
    model = save_llama(root)
    first = save_adapter(model, root / "all", r=4, targets=ALL_TARGETS, seed=1, lora_alpha=8)
    second = save_adapter(
        model, root / "qvd", r=8, targets=["q_proj", "v_proj", "down_proj"], seed=2, lora_alpha=16, use_rslora=True
    )
    return model, [first, second]


@pytest.mark.slow
def test_logits_with_each_adapter_match_peft_and_a_mixed_batch_gives_each_row_its_own(llama):
    """One ragged step mixing no adapter, adapter 1 and adapter 2: each row within 1e-5 (relative, float32) of
    PEFT's forward with its adapter, or of the base model's."""
    model_dir, adapters = llama
    loaded = load_model(model_dir, mesh=make_mesh(1), dtype="float32")
    manager = lora_manager(loaded, adapters)
    slots = [0, manager.slots.acquire(1), manager.slots.acquire(2)]
    rng = np.random.default_rng(0)
    sequences = [rng.integers(3, 160, n).tolist() for n in (21, 9, 17)]
    got = lora_logits(loaded, manager, sequences, slots)
    for seq, adapter, logits in zip(sequences, [None, *adapters], got, strict=True):
        want = peft_logits(model_dir, adapter, seq)
        assert relative_error(logits, want) < 1e-5
    assert relative_error(got[1], peft_logits(model_dir, None, sequences[1])) > 1e-2  # the adapter matters


@pytest.mark.slow
def test_qwen3_logits_with_an_adapter_match_peft(tmp_path):
    """Qwen3's q/k norms read the projections with their deltas added, as PEFT's forward does."""
    pytest.importorskip("peft")
    model_dir = save_llama(tmp_path, "Qwen3ForCausalLM")
    adapter = save_adapter(model_dir, tmp_path / "a", r=4, targets=["q_proj", "k_proj", "gate_proj"], seed=3)
    loaded = load_model(model_dir, mesh=make_mesh(1), dtype="float32")
    manager = lora_manager(loaded, [adapter])
    seq = np.random.default_rng(1).integers(3, 160, 19).tolist()
    got = lora_logits(loaded, manager, [seq], [manager.slots.acquire(1)])[0]
    assert relative_error(got, peft_logits(model_dir, adapter, seq)) < 1e-5


GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def lora_llm(llama) -> LLM:
    return LLM(str(llama[0]), **ENGINE_KEYS)


def _texts(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


@pytest.mark.slow
def test_a_batch_mixing_adapters_gives_each_prompt_its_tokens_alone(lora_llm, llama):
    """No adapter, adapter 1 and adapter 2 in one batch: each prompt's greedy tokens are those it gets alone, and
    the adapters change them."""
    adapters = [None, LoRARequest("all", 1, str(llama[1][0])), LoRARequest("qvd", 2, str(llama[1][1]))]
    prompts = ["the quick brown fox", "jumps over", "the lazy dog, again"]
    alone = [
        _texts(lora_llm.generate([p], GREEDY, use_tqdm=False, lora_request=a))[0]
        for p, a in zip(prompts, adapters, strict=True)
    ]
    outputs = lora_llm.generate(prompts, GREEDY, use_tqdm=False, lora_request=adapters)
    assert [o.lora_request for o in outputs] == adapters  # vLLM's RequestOutput.lora_request
    mixed = _texts(outputs)
    assert mixed == alone
    base = _texts(lora_llm.generate(prompts, GREEDY, use_tqdm=False))
    assert base[0] == alone[0] and base[1] != alone[1] and base[2] != alone[2]


@pytest.mark.slow
def test_prefix_cache_pages_under_one_adapter_never_serve_another(lora_llm, llama):
    """A prompt of several pages run under adapter 1 is cached for adapter 1 alone: adapter 2 and the base model
    find no cached page and get their own tokens; adapter 1 again hits the cache."""
    first, second = LoRARequest("all", 1, str(llama[1][0])), LoRARequest("qvd", 2, str(llama[1][1]))
    prompt = ["a prompt long enough to fill a few pages of the pool"]
    fresh = {a: _texts(lora_llm.generate(prompt, GREEDY, use_tqdm=False, lora_request=a)) for a in (second, None)}
    lora_llm.engine.block_manager.reset_prefix_cache()
    cached = lora_llm.generate(prompt, GREEDY, use_tqdm=False, lora_request=first)
    for adapter in (second, None):
        out = lora_llm.generate(prompt, GREEDY, use_tqdm=False, lora_request=adapter)
        assert out[0].num_cached_tokens == 0
        assert _texts(out) == fresh[adapter]
    again = lora_llm.generate(prompt, GREEDY, use_tqdm=False, lora_request=first)
    assert again[0].num_cached_tokens >= 32 and _texts(again) == _texts(cached)


def test_page_hashes_of_one_prompt_differ_per_adapter():
    """The block manager chains an adapter's pages from its own root: the base model's cached prompt is no hit for
    an adapter's sequence, nor one adapter's for another's."""
    bm = BlockManager(num_pages=16, page_size=4)
    tokens = list(range(3, 20))

    def run(lora: LoRARequest | None, seq_id: int) -> int:
        seq = _sequence(seq_id, tokens, lora)
        hit = bm.match_prefix(seq)
        bm.allocate(seq, len(tokens) - hit)
        seq.num_computed_tokens = len(tokens)
        bm.cache_full_pages(seq)
        bm.free(seq)
        return hit

    one, other = LoRARequest("one", 1, "/a"), LoRARequest("two", 2, "/b")
    assert [run(None, 0), run(one, 1), run(other, 2)] == [0, 0, 0]
    assert [run(None, 3), run(one, 4), run(other, 5)] == [16, 16, 16]


def _sequence(seq_id: int, tokens: list[int], lora: LoRARequest | None) -> Sequence:
    return Sequence(
        seq_id=seq_id,
        request_id=f"r{seq_id}",
        sample_index=0,
        prompt_token_ids=tokens,
        sampling_params=SamplingParams(max_tokens=4),
        arrival_time=0.0,
        sampling_seed=0,
        lora_request=lora,
    )


def test_a_request_whose_adapter_finds_every_slot_busy_waits_and_others_pass_it():
    """One slot: adapter 2's request waits while adapter 1's runs (the base request behind it is admitted), then
    takes the slot once adapter 1's request finishes, as a pending load of slot 1."""
    slots = LoRASlots(max_loras=1)
    scheduler = Scheduler(
        BlockManager(num_pages=32, page_size=4),
        max_num_seqs=4,
        max_num_batched_tokens=64,
        max_model_len=64,
        lora_slots=slots,
    )
    one, two = LoRARequest("one", 1, "/a"), LoRARequest("two", 2, "/b")
    seqs = [_sequence(0, [3, 4, 5], one), _sequence(1, [3, 4, 5], two), _sequence(2, [3, 4, 5], None)]
    for seq in seqs:
        scheduler.add([seq])
    first = scheduler.schedule()
    assert [s.seq.seq_id for s in first.scheduled] == [0, 2]
    assert [seqs[0].lora_slot, seqs[1].lora_slot, seqs[2].lora_slot] == [1, 0, 0]
    assert slots.take_loads() == {1: 1}
    scheduler.on_step_launched(first)
    scheduler.finish(seqs[0], SequenceStatus.FINISHED_STOPPED)
    second = scheduler.schedule()
    assert 1 in [s.seq.seq_id for s in second.scheduled] and seqs[1].lora_slot == 1
    assert slots.take_loads() == {1: 2}


def test_idle_adapters_are_evicted_least_recently_used_first():
    slots = LoRASlots(max_loras=2)
    assert [slots.acquire(1), slots.acquire(2), slots.acquire(1)] == [1, 2, 1]
    assert slots.acquire(3) is None  # both held
    for lora_int_id in (1, 1, 2):
        slots.release(lora_int_id)
    assert slots.acquire(3) == 2 and slots.slot_of(2) is None  # 2 was used less recently than 1
    assert slots.acquire(1) == 1  # still resident: no load
    assert slots.take_loads() == {1: 1, 2: 3}


def _copy_adapter(src: Path, dst: Path, **config: object) -> Path:
    dst.mkdir()
    (dst / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
    (dst / "adapter_config.json").write_text(
        json.dumps({**json.loads((src / "adapter_config.json").read_text()), **config})
    )
    return dst


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, message",
    [
        ({"target_modules": ["q_proj", "lm_head"]}, "target_modules ['lm_head'] are not supported"),
        ({"target_modules": ["embed_tokens"]}, "target_modules ['embed_tokens'] are not supported"),
        ({"use_dora": True}, "use_dora=True (DoRA) is not supported"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"r": 16}, "r=16 > max_lora_rank=8"),
        ({"target_modules": ".*proj"}, "target_modules='.*proj' must be a list of module names"),
    ],
)
def test_adapters_jllm_cannot_serve_are_refused_by_name(llama, tmp_path, config, message):
    model_dir, adapters = llama
    loaded = load_model(model_dir, mesh=make_mesh(1), dtype="float32")
    manager = lora_manager(loaded, [])
    bad = _copy_adapter(adapters[1], tmp_path / "bad", **config)
    with pytest.raises(AdapterError, match=re.escape(message)):
        manager.add(LoRARequest("bad", 1, str(bad)))


def test_lora_for_a_family_not_checked_against_peft_is_refused():
    with pytest.raises(AdapterError, match="architectures \\['GPT2LMHeadModel'\\].*supported: LlamaForCausalLM"):
        check_architecture({"architectures": ["GPT2LMHeadModel"]})


@pytest.mark.slow
def test_one_adapter_id_names_one_adapter(llama):
    loaded = load_model(llama[0], mesh=make_mesh(1), dtype="float32")
    manager = lora_manager(loaded, [llama[1][0]])
    with pytest.raises(AdapterError, match="lora_int_id=1 is already adapter 'a1'"):
        manager.add(LoRARequest("other", 1, str(llama[1][1])))


@pytest.mark.slow
def test_the_server_runs_the_adapter_a_model_name_names_as_the_offline_api_does(llama, lora_llm):
    """``lora_modules`` served by name: a completion naming the adapter gives the offline API's greedy text with
    that adapter; the base model's name gives the base model's."""
    model_dir, adapters = llama
    modules = [f"all={adapters[0]}"]
    config = load_config(None, model=str(model_dir), served_model_name="base", lora_modules=modules, **ENGINE_KEYS)
    prompt = "the quick brown fox"
    with RunningServer(build_engine(config, show_progress=False), config) as server:
        texts = {}
        for model in ("all", "base"):
            body = {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0.0, "ignore_eos": True}
            texts[model] = http("POST", f"{server.url}/v1/completions", json_body=body).json()["choices"][0]["text"]
    for model, lora in (("all", LoRARequest("all", 1, str(adapters[0]))), ("base", None)):
        assert texts[model] == lora_llm.generate([prompt], GREEDY, use_tqdm=False, lora_request=lora)[0].outputs[0].text


@pytest.mark.slow
def test_with_one_slot_requests_for_two_adapters_take_turns_and_keep_their_tokens(lora_llm, llama):
    """max_loras=1: adapter 2's request waits for adapter 1's to free the slot, then runs with its own weights (the
    slot rewritten, nothing recompiled)."""
    adapters = [LoRARequest("all", 1, str(llama[1][0])), LoRARequest("qvd", 2, str(llama[1][1])), None]
    prompts = ["the quick brown fox", "jumps over", "the lazy dog, again"]
    want = _texts(lora_llm.generate(prompts, GREEDY, use_tqdm=False, lora_request=adapters))
    one_slot = LLM(str(llama[0]), **{**ENGINE_KEYS, "max_loras": 1})
    assert _texts(one_slot.generate(prompts, GREEDY, use_tqdm=False, lora_request=adapters)) == want


@pytest.mark.slow
def test_adapters_split_over_tensor_parallel_devices_give_the_one_device_logits(llama, tmp_path):
    """TP 2 (a KV head per device) and TP 4 (each KV head on two devices): the adapters' B split with q/k/v's
    columns, o's A with its rows, every row of a mixed batch within 1e-5 (relative) of PEFT's forward; an engine
    at TP 2 gives a mixed batch the one-device engine's greedy tokens."""
    model_dir, adapters = llama
    rng = np.random.default_rng(2)
    sequences = [rng.integers(3, 160, n).tolist() for n in (13, 7, 18)]
    prompts = ["the quick brown fox", "jumps over", "the lazy dog, again"]
    spec = {
        "model": str(model_dir),
        "adapters": list(map(str, adapters)),
        "sequences": sequences,
        "tp_sizes": [2, 4],
        "engine_args": ENGINE_KEYS,
        "prompts": prompts,
    }
    found = run_tp_worker(spec, tmp_path, timeout=600, worker="lora_tp_worker.py")
    assert [found[tp]["kv_replicas"] for tp in ("2", "4")] == [1, 2]
    assert found["4"]["split"] == {"qkv_b": True, "o_a": True, "down_b": False}
    for tp in ("2", "4"):
        logits = np.load(tmp_path / f"logits_tp{tp}.npz")
        for i, (seq, adapter) in enumerate(zip(sequences, [None, *adapters], strict=True)):
            assert relative_error(logits[f"arr_{i}"], peft_logits(model_dir, adapter, seq)) < 1e-5
    loras = [None, *(LoRARequest(f"a{i}", i, str(a)) for i, a in enumerate(adapters, start=1))]
    one_device = LLM(str(model_dir), **ENGINE_KEYS).generate(prompts, GREEDY, use_tqdm=False, lora_request=loras)
    assert found["engine_tp2_tokens"] == _texts(one_device)


@pytest.mark.slow
def test_the_memory_plan_counts_the_adapters_slots(llama):
    config = load_config(None, model=str(llama[0]), num_pages=8, max_model_len=64)
    base = plan_model(config, 1 << 30, "m")
    planned = plan_model(config.replace(enable_lora=True, max_loras=2, max_lora_rank=8), 1 << 30, "m")
    args = load_model(llama[0], mesh=make_mesh(1), load_format="dummy").args
    layer = 64 * 24 + 24 * 2 * 4 * 16 + 64 * 8 + 8 * 64 + 64 * 16 + 16 * 2 * 96 + 96 * 8 + 8 * 64  # elements
    assert planned.weights_bytes - base.weights_bytes == slots_bytes(args, 2, 8) == 3 * 2 * layer * 4


@pytest.mark.slow
def test_peft_all_linear_targets_are_the_seven_projections(llama, tmp_path):
    loaded = load_model(llama[0], mesh=make_mesh(1), dtype="float32")
    manager = lora_manager(loaded, [])
    manager.add(LoRARequest("all", 1, str(_copy_adapter(llama[1][0], tmp_path / "a", target_modules="all-linear"))))
    assert [a.lora_name for a in manager.adapters] == ["all"]


@pytest.mark.slow
def test_a_bad_adapter_path_is_refused_before_any_prompt_runs(lora_llm, tmp_path):
    with pytest.raises(AdapterError, match="no adapter_config.json in LoRA adapter folder"):
        lora_llm.generate(["a", "b"], GREEDY, use_tqdm=False, lora_request=[None, LoRARequest("x", 9, str(tmp_path))])
    assert not lora_llm.engine.requests


def test_an_adapter_without_enable_lora_is_refused_naming_the_key():
    llm = LLM.__new__(LLM)  # the scripted engine stands in for a built one
    llm.engine, llm._ids = fake_engine(), itertools.count()
    with pytest.raises(ValueError, match="lora_request 'x' needs the engine started with enable_lora: true"):
        llm.generate(["a"], GREEDY, use_tqdm=False, lora_request=LoRARequest("x", 1, "/x"))
    with pytest.raises(ValueError, match="got 2 lora_request for 1 prompts"):
        llm.generate(["a"], GREEDY, use_tqdm=False, lora_request=[None, None])

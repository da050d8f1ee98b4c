"""scripts/attention_replay.py (profile_step.py --dump-attention) and bench_kernels.py --replay on a tiny CPU engine:
the recorded decode-attention inputs are the values the attention call received when the step ran, they round-trip
through the file, and the replayed kernel (interpret mode) matches the reference on them."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))  # as when run as `python scripts/...`: their siblings import
attention_replay = importlib.import_module("attention_replay")
bench_common = importlib.import_module("bench_common")
bench_kernels = importlib.import_module("bench_kernels")
profile_step = importlib.import_module("profile_step")

pytestmark = pytest.mark.slow  # a tiny engine's warm-up and every kernel variant's replay: ~17 s cold on 2 cores

PROMPTS = (20, 37, 50)  # three sequences of different lengths: a decode bucket of 4 sequences, one padding row
BATCH = len(PROMPTS)
MAX_MODEL_LEN, PAGE_SIZE = 256, 16


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[list[np.ndarray]], int]:
    """One recorded step of a tiny engine in steady decode, and what its attention calls received at run time
    (a ``jax.debug.callback`` beside the call, compiled into the step)."""
    import jllm.attention as attention
    from jllm import LLM, SamplingParams

    seen: list[list[np.ndarray]] = []

    def watched(q: jax.Array, kv_pages: jax.Array, *meta: jax.Array, **kw: Any) -> jax.Array:
        jax.debug.callback(lambda *a: seen.append([np.asarray(x) for x in a]), *meta)
        return reference(q, kv_pages, *meta, **kw)

    reference = attention.ref_ragged_paged_attention
    model = bench_common.write_dummy_model(tmp_path_factory.mktemp("model"), profile_step.SMOKE_MODEL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(attention, "ref_ragged_paged_attention", watched)
        jax.clear_caches()  # the layers' nested jit must trace the watched call
        llm = LLM(str(model), load_format="dummy", max_model_len=MAX_MODEL_LEN, max_num_seqs=4,
                  max_num_batched_tokens=64, num_pages=64, compile_at_start=False)  # fmt: skip
        params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=100)
        for i, n in enumerate(PROMPTS):
            llm.engine.add_request(f"r{i}", llm.engine.inputs.process(list(range(3, 3 + n)), params), params)
        for _ in range(4):  # every sequence decoding, past the async start
            llm.engine.step()
        jax.effects_barrier()
        seen.clear()
        rec = attention_replay.record(llm)
        jax.effects_barrier()
    jax.clear_caches()
    return rec, seen, len(llm.engine.runner.kv_caches)


def test_recorded_arrays_are_what_the_attention_call_received(recorded: tuple[Any, Any, int]) -> None:
    rec, seen, num_layers = recorded
    assert len(seen) == num_layers  # the recorded step's forward, one call a layer
    for call in seen:  # (kv_lens, block_tables, query_start_loc), as the call got them
        for got, want in zip(call, (rec.kv_lens, rec.block_tables, rec.query_start_loc), strict=True):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)


def test_recorded_step_has_the_engine_shapes_and_statics(recorded: tuple[Any, Any, int]) -> None:
    rec, _, num_layers = recorded
    info, call = rec.info, rec.call
    pages_per_seq = MAX_MODEL_LEN // PAGE_SIZE
    assert info["backend"] == "reference" and info["kernel"] == "ref_ragged_paged_attention"
    assert info["num_layers"] == num_layers and info["pages_per_seq"] == pages_per_seq
    assert info["bucket"] == [4, 4] and rec.num_seqs == BATCH
    assert rec.block_tables.shape == (4, pages_per_seq)  # the width comes from max_model_len, not the context
    for name in ("kv_lens", "block_tables", "query_start_loc"):  # traced shapes and dtypes = the recorded arrays'
        assert call[name] == [list(getattr(rec, name).shape), str(getattr(rec, name).dtype)]
    assert call["q"] == [[4, 4, 16], "float32"] and call["kv_pages"] == [[2, 2, 64, PAGE_SIZE, 16], "float32"]
    unscaled = {"k_scale": 1.0, "v_scale": 1.0}  # a model without FP8 KV scales: the attention's defaults
    assert call["kwargs"] == {"sm_scale": 16**-0.5, "soft_cap": None, "sliding_window": None, **unscaled}
    assert (rec.kv_lens[:BATCH] > PROMPTS).all() and rec.kv_lens[BATCH] == 0
    assert info["kernel_config"]["q_block"] == 1  # the Pallas kernel's decode tiling for these shapes


def test_recorded_step_round_trips_through_its_file(recorded: tuple[Any, Any, int], tmp_path: Path) -> None:
    rec = recorded[0]
    rec.save(tmp_path / "step.npz")
    back = attention_replay.RecordedStep.load(tmp_path / "step.npz")
    assert back.info == json.loads(json.dumps(rec.info))
    for name in attention_replay.ARRAYS:
        got, want = getattr(back, name), getattr(rec, name)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_replay_times_every_variant_and_matches_the_reference(
    recorded: tuple[Any, Any, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded[0].save(tmp_path / "step.npz")
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    monkeypatch.setattr(sys, "argv", ["bench_kernels.py", "--smoke", "--replay", str(tmp_path / "step.npz")])
    bench_kernels.main()
    replay = json.loads((tmp_path / "out" / "bench_kernels.json").read_text())["replay"]
    assert replay["check"]["ok"] and replay["check"]["tolerance"] == 1e-5, replay["check"]
    names = [row["variant"] for row in replay["rows"]]
    assert names[0] == "as recorded" and names[-1].startswith("synthetic")
    for change in ("block table trimmed", "padding sequences dropped", "in order", "kv_lens all", "one pool"):
        assert any(change in name for name in names), (change, names)
    for row in replay["rows"]:
        assert row["batch"] == BATCH and row["kernel_s"] > 0
    text = (tmp_path / "out" / "bench_kernels.txt").read_text()
    assert "as recorded" in text and "kernel vs reference on the recorded step" in text


def test_every_variant_gives_each_sequence_distinct_real_pages(recorded: tuple[Any, Any, int]) -> None:
    rec = recorded[0]
    for v in attention_replay.variants(rec, np.random.default_rng(0)):
        used = -(-v.kv_lens // PAGE_SIZE)
        pages = np.concatenate([row[:n] for row, n in zip(v.block_tables, used, strict=True)])
        assert (pages > 0).all() and len(set(pages.tolist())) == len(pages), v.name
        assert (pages < rec.num_pages).all() and v.query_start_loc[-1] <= v.num_tokens, v.name


def test_fp8_decode_tuning_reads_the_fp8_pool_with_wider_tiles() -> None:
    """``--tune-kinds decode-fp8``: the decode shapes again over the pool's e4m3 copy, half the bytes, 256-key tiles."""
    shapes = bench_kernels.Shapes([1], [256], (), ((2, 256),), (), ())
    pool = bench_kernels.Pool(1024, 16, fp8=True)
    bf16, fp8 = bench_kernels.tune_cases(shapes, pool, ("decode", "decode-fp8"), with_triton=False)
    assert (bf16.name, fp8.name) == ("decode 2x256", "decode 2x256 fp8") and (bf16.fp8, fp8.fp8) == (False, True)
    assert bf16.step[1] is pool.kv and fp8.step[1] is pool.kv_fp8 and fp8.work * 2 == bf16.work
    assert max(c.kv_block for c in fp8.configs) == 256 and max(c.kv_block for c in bf16.configs) == 128
    assert fp8.configs[0] == bench_kernels.config_of(fp8.step)  # the default first: the best is read against it

"""scripts/profile_step.py's mixed steps (``--prefill-tokens``) on a tiny CPU engine: every step the stepper takes
holds the batch's decodes and one whole fresh prefill, and the decode batch neither grows nor shrinks."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
bench_common = importlib.import_module("bench_common")
profile_step = importlib.import_module("profile_step")


@pytest.mark.slow
def test_each_mixed_step_holds_the_decodes_and_one_whole_prefill(tmp_path: Path) -> None:
    from jllm import LLM

    model = bench_common.write_dummy_model(tmp_path / "model", profile_step.SMOKE_MODEL)
    batch, prefill = 3, 29
    llm = LLM(str(model), load_format="dummy", max_model_len=256, max_num_batched_tokens=64, num_pages=96,
              max_num_seqs=profile_step.engine_seqs(batch, prefill), compile_at_start=False)  # fmt: skip
    rng = np.random.default_rng(0)
    profile_step.start_decoding(llm, batch, 16, rng)
    scheduled: list[tuple[int, int]] = []
    schedule = llm.engine.scheduler.schedule

    def watched(*args: object, **kwargs: object) -> object:
        out = schedule(*args, **kwargs)
        scheduled.append((out.num_batched_tokens, len(out.scheduled)))
        return out

    llm.engine.scheduler.schedule = watched
    step = profile_step.Stepper(llm, prefill, rng)
    for _ in range(4):
        step()
    assert scheduled == [(batch + prefill, batch + 1)] * 4
    decoding = [r for r in llm.engine.requests.values() if r.request_id.startswith("prof-")]
    assert len(decoding) == batch and step.added == 4


@pytest.mark.slow
def test_the_report_says_how_many_sequences_a_small_pool_lets_decode(tmp_path: Path) -> None:
    """A pool of 8 pages (128 tokens) for three 40-token prompts that keep decoding: fewer than three run at once,
    so the figures are for those, and the row says how many and how long."""
    from jllm import LLM

    model = bench_common.write_dummy_model(tmp_path / "model", profile_step.SMOKE_MODEL)
    llm = LLM(str(model), load_format="dummy", max_model_len=112, max_num_seqs=3, max_num_batched_tokens=64,
              num_pages=9, compile_at_start=False)  # fmt: skip
    profile_step.start_decoding(llm, 3, 40, np.random.default_rng(0))
    for _ in range(3):
        llm.engine.step()
    seen = profile_step.decode_batch(llm)
    assert seen["running"] in (1, 2) and seen["preemptions"] >= 1, seen
    assert 40 < seen["mean_context"] <= 128 / seen["running"], seen


def test_idle_gaps_are_put_down_to_the_kernels_either_side_across_streams() -> None:
    us = 1000  # ns
    spans = [  # (start, end, name) over two steps; two streams overlap from 250 to 300 us
        (0, 100, "gemm_fusion_1"), (150, 300, "_prefill_kernel"), (250, 400, "loop_add_fusion_3"),
        (1000, 1100, "gemm_fusion_7"), (1150, 1200, "_prefill_kernel"), (1400, 1500, "loop_add_fusion_9"),
    ]  # fmt: skip
    gaps = profile_step.idle_gaps([(a * us, b * us, name) for a, b, name in spans], steps=2)
    assert gaps["pairs"] == {
        "loop_add_fusion -> gemm_fusion": {"ms": 0.3, "gaps": 0.5},  # 600 us between the steps
        "gemm_fusion -> _prefill_kernel": {"ms": 0.05, "gaps": 1.0},  # 50 + 50 us
        "_prefill_kernel -> loop_add_fusion": {"ms": 0.1, "gaps": 0.5},  # 200 us; the overlap is no gap
    }
    assert gaps["idle_ms_per_step"] == 0.45

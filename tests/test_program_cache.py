"""Compiled step programs kept on disk: a second start traces nothing and generates the same tokens; any change to
what tracing depends on misses; a damaged entry is compiled again."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jllm.llm import LLM
from jllm.program_cache import ProgramCache, fingerprint
from jllm.runner import BASE_VARIANTS
from jllm.sampling import SamplingParams

ARGS = dict(dtype="float32", max_model_len=128, page_size=16, max_num_seqs=4, max_num_batched_tokens=16)
PROMPTS = [[1, 2, 3, 4, 5], [9, 8, 7]]
GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def _start(model_dir: Path, **overrides: object) -> tuple[LLM, list[list[int]]]:
    llm = LLM(str(model_dir), **{**ARGS, **overrides})
    return llm, [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]


def test_second_start_loads_every_program_and_matches(default_model_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("JLLM_CACHE", str(tmp_path))
    first, tokens = _start(default_model_dir)
    programs = len(first.engine.runner.buckets) * (1 + len(BASE_VARIANTS))
    assert first.engine.runner.num_lowered == programs
    assert len(list((tmp_path / "programs").glob("*.bin"))) == programs
    del first

    second, again = _start(default_model_dir)
    assert second.engine.runner.num_lowered == 0  # warm start: nothing traced
    assert again == tokens
    del second

    other, _ = _start(default_model_dir, max_model_len=96)  # block tables change shape: every forward misses
    assert other.engine.runner.num_lowered >= len(other.engine.runner.buckets)
    del other

    for path in (tmp_path / "programs").glob("*.bin"):
        path.write_bytes(b"torn")
    with caplog.at_level(logging.WARNING, logger="jllm.program_cache"):
        damaged, redone = _start(default_model_dir)
    assert damaged.engine.runner.num_lowered == programs and redone == tokens
    assert "unreadable" in caplog.text


def test_store_load_round_trip_and_namespaces(tmp_path):
    f = jax.jit(lambda x, y: {"sum": x + y, "max": jnp.max(x)})
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
    compiled = f.lower(x, x).compile()
    cache = ProgramCache(tmp_path, fingerprint("a"))
    assert cache.load(("k", 1)) is None
    cache.store(("k", 1), compiled)
    loaded = cache.load(("k", 1))
    assert loaded is not None
    np.testing.assert_array_equal(loaded(x, x)["sum"], compiled(x, x)["sum"])
    assert ProgramCache(tmp_path, fingerprint("b")).load(("k", 1)) is None  # another engine's namespace
    assert cache.load(("k", 2)) is None
    assert fingerprint("a") == fingerprint("a") != fingerprint("b")

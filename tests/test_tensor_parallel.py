"""Tensor parallelism on 8 fake CPU devices: same tokens and logits as one device, parameters and pool really sharded.

The checks run in one subprocess (tests/tp_worker.py), since the fake devices must be configured before JAX starts;
each test below asserts on one part of its JSON findings.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from model_utils import random_llama, run_tp_worker

from jllm import parallel

# Tensors split by tensor parallelism (the rest, RMSNorm scales, are replicated).
SHARDED = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "embed_tokens")


@pytest.fixture(scope="module")
def found(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("tp")
    spec = {
        # the default model's heads (9 query, 3 KV) on 2 layers; its hidden size and MLP are multiples of 9 and 3 too
        "model_9q_3kv": str(random_llama(tmp, default_model_dir, 9, 3, hidden_size=144, intermediate_size=96)),
        "model_32q_8kv": str(random_llama(tmp, default_model_dir, 32, 8)),
        "model_16q_2kv": str(random_llama(tmp, default_model_dir, 16, 2)),
        "cache_dir": str(tmp / "jllm_cache"),
        "tmp_dir": str(tmp),
    }
    results = run_tp_worker(spec, tmp, timeout=600)
    assert results["devices"] == 8
    return results


@pytest.mark.slow
@pytest.mark.parametrize("case, sizes", [("9q_3kv", [3]), ("32q_8kv", [2, 8]), ("16q_2kv", [4, 8])])
def test_every_tp_size_gives_tp1_greedy_tokens_and_logits(found, case, sizes):
    runs = found["generate"][case]
    assert sorted(runs) == sorted(map(str, [1, *sizes]))
    for tp in map(str, sizes):
        assert runs[tp]["tokens"] == runs["1"]["tokens"], f"{case} at TP={tp}"
        # float32 tolerance: only the order of the partial sums in the all-reduces differs
        assert runs[tp]["logits_max_abs_diff"] <= 1e-5 * max(1.0, runs["1"]["logits_max_abs"]), f"{case} TP={tp}"
    assert len({t for tokens in runs["1"]["tokens"] for t in tokens}) > 3, "degenerate greedy output proves little"


@pytest.mark.slow
@pytest.mark.parametrize("case, sizes", [("9q_3kv", [3]), ("32q_8kv", [2, 8]), ("16q_2kv", [4, 8])])
def test_parameters_are_sharded_over_the_tp_devices(found, case, sizes):
    for tp in sizes:
        params = found["generate"][case][str(tp)]["params"]
        for name, p in params.items():
            assert len(p["device_nbytes"]) == tp, name
            is_sharded = any(part in name for part in SHARDED)
            share = p["nbytes"] // tp if is_sharded else p["nbytes"]
            assert p["device_nbytes"] == [share] * tp, f"{case} TP={tp} {name}: {p}"
            assert ("'tp'" in p["spec"]) == is_sharded, f"{name}: {p['spec']}"
        assert {part for part in SHARDED for name in params if part in name} == set(SHARDED)


@pytest.mark.slow
@pytest.mark.parametrize("case, kv_heads, sizes", [("9q_3kv", 3, [3]), ("32q_8kv", 8, [2, 8]), ("16q_2kv", 2, [4, 8])])
def test_pool_is_split_by_kv_head_and_replicated_heads_cost_one_head_per_device(found, case, kv_heads, sizes):
    for tp in sizes:
        run = found["generate"][case][str(tp)]
        pool, replicas = run["pool"], max(1, tp // kv_heads)
        assert run["pool_sharding_ok"], pool["spec"]
        assert run["kv_replicas"] == replicas
        assert pool["shape"][1] == kv_heads * replicas  # [2, num_kv_heads (with copies), num_pages, page_size, D]
        assert pool["device_nbytes"] == [pool["nbytes"] // tp] * tp
        assert {shape[1] for shape in pool["device_shapes"]} == {kv_heads * replicas // tp}
        if replicas > 1:  # each device holds exactly the one KV head its query heads read
            qkv = run["params"]["layers/0/self_attn/qkv_proj/kernel"]  # [hidden, kv_heads, group + 2, head_dim]
            hidden, _, width, head_dim = qkv["shape"]
            assert width == 16 // (kv_heads * replicas) + 2
            assert qkv["device_shapes"] == [[hidden, 1, width, head_dim]] * tp


@pytest.mark.slow
@pytest.mark.parametrize("case, sizes", [("9q_3kv", [3]), ("32q_8kv", [2, 8]), ("16q_2kv", [4, 8])])
def test_xla_splits_the_matmuls_megatron_style(found, case, sizes):
    """Each compiled forward program all-reduces the hidden states twice a layer (after the row-split O and down
    projections) and once for the vocabulary-split embedding lookup; the column-split matmuls need no communication.
    The sampler programs (LM head on the gathered rows) reduce no hidden states at all."""
    for tp in sizes:
        run = found["generate"][case][str(tp)]
        counts = [
            Counter(op for op, dims in program if len(dims) == 2 and dims[1] == run["hidden_size"])
            for program in run["step_collectives"]
        ]
        forwards = [c for c in counts if c]
        assert forwards, "the engine compiled no forward programs"
        assert len(forwards) < len(counts), "the engine compiled no sampler programs"
        for hidden in forwards:
            assert hidden == {"all-reduce": 2 * run["num_layers"] + 1}, hidden


@pytest.mark.slow
@pytest.mark.parametrize("case, sizes", [("9q_3kv", [3]), ("32q_8kv", [2, 8]), ("16q_2kv", [4, 8])])
def test_step_gathers_only_the_sampled_rows_logits(found, case, sizes):
    """No parameter or pool is assembled whole on a device: the only all-gathers are of ``[S, ...]`` rows for
    sampling (the vocabulary-split logits of the scheduled sequences and their per-device candidates; the general
    sampler takes top-k over ``[S, vocab / 256, 256]`` blocks of the logits and gathers each block's candidates; the
    prompt-logprobs program gathers the logits of every token row, ``[T, vocab]``)."""
    args = found["engine_args"]
    max_rows = max(args["max_num_seqs"], args["max_num_batched_tokens"])
    for tp in sizes:
        programs = {"forward", "prompt_logprobs", "sampler_0_greedy", "sampler_0_random", "sampler_20_truncated"}
        assert found["generate"][case][str(tp)]["programs"] == sorted(programs), "a kind of program went unchecked"
        for program in found["generate"][case][str(tp)]["step_collectives"]:
            gathered = [dims for op, dims in program if op == "all-gather"]
            assert all(len(dims) in (2, 3) and dims[0] <= max_rows for dims in gathered), gathered


@pytest.mark.slow
def test_loader_reads_only_each_devices_slice(found):
    """The fused QKV is read one model KV head at a time: its query group, and its checkpoint K/V head (which the
    devices holding copies of a replicated head each read)."""
    for case, tp, kv_heads in (("32q_8kv_tp4", 4, 8), ("16q_2kv_tp8", 8, 2)):
        for name, (largest, total, _) in found["loader_reads"][case].items():
            if "norm" in name:
                assert largest == total, name
            elif "q_proj" in name:
                assert largest == total // max(tp, kv_heads), name
            elif "k_proj" in name or "v_proj" in name:
                assert largest == total // kv_heads, name
            else:
                assert largest == total // tp, name


@pytest.mark.slow
def test_orbax_restore_onto_a_different_mesh_gives_identical_values(found):
    for case, restores in found["orbax"].items():
        for tp, r in restores.items():
            assert r["same_keys"] and r["same_shardings"], (case, tp, r)
            assert r["max_abs_diff"] == 0.0, (case, tp, r)
            assert max(r["devices"]) == int(tp), (case, tp, r)


@pytest.mark.slow
def test_pallas_kernel_runs_per_device_under_shard_map(found):
    """Heads 16 wide, and 24 wide over a pool padded to 32 (``tests/test_padded_heads.py``)."""
    for case in ("pallas_shard_map", "pallas_shard_map_padded_24"):
        for tp, diff in found[case].items():
            assert diff < 1e-5, f"{case} TP={tp}: {diff}"


@pytest.mark.slow
def test_tp_size_the_heads_do_not_divide_is_refused_naming_key_and_heads(found):
    refused = found["refused"]
    for key, heads in (("9q_3kv_tp2", (9, 3)), ("9q_3kv_tp4", (9, 3)), ("16q_2kv_tp3", (16, 2))):
        message = refused[key]
        tp = key.rsplit("tp", 1)[1]
        assert f"tensor_parallel_size={tp}" in message, message
        assert f"{heads[0]} attention heads and {heads[1]} KV heads" in message, message
    assert "[1, 3, 9]" in refused["9q_3kv_tp2"]


def test_valid_sizes_follow_vllms_kv_replication_rule():
    assert parallel.valid_sizes(9, 3) == [1, 3, 9]
    assert parallel.valid_sizes(32, 8) == [1, 2, 4, 8, 16, 32]
    assert parallel.valid_sizes(16, 2) == [1, 2, 4, 8, 16]
    assert parallel.valid_sizes(12, 4) == [1, 2, 4, 12]  # 6 divides 12 query heads but neither divides nor covers 4

"""Llama-3-70B at tensor parallel 8 (configs/llama3-70b-tp8.yaml), checked on the CPU: shard shapes, bytes per
device, and that weights and KV pool fit 8 GPUs of 80 GB; plus a scaled-down twin whose TP=8 tokens match TP=1.

The 8 fake devices must be configured before JAX starts, so tests/tp8_plan_worker.py does the work in a subprocess
and each test asserts on its JSON findings. Nothing of the 141 GB model is allocated: it is built with
``nnx.eval_shape`` and each shard's shape comes from its ``NamedSharding``.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from jllm import parallel
from jllm.config import load_config

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("tp8_plan_worker.py")
CONFIG = ROOT / "configs" / "llama3-70b-tp8.yaml"
HF = json.loads((ROOT / "configs" / "models" / "llama3-70b" / "config.json").read_text())
GIB = 1 << 30
TP = 8

# Llama-3-70B's published parameter count, and one device's bf16 bytes of it at TP=8: the 161 RMSNorm scales of
# 8192 are on every device, everything else is split 8 ways.
PARAMS = 70_553_706_496
NORM_PARAMS = (2 * HF["num_hidden_layers"] + 1) * HF["hidden_size"]
WEIGHT_BYTES_PER_DEVICE = 17_640_734_720
# One token's K and V over 80 layers on one device: 1 of the 8 KV heads, head_dim 128, bf16.
KV_BYTES_PER_TOKEN_PER_DEVICE = HF["num_hidden_layers"] * 2 * 1 * HF["head_dim"] * 2


@pytest.fixture(scope="module")
def found(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("tp8")
    proc = subprocess.run(
        [sys.executable, str(WORKER), "--greedy-dir", str(tmp), "--json", str(tmp / "out.json")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"JAX_DISABLE_MOST_OPTIMIZATIONS": "1", **os.environ},  # LLVM level 0, as model_utils.run_tp_worker's
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    results = json.loads((tmp / "out.json").read_text())
    assert results["devices"] == TP
    return results


def test_config_runs_70b_shapes_at_tp8_with_dummy_weights() -> None:
    config = load_config(CONFIG)
    assert (config.model.model, config.model.load_format, config.model.dtype) == (
        "configs/models/llama3-70b",
        "dummy",
        "bfloat16",
    )
    assert config.parallel.tensor_parallel_size == TP
    assert config.model.max_model_len == HF["max_position_embeddings"] == 8192
    assert (config.scheduler.max_num_batched_tokens, config.cache.gpu_memory_utilization) == (2048, 0.9)
    published = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64)
    published |= dict(num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0)
    assert {k: HF[k] for k in published} == published and not HF["tie_word_embeddings"]
    model_dir, tokenizer_dir = ROOT / config.model.model, ROOT / "configs" / "models" / "llama3-8b"
    files = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
    assert filecmp.cmpfiles(model_dir, tokenizer_dir, files, shallow=False)[0] == files


def test_tp8_divides_70b_heads_vocabulary_and_mlp() -> None:
    parallel.check_divisible(
        TP,
        num_heads=HF["num_attention_heads"],
        num_kv_heads=HF["num_key_value_heads"],
        vocab_size=HF["vocab_size"],
        intermediate_size=HF["intermediate_size"],
    )
    assert parallel.valid_sizes(64, 8) == [1, 2, 4, 8, 16, 32, 64]


@pytest.mark.slow
def test_abstract_model_has_the_published_parameter_count(found) -> None:
    assert found["param_count"] == PARAMS
    assert found["weights_nbytes"] == 2 * PARAMS  # bf16
    assert found["kv_replicas"] == 1  # 8 KV heads over 8 devices: no copies


@pytest.mark.slow
def test_every_matrix_is_split_eight_ways_megatron_style(found) -> None:
    """QKV on its KV-head axis (each device: one KV head with its 8 query heads, K and V), O by rows, gate/up on
    the MLP axis, down by rows, embedding and LM head by vocabulary; RMSNorm scales replicated."""
    expected = {
        "embed_tokens/embedding": ([128256, 8192], [16032, 8192]),
        "lm_head/kernel": ([8192, 128256], [8192, 16032]),
        "norm/weight": ([8192], [8192]),
        "self_attn/qkv_proj/kernel": ([8192, 8, 10, 128], [8192, 1, 10, 128]),
        "self_attn/o_proj/kernel": ([8192, 8192], [1024, 8192]),
        "mlp/gate_up_proj/kernel": ([8192, 2, 28672], [8192, 2, 3584]),
        "mlp/down_proj/kernel": ([28672, 8192], [3584, 8192]),
        "input_layernorm/weight": ([8192], [8192]),
        "post_attention_layernorm/weight": ([8192], [8192]),
    }
    kinds = Counter()
    for name, p in found["params"].items():
        kind = re.sub(r"^layers/\d+/", "", name)
        kinds[kind] += 1
        assert (p["shape"], p["shard_shape"]) == expected[kind], name
        assert ("'tp'" in p["spec"]) == (p["shape"] != p["shard_shape"]), (name, p["spec"])
    assert kinds == {kind: 1 if i < 3 else HF["num_hidden_layers"] for i, kind in enumerate(expected)}


@pytest.mark.slow
def test_each_device_holds_an_eighth_of_the_weights_plus_the_norms(found) -> None:
    for name, p in found["params"].items():
        sharded = p["shape"] != p["shard_shape"]
        assert p["shard_nbytes"] * (TP if sharded else 1) == p["nbytes"], name
    assert WEIGHT_BYTES_PER_DEVICE == (PARAMS - NORM_PARAMS) // TP * 2 + NORM_PARAMS * 2
    assert found["weights_shard_nbytes"] == WEIGHT_BYTES_PER_DEVICE  # 17.64 GB, 16.43 GiB


@pytest.mark.slow
def test_kv_pool_is_split_by_kv_head(found) -> None:
    for pool in [found["full_length_pool"], *found["engine_pool"].values()]:
        pages = pool["num_pages"]
        assert pool["layer_shape"] == [2, 8, pages, 16, 128]  # [K/V, kv_heads, pages, page_size, head_dim]
        assert pool["layer_shard_shape"] == [2, 1, pages, 16, 128]
        assert pool["shard_nbytes"] * TP == pool["nbytes"]
        assert pool["shard_nbytes"] == pages * 16 * KV_BYTES_PER_TOKEN_PER_DEVICE
    assert found["bytes_per_page"] == 16 * KV_BYTES_PER_TOKEN_PER_DEVICE * TP  # 5 MiB a page, 640 KiB a device


@pytest.mark.slow
def test_every_sequence_at_max_model_len_fits_with_activation_headroom(found) -> None:
    """max_num_seqs sequences of max_model_len tokens, no preemption: weights + that pool + the stated headroom
    stay within gpu_memory_utilization of an 80 GiB card, and of JAX's default cap of 0.75 of it."""
    c, pool = found["config"], found["full_length_pool"]
    assert pool["tokens"] == c["max_num_seqs"] * c["max_model_len"] == 64 * 8192
    assert pool["shard_nbytes"] == 32_769 * 655_360  # 20.0 GiB, page 0 included
    assert found["activation_estimate"] <= found["activation_headroom"] // 4  # ~0.24 GiB against 2 GiB
    need = found["weights_shard_nbytes"] + pool["shard_nbytes"] + found["activation_headroom"]
    assert need == 41_263_710_208  # 38.4 GiB
    for limit in (80 * GIB, 60 * GIB):
        assert need <= c["gpu_memory_utilization"] * limit


@pytest.mark.slow
def test_engine_sizes_a_pool_that_holds_every_sequence_at_max_model_len(found) -> None:
    """The engine's own sizing (``num_pages_from_device_memory`` on 8 fake GPUs) fills gpu_memory_utilization with
    weights and pages, and leaves the rest, at least the stated activation headroom."""
    c = found["config"]
    expected_pages = {"80 GiB": 91_047, "60 GiB (JAX's default 0.75 of 80 GiB)": 61_555}
    assert {name: pool["num_pages"] for name, pool in found["engine_pool"].items()} == expected_pages
    for pool in found["engine_pool"].values():
        budget = int(pool["bytes_limit"] * c["gpu_memory_utilization"]) - found["weights_shard_nbytes"]
        assert pool["num_pages"] == budget // (16 * KV_BYTES_PER_TOKEN_PER_DEVICE)
        used = found["weights_shard_nbytes"] + pool["shard_nbytes"]
        assert used <= pool["usable"] and pool["bytes_limit"] - used >= found["activation_headroom"]
        assert pool["tokens"] >= c["max_num_seqs"] * c["max_model_len"] >= c["max_model_len"]


@pytest.mark.slow
def test_scaled_down_70b_at_tp8_gives_tp1_greedy_tokens(found) -> None:
    """Same ratios as 70B (64 q / 8 KV heads, MLP 3.5 x hidden, untied head), dummy weights from one seed: the
    weights are identical at both sizes, so the tokens must be too."""
    tp1, tp8 = found["greedy"]["1"], found["greedy"][str(TP)]
    assert tp8["weights_max_abs_diff"] == 0.0
    assert tp8["tokens"] == tp1["tokens"]
    assert len({t for tokens in tp1["tokens"] for t in tokens}) > 3, "degenerate greedy output proves little"
    shards = tp8["shard_shapes"]
    assert shards["layers/0/self_attn/qkv_proj/kernel"] == [[512, 1, 10, 8]]
    assert shards["layers/0/mlp/gate_up_proj/kernel"] == [[512, 2, 224]]
    assert shards["lm_head/kernel"] == [[512, 128]]

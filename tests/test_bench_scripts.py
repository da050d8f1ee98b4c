"""scripts/bench_latency.py and scripts/bench_throughput.py end to end on the tiny CPU config, with transformers on
the same random weights (``--same-weights``), plus the ShareGPT-like length sampler, the roofline's model size and
scripts/bench_reference_attention.py."""

from __future__ import annotations

import importlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))  # as when run as `python scripts/bench_latency.py`: its siblings import
bench_common = importlib.import_module("bench_common")
bench_latency = importlib.import_module("bench_latency")
bench_throughput = importlib.import_module("bench_throughput")
bench_reference_attention = importlib.import_module("bench_reference_attention")
bench_recurrent = importlib.import_module("bench_recurrent")

CONFIG = "configs/bench-tiny-cpu.yaml"  # relative, as documented: the scripts run from the repository root


def assert_positive(*values: Any) -> None:
    for v in values:
        assert isinstance(v, int | float) and math.isfinite(v) and v > 0, values


@pytest.fixture(scope="module")
def in_repo_root(tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        mp.setenv("JLLM_CACHE", str(tmp_path_factory.mktemp("jllm_cache")))
        yield tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def latency(in_repo_root: Path) -> dict[str, Any]:
    out = in_repo_root / "latency.json"
    argv = ["--config", CONFIG, "--batch-sizes", "1,3", "--input-len", "12", "--output-len", "16", "--repeats", "3",
            "--same-weights", "--json", str(out)]  # fmt: skip
    bench_latency.main(argv)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def throughput(in_repo_root: Path) -> dict[str, Any]:
    out = in_repo_root / "throughput.json"
    argv = ["--config", CONFIG, "--num-prompts", "12", "--hf-num-prompts", "3", "--hf-batch-sizes", "1,2",
            "--same-weights", "--json", str(out)]  # fmt: skip
    bench_throughput.main(argv)
    return json.loads(out.read_text())


@pytest.mark.slow
def test_latency_reports_ttft_and_tpot_of_both_engines_and_the_roofline(latency: dict[str, Any]) -> None:
    assert latency["environment"]["card"] and latency["environment"]["versions"]["jax"]
    assert_positive(latency["ceilings"]["copy_gbps_dev0"], latency["ceilings"]["matmul_tflops_dev0"])
    assert_positive(latency["jllm_startup_s"])
    assert [r["batch_size"] for r in latency["results"]] == [1, 3]
    for row in latency["results"]:
        for side in ("jllm", "transformers", "roofline"):
            assert_positive(row[side]["ttft_ms"], row[side]["tpot_ms"])
        assert len(row["jllm"]["tpot_ms_all"]) == 3


@pytest.mark.slow
def test_latency_greedy_tokens_match_transformers_on_the_same_weights(latency: dict[str, Any]) -> None:
    for row in latency["results"]:
        agree = row["agreement"]
        assert agree["prompts"] == 3 * row["batch_size"]  # one full-length batch per repeat
        assert agree["exact"] == agree["prompts"], agree


@pytest.mark.slow
def test_throughput_reports_tokens_per_second_of_both_engines_and_the_roofline(throughput: dict[str, Any]) -> None:
    j, hf, roof = throughput["jllm"], throughput["transformers"], throughput["roofline"]
    assert j["prompts"] == 12 and j["output_tokens"] == throughput["dataset"]["output"]["total"]
    assert_positive(j["output_tokens_per_s"], j["total_tokens_per_s"], j["wall_s"], throughput["jllm_startup_s"])
    assert j["total_tokens_per_s"] > j["output_tokens_per_s"]
    assert [r["batch_size"] for r in hf["runs"]] == [1, 2]
    for r in hf["runs"]:
        assert r["prompts"] == 3
        assert_positive(r["output_tokens_per_s"], r["total_tokens_per_s"])
    assert hf["best"]["output_tokens_per_s"] == max(r["output_tokens_per_s"] for r in hf["runs"])
    assert_positive(roof["output_tokens_per_s"], roof["total_tokens_per_s"], roof["prefill_s"], roof["decode_s"])


@pytest.mark.slow
def test_throughput_greedy_tokens_match_transformers_batch_1(throughput: dict[str, Any]) -> None:
    agree = throughput["agreement"]
    assert agree["hf_batch_size"] == 1 and agree["prompts"] == 3
    assert agree["exact"] == agree["prompts"], agree


def test_random_dataset_lengths_must_fit_the_context(in_repo_root: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--config", CONFIG, "--dataset", "random", "--input-len", "500", "--output-len", "13", "--skip-hf"]
    with pytest.raises(SystemExit):
        bench_throughput.main(argv)
    assert "--input-len 500 + --output-len 13 exceed max_model_len=512" in capsys.readouterr().err


def test_set_puts_engine_keys_over_the_yaml(in_repo_root: Path, capsys: pytest.CaptureFixture) -> None:
    # the YAML's max_model_len is 512: 250 + 13 fits it, not the 256 that --set asks for
    argv = ["--config", CONFIG, "--dataset", "random", "--input-len", "250", "--output-len", "13", "--skip-hf",
            "--set", "max_model_len=256"]  # fmt: skip
    with pytest.raises(SystemExit):
        bench_throughput.main(argv)
    assert "--input-len 250 + --output-len 13 exceed max_model_len=256" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_latency.main(["--config", CONFIG, "--skip-hf", "--set", "max_model_len"])
    assert "--set 'max_model_len': expected KEY=VALUE" in capsys.readouterr().err


@pytest.mark.slow  # runs transformers generate against a deadline (~10 s)
def test_transformers_batch_running_at_the_deadline_is_cut_and_its_tokens_count() -> None:
    # A fake transformers at 1 ms a step that honours max_time as generate does: a batch of the long tail (1000
    # tokens) would take 1 s, past the 0.1 s budget, so it stops there with the tokens made so far.
    def generate(prompts: list[list[int]], lengths: list[int], max_time: float | None = None) -> list[list[int]]:
        steps = max(lengths) if max_time is None else min(max(lengths), int(max_time / 1e-3))
        time.sleep(steps * 1e-3)
        return [[7] * min(n, steps) for n in lengths]

    outputs = [10, 10, 10, 1000]
    (run,) = bench_throughput.hf_throughput(generate, [[1, 2]] * 4, [2] * 4, outputs, [2], max_seconds=0.1)
    assert run["prompts"] == 2 and run["tokens"] == [[7] * 10] * 2 and run["time_limited"]
    assert 20 + 10 < run["output_tokens"] < sum(outputs)  # the cut batch's partial tokens count
    assert run["wall_s"] < 0.5 * sum(outputs) * 1e-3  # never the whole long tail
    assert run["output_tokens_per_s"] == run["output_tokens"] / run["wall_s"]


def test_sharegpt_like_lengths_are_seeded_with_the_target_means() -> None:
    sample = bench_throughput.sharegpt_like_lengths
    assert sample(1000, seed=3, max_model_len=8192) == sample(1000, seed=3, max_model_len=8192)
    assert sample(1000, seed=3, max_model_len=8192) != sample(1000, seed=4, max_model_len=8192)
    inputs, outputs = sample(1000, seed=3, max_model_len=8192)
    assert abs(np.mean(inputs) / 200 - 1) < 0.15 and abs(np.mean(outputs) / 180 - 1) < 0.15
    assert max(inputs) > 1000  # the long tail


def test_sharegpt_like_lengths_fit_the_context() -> None:
    inputs, outputs = bench_throughput.sharegpt_like_lengths(1000, seed=0, max_model_len=256)
    assert min(inputs) >= 4 and min(outputs) >= 4
    assert max(i + o for i, o in zip(inputs, outputs, strict=True)) <= 256


def test_roofline_model_size_matches_llama3_8b() -> None:
    cfg = json.loads((ROOT / "configs" / "models" / "llama3-8b" / "config.json").read_text())
    shape = bench_common.ModelShape.from_hf_config(cfg, "bfloat16")
    assert shape.streamed_params + cfg["vocab_size"] * cfg["hidden_size"] == 8_030_261_248  # the published count
    assert shape.kv_bytes_per_token == 131_072  # 32 layers x K and V x 8 heads x 128 x 2 bytes


def test_fp8_roofline_counts_one_byte_weights_and_the_fp8_matmul_rate() -> None:
    """Llama-3-8B in FP8 streams ~8.0 GB a step (issue 21): decoder linears at 1 byte, embeddings, norms and the LM
    head in bf16; an fp8 KV cache halves the bytes per token; prefill's linears run at the e4m3 matmul ceiling."""
    cfg = json.loads((ROOT / "configs" / "models" / "llama3-8b" / "config.json").read_text())
    bf16 = bench_common.ModelShape.from_hf_config(cfg, "bfloat16")
    fp8 = bench_common.ModelShape.from_hf_config(cfg, "bfloat16", "fp8", "fp8")
    linear = 32 * (4096 * 128 * 2 * (32 + 8) + 3 * 4096 * 14336)
    assert fp8.linear_params == linear
    assert fp8.streamed_bytes == linear + (bf16.streamed_params - linear) * 2 == 8_030_527_488
    assert bf16.streamed_bytes == 2 * bf16.streamed_params
    assert fp8.kv_bytes_per_token == bf16.kv_bytes_per_token // 2
    ceilings = {"copy_gbps_dev0": 4000.0, "matmul_tflops_dev0": 800.0, "matmul_fp8_tflops_dev0": 1600.0}
    keys = dict(max_num_seqs=1, max_num_batched_tokens=2048, ceilings=ceilings)
    one_token = bench_common.generation_roofline(fp8, [128], [129], **keys)
    read_per_step = fp8.streamed_bytes + (128 + 64.5 + 1) * fp8.kv_bytes_per_token  # mean context + the new token
    assert one_token["tpot_ms"] == pytest.approx(1e3 * read_per_step / 4e12)
    long_prompt = [bench_common.generation_roofline(s, [2048], [2], **keys)["prefill_s"] for s in (bf16, fp8)]
    attention = fp8.attention_flops_per_pair * 2048 * 2049 // 2
    other = 2 * (fp8.streamed_params - linear) * 2048 + attention
    assert long_prompt[0] == pytest.approx((2 * linear * 2048 + other) / 800e12)
    assert long_prompt[1] == pytest.approx(2 * linear * 2048 / 1600e12 + other / 800e12)


@pytest.mark.slow
def test_reference_attention_bench_times_every_step_kind_beside_torch(tmp_path: Path) -> None:
    out = tmp_path / "attention.json"
    rows = bench_reference_attention.main(
        ["--repeats", "1", "--num-pages", "1024", "--max-model-len", "512", "--json", str(out)]
    )
    assert [r["step"] for r in rows] == [case.name for case in bench_reference_attention.CASES]
    for row in rows:
        assert_positive(row["reference_ms"], row["torch_dense_ms"])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))


@pytest.mark.slow
def test_recurrent_bench_times_both_paths_of_each_layer_and_their_agreement(tmp_path: Path) -> None:
    """Tiny widths, two prefill rows then one beside 7 decodes: each layer's (gated DeltaNet, Kimi Delta Attention,
    Mamba2) token-by-token and chunked prefill timed, their outputs alike."""
    out = tmp_path / "recurrent.json"
    argv = ["--tiny", "--tokens", "80", "--rows", "2", "--decodes", "7", "--repeats", "1", "--json", str(out)]
    rows = bench_recurrent.main(argv)
    assert [(r["layer"], r["decodes"]) for r in rows] == [
        (layer, d) for layer in bench_recurrent.LAYERS for d in (0, 7)
    ]
    for row in rows:
        assert_positive(row["token_by_token_ms"], row["chunked_ms"])
        assert row["relative_difference"] < 1e-2  # bfloat16 outputs of the same float32 recurrence
    assert json.loads(out.read_text())["results"] == json.loads(json.dumps(rows))


def test_bench_grpc_vs_sse_streams_every_token_over_both_and_reports_both(tmp_path: Path) -> None:
    """The script checks each stream's usage counts every asked token, over SSE and over gRPC."""
    bench = importlib.import_module("bench_grpc_vs_sse")
    out = tmp_path / "grpc_vs_sse.json"
    bench.main(["--streams", "2", "--tokens", "16", "--rounds", "2", "--json", str(out)])
    result = json.loads(out.read_text())
    us = result["us_per_token"]
    for kind in ("wall", "cpu"):
        assert_positive(us["sse"][kind], us["grpc"][kind])
        assert result["grpc_minus_sse_us_per_token"][kind] == pytest.approx(us["grpc"][kind] - us["sse"][kind])
    assert [len(v) for v in result["rounds_us_per_token"].values()] == [2, 2]


@pytest.mark.slow  # a server process and two load levels (~15 s)
def test_bench_stream_overhead_streams_every_token_and_never_beats_the_step(tmp_path: Path) -> None:
    """Every asked token arrives, and no stream's time per output token is shorter than the scripted step it waits on.
    Its single inter-token times can be: when the client reads late (a busy machine, as under ``pytest -n 2``), the
    tokens sent meanwhile arrive back to back, which put the median ITL at 4.2 ms against a 5 ms step."""
    bench = importlib.import_module("bench_stream_overhead")
    out = tmp_path / "overhead.json"
    step_ms = 5.0
    bench.main(["--step-ms", str(step_ms), "--concurrency", "1,2", "--prompts-per-stream", "2", "--output-len", "8",
                "--json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [r["concurrency"] for r in rows] == [1, 2]
    for row in rows:
        assert row["failed"] == 0 and row["tokens"] == row["requests"] * 8
        assert row["tpot_p50_ms"] >= step_ms * 0.95 and row["itl_p50_ms"] > 0
        assert_positive(row["server_cpu_us_per_token"])


def test_bench_host_transfer_times_every_way_at_every_size(tmp_path: Path) -> None:
    bench = importlib.import_module("bench_host_transfer")
    out = tmp_path / "transfer.json"
    bench.main(["--words", "64,256", "--calls", "5", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["words"], r["way"]) for r in rows] == [(w, way) for w in (64, 256) for way in bench.ways(w)]
    assert_positive(*(r["host_us"] for r in rows))


def test_bench_dispatch_times_each_argument_count_of_a_program_it_checked(tmp_path: Path) -> None:
    bench = importlib.import_module("bench_dispatch")
    out = tmp_path / "dispatch.json"
    bench.main(["--args", "1,3", "--calls", "5", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["args"] for r in rows] == [1, 3]
    assert_positive(*(r["host_us"] for r in rows))


def test_serving_roofline_is_a_steady_state_step_of_decodes_and_their_share_of_prompts() -> None:
    """32 requests of 1024 in / 128 out in flight: each step decodes 32 tokens (each ~64 tokens into its output) and
    carries 32 * 1024 / 128 = 256 prompt tokens; Llama-3-8B's step reads the weights and ~4.6 GB of KV (memory-bound at
    3 TB/s / 800 TFLOP/s, compute-bound when the bandwidth doubles). TTFT's floor: one prompt alone."""
    cfg = json.loads((ROOT / "configs" / "models" / "llama3-8b" / "config.json").read_text())
    shape = bench_common.ModelShape.from_hf_config(cfg, "bfloat16")
    ceilings = {"copy_gbps_dev0": 3000.0, "matmul_tflops_dev0": 800.0}
    roof = bench_common.serving_roofline(shape, 32, 1024, 128, ceilings)
    kv = shape.kv_bytes_per_token * (32 * (1024 + 64) + 256)
    assert roof["step_tokens"] == 288 and roof["step_bound"] == "memory"
    assert roof["tpot_ms"] == pytest.approx(1e3 * (shape.streamed_bytes + kv) / 3e12)
    assert roof["output_tokens_per_s"] == pytest.approx(32e3 / roof["tpot_ms"])
    pairs = 32 * (1024 + 64) + 256 * 512
    flops = 2 * shape.linear_params * 288 + 2 * shape.vocab * shape.hidden * 32 + shape.attention_flops_per_pair * pairs
    fast_memory = bench_common.serving_roofline(shape, 32, 1024, 128, {**ceilings, "copy_gbps_dev0": 6000.0})
    assert fast_memory["step_bound"] == "compute" and fast_memory["tpot_ms"] == pytest.approx(1e3 * flops / 800e12)
    one_prompt = 2 * shape.linear_params * 1024 + 2 * shape.vocab * shape.hidden
    one_prompt += shape.attention_flops_per_pair * 1024 * 1025 / 2
    assert roof["ttft_ms"] == pytest.approx(1e3 * one_prompt / 800e12)


def test_bench_serving_refuses_a_roofline_it_cannot_compute() -> None:
    bench_serving = importlib.import_module("bench_serving")
    with pytest.raises(SystemExit, match="go together"):
        bench_serving.main(["--roofline-config", "configs/llama3-8b-h200.yaml"])
    with pytest.raises(SystemExit, match="needs --max-concurrency"):
        bench_serving.main(["--roofline-config", "x.yaml", "--ceilings", "c.json"])

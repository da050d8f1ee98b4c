"""scripts/bench_serving.py: the metric maths on a hand-made trace, the SSE parser, and one run against the real
server on the tiny random-weight model."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from server_utils import RunningServer, engine_config, tiny_chat_model

from jllm.build import build_engine

_SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(_SCRIPTS))  # as when run as `python scripts/bench_serving.py`: its sibling modules import
_spec = importlib.util.spec_from_file_location("bench_serving", _SCRIPTS / "bench_serving.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_serving"] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)
sweep = importlib.import_module("sweep_serving")


def _trace() -> list:
    """Two successful requests and one failure, with known times (seconds).

    A: sent at 0, chunks at 0.1, 0.3, 0.6 (3 tokens): TTFT 0.1, ITL 0.2 and 0.3, E2E 0.6, TPOT 0.5 / 2 = 0.25.
    B: sent at 0, chunks at 0.2, 0.4 (5 tokens, 2 chunks): TTFT 0.2, ITL 0.2, E2E 0.4, TPOT 0.2 / 4 = 0.05.
    """
    results = []
    for chunks, tokens in (([0.1, 0.3, 0.6], 3), ([0.2, 0.4], 5)):
        r = bench.RequestResult(prompt_len=10, start=0.0)
        state: dict = {}
        for t in chunks:
            bench.apply_event(r, json.dumps({"choices": [{"index": 0, "text": "x"}], "usage": None}), t, state)
        bench.apply_event(r, json.dumps({"choices": [], "usage": {"completion_tokens": tokens}}), chunks[-1], state)
        bench.apply_event(r, "[DONE]", chunks[-1], state)
        r.success, r.latency = True, state["last"] - r.start
        results.append(r)
    results.append(bench.RequestResult(prompt_len=10, error="HTTP 500"))
    return results


def test_metrics_of_a_hand_made_trace() -> None:
    a, b, _ = results = _trace()
    assert a.ttft == pytest.approx(0.1) and a.itl == pytest.approx([0.2, 0.3]) and a.output_tokens == 3
    assert bench.tpot(a) == pytest.approx(0.25) and bench.tpot(b) == pytest.approx(0.05)
    m = bench.compute_metrics(results, duration=2.0)
    assert (m["completed"], m["failed"]) == (2, 1)
    assert (m["total_input_tokens"], m["total_output_tokens"]) == (20, 8)
    assert m["request_throughput"] == pytest.approx(1.0)
    assert m["output_throughput"] == pytest.approx(4.0)
    assert m["total_token_throughput"] == pytest.approx(14.0)
    assert m["mean_ttft_ms"] == pytest.approx(150) and m["median_ttft_ms"] == pytest.approx(150)
    assert m["p90_ttft_ms"] == pytest.approx(190) and m["p99_ttft_ms"] == pytest.approx(199)
    assert m["mean_tpot_ms"] == pytest.approx(150) and m["p90_tpot_ms"] == pytest.approx(230)
    # ITL pools every gap: [0.2, 0.3, 0.2] -> median 200, p90 280 (linear interpolation), mean 233.3
    assert m["mean_itl_ms"] == pytest.approx(700 / 3) and m["median_itl_ms"] == pytest.approx(200)
    assert m["p90_itl_ms"] == pytest.approx(280) and m["p99_itl_ms"] == pytest.approx(298)
    assert m["mean_e2el_ms"] == pytest.approx(500) and m["p99_e2el_ms"] == pytest.approx(598)


def test_the_steady_state_figures_leave_out_the_requests_sent_before_the_first_finished() -> None:
    a, b, failed = _trace()  # both sent at 0; A finishes at 0.6, B at 0.4
    late = bench.RequestResult(prompt_len=10, success=True, start=0.5, ttft=0.03, latency=0.33, output_tokens=4)
    just_before = bench.RequestResult(prompt_len=10, success=True, start=0.39, ttft=0.5, latency=0.9, output_tokens=2)
    m = bench.compute_metrics([a, b, failed, late, just_before], duration=2.0)
    steady = m["steady_state"]
    assert steady["completed"] == 1
    assert steady["median_ttft_ms"] == pytest.approx(30) and steady["p99_ttft_ms"] == pytest.approx(30)
    assert steady["median_tpot_ms"] == pytest.approx(100)  # (0.33 - 0.03) / 3
    assert m["completed"] == 4 and m["p99_ttft_ms"] > 400  # the whole run's figures keep every request
    table = bench.format_table(
        {
            **m,
            "date": "d",
            "machine": "m",
            "model_id": "x",
            "input_len": 10,
            "output_len": 4,
            "request_rate": "inf",
            "max_concurrency": 2,
        }
    )
    assert "Sent after the first request finished" in table


def test_one_token_requests_have_no_tpot_and_no_successes_give_zeros() -> None:
    r = bench.RequestResult(prompt_len=4, success=True, ttft=0.1, latency=0.1, output_tokens=1)
    assert bench.tpot(r) is None
    m = bench.compute_metrics([r], duration=1.0)
    assert m["mean_tpot_ms"] == 0 and m["mean_ttft_ms"] == pytest.approx(100)
    empty = bench.compute_metrics([bench.RequestResult(prompt_len=4, error="x")], duration=1.0)
    assert (empty["completed"], empty["failed"], empty["p99_ttft_ms"]) == (0, 1, 0)
    assert empty["steady_state"]["completed"] == 0 and empty["steady_state"]["p99_ttft_ms"] == 0


def test_sse_parser_splits_events_across_arbitrary_chunk_boundaries() -> None:
    stream = (
        b': ping\r\n\r\ndata: {"a": 1}\r\n\r\ndata:{"b":2}\n\nevent: x\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n'
    )
    whole = bench.SSEParser().feed(stream)
    assert whole == ['{"a": 1}', '{"b":2}', "line1\nline2", "[DONE]"]
    for size in (1, 2, 3, 7):
        parser = bench.SSEParser()
        events = [e for i in range(0, len(stream), size) for e in parser.feed(stream[i : i + size])]
        assert events == whole, size
    parser = bench.SSEParser()
    assert parser.feed(b"data: tail") == [] and parser.close() == ["tail"]


def test_an_error_event_fails_the_request() -> None:
    r = bench.RequestResult(prompt_len=1)
    bench.apply_event(r, json.dumps({"error": {"message": "boom", "type": "server_error"}}), 0.1, {})
    assert r.error == "boom" and not r.success


def test_arrivals_are_rescaled_to_n_over_rate() -> None:
    rng = np.random.default_rng(0)
    assert bench.arrival_times(4, math.inf, 1.0, rng) == [0.0] * 4
    for burstiness in (1.0, 0.5, 3.0):
        times = bench.arrival_times(50, 10.0, burstiness, rng)
        assert times == sorted(times) and times[0] > 0 and times[-1] == pytest.approx(5.0)


@pytest.mark.slow
def test_end_to_end_against_the_real_server(
    default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = tiny_chat_model(tmp_path_factory.getbasetemp(), default_model_dir)
    config = engine_config(model, served_model_name="tiny-bench")
    output_len = 6
    with RunningServer(build_engine(config), config) as server:
        out = tmp_path / "result.json"
        result = bench.main(
            ["--base-url", server.url, "--num-prompts", "8", "--request-rate", "inf", "--input-len", "12"]
            + ["--output-len", str(output_len), "--max-token-id", "49152", "--json", str(out)]
        )
    assert result["model_id"] == "tiny-bench"
    assert (result["completed"], result["failed"]) == (8, 0), result["errors"]
    assert result["total_output_tokens"] == 8 * output_len and result["output_lens"] == [output_len] * 8
    assert result["total_input_tokens"] == 8 * 12
    assert all(0 < ttft <= e2el for ttft, e2el in zip(result["ttfts"], result["e2els"], strict=True))
    assert all(len(itl) >= 1 for itl in result["itls"])
    assert json.loads(out.read_text())["completed"] == 8
    table = capsys.readouterr().out
    assert "Serving Benchmark Result" in table and "P99 TPOT (ms):" in table and "Failed requests:" in table


@pytest.mark.slow
def test_sweep_runs_each_point_and_plots_both_figures(
    default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    model = tiny_chat_model(tmp_path_factory.getbasetemp(), default_model_dir)
    config = engine_config(model, served_model_name="tiny-sweep")
    with RunningServer(build_engine(config), config) as server:
        result = sweep.main(
            ["--base-url", server.url, "--concurrencies", "1,3", "--request-rates", "50,400", "--num-prompts", "4"]
            + ["--input-len", "8", "--output-len", "4", "--max-token-id", "49152", "--out-dir", str(tmp_path)]
            + ["--json", str(tmp_path / "sweep.json")]
        )
    assert [p["max_concurrency"] for p in result["concurrency"]] == [1, 3]
    assert [p["request_rate"] for p in result["request_rate"]] == [50.0, 400.0]
    for p in result["concurrency"] + result["request_rate"]:
        assert (p["completed"], p["num_errors"], p["total_output_tokens"]) == (4, 0, 16)
        assert 0 < p["median_ttft_ms"] <= p["p99_ttft_ms"] and p["output_throughput"] > 0
        assert "ttfts" not in p  # summaries only
    assert [p["seed"] for p in result["concurrency"] + result["request_rate"]] == [0, 1, 2, 3]
    assert json.loads((tmp_path / "sweep.json").read_text())["concurrency"][1]["max_concurrency"] == 3
    for name in ("serving_vs_concurrency.png", "serving_vs_request_rate.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, name


def test_sweep_gives_each_point_fresh_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    """One seed for all points would let every point after the first hit the server's prefix cache."""
    calls: list[list[str]] = []
    monkeypatch.setattr(sweep.bench_serving, "main", lambda argv: calls.append(argv) or {"errors": []})
    args, common = sweep.build_parser().parse_known_args(
        ["--concurrencies", "1,8", "--request-rates", "4", "--seed", "5", "--num-prompts", "3"]
    )
    result = sweep.sweep(args, common)
    seeds = [int(argv[argv.index("--seed") + 1]) for argv in calls]
    assert seeds == [5, 6, 7] and all(argv.count("--seed") == 1 for argv in calls)
    assert [argv[-4:-2] for argv in calls] == [["--max-concurrency", "1"], ["--max-concurrency", "8"],
                                               ["--request-rate", "4.0"]]  # fmt: skip
    assert (len(result["concurrency"]), len(result["request_rate"])) == (2, 1)


def test_sweep_refuses_a_bad_list() -> None:
    with pytest.raises(SystemExit):
        sweep.build_parser().parse_args(["--concurrencies", "4,0"])

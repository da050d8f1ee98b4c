"""scripts/fuzz_server.py: its check of the pooling routes' answers, and a whole pass over those routes against the
scripted engines of tests/test_server_scores.py (a classifier, a cross-encoder, a causal LM)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from pathlib import Path

import pytest
from server_utils import API_KEY, RunningServer
from test_server_scores import scripted_engines, scripted_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))  # as when run as a script
fuzz_server = importlib.import_module("fuzz_server")


def test_a_pooling_answer_with_a_lost_unsorted_or_non_numeric_result_is_a_failure() -> None:
    problem = fuzz_server.pooling_answer_problem
    rerank = {"query": "q", "documents": ["a", "b", "c"], "top_n": 2}
    best = [{"index": 2, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.5}]
    assert problem("/rerank", rerank, {"results": best}) is None
    assert "1 results for 3 documents" in problem("/rerank", rerank, {"results": best[:1]})
    assert "not sorted" in problem("/v2/rerank", rerank, {"results": best[::-1]})
    score = {"queries": "q", "documents": ["a", "b"]}
    assert problem("/v1/score", score, {"data": [{"index": 0, "score": 0.1}, {"index": 1, "score": 0.2}]}) is None
    assert "indices [0] for 2 inputs" in problem("/score", score, {"data": [{"index": 0, "score": 0.1}]})
    assert "not a finite number" in problem("/classify", {"input": [1, 2]}, {"data": [{"index": 0, "probs": [None]}]})
    embedded = {"data": [{"index": 0, "embedding": "AACAPw=="}, {"index": 1, "embedding": [0.5, 1.0]}]}
    assert problem("/v1/embeddings", {"input": ["a", "b"]}, embedded) is None


@pytest.mark.slow
def test_the_fuzzer_finds_no_failure_on_the_pooling_routes(capsys: pytest.CaptureFixture) -> None:
    """Against the cross-encoder, and (the fuzzer's model mutations) the classifier and the causal LM."""
    with scripted_server(scripted_engines(), body_timeout_s=1.0) as running:
        args = argparse.Namespace(
            url=running.url,
            model="ce",
            api_key=API_KEY,
            # the first, the ordinary request after each round, is one a classifier serves (it refuses embeddings)
            routes=[*fuzz_server.POOLING_ROUTES[1:], "/v1/embeddings"],
            rounds=1,
            concurrency=8,
            timeout=60.0,
            seed=0,
            stall_timeout=10.0,
        )
        status = asyncio.run(fuzz_server.run(args))
    printed = capsys.readouterr().out
    assert status == 0 and printed.endswith("0 failures\n"), printed[-3000:]
    assert "200: " in printed and "400: " in printed and "408: " in printed, printed  # answered and refused alike


def test_pipelined_requests_and_header_bytes_that_are_not_utf8_are_each_answered() -> None:
    """Six requests (ordinary, not JSON, streamed) written at once on one connection get six answers in order; each
    raw case with header bytes that are not UTF-8 gets a 4xx in OpenAI's JSON."""
    from fake_runner import fake_engine

    from jllm.config import load_config

    with RunningServer(fake_engine(), load_config(None, served_model_name="scripted")) as running:
        fuzzer = fuzz_server.Fuzzer(running.url, "scripted", 30.0, {})

        async def go() -> None:
            for route in ("/v1/completions", "/v1/chat/completions", "/tokenize"):
                await fuzzer.send_pipelined(route, 10.0)
            for what, rest, half_close in fuzz_server.RAW_CASES[-4:]:
                await fuzzer.send_raw("/v1/completions", what, rest, half_close, 10.0)

        asyncio.run(go())
    assert fuzzer.failures == []
    assert fuzzer.statuses == {200: 4 + 4 + 3, 400: 2 + 2 + 3 + 4}, fuzzer.statuses

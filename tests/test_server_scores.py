"""``/classify``, ``/score`` and ``/rerank`` over raw HTTP, vLLM's bodies.

Three scripted engines share ``test_server_embeddings``' scripted encoder (a vector of each prompt's length and token
sum): "cls" a classifier of three labels, "ce" a cross-encoder (one label), "emb" a causal LM (a bi-encoder for
scores). The heads are real ``ClassifierHead``s over those vectors, so each route's numbers are checked exactly;
transformers' parity of the heads themselves is tests/test_classify.py's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fake_runner import TINY_TOKENIZER
from server_utils import API_KEY, RunningServer, http
from test_server_embeddings import engine_with_encoder, scripted

from jllm.classify import ClassifierHead
from jllm.config import load_config
from jllm.engine import LLMEngine
from jllm.serve_config import ModelEntry

AUTH = {"Authorization": f"Bearer {API_KEY}"}
LABELS = {"0": "negative", "1": "neutral", "2": "positive"}
CLASSES = np.array([[0.02, -0.01, 0.0], [0.0, 0.001, -0.002], [0.1, 0.2, 0.3]], np.float32)  # [len, sum, 2] -> 3
RELEVANCE = np.array([[0.05], [-0.001], [0.1]], np.float32)  # [len, sum, 2] -> 1


def engine(weight: np.ndarray | None, **config: Any) -> LLMEngine:
    engine = engine_with_encoder()
    engine.classifier = None if weight is None else ClassifierHead.from_config(config, weight)
    return engine


def scripted_engines() -> dict[str, LLMEngine]:
    return {
        "cls": engine(CLASSES, id2label=LABELS, architectures=["Qwen3ForSequenceClassification"]),
        "ce": engine(RELEVANCE, architectures=["LlamaForSequenceClassification"]),
        "emb": engine(None),
    }


def scripted_server(engines: dict[str, LLMEngine], **server_config: Any) -> RunningServer:
    config = load_config(None, model=str(TINY_TOKENIZER), api_key=API_KEY, max_num_seqs=2)
    models = [(ModelEntry((name,), config), engine, None) for name, engine in engines.items()]
    return RunningServer(None, load_config(None, api_key=API_KEY, **server_config), models=models)


@pytest.fixture
def engines() -> dict[str, LLMEngine]:
    return scripted_engines()


@pytest.fixture
def server(engines: dict[str, LLMEngine]) -> Iterator[RunningServer]:
    with scripted_server(engines) as running:
        yield running


def post(server: RunningServer, path: str, body: dict[str, Any]) -> Any:
    return http("POST", f"{server.url}{path}", json_body=body, headers=AUTH)


def ids(engine: LLMEngine, text: str) -> list[int]:
    return engine.inputs.encode(text).token_ids


def pair(engine: LLMEngine, first: str, second: str) -> list[int]:
    return engine.inputs.tokenizer.encode_pair(first, second)


def logits(weight: np.ndarray, prompt: list[int]) -> np.ndarray:
    return np.float32(scripted(prompt, "last", normalize=False)) @ weight


def sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


def test_classify_gives_each_inputs_probabilities_label_and_usage(server, engines) -> None:
    texts = ["good movie", "a terribly long and boring film"]
    body = post(server, "/classify", {"model": "cls", "input": texts, "request_id": "r1"}).json()
    assert body["id"] == "classify-r1" and body["object"] == "list" and body["model"] == "cls"
    for i, (data, text) in enumerate(zip(body["data"], texts, strict=True)):
        row = logits(CLASSES, ids(engines["cls"], text))
        expected = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        np.testing.assert_allclose(data["probs"], expected, rtol=1e-5)
        assert data["index"] == i and data["num_classes"] == 3
        assert data["label"] == LABELS[str(int(np.argmax(expected)))]
    tokens = sum(len(ids(engines["cls"], t)) for t in texts)
    assert body["usage"] == {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}
    prompt = ids(engines["cls"], "good movie")
    for off in ({"use_activation": False}, {"activation": False}, {"softmax": False}):  # vLLM's older names too
        raw = post(server, "/classify", {"model": "cls", "input": prompt, **off}).json()
        np.testing.assert_allclose(raw["data"][0]["probs"], logits(CLASSES, prompt), rtol=1e-6)
    cut = post(server, "/classify", {"model": "cls", "input": "good movie", "truncate_prompt_tokens": 2}).json()
    assert cut["usage"]["prompt_tokens"] == 2
    first = {"model": "cls", "input": prompt, "truncate_prompt_tokens": 2, "truncation_side": "right"}
    head = post(server, "/classify", first).json()  # the first two tokens kept
    row = logits(CLASSES, prompt[:2])
    expected = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
    np.testing.assert_allclose(head["data"][0]["probs"], expected, rtol=1e-5)
    assert set(engines["cls"].encoder.threads) == {"jllm-engine"}
    assert post(server, "/classify", {"model": "nope", "input": "hi"}).status == 404


def test_a_cross_encoder_scores_each_pair_of_the_tokenizers_pair_encoding(server, engines) -> None:
    ce = engines["ce"]
    docs = ["a small feline", "the tax code", "cats purr"]
    expected = [sigmoid(logits(RELEVANCE, pair(ce, "cat", d))[0]) for d in docs]
    for body in (
        {"text_1": "cat", "text_2": docs},
        {"queries": "cat", "documents": docs},
        {"queries": ["cat"] * 3, "items": docs},
        {"data_1": ["cat"] * 3, "data_2": docs, "activation": True},
    ):
        for path in ("/score", "/v1/score"):
            reply = post(server, path, {"model": "ce", **body}).json()
            assert [d["index"] for d in reply["data"]] == [0, 1, 2] and reply["data"][0]["object"] == "score"
            np.testing.assert_allclose([d["score"] for d in reply["data"]], expected, rtol=1e-5)
            tokens = sum(len(pair(ce, "cat", d)) for d in docs)
            assert reply["usage"]["prompt_tokens"] == reply["usage"]["total_tokens"] == tokens
            assert reply["object"] == "list" and reply["model"] == "ce" and reply["id"].startswith("score-")
    raw = post(server, "/score", {"model": "ce", "text_1": "cat", "text_2": "cats purr", "softmax": False}).json()
    assert raw["data"][0]["score"] == pytest.approx(float(logits(RELEVANCE, pair(ce, "cat", "cats purr"))[0]))


def test_an_embedding_model_scores_by_cosine_similarity(server, engines) -> None:
    emb = engines["emb"]
    docs = ["a small feline", "the tax code"]
    reply = post(server, "/score", {"model": "emb", "text_1": ["cat", "dog"], "text_2": docs}).json()
    for data, first, doc in zip(reply["data"], ["cat", "dog"], docs, strict=True):
        a, b = (np.array(scripted(ids(emb, t), "last")) for t in (first, doc))
        assert data["score"] == pytest.approx(float(a @ b), abs=1e-6)
    assert reply["usage"]["prompt_tokens"] == sum(len(ids(emb, t)) for t in ["cat", "dog", *docs])


def test_rerank_sorts_by_relevance_and_keeps_the_top_n(server, engines) -> None:
    ce = engines["ce"]
    docs = ["a small feline", "the tax code", "cats purr", "x"]
    scores = [sigmoid(logits(RELEVANCE, pair(ce, "cat", d))[0]) for d in docs]
    order = list(np.argsort(scores)[::-1])
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        for top_n, kept in ((0, 4), (2, 2), (9, 4)):
            reply = post(server, path, {"model": "ce", "query": "cat", "documents": docs, "top_n": top_n}).json()
            assert [r["index"] for r in reply["results"]] == order[:kept]
            for result in reply["results"]:
                assert result["document"] == {"text": docs[result["index"]]}
                assert result["relevance_score"] == pytest.approx(scores[result["index"]], rel=1e-5)
            tokens = sum(len(pair(ce, "cat", d)) for d in docs)
            assert reply["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
            assert reply["model"] == "ce" and reply["id"].startswith("score-")
    [only] = post(server, "/rerank", {"model": "emb", "query": "cat", "documents": "a cat"}).json()["results"]
    assert only["index"] == 0 and -1 <= only["relevance_score"] <= 1


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/classify", {"model": "emb", "input": "hi"}, "model `emb` is not a sequence classifier"),
        ("/score", {"model": "cls", "text_1": "a", "text_2": "b"}, "model `cls` is a sequence classifier of 3 labels"),
        ("/rerank", {"model": "cls", "query": "q", "documents": ["d"]}, "model `cls` is a sequence classifier of 3"),
        (
            "/v1/completions",
            {"model": "ce", "prompt": "hi"},
            r"model `ce` is a sequence classifier \(LlamaForSequenceClassification, 1 label\) ",
        ),
        (
            "/v1/chat/completions",
            {"model": "cls", "messages": [{"role": "user", "content": "hi"}]},
            "cannot generate text; use POST /classify$",
        ),
        ("/v1/responses", {"model": "ce", "input": "hi"}, "model `ce` is a sequence classifier"),
        (  # vLLM's 400 too: a classifier's task is classify, not embed
            "/v1/embeddings",
            {"model": "ce", "input": "hi"},
            r"model `ce` is a sequence classifier \(LlamaForSequenceClassification, 1 label\) and cannot embed text; "
            "use POST /classify, /score and /rerank$",
        ),
        ("/v1/embeddings", {"model": "cls", "input": [1, 2]}, "cannot embed text; use POST /classify$"),
    ],
)
def test_a_model_of_the_wrong_kind_is_a_400_naming_it(server, engines, path, body, message) -> None:
    reply = post(server, path, body)
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert error["param"] == "model" and re.search(message, error["message"]), error
    assert all(not e.encoder.threads for e in engines.values())


GOOD = {
    "/classify": {"model": "cls", "input": "hello"},
    "/score": {"model": "ce", "text_1": "q", "text_2": ["a", "b"]},
    "/rerank": {"model": "ce", "query": "q", "documents": ["a", "b"]},
}
POOLING_FIELDS = [
    ({"priority": 1}, "priority", "chat and completions requests take it"),
    ({"padding": "max_length"}, "padding", "unpadded"),
    ({"truncation_side": "middle"}, "truncation_side", "'left' or 'right'"),
    ({"mm_processor_kwargs": {"a": 1}}, "mm_processor_kwargs", "text only"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens", "at least 1"),
    ({"use_activation": "yes"}, "use_activation", "valid boolean"),
]
SCORING_FIELDS = [
    ({"max_tokens_per_query": 4}, "max_tokens_per_query", "use truncate_prompt_tokens"),
    ({"max_tokens_per_doc": 4}, "max_tokens_per_doc", "use truncate_prompt_tokens"),
    ({"instruction": "be strict"}, "instruction", "score template"),
    ({"chat_template_kwargs": {"a": 1}}, "chat_template_kwargs", "score template"),
    ({"use_activation": True, "softmax": False}, "use_activation", "use_activation and softmax disagree"),
]
CASES = (
    [("/classify", *case) for case in POOLING_FIELDS]
    + [
        ("/classify", {"messages": [{"role": "user", "content": "hi"}]}, "messages", "not supported for classific"),
        ("/classify", {"add_generation_prompt": True}, "add_generation_prompt", "not supported for classific"),
        ("/classify", {"continue_final_message": True}, "continue_final_message", "not supported for classific"),
        ("/classify", {"use_activation": True, "activation": False}, "use_activation", "and activation disagree"),
        ("/classify", {"input": []}, "input", "input is empty"),
        ("/classify", {"input": ["fine", ""]}, "input[1]", r"input\[1\] is empty"),
        ("/classify", {"input": [1, 10**6]}, "input", "outside the vocabulary"),
        ("/classify", {"input": [5] * 65}, "input", "maximum context length is 64"),
    ]
    + [(path, *case) for path in ("/score", "/rerank") for case in POOLING_FIELDS + SCORING_FIELDS]
    + [
        ("/score", {"text_2": None}, "text_2", "text_2 is missing"),
        ("/score", {"text_1": None, "text_2": None, "queries": "q"}, "documents", "documents is missing"),
        ("/score", {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, "text_1", "text_1 has 2 texts and text_2 3"),
        ("/score", {"text_1": []}, "text_1", "text_1 is empty"),
        ("/score", {"text_2": [{"content": []}]}, "text_2", "text_2"),
        ("/score", {"model": "emb", "text_2": ["fine", ""]}, "text_2[1]", r"text_2\[1\] is empty"),  # a bi-encoder
        ("/rerank", {"top_n": -1}, "top_n", "greater than or equal to 0"),
        ("/rerank", {"query": None}, "query", "query"),
        ("/rerank", {"documents": []}, "documents", "documents is empty"),
        # past max_prompt_chars (32 a token of context: 2,048): the side holding most of the text is named
        ("/rerank", {"documents": ["a" * 1000] * 3}, "documents", "^documents: 3001 characters of prompt text"),
        ("/score", {"text_1": ["a" * 2048, "b"]}, "text_1", "^text_1: 2051 characters of prompt text"),
    ]
)


@pytest.mark.parametrize("path, extra, param, message", CASES)
def test_a_field_it_cannot_honour_is_a_400_naming_it(server, engines, path, extra, param, message) -> None:
    body = {k: v for k, v in {**GOOD[path], **extra}.items() if v is not None}
    reply = post(server, path, body)
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert error["param"] == param and re.search(message, error["message"]), error
    assert all(not e.encoder.threads for e in engines.values())  # refused before anything ran


@pytest.mark.slow
def test_a_served_cross_encoders_routes_equal_the_offline_api(tmp_path) -> None:
    from server_utils import engine_config
    from test_classify import ENGINE_ARGS, classifier_checkpoint, pair_tokenizer

    from jllm.llm import LLM

    model_dir = classifier_checkpoint(tmp_path, "Qwen3", num_labels=1)
    pair_tokenizer(model_dir)
    llm = LLM(str(model_dir), **ENGINE_ARGS)
    docs = ["a small feline", "the tax code", "cats purr"]
    offline = [o.outputs.score for o in llm.score_pairs("cat?", docs, use_tqdm=False)]
    probs = [o.outputs.probs for o in llm.classify(docs, use_tqdm=False)]
    config = engine_config(model_dir, **ENGINE_ARGS, api_key=API_KEY, served_model_name="ce")
    with RunningServer(llm.engine, config) as running:
        score = post(running, "/score", {"text_1": "cat?", "text_2": docs}).json()
        np.testing.assert_allclose([d["score"] for d in score["data"]], offline, rtol=1e-6)
        rerank = post(running, "/rerank", {"query": "cat?", "documents": docs, "top_n": 2}).json()
        assert [r["index"] for r in rerank["results"]] == list(np.argsort(offline)[::-1][:2])
        classified = post(running, "/classify", {"input": docs}).json()
        np.testing.assert_allclose([d["probs"] for d in classified["data"]], probs, rtol=1e-6)
        refused = post(running, "/v1/completions", {"prompt": "hi"})
        assert refused.status == 400 and refused.json()["error"]["param"] == "model"


@pytest.mark.slow
def test_scores_between_streaming_completions_lose_nothing_and_change_no_token(tmp_path) -> None:
    """A causal LM streaming greedy completions while, on the same engine thread, score, rerank and embedding
    requests run their forwards between its steps: every request answered, each stream's text and each score as
    when it ran alone."""
    import asyncio
    import json
    import random

    import aiohttp
    from model_utils import TINY_CONFIG, save_char_tokenizer, save_tiny_checkpoint
    from server_utils import assert_engine_left_empty, engine_config
    from test_classify import ENGINE_ARGS

    from jllm.llm import LLM

    model_dir = save_tiny_checkpoint("LlamaForCausalLM", {**TINY_CONFIG, "initializer_range": 0.3}, tmp_path / "lm")
    save_char_tokenizer(model_dir, TINY_CONFIG["vocab_size"])
    llm = LLM(str(model_dir), **ENGINE_ARGS)
    rng = random.Random(0)
    prompts = [f"story {i}: " + "ab" * rng.randrange(1, 10) for i in range(4)]
    docs = [[f"doc {j} " + "xy" * rng.randrange(0, 8) for j in range(rng.randrange(1, 7))] for _ in range(12)]
    pooled = [
        [("/score", {"text_1": "cat", "text_2": d}), ("/v1/rerank", {"query": "cat", "documents": d, "top_n": 2})][
            i % 2
        ]
        if i % 3
        else ("/v1/embeddings", {"input": d})
        for i, d in enumerate(docs)
    ]

    async def stream(session: aiohttp.ClientSession, url: str, prompt: str) -> str:
        body = {"prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True, "stream": True}
        async with session.post(f"{url}/v1/completions", json=body, headers=AUTH) as response:
            assert response.status == 200, await response.text()
            events = [line.decode()[6:].strip() async for line in response.content if line.startswith(b"data: ")]
        assert events[-1] == "[DONE]"
        return "".join(json.loads(event)["choices"][0]["text"] for event in events[:-1])

    async def pool(session: aiohttp.ClientSession, url: str, path: str, body: dict) -> list[float]:
        async with session.post(f"{url}{path}", json=body, headers=AUTH) as response:
            assert response.status == 200, await response.text()
            answer = await response.json()
        if "results" in answer:
            return [x for r in answer["results"] for x in (r["index"], r["relevance_score"])]
        return [x for d in answer["data"] for x in (d["embedding"][:4] if "embedding" in d else [d["score"]])]

    async def run(url: str, together: bool) -> tuple[list[str], list[list[float]]]:
        async with aiohttp.ClientSession() as session:
            calls = [lambda p=p: stream(session, url, p) for p in prompts]
            calls += [lambda c=c: pool(session, url, *c) for c in pooled]
            if not together:
                results = [await call() for call in calls]
            else:
                order = rng.sample(range(len(calls)), len(calls))
                shuffled = await asyncio.gather(*(calls[i]() for i in order))
                results = [shuffled[order.index(i)] for i in range(len(calls))]
        return results[: len(prompts)], results[len(prompts) :]

    with RunningServer(llm.engine, engine_config(model_dir, **ENGINE_ARGS, api_key=API_KEY)) as running:
        alone_texts, alone_scores = asyncio.run(run(running.url, together=False))
        texts, scores = asyncio.run(run(running.url, together=True))
        assert_engine_left_empty(llm.engine, wait=2.0)
    assert texts == alone_texts and all(texts)
    for got, alone in zip(scores, alone_scores, strict=True):
        np.testing.assert_allclose(got, alone, rtol=1e-5, atol=1e-6)

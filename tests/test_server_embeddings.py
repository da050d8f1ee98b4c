"""``/v1/embeddings`` through the unmodified ``openai`` client and raw HTTP.

The fast tests serve two scripted engines ("a" pooling "last", "b" pooling "mean") whose encoder is scripted too: a
vector made from each input's token ids, so what the route does with inputs, formats, fields and models is checked
exactly without a model. The slow test compares the real route with ``LLM.embed`` on the default model.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from fake_runner import TINY_TOKENIZER, fake_engine
from prometheus_client.parser import text_string_to_metric_families
from server_utils import API_KEY, RunningServer, http

from jllm.config import load_config
from jllm.engine import LLMEngine
from jllm.serve_config import ModelEntry

AUTH = {"Authorization": f"Bearer {API_KEY}"}


class ScriptedEncoder:
    """Stands in for ``jllm.pooling.Encoder``: [tokens, sum of ids, 1 for mean / 2 for last], normed as asked;
    records the thread each call ran on."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.num_compilations = 0  # the counter the server's metrics read

    def embed(
        self, prompts: Sequence[Sequence[int]], how: str, normalize: bool, progress: Callable[..., Any] | None = None
    ) -> list[np.ndarray]:
        self.threads.append(threading.current_thread().name)
        vectors = [np.array([len(p), sum(p), 1.0 if how == "mean" else 2.0], np.float32) for p in prompts]
        return [v / np.linalg.norm(v) if normalize else v for v in vectors]


def scripted(prompt: list[int], how: str, normalize: bool = True) -> list[float]:
    return ScriptedEncoder().embed([prompt], how, normalize)[0].tolist()


def vector(embedding: list[float] | str) -> np.ndarray:
    """A response's embedding as float32: a list of floats, or base64 of float32 bytes (which the client leaves
    alone when ``encoding_format`` is asked for)."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), np.float32)
    return np.float32(embedding)


def engine_with_encoder() -> LLMEngine:
    engine = fake_engine(max_model_len=64)
    engine.__dict__["_encoder"] = ScriptedEncoder()  # the cached property, filled in
    return engine


@pytest.fixture
def engines() -> dict[str, LLMEngine]:
    return {"a": engine_with_encoder(), "b": engine_with_encoder()}


@pytest.fixture
def server(engines: dict[str, LLMEngine]) -> Iterator[RunningServer]:
    def entry(name: str, pooling: str) -> ModelEntry:
        config = load_config(None, model=str(TINY_TOKENIZER), api_key=API_KEY, pooling=pooling, max_num_seqs=4)
        return ModelEntry((name,), config)

    models = [(entry("a", "last"), engines["a"], None), (entry("b", "mean"), engines["b"], None)]
    with RunningServer(None, load_config(None, api_key=API_KEY), models=models) as running:
        yield running


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


def post(server: RunningServer, body: dict[str, Any]) -> Any:
    return http("POST", f"{server.url}/v1/embeddings", json_body=body, headers=AUTH)


def test_every_input_form_in_float_and_base64_runs_on_the_engine_thread(client, engines) -> None:
    encode = engines["a"].inputs.encode
    hello, world = encode("hello").token_ids, encode("the world").token_ids
    for given, prompts in [
        ("hello", [hello]),
        (["hello", "the world"], [hello, world]),
        (world, [world]),
        ([hello, world], [hello, world]),
    ]:
        for encoding_format in ("float", "base64", openai.NOT_GIVEN):  # not given: base64, decoded by the client
            response = client.embeddings.create(model="a", input=given, encoding_format=encoding_format)
            assert [d.index for d in response.data] == list(range(len(prompts)))
            for data, prompt in zip(response.data, prompts, strict=True):
                np.testing.assert_array_equal(vector(data.embedding), np.float32(scripted(prompt, "last")))
            tokens = sum(map(len, prompts))
            assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
            assert response.model == "a" and response.object == "list"
    assert set(engines["a"].encoder.threads) == {"jllm-engine"}


def test_a_long_list_of_inputs_goes_to_the_engine_thread_in_groups_of_max_num_seqs(client, engines) -> None:
    texts = [f"input number {i}" for i in range(10)]
    response = client.embeddings.create(model="a", input=texts, encoding_format="float")
    for data, text in zip(response.data, texts, strict=True):
        expected = scripted(engines["a"].inputs.encode(text).token_ids, "last")
        np.testing.assert_array_equal(vector(data.embedding), np.float32(expected))
    assert engines["a"].encoder.threads == ["jllm-engine"] * 3  # 4 + 4 + 2


def test_each_model_pools_as_its_config_says(client, engines) -> None:
    ids = engines["b"].inputs.encode("hello").token_ids
    for name, how in (("a", "last"), ("b", "mean")):
        [data] = client.embeddings.create(model=name, input="hello", encoding_format="float").data
        np.testing.assert_array_equal(np.float32(data.embedding), np.float32(scripted(ids, how)))
    assert len(engines["b"].encoder.threads) == 1
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.embeddings.create(model="c", input="hello")


def test_metrics_count_pooling_programs_compiled_after_startup(server, engines) -> None:
    def compiled(model: str) -> float:
        families = text_string_to_metric_families(http("GET", f"{server.url}/metrics").body.decode())
        name = "jllm:programs_compiled_after_startup_total"
        return next(s.value for f in families for s in f.samples if s.name == name and s.labels["model_name"] == model)

    before = compiled("b")
    engines["b"].encoder.num_compilations += 2  # as an encoder meeting two new buckets would
    for _ in range(2):  # the second call runs after the first one's turn published the engine's counters
        assert post(server, {"model": "b", "input": "hi"}).status == 200
    assert compiled("b") == before + 2 and compiled("a") == 0


def test_vllms_extra_fields_are_honoured(server, engines) -> None:
    ids = engines["a"].inputs.encode("hello there").token_ids
    cases = [
        ({"normalize": False}, ids, False),
        ({"use_activation": False}, ids, False),
        ({"truncate_prompt_tokens": 2}, ids[-2:], True),
        ({"truncate_prompt_tokens": 2, "truncation_side": "right"}, ids[:2], True),
        (
            {"add_special_tokens": False},
            engines["a"].inputs.encode("hello there", add_special_tokens=False).token_ids,
            True,
        ),
    ]
    for extra, prompt, normalized in cases:
        body = post(server, {"model": "a", "input": "hello there", "encoding_format": "float", **extra}).json()
        np.testing.assert_allclose(body["data"][0]["embedding"], scripted(prompt, "last", normalized), rtol=1e-6)
    for endianness, order in (("big", ">"), ("little", "<")):
        body = post(server, {"input": "hello there", "encoding_format": "base64", "endianness": endianness}).json()
        decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), f"{order}f4")
        np.testing.assert_allclose(decoded, scripted(ids, "last"), rtol=1e-6)
    body = post(server, {"input": "hi", "request_id": "mine", "user": "u", "cache_salt": "salt"}).json()
    assert body["id"] == "embd-mine" and body["model"] == "a"  # no model named: the first served one


@pytest.mark.parametrize(
    "extra, param, message",
    [
        ({"dimensions": 8}, "dimensions", "dimensions is not supported"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "messages are not supported"),
        # the rest of vLLM's chat form: each would be ignored, the input embedded as it is
        ({"chat_template": "{{ x }}"}, "chat_template", "not supported for embeddings"),
        ({"chat_template_kwargs": {"a": 1}}, "chat_template_kwargs", "not supported for embeddings"),
        ({"add_generation_prompt": True}, "add_generation_prompt", "not supported for embeddings"),
        ({"continue_final_message": True}, "continue_final_message", "not supported for embeddings"),
        ({"embed_dtype": "float16"}, "embed_dtype", "must be float32"),
        ({"priority": 1}, "priority", "chat and completions requests take it"),
        ({"truncation_side": "middle"}, "truncation_side", "'left' or 'right'"),
        ({"padding": "max_length"}, "padding", "unpadded"),
        ({"encoding_format": "bytes"}, "encoding_format", "'float' or 'base64'"),
        ({"input": []}, "input", "input is empty"),
        ({"input": ""}, "input", "input is empty"),
        ({"input": ["fine", ""]}, "input[1]", r"input\[1\] is empty"),
        ({"input": [1, 10**6]}, "input", "outside the vocabulary"),
        ({"input": [5] * 65}, "input", "maximum context length is 64"),
        ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens", "at least 1"),
        ({"normalize": True, "use_activation": False}, "normalize", "disagree"),
    ],
)
def test_a_field_it_cannot_honour_is_a_400_naming_it(server, engines, extra, param, message) -> None:
    reply = post(server, {"model": "a", "input": "hello", **extra})
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert error["param"] == param and re.search(message, error["message"]), error
    assert engines["a"].encoder.threads == []  # refused before anything ran


@pytest.mark.slow
def test_the_routes_vectors_are_llm_embeds_and_unit_norm(default_model_dir: Path) -> None:
    from server_utils import ENGINE_ARGS, engine_config

    from jllm.llm import LLM

    texts = ["The capital of France is Paris.", "def add(a, b):\n    return a + b", "Bonjour"]
    llm = LLM(str(default_model_dir), **ENGINE_ARGS)
    offline = [np.array(o.outputs.embedding) for o in llm.embed(texts)]
    config = engine_config(default_model_dir, api_key=API_KEY, served_model_name="smol")
    with RunningServer(llm.engine, config) as running:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key=API_KEY, max_retries=0)
        for encoding_format in ("float", "base64", openai.NOT_GIVEN):
            response = client.embeddings.create(model="smol", input=texts, encoding_format=encoding_format)
            for data, expected in zip(response.data, offline, strict=True):
                got = vector(data.embedding)
                assert got.shape == (576,)  # SmolLM2-135M's hidden size
                np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # the same program on the same batch
                assert abs(np.linalg.norm(got) - 1.0) < 1e-5
        with pytest.raises(openai.BadRequestError, match="dimensions is not supported"):
            client.embeddings.create(model="smol", input=texts, dimensions=64)

"""SageMaker's routes, as vLLM serves them: ``/ping`` is ``/health`` (no key, GET or POST), and ``/invocations``
answers each body on the route its shape belongs to, or with a 400 naming the shapes it takes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_runner import fake_engine
from server_utils import API_KEY, RunningServer, http

from jllm.config import load_config

MODEL = "scripted"
KEY = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with RunningServer(fake_engine(), load_config(None, served_model_name=MODEL, api_key=API_KEY)) as running:
        yield running


def test_ping_is_health_without_a_key(server: RunningServer) -> None:
    health = http("GET", f"{server.url}/health").json()
    for method in ("GET", "POST"):
        reply = http(method, f"{server.url}/ping")
        assert reply.status == 200 and reply.json() == health


def test_invocations_answer_on_the_route_of_the_bodys_shape(server: RunningServer) -> None:
    def invoke(body: object) -> object:
        return http("POST", f"{server.url}/invocations", json_body=body, headers=KEY)

    chat = invoke({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).json()
    completion = invoke({"model": MODEL, "prompt": "hi", "max_tokens": 2}).json()
    assert (chat["object"], completion["object"]) == ("chat.completion", "text_completion")
    assert chat["usage"]["completion_tokens"] == completion["usage"]["completion_tokens"] == 2
    embedding = invoke({"model": MODEL, "input": "hi", "encoding_format": "hex"})  # the embeddings route's own check
    assert embedding.status == 400 and embedding.json()["error"]["param"] == "encoding_format", embedding.body
    for body in ({"model": MODEL, "text": "hi"}, [1, 2]):
        refused = invoke(body)
        error = refused.json()["error"]
        assert refused.status == 400 and "messages, prompt, input" in error["message"], error
    bad_field = invoke({"model": MODEL, "prompt": "hi", "max_tokens": -1})  # the route's own check
    assert bad_field.status == 400 and bad_field.json()["error"]["param"] == "max_tokens"
    keyless = http("POST", f"{server.url}/invocations", json_body={"model": MODEL, "prompt": "hi"})
    assert keyless.status == 401


@pytest.mark.parametrize("body", [b"[" * 5000 + b"]" * 5000, b'{"prompt": ' + b'{"a": ' * 2000 + b"1" + b"}" * 2001])
def test_a_body_nested_too_deep_is_a_400_not_a_500(server: RunningServer, body: bytes) -> None:
    """The standard library's parser raised RecursionError (a 500) past ~1,000 levels; the routes' own parser
    refuses them as the other routes do."""
    reply = http("POST", f"{server.url}/invocations", data=body, headers={**KEY, "Content-Type": "application/json"})
    error = reply.json()["error"]
    assert reply.status == 400 and error["message"].startswith("the request body is not valid JSON"), reply.body

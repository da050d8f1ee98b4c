"""Cross-origin requests (vLLM's ``--allowed-origins`` and friends): a browser's preflight answered without the API
key, the origin's headers on every answer (errors and streams too), and a narrower policy refusing by name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_runner import fake_engine
from server_utils import API_KEY, RunningServer, http

from jllm.config import load_config
from jllm.config_base import ConfigError

MODEL = "scripted"
UI = "https://ui.example"
BODY = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
KEYED = {"Authorization": f"Bearer {API_KEY}", "Origin": UI}


def _preflight(url: str, origin: str = UI, method: str = "POST", headers: str = "authorization, content-type"):
    asked = {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}
    return http("OPTIONS", f"{url}/v1/completions", headers=asked)


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with RunningServer(fake_engine(), load_config(None, served_model_name=MODEL, api_key=API_KEY)) as running:
        yield running


@pytest.fixture(scope="module")
def narrow() -> Iterator[RunningServer]:
    config = load_config(
        None,
        served_model_name=MODEL,
        api_key=API_KEY,
        allowed_origins=[UI],
        allowed_methods=["GET", "POST"],
        allowed_headers=["Authorization", "Content-Type"],
        allow_credentials=True,
    )
    with RunningServer(fake_engine(), config) as running:
        yield running


def test_by_default_any_origin_may_call_and_preflights_need_no_key(server: RunningServer) -> None:
    preflight = _preflight(server.url)
    assert preflight.status == 200, preflight.body
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    answered = http("POST", f"{server.url}/v1/completions", json_body=BODY, headers=KEYED)
    streamed = http("POST", f"{server.url}/v1/completions", json_body={**BODY, "stream": True}, headers=KEYED)
    keyless = http("POST", f"{server.url}/v1/completions", json_body=BODY, headers={"Origin": UI})
    for reply, status in ((answered, 200), (streamed, 200), (keyless, 401)):
        assert reply.status == status and reply.headers["Access-Control-Allow-Origin"] == "*", reply.headers
    same_origin = http(
        "POST", f"{server.url}/v1/completions", json_body=BODY, headers={"Authorization": KEYED["Authorization"]}
    )
    assert same_origin.status == 200 and "Access-Control-Allow-Origin" not in same_origin.headers
    plain_options = http("OPTIONS", f"{server.url}/v1/completions", headers={"Origin": UI})  # not a preflight
    assert plain_options.status == 401


def test_a_narrow_policy_echoes_its_origin_and_refuses_the_rest_by_name(narrow: RunningServer) -> None:
    allowed = _preflight(narrow.url)
    assert allowed.status == 200
    assert (allowed.headers["Access-Control-Allow-Origin"], allowed.headers["Vary"]) == (UI, "Origin")
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    assert allowed.headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert allowed.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    for reply, named in (
        (_preflight(narrow.url, origin="https://evil.example"), "allowed_origins"),
        (_preflight(narrow.url, method="DELETE"), "allowed_methods"),
        (_preflight(narrow.url, headers="x-custom"), "allowed_headers"),
    ):
        error = reply.json()["error"]
        assert reply.status == 400 and named in error["message"] and error["code"] == "cors_refused", error
        assert ("Access-Control-Allow-Origin" in reply.headers) == (named != "allowed_origins")  # the page reads why
    answered = http("POST", f"{narrow.url}/v1/completions", json_body=BODY, headers=KEYED)
    assert answered.status == 200 and answered.headers["Access-Control-Allow-Origin"] == UI
    foreign = http("POST", f"{narrow.url}/v1/completions", json_body=BODY, headers={**KEYED, "Origin": "https://x.y"})
    assert foreign.status == 200 and "Access-Control-Allow-Origin" not in foreign.headers  # the browser withholds it


def test_a_json_list_for_an_origin_flag_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="allowed_origins.*not a JSON list"):
        load_config(None, allowed_origins=['["https://a.example"]'])

"""The smaller findings of issue 23 (finding 8): protocol-level rejections in OpenAI's JSON without tracebacks, a
client gone while the headers go out is no 500, ``content`` required, float fields checked in float32, and bad
``Authorization`` bytes a 401."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from fake_runner import fake_engine
from server_utils import RunningServer, http

from jllm.config import load_config
from jllm.server import sse
from jllm.server.app import build_app

KEY = "sk-reliability"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with RunningServer(fake_engine(), load_config(None, served_model_name="scripted", api_key=KEY)) as running:
        yield running


def raw(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP exchange: status, headers and body of the answer (the server closes the connection)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /" + b"u" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"FOO /health HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: bogus\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=["bad-content-length", "oversize-header", "oversize-url", "malformed-header", "unknown-method", "expect"],
)
def test_protocol_rejections_are_openai_json_without_tracebacks(
    server: RunningServer, request_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    status, headers, body = raw(server.url, request_bytes)
    assert 400 <= status < 500
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert not any(r.exc_info for r in caplog.records)


def test_expect_100_continue_still_continues(server: RunningServer) -> None:
    body = b'{"model": "scripted", "prompt": "hi", "max_tokens": 2}'
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n"
        b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    status, _, rest = raw(server.url, head + body)
    assert status == 100 and b"HTTP/1.1 200 OK" in rest


def test_non_ascii_authorization_is_a_401(server: RunningServer) -> None:
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xc3\r\nConnection: close\r\n\r\n"
    status, _, body = raw(server.url, request)
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"


def test_a_message_without_content_is_refused_unless_the_assistant_calls_tools(server: RunningServer) -> None:
    url = f"{server.url}/v1/chat/completions"
    reply = http("POST", url, json_body={"messages": [{"role": "user"}], "max_tokens": 2}, headers=AUTH)
    assert reply.status == 400 and "content is required in a user message" in reply.json()["error"]["message"]
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    assert http("POST", url, json_body={"messages": messages, "max_tokens": 2}, headers=AUTH).status == 200


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("top_p", 1e-44, False),  # a float32 subnormal: flushed to 0 on the device
        ("top_p", 1e-39, False),
        ("top_p", 1e-30, True),
        ("repetition_penalty", 1e-46, False),  # 0 in float32
        ("repetition_penalty", 1e39, False),  # inf in float32
        ("repetition_penalty", 1e-20, True),
        ("temperature", 1e39, False),
    ],
)
def test_float_fields_are_checked_in_float32(server: RunningServer, field: str, value: float, ok: bool) -> None:
    body = {"model": "scripted", "prompt": "hi", "max_tokens": 2, "temperature": 1.0, field: value}
    reply = http("POST", f"{server.url}/v1/completions", json_body=body, headers=AUTH)
    if ok:
        assert reply.status == 200, reply.body
    else:
        assert reply.status == 400 and field in reply.json()["error"]["message"] and "float32" in reply.body.decode()


def test_a_client_gone_while_the_headers_go_out_is_no_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def hang_up(self: web.StreamResponse, request: web.BaseRequest) -> None:
        raise ConnectionResetError("Cannot write to closing transport")

    async def payloads():
        yield "{}"

    async def run() -> None:
        app = build_app(load_config(None))
        request = make_mocked_request("POST", "/v1/completions", app=app)
        monkeypatch.setattr(web.StreamResponse, "prepare", hang_up)
        await sse.send_events(request, payloads())

    caplog.set_level(logging.INFO)
    asyncio.run(run())
    assert any("hung up" in r.getMessage() for r in caplog.records)
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)

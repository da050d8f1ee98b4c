"""The smaller findings of issue 23 (finding 8): protocol-level rejections in OpenAI's JSON without tracebacks, a
client gone while the headers go out is no 500, ``content`` required, float fields checked in float32, and bad
``Authorization`` bytes a 401."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from fake_runner import fake_engine
from server_utils import RunningServer, http
from victim import assert_victim_unharmed, printable_script, victim_gap

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


PROTOCOL_REJECTIONS = {
    "bad-content-length": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "oversize-header": b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    "oversize-url": b"GET /" + b"u" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "malformed-header": b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    "unknown-method": b"FOO /health HTTP/1.1\r\nHost: x\r\n\r\n",
    "expect": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nExpect: bogus\r\nContent-Length: 2\r\n\r\n{}",
    # a body not in the Content-Encoding it claims, read by the handler, or left unread by a 401 (aiohttp reads it
    # after the answer): both were a traceback, the first a 500
    "body-not-in-its-content-encoding": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    + KEY.encode()
    + b"\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}",
    "unread-body-not-in-its-content-encoding": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
    b"Content-Encoding: gzip\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
}
NON_ASCII_AUTHORIZATION = (
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xc3\r\nConnection: close\r\n\r\n"
)


@pytest.mark.parametrize("request_bytes", PROTOCOL_REJECTIONS.values(), ids=PROTOCOL_REJECTIONS.keys())
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
    status, _, body = raw(server.url, NON_ASCII_AUTHORIZATION)
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


def test_the_hostile_inputs_of_finding_8_do_not_slow_a_victim_stream() -> None:
    """Every input of finding 8, sent over and over while a victim streams: protocol rejections, a bad
    ``Authorization``, a message without content, float32 underflows, and clients hanging up as the headers go out.
    Each answer is a 4xx, and the victim keeps its pace."""
    bodies = [
        ("/v1/chat/completions", {"messages": [{"role": "user"}], "max_tokens": 2}),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "temperature": 1.0, "top_p": 1e-44}),
        ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "repetition_penalty": 1e-46}),
    ]
    statuses: list[int] = []

    async def exchange(url: str, request: bytes, *, hang_up: bool = False) -> None:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        await writer.drain()
        if not hang_up:
            statuses.append(int((await asyncio.wait_for(reader.readline(), 5)).split()[1]))
        writer.close()

    async def hostile(session: aiohttp.ClientSession, url: str) -> None:
        stream = json.dumps({"model": "scripted", "prompt": "bye", "max_tokens": 50, "stream": True}).encode()
        while True:
            for request in [*PROTOCOL_REJECTIONS.values(), NON_ASCII_AUTHORIZATION]:
                await exchange(url, request)
            for route, body in bodies:
                async with session.post(f"{url}{route}", json={"model": "scripted", **body}) as response:
                    statuses.append(response.status)
            await exchange(url, _post("/v1/completions", stream), hang_up=True)

    engine = fake_engine(script=printable_script, step_seconds=0.02, max_num_seqs=16, num_pages=256)
    with RunningServer(engine, load_config(None, served_model_name="scripted", api_key=KEY)) as running:
        idle = victim_gap(running.url, headers=AUTH)
        loaded = victim_gap(running.url, hostile, headers=AUTH)
    assert len(statuses) > len(PROTOCOL_REJECTIONS) + len(bodies) and all(400 <= s < 500 for s in statuses), statuses
    assert_victim_unharmed(idle, loaded, f"finding 8's inputs, {len(statuses)} answered")


def _post(route: str, body: bytes) -> bytes:
    return (
        f"POST {route} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

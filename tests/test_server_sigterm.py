"""``run_server`` in a real process, with the gRPC API on too: 503 (UNAVAILABLE, health NOT_SERVING) while the model
loads, and on SIGTERM a drain of both servers that lets the running request finish, refuses new ones, and exits 0."""

from __future__ import annotations

import asyncio
import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_utils import ENGINE_ARGS, http, tiny_chat_model

from jllm.v1 import generate_pb2 as pb
from jllm.v1 import generate_pb2_grpc

pytestmark = pytest.mark.slow  # the test starts `jllm serve` in a subprocess
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# One step bucket (16 tokens x 1 sequence): the process is serving a few seconds after it starts.
SERVER_ARGS = {
    **ENGINE_ARGS,
    "max_num_batched_tokens": 16,
    "max_num_seqs": 1,
    "port": 0,
    "grpc_port": 0,
    "shutdown_timeout": 60.0,
}
LAUNCH = """
import json, sys
from jllm.config import load_config
from jllm.server.app import run_server
run_server(load_config(None, model=sys.argv[1], **json.loads(sys.argv[2])))
"""


@pytest.fixture
def server_process(
    default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    """``run_server`` in a child process, and its stderr lines as they come."""
    model_dir = tiny_chat_model(tmp_path_factory.getbasetemp(), default_model_dir)
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, str(model_dir), json.dumps(SERVER_ARGS)],
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(process, lines), daemon=True).start()
    yield process, lines
    if process.poll() is None:
        process.kill()
        process.wait()


def _pump(process: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        lines.put(line)


def _wait_for_line(lines: queue.Queue[str], pattern: str, timeout: float = 120) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"the server never logged {pattern!r}")


def test_sigterm_drains_running_requests_and_exits_zero(
    server_process: tuple[subprocess.Popen[str], queue.Queue[str]],
) -> None:
    process, lines = server_process
    grpc_target = "127.0.0.1:" + _wait_for_line(lines, r"gRPC listening on [\d.]+:(\d+)").group(1)
    port = _wait_for_line(lines, r"listening on http://[\d.]+:(\d+)").group(1)
    url = f"http://127.0.0.1:{port}"

    starting = http("GET", f"{url}/ready")  # the port opens before the model has loaded
    assert starting.status == 503 and starting.json()["error"]["code"] == "server_starting"
    assert http("POST", f"{url}/v1/completions", json_body={"prompt": "hi"}).status == 503
    assert asyncio.run(_grpc_health(grpc_target)) == NOT_SERVING
    refused = asyncio.run(_grpc_generate(grpc_target))
    assert (refused.code(), refused.details()) == (grpc.StatusCode.UNAVAILABLE, "the model is still loading")
    _wait_for_line(lines, "jllm ready")
    assert http("GET", f"{url}/ready").status == 200
    assert asyncio.run(_grpc_health(grpc_target)) == health_pb2.HealthCheckResponse.SERVING

    async def drain() -> list[dict]:
        body = {"prompt": "hi", "max_tokens": 150, "ignore_eos": True, "stream": True}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/v1/completions", json=body, headers={"X-Request-Id": "drain-me"}) as stream:
                await stream.content.readuntil(b"\n\n")  # running now
                process.send_signal(signal.SIGTERM)
                while await _status(session, f"{url}/ready") == 200:  # until the signal has landed
                    await asyncio.sleep(0.01)
                async with session.post(f"{url}/v1/completions", json={"prompt": "hi"}) as refused:
                    assert refused.status == 503
                    assert (await refused.json())["error"]["code"] == "engine_unavailable"
                assert await _grpc_health(grpc_target) == NOT_SERVING  # both servers drain
                assert (await _grpc_generate(grpc_target)).code() == grpc.StatusCode.UNAVAILABLE
                rest = (await stream.read()).split(b"\n\n")
        assert rest[-2:] == [b"data: [DONE]", b""]
        return [json.loads(event.removeprefix(b"data: ")) for event in rest[:-2]]

    events = asyncio.run(drain())
    assert events[-1]["choices"][0]["finish_reason"] == "length"  # finished in full, not aborted
    _wait_for_line(lines, r"request drain-me finished \(length\): \d+ prompt \+ 150 generated tokens, first token")
    assert process.wait(timeout=60) == 0


async def _grpc_health(target: str) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        return (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())).status


async def _grpc_generate(target: str) -> grpc.aio.AioRpcError:
    """The error a Generate call ends with (the server is starting or draining)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stream = generate_pb2_grpc.GenerationStub(channel).Generate(pb.GenerateRequest(text="hi"))
        with pytest.raises(grpc.aio.AioRpcError) as error:
            [_ async for _ in stream]
        return error.value


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        return response.status


def test_sigterm_past_the_drain_timeout_aborts_the_streams_and_exits_zero(
    default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Streams still running when ``shutdown_timeout`` ends are aborted (each ends with finish_reason abort and
    ``[DONE]``) and the process still exits 0."""
    model_dir = tiny_chat_model(tmp_path_factory.getbasetemp(), default_model_dir)
    args = {**SERVER_ARGS, "grpc_port": None, "max_num_seqs": 4, "shutdown_timeout": 0.5}
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, str(model_dir), json.dumps(args)], stderr=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(process, lines), daemon=True).start()
    try:
        url = "http://127.0.0.1:" + _wait_for_line(lines, r"listening on http://[\d.]+:(\d+)").group(1)
        _wait_for_line(lines, "jllm ready")

        async def streams() -> list[list[bytes]]:
            body = {"prompt": "hi", "max_tokens": 250, "ignore_eos": True, "stream": True}
            async with aiohttp.ClientSession() as session:

                async def one() -> list[bytes]:
                    async with session.post(f"{url}/v1/completions", json=body) as stream:
                        return (await stream.read()).split(b"\n\n")

                running = [asyncio.ensure_future(one()) for _ in range(6)]
                await asyncio.sleep(1.0)
                process.send_signal(signal.SIGTERM)
                return await asyncio.gather(*running)

        finishes = []
        for events in asyncio.run(streams()):
            assert events[-2:] == [b"data: [DONE]", b""]
            finishes.append(json.loads(events[-3].removeprefix(b"data: "))["choices"][0]["finish_reason"])
        assert "abort" in finishes and set(finishes) <= {"abort", "length"}, finishes
        code = process.wait(timeout=60)
        log = "".join(iter_lines(lines))
        assert code == 0 and "terminate called" not in log, log[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def iter_lines(lines: queue.Queue[str]) -> Iterator[str]:
    while True:
        try:
            yield lines.get(timeout=0.5)
        except queue.Empty:
            return


def test_sigterm_while_the_model_loads_exits_zero_at_once(
    server_process: tuple[subprocess.Popen[str], queue.Queue[str]],
) -> None:
    """The load goes on in a daemon thread inside JAX; the interpreter finalizing beside it had aborted the process
    (SIGABRT, jaxlib's "Check failed: PyGILState_Check()")."""
    process, lines = server_process
    url = "http://127.0.0.1:" + _wait_for_line(lines, r"listening on http://[\d.]+:(\d+)").group(1)
    _wait_for_line(lines, "attention")  # the weights are in; the step programs compile next
    assert http("GET", f"{url}/ready").status == 503
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    log = "".join(iter_lines(lines))
    assert code == 0 and "Check failed" not in log and "terminate called" not in log, log[-2000:]

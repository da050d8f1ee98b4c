"""Backpressure (issue 23, finding 4): a streaming client that never reads (n=16, max_tokens 1500, logprobs 20) had
all 24,000 tokens generated and buffered (+357 MB). Here its request is aborted once its stream holds more than
``stream_buffer_outputs`` untaken outputs for ``stream_stall_timeout_s``: the pool empties and the generation stops
while the client is still connected, and a victim stream keeps its pace meanwhile."""

from __future__ import annotations

import json
import socket
import time

import aiohttp
import pytest
from fake_runner import fake_engine
from server_utils import RunningServer
from victim import assert_victim_unharmed, printable_script, victim_gap

from jllm.async_engine import StreamLimits
from jllm.config import load_config

MAX_TOKENS = 3000


def _non_reading_stream(url: str) -> socket.socket:
    """Sends a streamed request with a tiny receive window and never reads."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    body = json.dumps(
        {"model": "scripted", "prompt": "z", "max_tokens": MAX_TOKENS, "n": 8, "logprobs": 2, "stream": True}
    ).encode()
    head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    sock.sendall(head.encode() + b"\r\n\r\n" + body)
    return sock


@pytest.mark.slow  # ~8 s: the kernel's socket buffers take megabytes before the stream's buffer fills
def test_a_client_that_stops_reading_has_its_request_aborted_and_its_pages_freed() -> None:
    engine = fake_engine(
        script=printable_script, step_seconds=0.003, max_num_seqs=16, max_model_len=4096, num_pages=8192
    )
    config = load_config(None, served_model_name="scripted", stream_stall_timeout_s=1.0)
    with RunningServer(engine, config, stream_limits=StreamLimits(max_buffered=16, stall_timeout=1.0)) as server:
        idle = victim_gap(server.url)
        sock = _non_reading_stream(server.url)

        async def hostile(session: aiohttp.ClientSession, url: str) -> None:
            del session, url  # the hostile client is the socket above, sending nothing more

        loaded = victim_gap(server.url, hostile)
        deadline = time.monotonic() + 20
        # Read from this thread while the engine thread aborts: the request leaves ``requests`` a moment before the
        # scheduler frees its pages, so wait for both.
        while (engine.requests or engine.block_manager.num_allocated_pages) and time.monotonic() < deadline:
            time.sleep(0.1)
        generated = engine.scheduler.num_generation_tokens
        pages = engine.block_manager.num_allocated_pages
        sock.close()
    print(f"non-reading client: {generated} tokens generated of {8 * MAX_TOKENS} before the abort")
    assert not engine.requests and pages == 0
    assert generated < 8 * MAX_TOKENS // 2
    assert_victim_unharmed(idle, loaded, "a non-reading n=8 stream")

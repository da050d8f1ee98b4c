"""``jllm.server.sse._write``: an event that cannot wait for the client is written without a timer; one that may
wait (the connection's writing paused, or the event would take its transport buffer past the high-water mark) runs
under the stall timeout, and a write blocked past it closes the connection."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from jllm.server.sse import _write

HIGH_WATER = 64 * 1024


@dataclass
class FakeTransport:
    buffered: int = 0
    closed: bool = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (HIGH_WATER // 4, HIGH_WATER)

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeProtocol:
    writing_paused: bool = False


@dataclass
class FakeRequest:
    transport: FakeTransport = field(default_factory=FakeTransport)
    protocol: FakeProtocol = field(default_factory=FakeProtocol)


@dataclass
class FakeResponse:
    """``write`` records the bytes, or with ``blocks`` never returns (a client that stopped reading)."""

    blocks: bool = False
    written: list[bytes] = field(default_factory=list)

    async def write(self, data: bytes) -> None:
        if self.blocks:
            await asyncio.Event().wait()
        self.written.append(data)


def test_an_event_that_cannot_wait_is_written_as_sse() -> None:
    request, response = FakeRequest(FakeTransport(buffered=100)), FakeResponse()
    asyncio.run(_write(request, response, 0.05, '{"a":1}'))
    assert response.written == [b'data: {"a":1}\n\n'] and not request.transport.closed


@pytest.mark.parametrize(
    "request_state",
    [
        FakeRequest(protocol=FakeProtocol(writing_paused=True)),  # paused: drain waits for the client
        FakeRequest(FakeTransport(buffered=HIGH_WATER - 4)),  # this event takes the buffer past high water
    ],
    ids=["paused", "past high water"],
)
def test_a_write_that_waits_past_the_stall_timeout_closes_the_connection(request_state: FakeRequest) -> None:
    response = FakeResponse(blocks=True)
    with pytest.raises(ConnectionResetError, match="read nothing for 0.05 s"):
        asyncio.run(_write(request_state, response, 0.05, '{"a":1}'))
    assert request_state.transport.closed and response.written == []


def test_a_write_that_may_wait_but_does_not_goes_through() -> None:
    request, response = FakeRequest(protocol=FakeProtocol(writing_paused=True)), FakeResponse()
    asyncio.run(_write(request, response, 0.05, "x"))
    assert response.written == [b"data: x\n\n"] and not request.transport.closed

"""What streaming a token costs over gRPC against SSE, on the CPU, in one run.

One server (the HTTP API and the gRPC API, as `jllm serve --grpc-port` runs them) over the scripted engine of
tests/fake_runner.py: no model, every step returns at once, so the time a stream takes is the server's and the
client's work per token (the engine thread's bookkeeping, the delta, its serialization, the transport, the client's
parsing), the part that differs between the two transports. Each round streams ``--streams`` concurrent greedy
requests of ``--tokens`` tokens over SSE (``/v1/completions``, aiohttp client) and over gRPC (``Generate``,
grpc.aio client), alternating which goes first. Two figures per transport, medians over rounds: wall time per
token, and the process's CPU time per token (server, engine thread and client together; on a machine shared with
other jobs, the steadier of the two). The clients run in the server's event loop (one process, as
bench_multi_model.py does), so both figures include both ends.

    python scripts/bench_grpc_vs_sse.py --json grpc_vs_sse.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from machine_info import cpu_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the scripted engine lives with the tests that use it
from fake_runner import fake_engine  # noqa: E402

from jllm.async_engine import AsyncEngine  # noqa: E402
from jllm.config import load_config  # noqa: E402
from jllm.server.app import bound_port, build_app, start_app, start_grpc, stop_app  # noqa: E402
from jllm.v1 import generate_pb2 as pb  # noqa: E402
from jllm.v1 import generate_pb2_grpc  # noqa: E402

PROMPT = "hello"


async def sse_stream(session: aiohttp.ClientSession, url: str, tokens: int) -> int:
    """One streamed completion (an event per token: the scripted engine steps one token at a time); returns the
    tokens its usage chunk counts."""
    body = {"prompt": PROMPT, "max_tokens": tokens, "ignore_eos": True, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    last = b""
    async with session.post(f"{url}/v1/completions", json=body) as response:
        async for line in response.content:
            if line.startswith(b"data: {"):
                last = line
    return json.loads(last.removeprefix(b"data: "))["usage"]["completion_tokens"]


async def grpc_stream(stub: generate_pb2_grpc.GenerationStub, tokens: int) -> int:
    """One ``Generate`` stream; returns the tokens its usage message counts."""
    sampling = pb.SamplingParameters(max_tokens=tokens, ignore_eos=True, temperature=0.0)
    last = pb.GenerateResponse()
    async for message in stub.Generate(pb.GenerateRequest(text=PROMPT, sampling=sampling)):
        last = message
    return last.usage.completion_tokens


async def timed(streams: int, tokens: int, one: Callable[[], Awaitable[int]]) -> dict[str, float]:
    """Wall and CPU microseconds per token of ``streams`` concurrent streams."""
    wall, cpu = time.perf_counter(), time.process_time()
    received = await asyncio.gather(*(one() for _ in range(streams)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if sum(received) != streams * tokens:
        raise RuntimeError(f"expected {streams * tokens} tokens, got {sum(received)}")
    return {"wall": wall * 1e6 / (streams * tokens), "cpu": cpu * 1e6 / (streams * tokens)}


async def measure(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    engine = fake_engine(
        max_num_seqs=args.streams,
        max_num_batched_tokens=max(32, args.streams * 8),
        max_model_len=args.tokens + 16,
        num_pages=args.streams * (args.tokens + 16) // 4 + 8,
    )
    async_engine = AsyncEngine(engine)
    async_engine.start()
    app = build_app(load_config(None), async_engine)
    runner = await start_app(app, "127.0.0.1", 0)
    grpc_server = await start_grpc(app, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{bound_port(runner)}"
    figures: dict[str, list[dict[str, float]]] = {"sse": [], "grpc": []}  # per round
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_server.port}") as channel:
                stub = generate_pb2_grpc.GenerationStub(channel)
                runs = {
                    "sse": lambda: sse_stream(session, url, args.tokens),
                    "grpc": lambda: grpc_stream(stub, args.tokens),
                }
                for one in runs.values():  # warm-up, not counted: connections, first-call paths
                    await timed(args.streams, args.tokens, one)
                for round_ in range(args.rounds):
                    order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
                    for name in order:
                        figures[name].append(await timed(args.streams, args.tokens, runs[name]))
    finally:
        await stop_app(app, runner, 0, grpc_server)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams per round (default: 8)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per stream (default: 256)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each transport (default: 5)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    figures = asyncio.run(measure(args))
    medians = {
        name: {kind: statistics.median(r[kind] for r in rounds) for kind in ("wall", "cpu")}
        for name, rounds in figures.items()
    }
    result: dict[str, Any] = {
        "machine": cpu_name(),
        "load_average": os.getloadavg()[0],
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "aiohttp": aiohttp.__version__,
        "config": {"streams": args.streams, "tokens": args.tokens, "rounds": args.rounds, "engine": "scripted"},
        "us_per_token": medians,
        "grpc_minus_sse_us_per_token": {k: medians["grpc"][k] - medians["sse"][k] for k in ("wall", "cpu")},
        "rounds_us_per_token": figures,
    }
    print(f"machine: {result['machine']} (load average {result['load_average']:.1f}), python {result['python']}, "
          f"grpcio {result['grpcio']}, aiohttp {result['aiohttp']}")  # fmt: skip
    print(f"config: {args.streams} concurrent streams x {args.tokens} tokens, {args.rounds} rounds, scripted engine")
    print("| transport | wall us per token (median) | CPU us per token (median) | wall, each round |")
    print("| --- | --- | --- | --- |")
    for name in ("sse", "grpc"):
        rounds = ", ".join(f"{r['wall']:.0f}" for r in figures[name])
        print(f"| {name} | {medians[name]['wall']:.1f} | {medians[name]['cpu']:.1f} | {rounds} |")
    diff = result["grpc_minus_sse_us_per_token"]
    print(f"gRPC - SSE per token: {diff['wall']:+.1f} us wall, {diff['cpu']:+.1f} us CPU")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Soak test of a running ``jllm serve``: mixed load with hostile clients for N minutes, then a report.

Workers run side by side against ``--url``: ordinary streams and whole completions (timed), clients that hang up
mid-stream or at a random moment (n > 1 and structured-output streams among them), requests sharing an X-Request-Id,
slow readers, non-reading streams, idle connections, and bad inputs (each should be a 4xx). At the end it waits for
the server to drain and reports the requests and KV pages left (both should be 0) and a health check. Every
``--interval`` seconds it samples the server's RSS (``--pid``, from /proc) and KV pages in use (/metrics). It prints
completed requests, errors by kind, p50/p99 latency, RSS and pool use over time, the 5xx count, and the programs
compiled after start-up (/metrics at the end); ``--json`` writes them.

    jllm serve --port 8000 &
    python scripts/soak.py --url http://127.0.0.1:8000 --pid $! --minutes 30 --json soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import re
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp

BAD_INPUTS: list[dict[str, Any]] = [
    {"prompt": "x", "max_tokens": -1},
    {"prompt": "x", "top_p": 1e-44},
    {"prompt": "x", "stop": ["s"] * 1000},
    {"prompt": "x", "stop_token_ids": list(range(5000))},
    {"prompt": "x", "n": 100000},
    {"prompt": "y" * 3_000_000},
    {"messages": [{"role": "user"}]},
]


class Soak:
    def __init__(self, url: str, model: str | None, headers: dict[str, str]) -> None:
        self.url, self.model, self.headers = url, model, headers
        self.latencies: list[float] = []
        self.outcomes: collections.Counter[str] = collections.Counter()

    def body(self, **fields: Any) -> dict[str, Any]:
        return {"model": self.model, **fields} if self.model else fields

    async def ordinary(self, session: aiohttp.ClientSession, rng: random.Random) -> None:
        stream = rng.random() < 0.5
        body = self.body(prompt=f"Tell me about {rng.randrange(10**6)}", max_tokens=rng.randint(4, 64), stream=stream)
        start = time.monotonic()
        async with session.post(f"{self.url}/v1/completions", json=body) as response:
            await response.read()
            self.outcomes[f"ordinary {response.status}"] += 1
            if response.status == 200:
                self.latencies.append(time.monotonic() - start)

    async def hang_up(self, session: aiohttp.ClientSession, rng: random.Random) -> None:
        body = self.body(prompt="a long story", max_tokens=256, stream=True)
        async with session.post(f"{self.url}/v1/completions", json=body) as response:
            await response.content.readline()
        self.outcomes["hung up mid-stream"] += 1

    async def slow_reader(self, session: aiohttp.ClientSession, rng: random.Random) -> None:
        body = self.body(prompt="slowly", max_tokens=64, stream=True)
        async with session.post(f"{self.url}/v1/completions", json=body) as response:
            async for _ in response.content:
                await asyncio.sleep(0.2)
            self.outcomes[f"slow reader {response.status}"] += 1

    async def non_reader(self, session: aiohttp.ClientSession, rng: random.Random) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        payload = json.dumps(self.body(prompt="never read", max_tokens=2000, n=4, logprobs=5, stream=True)).encode()
        auth = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        writer.write(
            f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        await asyncio.sleep(60)
        writer.close()
        self.outcomes["non-reading stream"] += 1

    async def idle(self, session: aiohttp.ClientSession, rng: random.Random) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        closed = await asyncio.wait_for(reader.read(), 120) == b""
        self.outcomes["idle connection closed by server" if closed else "idle connection answered"] += 1
        writer.close()

    async def dropper(self, session: aiohttp.ClientSession, rng: random.Random) -> None:
        """Hangs up at a random moment: before the answer's first byte, mid-prefill of a long prompt, or mid-decode;
        n > 1 and structured-output streams among them (aborted between two masks)."""
        body = self.body(
            prompt="Tell me " * rng.randint(1, 300), max_tokens=rng.randint(8, 200), stream=True, temperature=1.0
        )
        kind = rng.choice(["plain", "n", "grammar"])
        if kind == "n":
            body["n"] = rng.randint(2, 4)
        elif kind == "grammar":
            body["guided_json"] = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}
        request = session.post(f"{self.url}/v1/completions", json=body)
        try:
            async with asyncio.timeout(rng.random() * 2):
                async with request as response:
                    async for _ in response.content:
                        pass
            self.outcomes[f"dropper {kind} ran to the end"] += 1
        except TimeoutError:
            self.outcomes[f"dropper {kind} hung up"] += 1

    async def same_id(self, session: aiohttp.ClientSession, rng: random.Random) -> None:
        """Requests sharing one X-Request-Id, in flight together (it names the response; the engine's ids are the
        server's own)."""
        body = self.body(prompt="same id", max_tokens=rng.randint(4, 32), stream=rng.random() < 0.5)
        async with session.post(f"{self.url}/v1/completions", json=body, headers={"X-Request-Id": "soak"}) as response:
            await response.read()
            self.outcomes[f"same X-Request-Id {response.status}"] += 1

    async def bad_input(self, session: aiohttp.ClientSession, rng: random.Random) -> None:
        body = rng.choice(BAD_INPUTS)
        route = "/v1/chat/completions" if "messages" in body else "/v1/completions"
        async with session.post(f"{self.url}{route}", json=self.body(**body)) as response:
            await response.read()
            self.outcomes[f"bad input {response.status // 100}xx"] += 1


async def worker(soak: Soak, kind: str, until: float, seed: int) -> None:
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(headers=soak.headers, timeout=timeout) as session:
        while time.monotonic() < until:
            try:
                await getattr(soak, kind)(session, rng)
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                soak.outcomes[f"{kind} error {type(e).__name__}"] += 1
                await asyncio.sleep(0.5)


async def metric(session: aiohttp.ClientSession, url: str, name: str) -> float | None:
    """A series of the server's /metrics, summed over its labels (a real server labels each by model); None if
    absent."""
    async with session.get(f"{url}/metrics") as response:
        values = [
            float(ln.split()[-1])
            for ln in (await response.text()).splitlines()
            if re.split(r"[{ ]", ln, maxsplit=1)[0] == name
        ]
    return sum(values) if values else None


async def sample(soak: Soak, pid: int | None, until: float, interval: float, rows: list[dict[str, float]]) -> None:
    start = time.monotonic()
    async with aiohttp.ClientSession(headers=soak.headers) as session:
        while time.monotonic() < until:
            row = {"t_s": round(time.monotonic() - start), "completed": len(soak.latencies)}
            if pid is not None:
                rss = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("VmRSS"))
                row["rss_mib"] = int(rss.split()[1]) // 1024
            row["pages_in_use"] = await metric(session, soak.url, "jllm:kv_cache_pages_in_use")
            rows.append(row)
            print(row, flush=True)
            await asyncio.sleep(interval)


async def settled(soak: Soak, session: aiohttp.ClientSession, wait_s: float = 60.0) -> dict[str, Any]:
    """The server once the load has stopped: requests and KV pages left (both must drain to 0 within ``wait_s``),
    and whether /health and an ordinary request are answered."""
    gauges = ("jllm:num_requests_running", "jllm:num_requests_waiting", "jllm:kv_cache_pages_in_use")
    deadline = time.monotonic() + wait_s
    while True:
        left = {name.removeprefix("jllm:"): await metric(session, soak.url, name) for name in gauges}
        if not any(left.values()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    async with session.get(f"{soak.url}/health") as response:
        left["health_status"] = response.status
    async with session.post(f"{soak.url}/v1/completions", json=soak.body(prompt="hi", max_tokens=2)) as response:
        left["ordinary_status"] = response.status
    return left


async def soak_for(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    soak = Soak(args.url.rstrip("/"), args.model, headers)
    until = time.monotonic() + args.minutes * 60
    mix = {
        "ordinary": args.concurrency, "hang_up": 2, "slow_reader": 2, "non_reader": 1, "idle": 4, "bad_input": 2,
        "dropper": 3, "same_id": 2,
    }  # fmt: skip
    rows: list[dict[str, float]] = []
    tasks = [worker(soak, kind, until, seed=i * 100 + j) for i, (kind, n) in enumerate(mix.items()) for j in range(n)]
    await asyncio.gather(sample(soak, args.pid, until, args.interval, rows), *tasks)
    async with aiohttp.ClientSession(headers=headers) as session:
        compiled = await metric(session, soak.url, "jllm:programs_compiled_after_startup_total")
        after = await settled(soak, session)
    lat = sorted(soak.latencies)
    return {
        "minutes": args.minutes,
        "completed": len(lat),
        "outcomes": dict(soak.outcomes),
        "latency_p50_s": statistics.median(lat) if lat else None,
        "latency_p99_s": lat[int(0.99 * (len(lat) - 1))] if lat else None,
        "responses_5xx": sum(n for outcome, n in soak.outcomes.items() if re.fullmatch(r".* 5(\d\d|xx)", outcome)),
        "programs_compiled_after_startup": compiled,
        "after": after,
        "samples": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--pid", type=int, help="the server's process id, for its RSS")
    parser.add_argument("--model", help="the model name to send (default: the server's first)")
    parser.add_argument("--api-key")
    parser.add_argument("--concurrency", type=int, default=8, help="ordinary clients")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between RSS / pool samples")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = asyncio.run(soak_for(args))
    print(f"completed {report['completed']} in {args.minutes:g} min")
    print(f"latency p50 {report['latency_p50_s']} s, p99 {report['latency_p99_s']} s")
    print(
        f"5xx {report['responses_5xx']}, programs compiled after start-up {report['programs_compiled_after_startup']}"
    )
    for outcome, count in sorted(report["outcomes"].items()):
        print(f"  {outcome}: {count}")
    print(f"after the load: {report['after']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""What the server adds to a streamed token, against a device step of known length, on any machine.

The server process runs the real aiohttp app over the scripted engine of tests/fake_runner.py, whose step sleeps
``--step-ms`` (releasing the GIL, as a device step does) and samples a known token: so a stream's inter-token time
can be no shorter than the step, and whatever it adds is the host's work (the engine thread's bookkeeping, the
event loop's deltas, JSON and socket writes, competing for one GIL). ``bench_serving.py`` drives it from this
process at each ``--concurrency``; the table gives per level the TPOT and ITL medians beside the step (the
baseline: what a server with free host work would show) and the server's CPU time per streamed token
(``/proc/PID/stat``, user + system: steadier than wall time on a shared machine). Linux only (``/proc``).

    python scripts/bench_stream_overhead.py --step-ms 4.4 --concurrency 1,32 --json overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_common as common
import bench_serving

ROOT = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")


def serve(step_ms: float, max_seqs: int) -> None:
    """The server process: the scripted engine behind the real app on a free port (printed) until killed."""
    sys.path.insert(0, str(ROOT / "tests"))  # the scripted engine lives with the tests that use it
    from fake_runner import fake_engine

    from jllm.async_engine import AsyncEngine
    from jllm.build import freeze_heap
    from jllm.config import load_config
    from jllm.server.app import bound_port, build_app, start_app

    async def run() -> None:
        engine = fake_engine(
            max_num_seqs=max_seqs, max_num_batched_tokens=2048, max_model_len=1024,
            num_pages=max_seqs * 1024 // 4 + 8, step_seconds=step_ms / 1000,
        )  # fmt: skip
        # The scripted runner keeps every step it launched (for the tests); a server keeps none, and a heap that grew
        # by each step would be scanned by each of the collector's full passes as no server's is.
        engine.runner.launched = collections.deque(maxlen=1)  # type: ignore[attr-defined]
        async_engine = AsyncEngine(engine)
        async_engine.start()
        app = build_app(load_config(None, served_model_name="scripted"), async_engine)
        freeze_heap()  # as a built engine's start does: the start's objects out of the collector's scans
        runner = await start_app(app, "127.0.0.1", 0)
        print(f"ready {bound_port(runner)}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of stat)


def measure(url: str, pid: int, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    prompts = max(args.prompts_per_stream * concurrency, 8)
    client = [
        "--base-url", url, "--num-prompts", str(prompts), "--input-len", str(args.input_len), "--output-len",
        str(args.output_len), "--max-concurrency", str(concurrency), "--max-token-id", "500", "--skip-initial-test",
    ]  # fmt: skip
    before = cpu_seconds(pid)
    result = bench_serving.main(client)
    cpu = cpu_seconds(pid) - before
    tokens = result["total_output_tokens"]
    return {
        "concurrency": concurrency, "requests": prompts, "failed": result["failed"], "tokens": tokens,
        "tpot_p50_ms": result["median_tpot_ms"], "itl_p50_ms": result["median_itl_ms"],
        "server_cpu_us_per_token": 1e6 * cpu / max(tokens, 1),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step-ms", type=float, default=4.4, help="the scripted device step (default 4.4 ms)")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--prompts-per-stream", type=int, default=4, help="requests per concurrent stream (4)")
    parser.add_argument("--input-len", type=int, default=16)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # be the server process
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.step_ms, max(args.concurrency))
        return
    cmd = [sys.executable, __file__, "--serve", "--step-ms", str(args.step_ms), "--concurrency",
           ",".join(map(str, args.concurrency))]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        word, _, port = server.stdout.readline().strip().partition(" ")
        if word != "ready":
            raise SystemExit("the scripted server did not start")
        url = f"http://127.0.0.1:{port}"
        measure(url, server.pid, max(args.concurrency), args)  # warm-up: connections, first-call paths
        rows = [measure(url, server.pid, c, args) for c in args.concurrency]
    finally:
        server.kill()
        server.wait()
    env_facts = common.environment()
    print(f"\n{env_facts.get('cpu', '')}; load average {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"scripted step {args.step_ms} ms (the baseline: a stream's inter-token time with free host work)")
    print("| streams | TPOT p50 ms | ITL p50 ms | over the step | server CPU us / token |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        over = 100 * (r["itl_p50_ms"] / args.step_ms - 1)
        print(f"| {r['concurrency']} | {r['tpot_p50_ms']:.2f} | {r['itl_p50_ms']:.2f} | {over:+.0f} % | "
              f"{r['server_cpu_us_per_token']:.0f} |")  # fmt: skip
    common.write_json(args.json, {"step_ms": args.step_ms, "environment": env_facts, "rows": rows})


if __name__ == "__main__":
    main()

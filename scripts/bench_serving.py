"""Online serving benchmark against a running ``jllm serve``, with vLLM's ``bench serve`` definitions.

Sends ``--num-prompts`` random token-id prompts of ``--input-len`` tokens to ``/v1/completions`` (streamed, with
``ignore_eos`` so every request generates exactly ``--output-len`` tokens) and reports, as vLLM does:

- TTFT: request sent -> first chunk with a choice;
- TPOT: (latency - TTFT) / (output tokens - 1), per request with more than one output token;
- ITL: the gaps between consecutive chunks with a choice, pooled over all requests;
- E2E latency: request sent -> last chunk with a choice;
- mean, median (p50), p90 and p99 of each; request, output-token and total-token throughput over the run's duration;
- and apart, TTFT and TPOT of the requests sent after the first one finished (past a closed loop's first wave).

Output tokens are counted from the stream's usage chunk (``stream_options.include_usage``). Arrivals: all at once
with ``--request-rate inf``, else a gamma process (Poisson when ``--burstiness 1``) whose arrival times are rescaled
so the last request arrives at ``num_prompts / request_rate`` seconds, as in vLLM; ``--max-concurrency`` caps the
requests in flight. One test request goes first (not counted), as vLLM's initial test run. With
``--roofline-config`` (the server's engine YAML) and ``--ceilings`` (the card's, as bench_latency measured them), a
closed-loop run (``--max-concurrency``) is also reported against its steady-state roofline
(``bench_common.serving_roofline``): the least TPOT that concurrency of these lengths allows.

    jllm serve --config configs/llama3-8b-h200.yaml &
    python scripts/bench_serving.py --num-prompts 200 --request-rate 8 --input-len 1024 --output-len 128 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from machine_info import cpu_name, nvidia_smi

PERCENTILES = (50, 90, 99)
TIMEOUT = aiohttp.ClientTimeout(total=6 * 3600)  # vLLM's: a long benchmark must not time out


# --- SSE


class SSEParser:
    """Incremental server-sent-events parser: ``feed`` bytes as they arrive, get the complete events' data back.

    An event is its ``data:`` lines (joined by newlines) up to a blank line; comment lines (``:``) and other fields
    are skipped; lines may end in ``\\n``, ``\\r\\n`` or ``\\r`` and may be split anywhere across ``feed`` calls.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes | str) -> list[str]:
        self._buffer += chunk.decode("utf-8") if isinstance(chunk, bytes) else chunk
        events = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return events
            line, self._buffer = self._buffer[: cut[0]], self._buffer[cut[1] :]
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            elif line.startswith("data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(" ") else value)

    def close(self) -> list[str]:
        """The last event, for a stream that ended without its blank line."""
        events = self.feed("\n\n") if self._buffer or self._data else []
        return events


def _line_end(text: str) -> tuple[int, int] | None:
    """(end of the first line, start of the next) or None while the line may still be incomplete."""
    for i, ch in enumerate(text):
        if ch == "\n":
            return i, i + 1
        if ch == "\r":
            if i + 1 == len(text):
                return None  # a "\r\n" may be split across chunks
            return i, i + 2 if text[i + 1] == "\n" else i + 1
    return None


# --- one request


@dataclass
class RequestResult:
    prompt_len: int
    success: bool = False
    ttft: float = 0.0  # seconds, request sent -> first chunk with a choice
    latency: float = 0.0  # seconds, request sent -> last chunk with a choice
    itl: list[float] = field(default_factory=list)  # seconds between consecutive chunks with a choice
    output_tokens: int = 0  # from the usage chunk
    start: float = 0.0  # perf_counter when the request was sent
    error: str = ""


def apply_event(result: RequestResult, data: str, now: float, state: dict[str, Any]) -> None:
    """Folds one SSE payload received at ``now`` into ``result`` (vLLM's completions client logic)."""
    if data == "[DONE]":
        state["done"] = True
        return
    body = json.loads(data)
    if "error" in body:
        error = body["error"]
        result.error = error.get("message", str(error)) if isinstance(error, dict) else str(error)
        return
    if body.get("choices"):
        if "last" not in state:
            result.ttft = now - result.start
        else:
            result.itl.append(now - state["last"])
        state["last"] = now
        state["chunks"] = state.get("chunks", 0) + 1
    elif body.get("usage"):
        result.output_tokens = body["usage"].get("completion_tokens") or 0


async def send_request(
    session: aiohttp.ClientSession, url: str, payload: dict[str, Any], headers: dict[str, str]
) -> RequestResult:
    result = RequestResult(prompt_len=len(payload["prompt"]))
    state: dict[str, Any] = {}
    parser = SSEParser()
    result.start = time.perf_counter()
    try:
        async with session.post(url, json=payload, headers=headers) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}: {(await response.text())[:500]}"
                return result
            async for chunk in response.content.iter_any():
                now = time.perf_counter()
                for data in parser.feed(chunk):
                    apply_event(result, data, now, state)
            for data in parser.close():
                apply_event(result, data, time.perf_counter(), state)
    except Exception as e:  # a benchmark counts failures rather than stopping at the first
        result.error = f"{type(e).__name__}: {e}"
        return result
    if "last" not in state:
        result.error = result.error or "never received a chunk with a choice"
    elif not result.error:
        result.success = True
        result.latency = state["last"] - result.start
        if not result.output_tokens:  # a server without usage chunks: count chunks (one token each, usually)
            result.output_tokens = state["chunks"]
    return result


# --- metrics


def tpot(result: RequestResult) -> float | None:
    """(latency - TTFT) / (output tokens - 1); None for a request with at most one output token."""
    if result.output_tokens <= 1:
        return None
    return (result.latency - result.ttft) / (result.output_tokens - 1)


def summarize(values: list[float], name: str, scale: float = 1000.0) -> dict[str, float]:
    """mean, std, median and percentiles (numpy's linear interpolation, as vLLM), in ms by default."""
    data = np.asarray(values or [0.0], dtype=np.float64) * scale
    out = {
        f"mean_{name}_ms": float(np.mean(data)),
        f"std_{name}_ms": float(np.std(data)),
        f"median_{name}_ms": float(np.median(data)),
    }
    for p in PERCENTILES:
        out[f"p{p}_{name}_ms"] = float(np.percentile(data, p))
    return out


def compute_metrics(results: list[RequestResult], duration: float) -> dict[str, Any]:
    ok = [r for r in results if r.success]
    total_input = sum(r.prompt_len for r in ok)
    total_output = sum(r.output_tokens for r in ok)
    metrics: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration": duration,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": len(ok) / duration,
        "output_throughput": total_output / duration,
        "total_token_throughput": (total_input + total_output) / duration,
    }
    metrics |= summarize([r.ttft for r in ok], "ttft")
    metrics |= summarize([t for r in ok if (t := tpot(r)) is not None], "tpot")
    metrics |= summarize([gap for r in ok for gap in r.itl], "itl")
    metrics |= summarize([r.latency for r in ok], "e2el")
    metrics["steady_state"] = steady_state_metrics(ok)
    return metrics


def steady_state_metrics(ok: list[RequestResult]) -> dict[str, Any]:
    """TTFT and TPOT of the requests sent after the first one finished. A closed loop (``--max-concurrency``) sends
    its first wave all at once, and the last of those prompts waits for every earlier one's prefill (32 x 1,024
    tokens of Llama-3-8B are ~0.7 s of an H200's matmul rate): with 320 requests that wave is a tenth of them, so it
    sets the run's p90 and p99 TTFT. The later requests arrive as earlier ones finish: what a loaded server's user
    sees. Reported beside the whole run's figures, never instead of them."""
    first_finish = min((r.start + r.latency for r in ok), default=0.0)
    later = [r for r in ok if r.start >= first_finish]
    return {
        "completed": len(later),
        **summarize([r.ttft for r in later], "ttft"),
        **summarize([t for r in later if (t := tpot(r)) is not None], "tpot"),
    }


# --- load


def arrival_times(n: int, request_rate: float, burstiness: float, rng: np.random.Generator) -> list[float]:
    """Seconds after the start at which each request is sent: all 0 for an infinite rate, else cumulative gamma
    intervals (shape ``burstiness``, mean 1/rate) rescaled so the last one lands at n / rate (vLLM's)."""
    if request_rate == float("inf"):
        return [0.0] * n
    theta = 1.0 / (request_rate * burstiness)
    times = np.cumsum(rng.gamma(shape=burstiness, scale=theta, size=n))
    if n and times[-1] > 0:
        times *= (n / request_rate) / times[-1]
    return [float(t) for t in times]


def random_prompts(n: int, input_len: int, max_token_id: int, rng: np.random.Generator) -> list[list[int]]:
    """Uniform token ids in [1000, max_token_id): past the special tokens of common vocabularies (from half of
    ``max_token_id`` for vocabularies smaller than 2000 ids, such as the benchmarks' character tokenizer)."""
    return rng.integers(min(1000, max_token_id // 2), max_token_id, size=(n, input_len)).tolist()


def machine() -> str:
    """The GPUs nvidia-smi names, else the CPU's model and cores (of this host: run the client beside the server)."""
    smi = nvidia_smi()
    if smi:
        names = [line.split(",")[0].strip() for line in smi.splitlines()]
        return f"{len(names)} x {names[0]}, {os.cpu_count()} CPU cores"
    return f"{cpu_name()} (no GPU)"


async def fetch_model(session: aiohttp.ClientSession, base_url: str, headers: dict[str, str]) -> str:
    async with session.get(f"{base_url}/v1/models", headers=headers) as response:
        response.raise_for_status()
        return (await response.json())["data"][0]["id"]


async def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    base_url = args.base_url.rstrip("/")
    url = f"{base_url}/v1/completions"
    api_key = args.api_key or os.environ.get("OPENAI_API_KEY")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    rng = np.random.default_rng(args.seed)
    prompts = random_prompts(args.num_prompts, args.input_len, args.max_token_id, rng)
    delays = arrival_times(args.num_prompts, args.request_rate, args.burstiness, rng)
    connector = aiohttp.TCPConnector(limit=args.max_concurrency or 0, force_close=False)
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
        model = args.model or await fetch_model(session, base_url, headers)

        def payload(prompt: list[int]) -> dict[str, Any]:
            return {
                "model": model,
                "prompt": prompt,
                "max_tokens": args.output_len,
                "temperature": 0.0,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }

        if not args.skip_initial_test:
            test = await send_request(session, url, payload(prompts[0]), headers)
            if not test.success:
                raise SystemExit(f"the initial test request failed: {test.error}")

        semaphore = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None

        async def one(prompt: list[int]) -> RequestResult:
            if semaphore is None:
                return await send_request(session, url, payload(prompt), headers)
            async with semaphore:
                return await send_request(session, url, payload(prompt), headers)

        tasks = []
        start = time.perf_counter()
        for prompt, at in zip(prompts, delays, strict=True):
            wait = at - (time.perf_counter() - start)
            if wait > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(prompt)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    metrics = compute_metrics(results, duration)
    errors = [r.error for r in results if not r.success]
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "base_url": base_url,
        "model_id": model,
        "num_prompts": args.num_prompts,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "request_rate": args.request_rate if args.request_rate != float("inf") else "inf",
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
        "seed": args.seed,
        **metrics,
        "input_lens": [r.prompt_len for r in results],
        "output_lens": [r.output_tokens if r.success else 0 for r in results],
        "ttfts": [r.ttft for r in results],
        "e2els": [r.latency for r in results],
        "itls": [r.itl for r in results],
        "errors": errors,
    }


# --- report


def format_table(result: dict[str, Any]) -> str:
    """vLLM's summary layout, with p50/p90/p99 and the machine and date."""
    lines = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]

    def row(label: str, value: Any) -> None:
        lines.append(f"{label:<40} {value:<10.2f}" if isinstance(value, float) else f"{label:<40} {value!s:<10}")

    row("Date:", result["date"])
    row("Machine:", result["machine"])
    row("Model:", result["model_id"])
    row("Input / output tokens per request:", f"{result['input_len']} / {result['output_len']}")
    row("Request rate (req/s):", result["request_rate"])
    if result["max_concurrency"]:
        row("Maximum request concurrency:", result["max_concurrency"])
    row("Successful requests:", result["completed"])
    row("Failed requests:", result["failed"])
    row("Benchmark duration (s):", result["duration"])
    row("Total input tokens:", result["total_input_tokens"])
    row("Total generated tokens:", result["total_output_tokens"])
    row("Request throughput (req/s):", result["request_throughput"])
    row("Output token throughput (tok/s):", result["output_throughput"])
    row("Total Token throughput (tok/s):", result["total_token_throughput"])
    for key, title, short in (
        ("ttft", "Time to First Token", "TTFT"),
        ("tpot", "Time per Output Token (excl. 1st token)", "TPOT"),
        ("itl", "Inter-token Latency", "ITL"),
        ("e2el", "End-to-end Latency", "E2EL"),
    ):
        lines.append("{s:{c}^{n}}".format(s=title, n=50, c="-"))
        row(f"Mean {short} (ms):", result[f"mean_{key}_ms"])
        row(f"Median {short} (ms):", result[f"median_{key}_ms"])
        for p in PERCENTILES[1:]:
            row(f"P{p} {short} (ms):", result[f"p{p}_{key}_ms"])
    steady = result["steady_state"]
    lines.append("{s:{c}^{n}}".format(s="Sent after the first request finished", n=50, c="-"))
    row("Requests:", steady["completed"])
    for key, short in (("ttft", "TTFT"), ("tpot", "TPOT")):
        row(f"Median {short} (ms):", steady[f"median_{key}_ms"])
        for p in PERCENTILES[1:]:
            row(f"P{p} {short} (ms):", steady[f"p{p}_{key}_ms"])
    lines.append("=" * 50)
    return "\n".join(line.rstrip() for line in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="default: %(default)s")
    parser.add_argument("--model", help="the model name to send; default: the first of GET /v1/models")
    parser.add_argument("--api-key", help="bearer token; default: $OPENAI_API_KEY if set")
    parser.add_argument("--num-prompts", type=int, default=1000, help="default: %(default)s")
    parser.add_argument("--input-len", type=int, default=1024, help="prompt tokens per request; default: %(default)s")
    parser.add_argument("--output-len", type=int, default=128, help="output tokens per request; default: %(default)s")
    parser.add_argument(
        "--request-rate", type=float, default=float("inf"), help="requests/s; inf = all at once (default)"
    )
    parser.add_argument(
        "--burstiness", type=float, default=1.0, help="gamma shape of the arrivals: 1 = Poisson; default: 1"
    )
    parser.add_argument("--max-concurrency", type=int, help="most requests in flight; default: no limit")
    parser.add_argument("--seed", type=int, default=0, help="prompts and arrivals; default: %(default)s")
    parser.add_argument(
        "--max-token-id", type=int, default=32000, help="prompt ids are drawn from [1000, this); default: %(default)s"
    )
    parser.add_argument("--skip-initial-test", action="store_true", help="skip the uncounted first test request")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the result (with per-request data) here")
    parser.add_argument(
        "--roofline-config",
        type=Path,
        metavar="YAML",
        help="the engine config the server runs: with --ceilings and --max-concurrency, the steady-state serving "
        "roofline (bench_common.serving_roofline) beside the measured TPOT and output rate",
    )
    parser.add_argument(
        "--ceilings",
        type=Path,
        metavar="JSON",
        help="the card's measured ceilings: a JSON with a 'ceilings' key (bench_latency's or bench_throughput's "
        "--json on the same card) or the ceilings themselves",
    )
    return parser


def add_roofline(result: dict[str, Any], config: Path, ceilings_json: Path) -> str:
    """Puts the serving roofline of ``config``'s model at the run's concurrency and lengths into ``result``; returns
    its report lines, with the measured median TPOT and output rate as fractions of it."""
    import bench_common

    facts = json.loads(ceilings_json.read_text())
    ceilings = facts.get("ceilings", facts)
    bench = bench_common.load_bench_model(config)
    roof = bench_common.serving_roofline(
        bench.shape,
        result["max_concurrency"],
        result["input_len"],
        result["output_len"],
        ceilings,
        bench.engine.parallel.tensor_parallel_size,
    )
    result["roofline"] = {**roof, "ceilings": ceilings, "config": str(config)}
    tpot_share = roof["tpot_ms"] / result["median_tpot_ms"] if result["median_tpot_ms"] else 0.0
    rate_share = result["output_throughput"] / roof["output_tokens_per_s"]
    return (
        f"serving roofline ({bench_common.describe_ceilings(ceilings)}): a steady-state step of "
        f"{roof['step_tokens']:.0f} tokens ({roof['step_gb']:.1f} GB, {roof['step_tflop']:.2f} TFLOP, "
        f"{roof['step_bound']}-bound): TPOT >= {roof['tpot_ms']:.2f} ms, output <= "
        f"{roof['output_tokens_per_s']:,.0f} tok/s, TTFT >= {roof['ttft_ms']:.1f} ms; measured: median TPOT at "
        f"{100 * tpot_share:.0f} % of the roofline, output rate at {100 * rate_share:.0f} %"
    )


def check_args(args: argparse.Namespace) -> None:
    """Refuses, naming the option, what the run could not do."""
    if args.num_prompts < 1 or args.input_len < 1 or args.output_len < 1:
        raise SystemExit("--num-prompts, --input-len and --output-len must be >= 1")
    if args.request_rate <= 0 or args.burstiness <= 0:
        raise SystemExit("--request-rate and --burstiness must be > 0")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise SystemExit("--max-concurrency must be >= 1")
    if (args.roofline_config is None) != (args.ceilings is None):
        raise SystemExit("--roofline-config and --ceilings go together")
    if args.roofline_config is not None and args.max_concurrency is None:
        raise SystemExit("--roofline-config needs --max-concurrency (the roofline is a closed loop's steady state)")
    for path in (args.roofline_config, args.ceilings):
        if path is not None and not path.is_file():
            raise SystemExit(f"no such file: {path}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    check_args(args)
    result = asyncio.run(benchmark(args))
    print(format_table(result))
    if args.roofline_config is not None:
        print(add_roofline(result, args.roofline_config, args.ceilings))
    for error in sorted(set(result["errors"]))[:5]:
        print(f"error: {error}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()

"""Several models from one server: start-up, unload and reload times, the memory an unload frees, and fairness.

Serves a config's ``models:`` (default: configs/multi-model.yaml) in-process through the server's own registry and
``ModelBuilder`` (the path ``jllm serve`` and the admin API take), on a fresh persistent compilation cache unless
``--keep-compile-cache``, so the first load is cold. For every model, in turn: unload it (the others keep serving)
and load it again (warm: its programs come from the executable cache); then the same model from an orbax copy of its
parameters (``save_model``: the orbax cache the single-model path also loads from). Fairness: each model's time to
first token, one request at a time, idle and while ``--flood-clients`` clients flood another model. The HTTP clients
share the server's event loop here.

    python scripts/bench_multi_model.py --json multi.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import jax
from bench_common import environment

from jllm.build import ModelBuilder
from jllm.loader import save_model
from jllm.serve_config import ModelEntry, load_serve_config, parse_entry
from jllm.server.app import bound_port, build_app, start_app, stop_app
from jllm.server.state import STATE

PROMPT = "The capital of France is"


def live_bytes() -> int:
    gc.collect()
    return sum(a.nbytes for a in jax.live_arrays())


async def ttft(session: aiohttp.ClientSession, url: str, model: str, max_tokens: int = 2) -> float:
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    start = time.perf_counter()
    async with session.post(f"{url}/v1/completions", json=body) as response:
        async for line in response.content:
            if line.startswith(b"data: {") and b'"text":""' not in line:
                return time.perf_counter() - start
    raise RuntimeError(f"no token from {model}")


async def flood_client(session: aiohttp.ClientSession, url: str, model: str, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await ttft(session, url, model, max_tokens=16)


async def fairness(
    url: str, headers: dict[str, str], probe: str, flood: str, clients: int, rounds: int = 3
) -> dict[str, Any]:
    """``probe``'s TTFT median over ``rounds`` alternating idle / flooded rounds of 5 requests each."""
    idle, flooded = [], []
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(rounds):
            idle += [await ttft(session, url, probe) for _ in range(5)]
            stop = asyncio.Event()

            flooding = [asyncio.ensure_future(flood_client(session, url, flood, stop)) for _ in range(clients)]
            await asyncio.sleep(0.5)
            flooded += [await ttft(session, url, probe) for _ in range(5)]
            stop.set()
            await asyncio.gather(*flooding)
    i, f = statistics.median(idle), statistics.median(flooded)
    return {"probe": probe, "flooded": flood, "idle_ttft_ms": i * 1e3, "flooded_ttft_ms": f * 1e3, "ratio": f / i}


async def cycle(app: Any, entry: ModelEntry, label: str) -> dict[str, Any]:
    """Unloads ``entry``'s model and loads it again: seconds each, and the live-array bytes the unload freed."""
    registry = app[STATE].registry
    before = live_bytes()
    start = time.perf_counter()
    served = await registry.unload(entry.name, drain_timeout=30.0)
    unload_s = time.perf_counter() - start
    freed = before - live_bytes()
    planned = served.memory.total_bytes if served.memory else 0
    del served
    reloaded = await registry.load(entry)
    return {
        "model": label, "unload_s": unload_s, "reload_s": reloaded.load_seconds,
        "freed_bytes": freed, "planned_bytes": planned,
    }  # fmt: skip


async def run(args: argparse.Namespace) -> dict[str, Any]:
    serve = load_serve_config(args.config)
    builder = ModelBuilder.for_server(serve.server)
    app = build_app(serve.config, factory=builder)
    runner = await start_app(app, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{bound_port(runner)}"
    registry = app[STATE].registry
    result: dict[str, Any] = {"config": str(args.config)}
    try:
        await registry.load_all(serve.models)
        result["cold_load_s"] = {m.name: m.load_seconds for m in registry.models}
        result["plans"] = {m.name: vars(m.memory) for m in registry.models if m.memory}
        names = [m.name for m in registry.models]
        result["fairness"] = [
            await fairness(url, args.headers, probe, flood, args.flood_clients)
            for probe in names
            for flood in names
            if flood != probe
        ]
        result["cycles"] = [await cycle(app, entry, entry.name) for entry in serve.models]
        with tempfile.TemporaryDirectory(prefix="bench_mm_orbax_") as tmp:
            first = serve.models[0]
            saved = save_model(registry.route(first.name).engine.engine.runner.loaded, Path(tmp) / "orbax")
            raw = {k: v for k, v in first.config.to_flat().items() if k in ("dtype", "max_model_len", "num_pages")}
            orbax = parse_entry({**raw, "served_model_name": "orbax-copy", "model": str(saved)}, serve.config)
            start = time.perf_counter()
            await registry.load(orbax)
            result["orbax_load_s"] = time.perf_counter() - start
            result["cycles"].append(await cycle(app, orbax, f"{first.name} (orbax copy)"))
            await registry.unload("orbax-copy", 0)
    finally:
        await stop_app(app, runner, 0)
    return result


def print_result(result: dict[str, Any]) -> None:
    env = result["environment"]
    print(f"\n{env['cpu']}, {env['platform']}; {env['date']}; load average {env['load_average']}")
    print("cold start-up load (plan + load + compile, fresh compilation cache):")
    for name, seconds in result["cold_load_s"].items():
        plan = result["plans"][name]
        print(f"  {name:<28} {seconds:7.2f} s   weights {plan['weights_bytes']:,} B, pool {plan['pool_bytes']:,} B")
    print(f"{'model':<32} {'unload s':>9} {'reload s':>9} {'freed bytes':>14} {'planned bytes':>14}")
    for c in result["cycles"]:
        print(
            f"{c['model']:<32} {c['unload_s']:>9.2f} {c['reload_s']:>9.2f} {c['freed_bytes']:>14,} "
            f"{c['planned_bytes']:>14,}"
        )
    print(f"first load of the orbax copy: {result['orbax_load_s']:.2f} s")
    for f in result["fairness"]:
        print(
            f"TTFT of {f['probe']}: idle {f['idle_ttft_ms']:.1f} ms, while {f['flooded']} is flooded "
            f"{f['flooded_ttft_ms']:.1f} ms ({f['ratio']:.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/multi-model.yaml"), help="a models: config")
    parser.add_argument("--flood-clients", type=int, default=16, help="clients flooding a model in the TTFT test")
    parser.add_argument("--keep-compile-cache", action="store_true", help="use the usual compilation cache")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    serve = load_serve_config(args.config)
    args.headers = {"Authorization": f"Bearer {serve.server.api_key}"} if serve.server.api_key else {}
    with tempfile.TemporaryDirectory(prefix="bench_mm_xla_") as cache:
        if not args.keep_compile_cache:
            jax.config.update("jax_compilation_cache_dir", cache)
        result = asyncio.run(run(args))
    result["environment"] = environment()
    print_result(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

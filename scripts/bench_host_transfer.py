"""What moving a step's packed inputs to the device costs the host, per way of making the array.

Every engine step packs its host inputs into one uint32 buffer per tree (the forward's, the sampler's) and makes a
device array of each (``runner.DeviceStep``); on an H200 that part of a step ("device_inputs" in
``profile_step.py``) took 0.5-0.7 ms of host time (2026-12-04), a fifth of the host's budget where an FP8 decode
step is host-bound. This times the host's side only — calls queued back to back, one wait at the end — for buffers of
a decode step's sizes, each way: ``jax.make_array_from_process_local_data`` (what the runner calls when a mesh spans
processes), ``jax.device_put`` onto the replicated sharding, and onto the one device; the two buffers in one
``device_put`` call (what the runner calls on one process); and the two concatenated (one transfer a step). And with
a compiled program that reads them: called on resident arrays (the base), after one ``device_put`` of both, and on
the NumPy arrays themselves (the dispatch moves them; 2026-12-07, a 1k-word step: 20 us against 191 with the
``device_put`` on the 2-core CPU host, 119 against 302 on an H100's). Prints the card and a table of microseconds per
call.

    python scripts/bench_host_transfer.py --words 1024,4096,16384 --calls 2000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_common as common
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def host_us_per_call(fn: Callable[[], Any], calls: int) -> float:
    """Host microseconds per call, calls queued with no wait between them; the best of three rounds."""
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(3):
        outs = []
        start = time.perf_counter()
        for _ in range(calls):
            outs.append(fn())
        best = min(best, (time.perf_counter() - start) / calls)
        jax.block_until_ready(outs)
    return best * 1e6


def host_bench_args(
    argv: list[str] | None, doc: str, sizes: str, default: list[int], help: str
) -> tuple[argparse.Namespace, dict[str, Any]]:
    """The host benchmarks' command line (``--SIZES`` as a comma list, ``--calls``, ``--json``), parsed, and the
    environment, printed as their first line."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(f"--{sizes}", type=lambda s: [int(x) for x in s.split(",")], default=default, help=help)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    env = common.environment()
    print(f"card: {env['card']}; CPU {env['cpu']}; jax {jax.__version__}; {env['date']}")
    return args, env


def ways(words: int) -> dict[str, Callable[[], Any]]:
    device = jax.devices()[0]
    replicated = NamedSharding(Mesh(np.array([device]), ("tp",)), PartitionSpec())
    rng = np.random.default_rng(0)
    forward = rng.integers(0, 2**31, words, dtype=np.uint32)
    sampler = rng.integers(0, 2**31, max(words // 8, 16), dtype=np.uint32)
    both = np.concatenate([forward, sampler])
    # A compiled program reading both buffers, as a step's programs do: the transfer made inside the call (NumPy
    # arguments, moved by the dispatch itself) against one made before it; the call on resident arrays is the base.
    program = jax.jit(lambda a, b: a[0] + b[0], in_shardings=(replicated, replicated)).lower(forward, sampler).compile()
    resident = jax.device_put([forward, sampler], replicated)
    return {
        "call on resident arrays (no transfer: the base)": lambda: program(*resident),
        "device_put of both, one call, then the call": lambda: program(*jax.device_put([forward, sampler], replicated)),
        "NumPy arrays into the call (moved by its dispatch)": lambda: program(forward, sampler),
        "make_array_from_process_local_data x2": lambda: (
            jax.make_array_from_process_local_data(replicated, forward),
            jax.make_array_from_process_local_data(replicated, sampler),
        ),
        "device_put(sharding) x2": lambda: (jax.device_put(forward, replicated), jax.device_put(sampler, replicated)),
        "device_put(sharding) of both, one call (the runner's)": lambda: jax.device_put([forward, sampler], replicated),
        "device_put(device) x2": lambda: (jax.device_put(forward, device), jax.device_put(sampler, device)),
        "device_put(sharding) x1, concatenated": lambda: jax.device_put(both, replicated),
    }


def main(argv: list[str] | None = None) -> None:
    args, env = host_bench_args(
        argv, __doc__, "words", [1024, 4096, 16384], "uint32 words of the forward's buffer (the sampler's: an eighth)"
    )
    rows = []
    for words in args.words:
        for name, fn in ways(words).items():
            rows.append({"words": words, "way": name, "host_us": host_us_per_call(fn, args.calls)})
    print("| forward words | way | host us per step |")
    print("| --- | --- | --- |")
    for r in rows:
        print(f"| {r['words']} | {r['way']} | {r['host_us']:.1f} |")
    common.write_json(args.json, {"environment": env, "rows": rows})


if __name__ == "__main__":
    main()

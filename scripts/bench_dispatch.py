"""What dispatching a compiled program costs the host, by the number of arrays it takes.

A decode step's forward takes every weight as an argument: Llama-3-8B's 195 leaves in bf16, and with FP8 weights a
scale beside each quantized kernel (323). On an H200 (2026-12-06) the FP8 step's dispatch held the host 1.46 ms
against bf16's 0.81 ms, and a batch-1 FP8 decode is host-bound. If each argument costs the host microseconds,
fewer, larger arrays would shrink that. This times the host's side only (calls queued back to back, one wait at the
end) of an ahead-of-time compiled program, as the runner calls it, that reads one element of each of N small arrays
(so XLA keeps every argument), for several N; N = 1 is the baseline. Prints the card and a table.

    python scripts/bench_dispatch.py --args 1,64,195,323,512 --calls 2000
"""

from __future__ import annotations

import functools

import bench_common as common
import jax
import jax.numpy as jnp
from bench_host_transfer import host_bench_args, host_us_per_call


def program(num_args: int) -> tuple[jax.stages.Compiled, list[jax.Array]]:
    """The compiled program over ``num_args`` arrays of 256 float32 each, and its arguments."""
    arrays = [jnp.full((256,), i, jnp.float32) for i in range(num_args)]

    def first_elements(xs: list[jax.Array]) -> jax.Array:
        return jnp.stack([x[0] for x in xs]).sum()

    return jax.jit(first_elements).lower(arrays).compile(), arrays


def main(argv: list[str] | None = None) -> None:
    args, env = host_bench_args(argv, __doc__, "args", [1, 64, 195, 323, 512], "argument counts to time")
    rows = []
    for num_args in args.args:
        compiled, arrays = program(num_args)
        expected = float(sum(range(num_args)))
        if float(compiled(arrays)) != expected:
            raise SystemExit(f"the {num_args}-argument program returned {float(compiled(arrays))}, not {expected}")
        rows.append({"args": num_args, "host_us": host_us_per_call(functools.partial(compiled, arrays), args.calls)})
    base = rows[0]
    print(f"| arguments | host us per call | over {base['args']} argument(s), us per extra argument |")
    print("| --- | --- | --- |")
    for r in rows:
        extra = r["args"] - base["args"]
        per_arg = f"{(r['host_us'] - base['host_us']) / extra:.2f}" if extra else "-"
        print(f"| {r['args']} | {r['host_us']:.1f} | {per_arg} |")
    common.write_json(args.json, {"environment": env, "rows": rows})


if __name__ == "__main__":
    main()

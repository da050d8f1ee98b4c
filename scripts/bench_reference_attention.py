"""The reference paged attention's speed on the machine at hand (CI's and the CPU's path), per step composition.

Each row is one step as the engine runs it: a few real sequences (new tokens, context) padded into a (tokens,
sequences) bucket, pages scattered at random over a pool of ``--num-pages``. The baseline, in the same process, is
torch's ``scaled_dot_product_attention`` over the same sequences held contiguously (one call per sequence, causal for
the new tokens): what a dense, unpaged attention costs on this machine. Needs torch (the ``test`` extra).

    python scripts/bench_reference_attention.py            # the default model's heads, float32
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from bench_common import random_block_tables, timed
from machine_info import cpu_name

from pallas_kernels.reference import ref_ragged_paged_attention


class StepCase(NamedTuple):
    name: str
    bucket: tuple[int, int]  # (tokens, sequences) the step is padded to
    seqs: list[tuple[int, int]]  # (new tokens, context including them) per real sequence


CASES = [
    StepCase("1 decode, context 100", (1, 1), [(1, 100)]),
    StepCase("32 decodes, context 200", (32, 32), [(1, 200)] * 32),
    StepCase("1 prefill of 64", (64, 64), [(64, 64)]),
    StepCase("1 prefill of 256", (256, 64), [(256, 256)]),
    StepCase("48-token prefill + 16 decodes", (64, 64), [(48, 48)] + [(1, 300)] * 16),
    StepCase("32 prefills of 64", (2048, 64), [(64, 64)] * 32),
    StepCase("8 prefills of 200 + 24 decodes", (2048, 64), [(200, 200)] * 8 + [(1, 300)] * 24),
]


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    return 1e3 * float(np.median(timed(fn, repeats)))


def paged_inputs(case: StepCase, rng: np.random.Generator, args: argparse.Namespace, pool: jax.Array) -> tuple:
    """The case's step inputs in the engine's layout: ragged queries, kv lengths, block tables, query starts."""
    num_tokens, num_seqs = case.bucket
    page_size, pages_per_seq = args.page_size, -(-args.max_model_len // args.page_size)
    q_lens = [q for q, _ in case.seqs] + [0] * (num_seqs - len(case.seqs))
    kv_lens = [c for _, c in case.seqs] + [0] * (num_seqs - len(case.seqs))
    block_tables = random_block_tables(rng, pool.shape[2], page_size, kv_lens, pages_per_seq)
    q = rng.standard_normal((num_tokens, args.num_q_heads, args.head_dim), np.float32)
    query_start_loc = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    return jnp.asarray(q), jnp.asarray(kv_lens, jnp.int32), jnp.asarray(block_tables), jnp.asarray(query_start_loc)


def torch_dense_ms(case: StepCase, rng: np.random.Generator, args: argparse.Namespace) -> float:
    """Baseline: torch SDPA per sequence over contiguous K/V (GQA by repeating KV heads, as transformers does)."""
    import torch

    torch.set_num_threads(args.threads)
    group = args.num_q_heads // args.num_kv_heads
    tensors = []
    for q_len, ctx in case.seqs:
        q = torch.from_numpy(rng.standard_normal((1, args.num_q_heads, q_len, args.head_dim), np.float32))
        k, v = (torch.from_numpy(rng.standard_normal((1, args.num_kv_heads, ctx, args.head_dim), np.float32))
                for _ in range(2))  # fmt: skip
        mask = torch.ones(q_len, ctx, dtype=torch.bool).tril(ctx - q_len)  # query i sees keys <= ctx - q_len + i
        tensors.append((q, k, v, mask))

    def run() -> None:
        with torch.no_grad():
            for q, k, v, mask in tensors:
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
                torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return median_ms(run, args.repeats)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-q-heads", type=int, default=9)
    parser.add_argument("--num-kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--num-pages", type=int, default=1456, help="pool pages (the default model's 1 GiB pool)")
    parser.add_argument("--max-model-len", type=int, default=2048, help="sets the block table's width")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: every core)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--json", type=Path, metavar="PATH")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    pool_shape = (2, args.num_kv_heads, args.num_pages, args.page_size, args.head_dim)
    pool = jnp.asarray(rng.standard_normal(pool_shape, np.float32))
    attend = jax.jit(lambda q, pool, kv_lens, tables, qsl: ref_ragged_paged_attention(
        q, pool, kv_lens, tables, qsl, sm_scale=args.head_dim**-0.5))  # fmt: skip

    print(f"machine: {cpu_name()}, jax {jax.__version__} on {jax.devices()[0].platform}; "
          f"{args.num_q_heads} query / {args.num_kv_heads} KV heads, head_dim {args.head_dim}, float32, "
          f"page size {args.page_size}, median of {args.repeats}; torch threads {args.threads}")  # fmt: skip
    print("\n| step | bucket (tokens x seqs) | reference ms | torch dense ms | reference / torch |")
    print("| --- | --- | --- | --- | --- |")
    rows = []
    for case in CASES:
        try:
            q, kv_lens, tables, qsl = paged_inputs(case, rng, args, pool)
        except ValueError as e:
            parser.error(f"{case.name}: {e} (raise --max-model-len or --num-pages)")
        ref_ms = median_ms(lambda: attend(q, pool, kv_lens, tables, qsl), args.repeats)  # noqa: B023
        dense_ms = None if args.skip_torch else torch_dense_ms(case, rng, args)
        ratio = f"{ref_ms / dense_ms:.2f}x" if dense_ms else "-"
        print(f"| {case.name} | {case.bucket[0]} x {case.bucket[1]} | {ref_ms:.2f} | "
              f"{f'{dense_ms:.2f}' if dense_ms else '-'} | {ratio} |", flush=True)  # fmt: skip
        rows.append({"step": case.name, "bucket": case.bucket, "reference_ms": ref_ms, "torch_dense_ms": dense_ms})
    if args.json:
        args.json.write_text(json.dumps({"machine": cpu_name(), "rows": rows}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()

"""Shape buckets: the small fixed set of (tokens, sequences) shapes the step is compiled for.

Token counts double from 1 up to the token budget, and each bucket holds as many sequences as it has tokens (up to
``max_num_seqs``): a step of t tokens never has more than t sequences, so the token count alone picks the bucket and
a budget of 2048 needs 12 programs. Padding sequences cost little (an empty row of block table, one logits row), while
every extra program costs seconds of start-up compiling a large model.

The sampler (the LM head's GEMM, then the draw) runs on each bucket's sequences rounded up to a power of 8
(``sampler_rows``): its programs are compiled per row count and sampling variant, and reading the LM head costs the
same for 2 rows as for 8, or for 16 as for 64 (Llama-3-8B's head is 1 GB; 64 rows of it are 67 GFLOP). A budget of
2048 with 256 sequences then compiles samplers for 4 row counts, not 9: on an H100 a cold start spent 189
thread-seconds compiling 36 samplers (2026-12-05).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import NamedTuple


class StepBucket(NamedTuple):
    num_tokens: int
    num_seqs: int
    sampler_rows: int  # the rows the sampler runs on: num_seqs, or more (``sampler_rows``)


SAMPLER_ROW_FACTOR = 8


def sampler_rows(num_seqs: int, max_rows: int) -> int:
    """``num_seqs`` rounded up to a power of ``SAMPLER_ROW_FACTOR``, at most ``max_rows`` (the largest bucket's)."""
    rows = 1
    while rows < num_seqs:
        rows *= SAMPLER_ROW_FACTOR
    return max(num_seqs, min(rows, max_rows))


def step_buckets(max_num_batched_tokens: int, max_num_seqs: int) -> list[StepBucket]:
    """Every bucket, smallest first: token counts 1, 2, 4, ... and the budget itself."""
    token_sizes, n = [], 1
    while n < max_num_batched_tokens:
        token_sizes.append(n)
        n *= 2
    token_sizes.append(max_num_batched_tokens)
    max_rows = min(max_num_batched_tokens, max_num_seqs)
    return [StepBucket(t, min(t, max_num_seqs), sampler_rows(min(t, max_num_seqs), max_rows)) for t in token_sizes]


def pick_bucket(buckets: list[StepBucket], num_tokens: int, num_seqs: int) -> StepBucket:
    for bucket in buckets:
        if bucket.num_tokens >= num_tokens and bucket.num_seqs >= num_seqs:
            return bucket
    raise ValueError(f"no bucket holds {num_tokens} tokens of {num_seqs} sequences; largest is {buckets[-1]}")

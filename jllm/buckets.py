"""Shape buckets: the small fixed set of (tokens, sequences) shapes the step is compiled for.

Token counts double from ``MIN_TOKENS`` up to the token budget; sequence counts grow by 4x up to ``max_num_seqs``.
Every step pads to the smallest bucket that holds it, so the number of compiled programs stays bounded.
"""

from __future__ import annotations

from typing import NamedTuple

MIN_TOKENS = 16


class StepBucket(NamedTuple):
    num_tokens: int
    num_seqs: int


def _growing(start: int, factor: int, limit: int) -> list[int]:
    sizes, n = [], start
    while n < limit:
        sizes.append(n)
        n *= factor
    return [*sizes, limit]


def step_buckets(max_num_batched_tokens: int, max_num_seqs: int) -> list[StepBucket]:
    """Every bucket, sorted by tokens then sequences; a step never has more sequences than tokens."""
    token_sizes = _growing(min(MIN_TOKENS, max_num_batched_tokens), 2, max_num_batched_tokens)
    seq_sizes = _growing(1, 4, max_num_seqs)
    return [StepBucket(t, s) for t in token_sizes for s in seq_sizes if s <= t]


def pick_bucket(buckets: list[StepBucket], num_tokens: int, num_seqs: int) -> StepBucket:
    for bucket in buckets:
        if bucket.num_tokens >= num_tokens and bucket.num_seqs >= num_seqs:
            return bucket
    raise ValueError(f"no bucket holds {num_tokens} tokens of {num_seqs} sequences; largest is {buckets[-1]}")

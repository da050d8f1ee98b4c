"""Shape buckets: the small fixed set of (tokens, sequences) shapes the step is compiled for.

Token counts double from 1 up to the token budget, and each bucket holds as many sequences as it has tokens (up to
``max_num_seqs``): a step of t tokens never has more than t sequences, so the token count alone picks the bucket and
a budget of 2048 needs 12 programs. Padding sequences cost little (an empty row of block table, one logits row), while
every extra program costs seconds of start-up compiling a large model.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import NamedTuple


class StepBucket(NamedTuple):
    num_tokens: int
    num_seqs: int


def step_buckets(max_num_batched_tokens: int, max_num_seqs: int) -> list[StepBucket]:
    """Every bucket, smallest first: token counts 1, 2, 4, ... and the budget itself."""
    token_sizes, n = [], 1
    while n < max_num_batched_tokens:
        token_sizes.append(n)
        n *= 2
    token_sizes.append(max_num_batched_tokens)
    return [StepBucket(t, min(t, max_num_seqs)) for t in token_sizes]


def pick_bucket(buckets: list[StepBucket], num_tokens: int, num_seqs: int) -> StepBucket:
    for bucket in buckets:
        if bucket.num_tokens >= num_tokens and bucket.num_seqs >= num_seqs:
            return bucket
    raise ValueError(f"no bucket holds {num_tokens} tokens of {num_seqs} sequences; largest is {buckets[-1]}")

"""Shape buckets: few programs, and every schedulable step fits the smallest one that holds its tokens."""

import pytest

from jllm.buckets import StepBucket, pick_bucket, sampler_rows, step_buckets


def test_token_counts_double_up_to_the_budget_and_sequences_follow_tokens():
    buckets = step_buckets(2048, 64)
    assert [b.num_tokens for b in buckets] == [2**i for i in range(12)]
    assert all(b.num_seqs == min(b.num_tokens, 64) for b in buckets)


def test_a_budget_that_is_not_a_power_of_two_is_the_last_bucket():
    assert step_buckets(48, 8)[-3:] == [StepBucket(16, 8, 8), StepBucket(32, 8, 8), StepBucket(48, 8, 8)]


@pytest.mark.parametrize("num_tokens,num_seqs", [(1, 1), (3, 3), (5, 1), (64, 64), (65, 64), (100, 1), (2048, 64)])
def test_pick_is_the_smallest_bucket_that_holds_the_step(num_tokens, num_seqs):
    buckets = step_buckets(2048, 64)
    picked = pick_bucket(buckets, num_tokens, num_seqs)
    holds = [b for b in buckets if b.num_tokens >= num_tokens and b.num_seqs >= num_seqs]
    assert picked == holds[0]
    assert picked.num_tokens < 2 * num_tokens


def test_a_step_past_the_budget_is_refused_with_the_largest_bucket_named():
    with pytest.raises(ValueError, match="largest is"):
        pick_bucket(step_buckets(32, 4), 33, 1)


def test_the_sampler_runs_on_the_sequences_rounded_up_to_a_power_of_8_within_the_largest_bucket():
    buckets = step_buckets(2048, 256)
    assert [b.sampler_rows for b in buckets] == [1, 8, 8, 8, 64, 64, 64, 256, 256, 256, 256, 256]
    assert all(b.sampler_rows >= b.num_seqs for b in buckets)
    # a cap that is not a power of 8 is the largest row count; rows never fall below the sequences
    assert [b.sampler_rows for b in step_buckets(256, 100)] == [1, 8, 8, 8, 64, 64, 64, 100, 100]
    assert sampler_rows(3, 2) == 3 and sampler_rows(1, 1) == 1
    assert [b.sampler_rows for b in step_buckets(8, 2)] == [1, 2, 2, 2]

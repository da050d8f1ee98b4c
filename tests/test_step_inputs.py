"""The step's host inputs on hand-built scheduled sequences: every index worked out by hand, in pages of 4 tokens."""

from __future__ import annotations

import jax
import numpy as np

from jllm.buckets import StepBucket
from jllm.sampler import MAX_LOGPROBS, SamplingMode
from jllm.sampling import SamplingParams
from jllm.sequence import ScheduledSequence, Sequence
from jllm.step_inputs import (
    BASE_SAMPLERS,
    GENERAL_SAMPLER,
    SLOT_ALIGN_WORDS,
    StepInputs,
    StepPlan,
    host_inputs,
    pack_inputs,
    pick_variant,
    sampler_widths,
    unpack_inputs,
)
from pallas_kernels import PADDING_SLOT

PAGE_SIZE = 4
PAGES_PER_SEQ = 4
EOS = 2


def scheduled(
    seq_id: int,
    prompt: list[int],
    num_new_tokens: int,
    *,
    pages: list[int],
    output: tuple[int, ...] = (),
    computed: int = 0,
    pending: int = 0,
    **params: object,
) -> ScheduledSequence:
    """``num_new_tokens`` of a sequence whose first ``computed`` tokens sit in the pool, one still sampled if
    ``pending``."""
    seq = Sequence(
        seq_id=seq_id,
        request_id=f"req-{seq_id}",
        sample_index=0,
        prompt_token_ids=prompt,
        sampling_params=SamplingParams(**{"temperature": 0, **params}),
        arrival_time=0.0,
        sampling_seed=0,
        output_token_ids=list(output),
        num_computed_tokens=computed,
        num_pending_tokens=pending,
        block_table=pages,
    )
    return ScheduledSequence(seq, num_new_tokens)


def build(batch: list[ScheduledSequence], bucket: StepBucket, last_rows: dict[int, int] | None = None) -> StepInputs:
    """The batch's inputs for the variant the runner would pick."""
    seqs, variant = [s.seq for s in batch], pick_variant(batch, 512, {EOS})
    widths = sampler_widths(
        seqs, variant, context_len=PAGE_SIZE * PAGES_PER_SEQ, eos_token_ids={EOS}, general_banned=64
    )
    return host_inputs(
        batch,
        bucket,
        page_size=PAGE_SIZE,
        pages_per_seq=PAGES_PER_SEQ,
        last_rows=last_rows or {},
        eos_token_ids={EOS},
        widths=widths,
    )


def assert_arrays(inputs: StepInputs, **expected: list) -> None:
    for name, want in expected.items():
        got = getattr(inputs.attn, name) if hasattr(inputs.attn, name) else getattr(inputs, name)
        assert got.dtype == np.int32, name
        np.testing.assert_array_equal(got, np.array(want, np.int32), err_msg=name)


def test_the_sampler_rows_past_the_sequences_are_padding_and_the_plan_knows_both_counts() -> None:
    """A bucket of 2 sequences whose sampler runs on 8 rows: the attention's arrays hold 2 rows, the logits indices
    and every sampling setting 8 (the last 6 padding, as a padding sequence's row)."""
    batch = [
        scheduled(0, [11, 12, 13], 3, pages=[3]),
        scheduled(1, [21, 22, 23, 24], 1, pages=[5, 6], output=(25,), computed=4, temperature=0.7, top_p=0.9),
    ]
    bucket = StepBucket(8, 2, 8)
    inputs = build(batch, bucket)
    assert_arrays(inputs, kv_lens=[3, 5], query_start_loc=[0, 3, 4], logits_indices=[2, 3, 0, 0, 0, 0, 0, 0])
    assert all(x.shape[0] == 8 for x in jax.tree.leaves(inputs.sampling))
    np.testing.assert_allclose(inputs.sampling.temperature[:3], [0.0, 0.7, 0.0])
    padding = build([], StepBucket(8, 2, 8)).sampling
    for name in ("temperature", "top_p", "top_k"):
        np.testing.assert_array_equal(getattr(inputs.sampling, name)[2:], getattr(padding, name)[2:], err_msg=name)
    assert StepPlan(inputs, pick_variant(batch, 512, {EOS})).bucket == bucket


def test_ragged_batch_of_prefills_and_a_decode_is_flattened_and_padded() -> None:
    batch = [
        scheduled(0, [11, 12, 13, 14, 15], 5, pages=[3, 7]),  # a whole prompt over two pages
        scheduled(1, [21, 22, 23], 3, pages=[5]),
        scheduled(2, [31, 32, 33, 34], 1, pages=[2, 9], output=(35,), computed=4),  # decodes its first output
    ]
    inputs = build(batch, StepBucket(16, 4, 4))
    assert_arrays(
        inputs,
        input_ids=[11, 12, 13, 14, 15, 21, 22, 23, 35, 0, 0, 0, 0, 0, 0, 0],
        positions=[0, 1, 2, 3, 4, 0, 1, 2, 4, 0, 0, 0, 0, 0, 0, 0],
        # page 3 holds positions 0-3 (slots 12-15), page 7 position 4; padding writes nowhere
        slot_mapping=[12, 13, 14, 15, 28, 20, 21, 22, 36] + [PADDING_SLOT] * 7,
        query_start_loc=[0, 5, 8, 9, 9],  # the padding row starts and ends where the tokens end
        kv_lens=[5, 3, 5, 0],
        block_tables=[[3, 7, 0, 0], [5, 0, 0, 0], [2, 9, 0, 0], [0, 0, 0, 0]],
        logits_indices=[4, 7, 8, 0],  # each sequence's last row; 0 for the padding row
        pending_rows=[-1] * 16,
        prompt_targets=[-1] * 16,
    )
    assert inputs.sampling.temperature.shape == (4,) and inputs.sampling.banned_ids.shape == (4, 8)


def test_a_decode_with_drafts_feeds_them_after_its_token_and_samples_k_plus_1_rows_each() -> None:
    """Speculative decoding, K = 2: a decode carrying one draft and a prefill chunk beside it; each sequence gets
    K + 1 logits rows (its last own token's, then its drafts' slots, the last row repeated past its drafts)."""
    decode = scheduled(0, [11, 12, 13], 2, pages=[3], output=(14,), computed=3)
    decode = ScheduledSequence(decode.seq, 2, [15])
    batch = [decode, scheduled(1, [21, 22, 23], 3, pages=[5])]
    inputs = host_inputs(
        batch,
        StepBucket(8, 2, 2),
        page_size=PAGE_SIZE,
        pages_per_seq=PAGES_PER_SEQ,
        last_rows={},
        eos_token_ids={EOS},
        widths=(0, 8),
        num_speculative_tokens=2,
    )
    assert decode.samples_token and not decode.pending_input
    assert_arrays(
        inputs,
        input_ids=[14, 15, 21, 22, 23, 0, 0, 0],
        positions=[3, 4, 0, 1, 2, 0, 0, 0],
        kv_lens=[5, 3],
        logits_indices=[0, 1, 1, 4, 4, 4],
    )
    np.testing.assert_array_equal(inputs.sampling.draft_ids, [[15, -1], [-1, -1]])


def test_prefix_hit_starts_at_the_cached_length() -> None:
    prompt = [41, 42, 43, 44, 45, 46, 47, 48, 49, 50]
    inputs = build([scheduled(0, prompt, 2, pages=[4, 6, 8], computed=8)], StepBucket(4, 2, 2))
    assert_arrays(
        inputs,
        input_ids=[49, 50, 0, 0],
        positions=[8, 9, 0, 0],
        slot_mapping=[32, 33] + [PADDING_SLOT] * 2,  # positions 8 and 9 sit in the third page, page 8
        query_start_loc=[0, 2, 2],
        kv_lens=[10, 0],
        block_tables=[[4, 6, 8, 0], [0, 0, 0, 0]],
        logits_indices=[1, 0],
    )


def test_middle_chunk_of_a_prefill_samples_nothing_and_attends_up_to_its_end() -> None:
    prompt = list(range(51, 63))  # 12 tokens, prefilled 4 at a time
    sched = scheduled(0, prompt, 4, pages=[1, 2, 3], computed=4, prompt_logprobs=1)
    assert not sched.samples_token
    inputs = build([sched], StepBucket(4, 1, 1))
    assert_arrays(
        inputs,
        input_ids=[55, 56, 57, 58],
        positions=[4, 5, 6, 7],
        slot_mapping=[8, 9, 10, 11],
        query_start_loc=[0, 4],
        kv_lens=[8],  # start + num_new_tokens
        prompt_targets=[56, 57, 58, 59],  # the next prompt token after each position, the next chunk's first too
    )


def test_prompt_targets_stop_at_the_prompt_and_only_where_asked() -> None:
    batch = [
        scheduled(0, [71, 72, 73], 3, pages=[1], prompt_logprobs=2),
        scheduled(1, [81, 82], 2, pages=[2]),
        scheduled(2, list(range(90, 102)), 4, pages=[3, 4, 5], computed=8, prompt_logprobs=0),  # the last chunk
    ]
    inputs = build(batch, StepBucket(16, 4, 4))
    assert_arrays(inputs, prompt_targets=[72, 73, -1, -1, -1, 99, 100, 101, -1] + [-1] * 7)


def test_pending_inputs_are_read_from_the_previous_steps_rows() -> None:
    batch = [
        scheduled(10, [81, 82, 83], 1, pages=[6], computed=3, pending=1),  # decodes the token still being sampled
        scheduled(11, [91, 92], 2, pages=[7], output=(93,), computed=2, pending=1),  # a known token, then the pending
        scheduled(12, [101, 102], 2, pages=[8]),
    ]
    assert [s.pending_input for s in batch] == [True, True, False]
    inputs = build(batch, StepBucket(8, 4, 4), last_rows={10: 3, 11: 0, 99: 1})
    assert_arrays(
        inputs,
        input_ids=[0, 93, 0, 101, 102, 0, 0, 0],  # only the known tokens
        pending_rows=[3, -1, 0, -1, -1, -1, -1, -1],
        positions=[3, 2, 3, 0, 1, 0, 0, 0],
        slot_mapping=[27, 30, 31, 32, 33] + [PADDING_SLOT] * 3,
        query_start_loc=[0, 1, 3, 5, 5],
        kv_lens=[4, 4, 2, 0],
        logits_indices=[0, 2, 4, 0],
    )
    assert inputs.sampling.step.tolist() == [1, 2, 0, 0]  # the pending token counts as output


def test_a_bucket_with_no_sequences_is_all_padding() -> None:
    inputs = build([], StepBucket(4, 2, 2))
    assert_arrays(
        inputs,
        input_ids=[0, 0, 0, 0],
        positions=[0, 0, 0, 0],
        slot_mapping=[PADDING_SLOT] * 4,
        query_start_loc=[0, 0, 0],
        kv_lens=[0, 0],
        block_tables=[[0] * 4, [0] * 4],
        logits_indices=[0, 0],
        pending_rows=[-1] * 4,
        prompt_targets=[-1] * 4,
    )
    assert inputs.sampling.banned_ids.shape == (2, 8) and inputs.sampling.prompt_ids.shape == (2, 0)


def test_packed_inputs_unpack_to_the_same_arrays_from_one_buffer() -> None:
    batch = [scheduled(0, [11, 12, 13], 3, pages=[3]), scheduled(1, [21], 1, pages=[5], output=(22,), computed=1)]
    inputs = build(batch, StepBucket(8, 4, 4))
    layout, buffer = pack_inputs(inputs)
    sizes = [x.size for x in jax.tree.leaves(inputs)]
    assert buffer.dtype == np.uint32 and sum(sizes) <= buffer.size < sum(sizes) + SLOT_ALIGN_WORDS * len(sizes)
    # every leaf starts 16-byte aligned: a slice of the buffer handed to a jax-triton kernel must be
    assert all(offset % SLOT_ALIGN_WORDS == 0 for offset, _, _ in layout.slots) and SLOT_ALIGN_WORDS * 4 == 16
    assert {np.dtype(x.dtype) for x in jax.tree.leaves(inputs)} == {np.dtype(t) for t in ("float32", "int32", "uint32")}
    unpacked = jax.jit(lambda b: unpack_inputs(layout, b))(buffer)  # as inside a step program
    assert jax.tree.structure(unpacked) == jax.tree.structure(inputs)
    for want, got in zip(jax.tree.leaves(inputs), jax.tree.leaves(unpacked), strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype


def test_plan_names_its_bucket_and_the_cheapest_of_the_few_samplers() -> None:
    greedy = [scheduled(0, [11, 12], 2, pages=[3])]
    inputs = build(greedy, StepBucket(8, 4, 4))
    assert StepPlan(inputs, pick_variant(greedy, 512, {EOS})).bucket == StepBucket(8, 4, 4)
    assert pick_variant(greedy, 512, {EOS}) == (0, None, SamplingMode.GREEDY)
    drawing = [*greedy, scheduled(1, [11, 12], 2, pages=[4], temperature=0.7, min_p=0.1)]
    assert pick_variant(drawing, 512, {EOS}) == (0, None, SamplingMode.RANDOM)
    assert (0, SamplingMode.GREEDY) == BASE_SAMPLERS[0] and (0, SamplingMode.RANDOM) == BASE_SAMPLERS[1]
    bans = [scheduled(0, [1], 1, pages=[3], min_tokens=2, stop_token_ids=[5, 6])]
    assert pick_variant(bans, 512, {EOS}) == (0, None, SamplingMode.GREEDY)  # 3 banned ids fit the base samplers
    general = [
        {"logprobs": 1},
        {"temperature": 0.7, "top_p": 0.9},
        {"temperature": 0.7, "top_k": 5},
        {"repetition_penalty": 1.2},
        {"presence_penalty": 0.5},
        {"logit_bias": {3: 1.0}},
        {"allowed_token_ids": [3, 4]},
        {"min_tokens": 2, "stop_token_ids": list(range(3, 13))},  # bans 11 ids: more than the base samplers' 8
    ]
    top, mode = GENERAL_SAMPLER
    assert (top, mode) == (MAX_LOGPROBS, SamplingMode.TRUNCATED)
    for params in general:
        assert pick_variant([*greedy, scheduled(1, [11, 12], 2, pages=[4], **params)], 512, {EOS}) == (top, None, mode)
    # Prompt logprobs are a program beside either sampler.
    prompt = [scheduled(0, [11, 12], 2, pages=[3], prompt_logprobs=1)]
    assert pick_variant(prompt, 512, {EOS}) == (0, MAX_LOGPROBS, SamplingMode.GREEDY)
    prompt.append(scheduled(1, [11, 12], 2, pages=[4], logprobs=2))
    assert pick_variant(prompt, 512, {EOS}) == (top, MAX_LOGPROBS, mode)


def test_each_variant_has_fixed_sampler_widths_whatever_the_rows_ask() -> None:
    """Penalty lists 0 wide (base), 128 or the whole context's (general); bans 8 (base) or the stop-id cap's."""
    layouts = set()
    for params in [{}, {"temperature": 0.5}, {"presence_penalty": 0.3}, {"logit_bias": {5: 2.0}}, {"logprobs": 3}]:
        for n in (1, 3):
            batch = [scheduled(i, [11, 12, 13], 3, pages=[3 + i], **params) for i in range(n)]
            sampling = build(batch, StepBucket(16, 4, 4)).sampling
            layouts.add((sampling.prompt_ids.shape, sampling.banned_ids.shape))
    assert layouts == {((4, 0), (4, 8)), ((4, 128), (4, 64))}
    long = [scheduled(0, list(range(3, 200)), 16, pages=[3], repetition_penalty=1.1)]  # a prompt over 128 ids
    widths = sampler_widths(
        [s.seq for s in long],
        (*GENERAL_SAMPLER[:1], None, GENERAL_SAMPLER[1]),
        context_len=256,
        eos_token_ids={EOS},
        general_banned=64,
    )
    assert widths == (256, 64)

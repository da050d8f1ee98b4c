"""One step's inputs as plain data: the host batch the scheduler's output becomes, its packing, and the step plan.

Everything here is NumPy over plain arguments (no device arrays, no runner), so the index maths is tested on its
own and every process can rebuild the same step from the lead's published ``StepPlan``. The runner turns a plan into
device arrays and runs it; ``jllm.distributed`` carries plans from the lead to its followers.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from collections.abc import Sequence as Seq
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from jllm import sampler
from jllm.attention import AttentionMetadata
from jllm.buckets import StepBucket
from jllm.models.rope import long_rope_positions
from jllm.sampler import SamplingMetadata, SamplingMode, TokenConstraints
from jllm.sampling import MAX_LOGPROBS
from jllm.sequence import ScheduledSequence, Sequence
from pallas_kernels import PADDING_SLOT

MIN_BANNED_WIDTH = 8  # the common min_tokens ban (EOS + a few stop ids) fits the base variants

# (num_top_logprobs, num_prompt_logprobs or None, sampling mode): what a step's sampler programs are. Its sampler is
# one of a fixed few, so warm-up compiles every program a request can pick: a base sampler (greedy, or drawing
# without truncation, nothing else), or else the general one, which does everything (top logprobs, top-k/top-p,
# penalties, full-width bans, mask and bias; rows that ask for none of it are unchanged by it). Prompt logprobs are a
# program of their own, run beside either.
Variant = tuple[int, int | None, SamplingMode]
BASE_SAMPLERS: tuple[tuple[int, SamplingMode], ...] = ((0, SamplingMode.GREEDY), (0, SamplingMode.RANDOM))
GENERAL_SAMPLER: tuple[int, SamplingMode] = (MAX_LOGPROBS, SamplingMode.TRUNCATED)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StepInputs:
    input_ids: jax.Array  # [T] int32: the step's new tokens, all sequences flattened, padding 0
    # [T] int32: where a token is still being sampled by the previous step (async scheduling), its row in that step's
    # sampled tokens, which the step reads on the device; -1 where ``input_ids`` holds the token
    pending_rows: jax.Array
    positions: jax.Array  # [T] int32: each token's position in its sequence
    attn: AttentionMetadata  # slot mapping, query starts [S+1], KV lengths [S], block tables [S, P], state slots [S]
    # [R * (K + 1)] int32: per sequence the row of its last token, then of each of its K draft slots (the last row
    # again past its drafts; 0 for padding); R = sampler rows, K = the engine's num_speculative_tokens (0: off)
    logits_indices: jax.Array
    sampling: SamplingMetadata  # per-row sampling settings [R, ...]
    prompt_targets: jax.Array  # [T] int32: the next prompt token where prompt logprobs are wanted, else -1
    lora_slots: jax.Array  # [T] int32: each token's LoRA adapter slot (jllm.lora.slots), 0 = none (and padding)


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """What every process needs to run one step, decided by the lead alone: a value, so the lead can publish it and
    a follower run exactly what the lead runs."""

    inputs: StepInputs  # NumPy leaves, padded to the step's bucket
    variant: Variant
    # The sampler's token mask and logit bias, NumPy leaves [S, ...]; None: a base sampler's (zero widths).
    # Apart from ``inputs`` so the forward program never depends on their shapes.
    constraints: TokenConstraints | None = None

    @property
    def bucket(self) -> StepBucket:
        inputs = self.inputs
        return StepBucket(inputs.input_ids.shape[0], inputs.attn.kv_lens.shape[0], inputs.logits_indices.shape[0])


@dataclasses.dataclass(frozen=True)
class InputLayout:
    """Where each leaf of a packed tree (``StepInputs``, or the sampler's inputs) sits in its one host buffer: a
    step's twenty-odd small arrays cross to the device in one transfer (each costs ~0.1 ms of host time in JAX)."""

    treedef: jax.tree_util.PyTreeDef
    slots: tuple[tuple[int, tuple[int, ...], np.dtype], ...]  # per leaf: (offset, shape, dtype)


# Words between leaf starts: XLA may hand a kernel a leaf as a slice of the packed buffer rather than a copy, and
# jax-triton compiles its kernels for 16-byte aligned pointers (its FFI call refuses others: "Parameter 2 (...) is
# not divisible by 16").
SLOT_ALIGN_WORDS = 4


def pack_inputs(inputs: Any) -> tuple[InputLayout, np.ndarray]:
    """Every leaf's bits in one uint32 buffer (the leaves are int32, uint32 and float32: 4-byte words), each leaf
    starting at a multiple of ``SLOT_ALIGN_WORDS`` words."""
    leaves, treedef = jax.tree.flatten(inputs)
    slots, parts, offset = [], [], 0
    for x in leaves:
        x = np.asarray(x)
        if x.dtype.itemsize != 4:
            raise ValueError(f"a packed step input is {x.dtype} {x.shape}; the packing takes 4-byte dtypes only")
        slots.append((offset, tuple(x.shape), x.dtype))
        padding = -x.size % SLOT_ALIGN_WORDS
        parts += [np.ravel(x).view(np.uint32), np.zeros(padding, np.uint32)]  # one concatenate below copies all
        offset += x.size + padding
    buffer = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
    return InputLayout(treedef, tuple(slots)), buffer


def unpack_inputs(layout: InputLayout, buffer: jax.Array) -> Any:
    """Inside the step: static slices of the packed buffer, reinterpreted as their dtypes, which XLA fuses into
    their uses (the packed tree: ``StepInputs``, or the sampler's ``SamplingMetadata`` and ``TokenConstraints``)."""
    leaves = [
        jax.lax.bitcast_convert_type(buffer[offset : offset + math.prod(shape)], dtype).reshape(shape)
        for offset, shape, dtype in layout.slots
    ]
    return jax.tree.unflatten(layout.treedef, leaves)


def host_inputs(
    scheduled: Seq[ScheduledSequence],
    bucket: StepBucket,
    *,
    page_size: int,
    pages_per_seq: int,
    last_rows: Mapping[int, int],
    eos_token_ids: set[int],
    widths: tuple[int, int],
    num_speculative_tokens: int = 0,
    attention_backend: str = "reference",
    mesh: Mesh | None = None,
    long_rope: bool = False,
) -> StepInputs:
    """Flattens the scheduled sequences into one ragged batch padded to ``bucket``: what the lead publishes.

    ``last_rows``: seq_id -> the row each sequence sampled in the previous step, where a pending input is read from.
    ``widths``: the penalty and banned-id widths of the step's sampler variant (``sampler_widths``).
    ``num_speculative_tokens``: K, the drafts a row may carry (``ScheduledSequence.draft_token_ids``, fed after its
    own tokens): the sampler reads K + 1 rows per sequence to verify them.
    ``long_rope``: a longrope model's: the positions of the sequences that take its long factors
    (``Sequence.long_rope``) carry ``rope.LONG_FACTORS_BIT``, set after the pool slots are found.
    With no sequences it is a bucket's all-padding batch, alike on every process: what warm-up compiles.
    """
    t, s, p = bucket.num_tokens, bucket.num_seqs, pages_per_seq
    input_ids = np.zeros(t, np.int32)
    query_start_loc = np.zeros(s + 1, np.int32)
    kv_lens = np.zeros(s, np.int32)
    block_tables = np.zeros((s, p), np.int32)
    prompt_targets = np.full(t, -1, np.int32)
    pending_rows = np.full(t, -1, np.int32)
    lora_slots = np.zeros(t, np.int32)
    state_slots = np.zeros(s, np.int32)
    starts = np.zeros(len(scheduled), np.int32)
    num_drafts = np.zeros(len(scheduled), np.int32)
    offset = 0
    for i, sched in enumerate(scheduled):  # per sequence only what needs its Python lists
        seq = sched.seq
        start, n, d = sched.start, sched.num_new_tokens, len(sched.draft_token_ids)
        known = n - d - sched.pending_input  # the pending token, always the last own input, is read on the device
        input_ids[offset : offset + known] = seq.token_slice(start, start + known)
        input_ids[offset + n - d : offset + n] = sched.draft_token_ids
        num_drafts[i] = d
        if sched.pending_input:
            pending_rows[offset + n - d - 1] = last_rows[seq.seq_id]
        block_tables[i, : len(seq.block_table)] = seq.block_table
        starts[i], kv_lens[i] = start, start + n
        if seq.sampling_params.prompt_logprobs is not None:
            targets = seq.prompt_token_ids[start + 1 : start + n + 1]
            prompt_targets[offset : offset + len(targets)] = targets
        lora_slots[offset : offset + n] = seq.lora_slot
        state_slots[i] = seq.state_slot
        offset += n
        query_start_loc[i + 1] = offset
    query_start_loc[len(scheduled) + 1 :] = offset
    # Per token, vectorised: its sequence, position and pool slot; padding writes nowhere (PADDING_SLOT).
    row = np.repeat(np.arange(len(scheduled)), np.diff(query_start_loc[: len(scheduled) + 1]))
    positions = np.zeros(t, np.int32)
    positions[:offset] = starts[row] + np.arange(offset, dtype=np.int32) - query_start_loc[row]
    slot_mapping = np.full(t, PADDING_SLOT, np.int32)
    pages = block_tables[row, positions[:offset] // page_size]
    slot_mapping[:offset] = pages * page_size + positions[:offset] % page_size
    if long_rope:
        long = np.array([sched.seq.long_rope for sched in scheduled], bool)
        positions[:offset] = long_rope_positions(positions[:offset], long[row])
    k = num_speculative_tokens
    ends = query_start_loc[1 : len(scheduled) + 1] - 1  # each sequence's last input row
    rows = np.minimum(ends[:, None] - num_drafts[:, None] + np.arange(k + 1)[None, :], ends[:, None])
    logits_indices = np.zeros(bucket.sampler_rows * (k + 1), np.int32)
    logits_indices[: len(scheduled) * (k + 1)] = rows.ravel()
    penalty_width, banned_width = widths
    sampling = sampler.build_sampling_metadata(
        [sched.seq for sched in scheduled],
        bucket.sampler_rows,
        with_penalties=penalty_width > 0,
        penalty_width=penalty_width,
        max_banned=banned_width,
        eos_token_ids=eos_token_ids,
        drafts=[sched.draft_token_ids for sched in scheduled],
        draft_width=k,
    )
    attn = AttentionMetadata(
        slot_mapping=slot_mapping,
        query_start_loc=query_start_loc,
        kv_lens=kv_lens,
        block_tables=block_tables,
        state_slots=state_slots,
        backend=attention_backend,
        mesh=mesh,
    )
    return StepInputs(input_ids, pending_rows, positions, attn, logits_indices, sampling, prompt_targets, lora_slots)


def is_general(variant: Variant) -> bool:
    return variant[2] is SamplingMode.TRUNCATED


def pick_variant(
    scheduled: Seq[ScheduledSequence], vocab_size: int, eos_token_ids: set[int], *, base_banned: int = MIN_BANNED_WIDTH
) -> Variant:
    """The cheapest of the few samplers that serves every row of the step, and whether prompt logprobs run."""
    seqs = [s.seq for s in scheduled]
    prompt = sampler.num_prompt_logprobs(scheduled)
    if sampler.needs_general(seqs, vocab_size, eos_token_ids, base_banned=base_banned):
        top, mode = GENERAL_SAMPLER
    else:
        top, mode = BASE_SAMPLERS[any(not s.sampling_params.is_greedy for s in seqs)]
    return top, prompt, mode


def sampler_widths(
    seqs: Seq[Sequence], variant: Variant, *, context_len: int, eos_token_ids: set[int], general_banned: int
) -> tuple[int, int]:
    """(penalty width, banned-id width) of ``variant``'s program: the base variants carry no penalty lists and
    ``MIN_BANNED_WIDTH`` bans; the general ones penalty lists 128 wide, or the whole context's when a row needs
    more (a second program), and ``general_banned`` bans (``sampler.banned_cap``)."""
    if not is_general(variant):
        return 0, MIN_BANNED_WIDTH
    penalty = sampler.penalty_width(seqs, context_len) or sampler.SHORT_PENALTY_WIDTH
    return penalty, max(general_banned, sampler.banned_width(seqs, eos_token_ids))


def host_constraints(
    scheduled: Seq[ScheduledSequence], variant: Variant, num_rows: int, vocab_size: int
) -> TokenConstraints | None:
    """The step's token mask and logit bias (full widths) for a general variant; None for a base one (no mask, no
    bias: zero widths)."""
    return sampler.build_constraints([s.seq for s in scheduled], num_rows, vocab_size) if is_general(variant) else None

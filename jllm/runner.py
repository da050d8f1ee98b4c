"""The only place Python state becomes device arrays: one ragged batch per step, padded to a shape bucket.

A step is two compiled programs per bucket, both pure functions of (params, packed StepInputs): the forward pass
(with the pool donated, so the K/V writes happen in place) and the sampler (one per sampling variant, small to
compile), so only a few integers per row come back. Neither branches on device values, so launching a step never
waits for the GPU.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Iterable
from collections.abc import Sequence as Seq
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jllm import distributed, parallel, sampler
from jllm.attention import AttentionMetadata
from jllm.buckets import StepBucket, pick_bucket, step_buckets
from jllm.loader import LoadedModel
from jllm.sampler import PromptLogprobsOutput, SamplerOutput, SamplingMetadata, SamplingMode
from jllm.sequence import ScheduledSequence, SchedulerOutput, Sequence

logger = logging.getLogger(__name__)

MAX_COMPILE_THREADS = 8
# XLA's CUDA-graph command buffers, re-pointed at each call's buffers by remapping virtual addresses instead of
# re-recording the graph. H100, Llama-3-8B decode step (scripts/profile_step.py, 2026-11-26): 5.71 ms of device time
# at batch 1 (the call returns after 1.34 ms) against 6.44 ms with command buffers off (returns after 3.14 ms).
# CPU compiles ignore it.
COMPILER_OPTIONS = {"xla_gpu_command_buffer_update_mode": "SKIP_PROFILED"}
MIN_BANNED_WIDTH = 8  # the common min_tokens ban (EOS + a few stop ids) fits the base variant


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StepInputs:
    input_ids: jax.Array  # [T] int32: the step's new tokens, all sequences flattened, padding 0
    # [T] int32: where a token is still being sampled by the previous step (async scheduling), its row in that step's
    # sampled tokens, which the step reads on the device; -1 where ``input_ids`` holds the token
    pending_rows: jax.Array
    positions: jax.Array  # [T] int32: each token's position in its sequence
    attn: AttentionMetadata  # slot mapping, query starts [S+1], KV lengths [S], block tables [S, P]
    logits_indices: jax.Array  # [S] int32: row of each sequence's last new token (0 for padding)
    sampling: SamplingMetadata  # per-row sampling settings [S, ...]
    prompt_targets: jax.Array  # [T] int32: the next prompt token where prompt logprobs are wanted, else -1


@dataclasses.dataclass
class SampledToken:
    token_id: int
    logprob: float
    top_ids: list[int]
    top_logprobs: list[float]


@dataclasses.dataclass
class PromptTokenLogprob:
    """Logprobs of prompt token ``position`` given the tokens before it."""

    position: int
    token_id: int
    logprob: float
    top_ids: list[int]
    top_logprobs: list[float]


@dataclasses.dataclass
class StepResult:
    tokens: list[SampledToken | None]  # per scheduled sequence; None mid-prefill
    prompt_logprobs: list[list[PromptTokenLogprob]]  # per scheduled sequence; empty unless it asked for them


@dataclasses.dataclass
class LaunchedStep:
    """A step on its way through the device: what ran, and its results, still device arrays."""

    output: SchedulerOutput
    result: SamplerOutput
    prompt: PromptLogprobsOutput | None


# (num_top_logprobs, num_prompt_logprobs or None, sampling mode): static arguments of the sampler program
Variant = tuple[int, int | None, SamplingMode]
BASE_VARIANTS: tuple[Variant, ...] = ((0, None, SamplingMode.GREEDY), (0, None, SamplingMode.RANDOM))


@dataclasses.dataclass(frozen=True)
class InputLayout:
    """Where each leaf of a step's ``StepInputs`` sits in its packed host buffers (one flat buffer per dtype):
    a step's twenty-odd small arrays cross to the device in two or three transfers instead of one each."""

    treedef: jax.tree_util.PyTreeDef
    dtypes: tuple[np.dtype, ...]  # one per buffer
    slots: tuple[tuple[int, int, tuple[int, ...]], ...]  # per leaf: (buffer, offset, shape)


def pack_inputs(inputs: StepInputs) -> tuple[InputLayout, list[np.ndarray]]:
    leaves, treedef = jax.tree.flatten(inputs)
    dtypes = tuple(sorted({np.dtype(x.dtype) for x in leaves}, key=str))
    parts: list[list[np.ndarray]] = [[] for _ in dtypes]
    sizes = [0] * len(dtypes)
    slots = []
    for x in leaves:
        b = dtypes.index(np.dtype(x.dtype))
        slots.append((b, sizes[b], tuple(x.shape)))
        parts[b].append(np.ravel(x))
        sizes[b] += x.size
    return InputLayout(treedef, dtypes, tuple(slots)), [np.concatenate(p) for p in parts]


def unpack_inputs(layout: InputLayout, buffers: Seq[jax.Array]) -> StepInputs:
    """Inside the step: static slices of the packed buffers, which XLA fuses into their uses."""
    leaves = [buffers[b][offset : offset + math.prod(shape)].reshape(shape) for b, offset, shape in layout.slots]
    return jax.tree.unflatten(layout.treedef, leaves)


def _forward(
    graphdef: nnx.GraphDef,
    kv_sharding: jax.sharding.Sharding,
    layout: InputLayout,
    state: nnx.State,
    kv_caches: list[jax.Array],
    buffers: list[jax.Array],
    last_tokens: jax.Array,
) -> tuple[jax.Array, list[jax.Array]]:
    """The model over the step's tokens: final hidden states [T, hidden], and the pool with their K/V written.

    ``last_tokens`` [R] are the previous step's sampled tokens, still on the device: the inputs still pending there.
    """
    inputs = unpack_inputs(layout, buffers)
    pending = inputs.pending_rows >= 0
    input_ids = jnp.where(pending, last_tokens[jnp.where(pending, inputs.pending_rows, 0)], inputs.input_ids)
    model = nnx.merge(graphdef, state)
    hidden, kv_caches = model(input_ids, inputs.positions, kv_caches, inputs.attn)
    # Pin the outputs' shardings: one XLA picks itself would change the next call's cache key, and the sampler
    # program is lowered for a replicated ``hidden`` before the forward has run.
    hidden = jax.lax.with_sharding_constraint(hidden, parallel.replicated(kv_sharding.mesh))
    return hidden, [jax.lax.with_sharding_constraint(kv, kv_sharding) for kv in kv_caches]


def _sample(
    graphdef: nnx.GraphDef,
    variant: Variant,
    layout: InputLayout,
    state: nnx.State,
    hidden: jax.Array,
    buffers: list[jax.Array],
    num_rows: int,
) -> tuple[SamplerOutput, PromptLogprobsOutput | None, jax.Array]:
    """Logits of the rows that sample (all rows for prompt logprobs), then the sampler: a program of its own, so a
    new sampling variant compiles in a fraction of the model's time. Only the LM head's parameters are used.

    Also returns the sampled tokens padded to ``num_rows`` (every bucket's rows fit): the next step's
    ``last_tokens``, one shape whatever this step's bucket.
    """
    num_top_logprobs, num_prompt_logprobs, mode = variant
    inputs = unpack_inputs(layout, buffers)
    model = nnx.merge(graphdef, state)
    logits = model.compute_logits(hidden[inputs.logits_indices])  # [S, vocab] f32
    prompt = None
    if num_prompt_logprobs is not None:
        all_logits = model.compute_logits(hidden)  # [T, vocab]
        prompt = sampler.prompt_logprobs(all_logits, inputs.prompt_targets, num_top_logprobs=num_prompt_logprobs)
    out = sampler.sample(logits, inputs.sampling, num_top_logprobs=num_top_logprobs, mode=mode)
    return out, prompt, jnp.zeros(num_rows, jnp.int32).at[: out.token_ids.shape[0]].set(out.token_ids)


class ModelRunner:
    def __init__(
        self,
        loaded: LoadedModel,
        kv_caches: list[jax.Array],
        *,
        page_size: int,
        max_model_len: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        eos_token_ids: set[int],
        attention_backend: str = "reference",
    ):
        self.graphdef, self.state = nnx.split(loaded.model)
        self.vocab_size = loaded.args.vocab_size
        self.kv_caches = kv_caches
        self.kv_sharding = kv_caches[0].sharding  # as allocated: the tensor-parallel layout
        self.mesh = loaded.mesh
        self.page_size = page_size
        self.pages_per_seq = -(-max_model_len // page_size)
        self.buckets = step_buckets(max_num_batched_tokens, max_num_seqs)
        self.eos_token_ids = eos_token_ids
        self.attention_backend = attention_backend
        # The last launched step's sampled tokens on the device (padded to every bucket's rows), and the row of each
        # sequence that sampled in it: the next step reads its pending inputs from there.
        num_rows = max(bucket.num_seqs for bucket in self.buckets)
        self._last_tokens = jax.device_put(np.zeros(num_rows, np.int32), parallel.replicated(self.mesh))
        self._last_rows: dict[int, int] = {}
        # Compiled ahead of time and keyed by every input shape, so each program is compiled exactly once and
        # ``num_compilations`` counts real XLA compilations: forward programs by layout, samplers by (variant, layout).
        self._forward_programs: dict[InputLayout, jax.stages.Compiled] = {}
        self._sampler_programs: dict[tuple[Variant, InputLayout], jax.stages.Compiled] = {}

    def _lower_forward(self, layout: InputLayout, buffers: list[jax.Array]) -> jax.stages.Lowered:
        fn = functools.partial(_forward, self.graphdef, self.kv_sharding, layout)
        return jax.jit(fn, donate_argnums=(1,)).lower(self.state, self.kv_caches, buffers, self._last_tokens)

    def _lower_sampler(self, variant: Variant, layout: InputLayout, buffers: list, hidden: Any) -> jax.stages.Lowered:
        """``hidden``: the forward's output, or its ``ShapeDtypeStruct`` (warm-up lowers before anything runs)."""
        fn = functools.partial(_sample, self.graphdef, variant, layout, num_rows=self._last_tokens.shape[0])
        return jax.jit(fn).lower(self.state, hidden, buffers)

    def _forward_program(self, layout: InputLayout, buffers: list[jax.Array]) -> jax.stages.Compiled:
        if layout not in self._forward_programs:
            self._forward_programs[layout] = self._lower_forward(layout, buffers).compile(COMPILER_OPTIONS)
        return self._forward_programs[layout]

    def _sampler_program(
        self, variant: Variant, layout: InputLayout, buffers: list[jax.Array], hidden: jax.Array
    ) -> jax.stages.Compiled:
        key = (variant, layout)
        if key not in self._sampler_programs:
            lowered = self._lower_sampler(variant, layout, buffers, hidden)
            self._sampler_programs[key] = lowered.compile(COMPILER_OPTIONS)
        return self._sampler_programs[key]

    @property
    def num_compilations(self) -> int:
        """Programs compiled so far: per bucket one forward and the base samplers, plus any other sampler variant
        (penalties, logprobs, top-k/top-p) used."""
        return len(self._forward_programs) + len(self._sampler_programs)

    def warmup(self, show_progress: bool = True) -> None:
        """Compiles every bucket's forward and base samplers now, so no request waits on the compiler.

        Tracing holds the GIL but XLA compiles without it, so each program compiles on a worker thread while the
        next one is traced: on a many-core host the buckets of a large model compile side by side.
        """
        workers = min(MAX_COMPILE_THREADS, os.cpu_count() or 1, len(self.buckets))
        with (
            ThreadPoolExecutor(workers) as pool,
            tqdm(total=len(self.buckets), desc="compiling step buckets", disable=not show_progress) as bar,
        ):
            steps = [self._empty_step(bucket) for bucket in self.buckets]
            pending = []
            for layout, buffers in steps:
                forward = self._lower_forward(layout, buffers)
                hidden = jax.ShapeDtypeStruct(
                    forward.out_info[0].shape, forward.out_info[0].dtype, sharding=parallel.replicated(self.mesh)
                )
                samplers = [(v, self._lower_sampler(v, layout, buffers, hidden)) for v in BASE_VARIANTS]
                compiles = [
                    pool.submit(lowered.compile, COMPILER_OPTIONS) for _, lowered in [(None, forward)] + samplers
                ]
                pending.append((layout, [v for v, _ in samplers], compiles))
            for layout, variants, (forward, *samplers) in pending:
                self._forward_programs[layout] = forward.result()
                for variant, future in zip(variants, samplers, strict=True):
                    self._sampler_programs[(variant, layout)] = future.result()
                bar.update()
        if self.mesh.devices.flat[0].platform == "cpu":
            return  # no first-run cost to pay ahead on a CPU, where running every bucket's padding takes ~20 s
        for layout, buffers in steps:  # one run each: loads the programs onto the devices
            for variant in BASE_VARIANTS:
                self._call(variant, layout, buffers)

    def _empty_step(self, bucket: StepBucket) -> tuple[InputLayout, list[jax.Array]]:
        """A bucket's inputs with no sequences, packed and on the devices: what warm-up compiles and runs."""
        layout, buffers = pack_inputs(self._empty_host_inputs(bucket))
        return layout, self._device_inputs(buffers)

    def _empty_host_inputs(self, bucket: StepBucket) -> StepInputs:
        """A bucket's host inputs with no sequences (all padding), alike on every process."""
        return self._host_inputs([], bucket, with_penalties=False, penalty_width=0, banned=MIN_BANNED_WIDTH)

    def launch(self, output: SchedulerOutput) -> LaunchedStep:
        """Builds the step's inputs and dispatches its programs; returns as soon as they are queued on the device.

        A sequence whose last input the previous launch is still sampling gets it on the device
        (``ScheduledSequence.pending_input``), so a step can be launched before the one before it has finished.
        """
        scheduled = output.scheduled
        seqs = [s.seq for s in scheduled]
        bucket = pick_bucket(self.buckets, output.num_batched_tokens, len(scheduled))
        with_penalties = sampler.needs_penalties(seqs)
        inputs = self._host_inputs(
            output.scheduled,
            bucket,
            with_penalties=with_penalties,
            penalty_width=sampler.penalty_width(seqs) if with_penalties else 0,
            banned=max(MIN_BANNED_WIDTH, sampler.banned_width(seqs, self.eos_token_ids)),
        )
        variant = (
            sampler.num_top_logprobs(seqs),
            sampler.num_prompt_logprobs(scheduled),
            sampler.sampling_mode(inputs.sampling, self.vocab_size),
        )
        if distributed.is_multiprocess():  # the lead: every follower must run this step too
            distributed.publish_plan(jax.tree.leaves(inputs), variant)
        result, prompt = self._run(inputs, variant)
        self._last_rows = {s.seq.seq_id: i for i, s in enumerate(scheduled) if s.samples_token}
        for x in jax.tree.leaves((result, prompt)):
            x.copy_to_host_async()  # starts when the step ends, so collect() need not wait for the transfer
        return LaunchedStep(output, result, prompt)

    def collect(self, launched: LaunchedStep) -> StepResult:
        """Waits for a launched step; entry i of each list belongs to ``launched.output.scheduled[i]``."""
        scheduled = launched.output.scheduled
        result, prompt = jax.device_get((launched.result, launched.prompt))
        return StepResult(self._tokens(scheduled, result), self._prompt_logprobs(scheduled, prompt))

    @staticmethod
    def _tokens(scheduled: Seq[ScheduledSequence], result: SamplerOutput) -> list[SampledToken | None]:
        tokens: list[SampledToken | None] = []
        for i, sched in enumerate(scheduled):
            if not sched.samples_token:
                tokens.append(None)
                continue
            n = sched.seq.sampling_params.logprobs or 0
            tokens.append(
                SampledToken(
                    token_id=int(result.token_ids[i]),
                    logprob=float(result.logprobs[i]),
                    top_ids=result.top_ids[i, :n].tolist(),
                    top_logprobs=result.top_logprobs[i, :n].tolist(),
                )
            )
        return tokens

    @staticmethod
    def _prompt_logprobs(
        scheduled: Seq[ScheduledSequence], prompt: PromptLogprobsOutput | None
    ) -> list[list[PromptTokenLogprob]]:
        """Rows follow the flattened batch: sequence i's rows start where the earlier sequences' tokens end."""
        chunks: list[list[PromptTokenLogprob]] = []
        offset = 0
        for sched in scheduled:
            seq, k = sched.seq, sched.seq.sampling_params.prompt_logprobs
            entries = []
            if prompt is not None and k is not None:
                last = min(sched.start + sched.num_new_tokens, seq.num_prompt_tokens - 1)
                for pos in range(sched.start, last):
                    row = offset + pos - sched.start
                    entries.append(
                        PromptTokenLogprob(
                            position=pos + 1,
                            token_id=seq.prompt_token_ids[pos + 1],
                            logprob=float(prompt.target_logprobs[row]),
                            top_ids=prompt.top_ids[row, :k].tolist(),
                            top_logprobs=prompt.top_logprobs[row, :k].tolist(),
                        )
                    )
            chunks.append(entries)
            offset += sched.num_new_tokens
        return chunks

    def _run(self, inputs: StepInputs, variant: Variant) -> tuple[SamplerOutput, PromptLogprobsOutput | None]:
        """Host inputs -> packed device buffers -> the bucket's program; the results stay on the device."""
        layout, buffers = pack_inputs(inputs)
        return self._call(variant, layout, self._device_inputs(buffers))

    def _call(
        self, variant: Variant, layout: InputLayout, buffers: list[jax.Array]
    ) -> tuple[SamplerOutput, PromptLogprobsOutput | None]:
        forward = self._forward_program(layout, buffers)
        hidden, self.kv_caches = forward(self.state, self.kv_caches, buffers, self._last_tokens)
        out, prompt, self._last_tokens = self._sampler_program(variant, layout, buffers, hidden)(
            self.state, hidden, buffers
        )
        return out, prompt

    # ---------------------------------------------------------------- multi-process (jllm.distributed)

    def follow(self, plans: Iterable[tuple[list[np.ndarray], Variant]]) -> None:
        """A follower's step loop: runs each step the lead published (flattened host inputs, variant), in order."""
        # Every step's inputs share one structure; only the shapes change.
        structure = jax.tree.structure(self._empty_host_inputs(self.buckets[0]))
        for leaves, variant in plans:
            self._run(jax.tree.unflatten(structure, leaves), variant)

    def _device_inputs(self, buffers: list[np.ndarray]) -> list[jax.Array]:
        """Packed host buffers -> arrays replicated over the mesh. Each process gives the whole array for its own
        devices, which holds when the mesh spans processes too (``jnp.asarray`` fills one local device)."""
        return jax.make_array_from_process_local_data(parallel.replicated(self.mesh), buffers)

    def _host_inputs(
        self, scheduled: Seq, bucket: StepBucket, *, with_penalties: bool, penalty_width: int, banned: int
    ) -> StepInputs:
        """Flattens the scheduled sequences into one padded ragged batch, in NumPy: what the lead publishes."""
        t, s, p = bucket.num_tokens, bucket.num_seqs, self.pages_per_seq
        input_ids = np.zeros(t, np.int32)
        query_start_loc = np.zeros(s + 1, np.int32)
        kv_lens = np.zeros(s, np.int32)
        block_tables = np.zeros((s, p), np.int32)
        prompt_targets = np.full(t, -1, np.int32)
        pending_rows = np.full(t, -1, np.int32)
        starts = np.zeros(len(scheduled), np.int32)
        offset = 0
        for i, sched in enumerate(scheduled):  # per sequence only what needs its Python lists
            seq: Sequence = sched.seq
            start, n = sched.start, sched.num_new_tokens
            known = n - sched.pending_input  # the pending token, always the last input, is read on the device
            input_ids[offset : offset + known] = seq.token_slice(start, start + known)
            if sched.pending_input:
                pending_rows[offset + n - 1] = self._last_rows[seq.seq_id]
            block_tables[i, : len(seq.block_table)] = seq.block_table
            starts[i], kv_lens[i] = start, start + n
            if seq.sampling_params.prompt_logprobs is not None:
                targets = seq.prompt_token_ids[start + 1 : start + n + 1]
                prompt_targets[offset : offset + len(targets)] = targets
            offset += n
            query_start_loc[i + 1] = offset
        query_start_loc[len(scheduled) + 1 :] = offset
        # Per token, vectorised: its sequence, position and pool slot; padding writes land in reserved page 0.
        row = np.repeat(np.arange(len(scheduled)), np.diff(query_start_loc[: len(scheduled) + 1]))
        positions = np.zeros(t, np.int32)
        positions[:offset] = starts[row] + np.arange(offset, dtype=np.int32) - query_start_loc[row]
        slot_mapping = np.arange(t, dtype=np.int32) % self.page_size
        pages = block_tables[row, positions[:offset] // self.page_size]
        slot_mapping[:offset] = pages * self.page_size + positions[:offset] % self.page_size
        logits_indices = np.maximum(query_start_loc[1:] - 1, 0)
        logits_indices[len(scheduled) :] = 0
        sampling = sampler.build_sampling_metadata(
            [sched.seq for sched in scheduled],
            s,
            with_penalties=with_penalties,
            penalty_width=penalty_width,
            max_banned=banned,
            eos_token_ids=self.eos_token_ids,
        )
        attn = AttentionMetadata(
            slot_mapping=slot_mapping,
            query_start_loc=query_start_loc,
            kv_lens=kv_lens,
            block_tables=block_tables,
            backend=self.attention_backend,
            mesh=self.mesh,
        )
        return StepInputs(input_ids, pending_rows, positions, attn, logits_indices, sampling, prompt_targets)

"""The only place Python state becomes device arrays: one ragged batch per step, padded to a shape bucket.

A step is a pure function of (params, kv pool, StepInputs) compiled once per bucket, with the pool donated so the
K/V writes happen in place, and sampling inside the same program so only a few integers per row come back.
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

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jllm import distributed, parallel, sampler
from jllm.attention import AttentionMetadata
from jllm.buckets import StepBucket, pick_bucket, step_buckets
from jllm.loader import LoadedModel
from jllm.sampler import PromptLogprobsOutput, SamplerOutput, SamplingMetadata
from jllm.sequence import ScheduledSequence, SchedulerOutput, Sequence

logger = logging.getLogger(__name__)

MAX_COMPILE_THREADS = 8
# Without XLA's CUDA-graph command buffers an H100 decode step ran faster: 6.7 vs 8.1 ms per step for Llama-3-8B
# at batch 1, 10.7 vs 12.6 ms at batch 64 (scripts/profile_step.py, docs/benchmarks.md). CPU compiles ignore it.
COMPILER_OPTIONS = {"xla_gpu_enable_command_buffer": ""}
MIN_BANNED_WIDTH = 8  # the common min_tokens ban (EOS + a few stop ids) fits the base variant


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StepInputs:
    input_ids: jax.Array  # [T] int32: the step's new tokens, all sequences flattened, padding 0
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


Variant = tuple[int, int | None]  # (num_top_logprobs, num_prompt_logprobs or None): static arguments of the step


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


def _step(
    graphdef: nnx.GraphDef,
    kv_sharding: jax.sharding.Sharding,
    variant: Variant,
    layout: InputLayout,
    state: nnx.State,
    kv_caches: list[jax.Array],
    buffers: list[jax.Array],
) -> tuple[SamplerOutput, PromptLogprobsOutput | None, list[jax.Array]]:
    num_top_logprobs, num_prompt_logprobs = variant
    inputs = unpack_inputs(layout, buffers)
    model = nnx.merge(graphdef, state)
    hidden, kv_caches = model(inputs.input_ids, inputs.positions, kv_caches, inputs.attn)  # [T, hidden]
    logits = model.compute_logits(hidden[inputs.logits_indices])  # [S, vocab] f32
    prompt = None
    if num_prompt_logprobs is not None:
        all_logits = model.compute_logits(hidden)  # [T, vocab]
        prompt = sampler.prompt_logprobs(all_logits, inputs.prompt_targets, num_top_logprobs=num_prompt_logprobs)
    # Pin the pool's sharding: an output sharding XLA picks itself would change the next call's cache key.
    kv_caches = [jax.lax.with_sharding_constraint(kv, kv_sharding) for kv in kv_caches]
    return sampler.sample(logits, inputs.sampling, num_top_logprobs=num_top_logprobs), prompt, kv_caches


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
        self.kv_caches = kv_caches
        self.kv_sharding = kv_caches[0].sharding  # as allocated: the tensor-parallel layout
        self.mesh = loaded.mesh
        self.page_size = page_size
        self.pages_per_seq = -(-max_model_len // page_size)
        self.buckets = step_buckets(max_num_batched_tokens, max_num_seqs)
        self.eos_token_ids = eos_token_ids
        self.attention_backend = attention_backend
        # Compiled ahead of time and keyed by every input shape, so each program is compiled exactly once and
        # ``num_compilations`` counts real XLA compilations.
        self._compiled: dict[tuple, jax.stages.Compiled] = {}

    def _executable(self, variant: Variant, layout: InputLayout, buffers: list[jax.Array]) -> jax.stages.Compiled:
        key = (variant, layout)
        if key not in self._compiled:
            self._compiled[key] = self._lower(variant, layout, buffers).compile(COMPILER_OPTIONS)
        return self._compiled[key]

    def _lower(self, variant: Variant, layout: InputLayout, buffers: list[jax.Array]) -> jax.stages.Lowered:
        fn = functools.partial(_step, self.graphdef, self.kv_sharding, variant, layout)
        return jax.jit(fn, donate_argnums=(1,)).lower(self.state, self.kv_caches, buffers)

    @property
    def num_compilations(self) -> int:
        """Programs compiled so far: one per bucket, plus one per sampler variant (penalties, logprobs) used."""
        return len(self._compiled)

    def warmup(self, show_progress: bool = True) -> None:
        """Compiles every bucket's base variant now, so no request waits on the compiler.

        Tracing holds the GIL but XLA compiles without it, so each bucket's compile runs on a worker thread while
        the next one is traced: on a many-core host the buckets of a large model compile side by side.
        """
        variant: Variant = (0, None)
        workers = min(MAX_COMPILE_THREADS, os.cpu_count() or 1, len(self.buckets))
        with (
            ThreadPoolExecutor(workers) as pool,
            tqdm(total=len(self.buckets), desc="compiling step buckets", disable=not show_progress) as bar,
        ):
            steps = [self._empty_step(bucket) for bucket in self.buckets]
            pending = []
            for layout, buffers in steps:
                if (variant, layout) not in self._compiled:
                    lowered = self._lower(variant, layout, buffers)
                    pending.append((layout, pool.submit(lowered.compile, COMPILER_OPTIONS)))
            for layout, future in pending:
                self._compiled[(variant, layout)] = future.result()
                bar.update()
        for layout, buffers in steps:  # one run each: loads the programs onto the devices
            self._call(variant, layout, buffers)

    def _empty_step(self, bucket: StepBucket) -> tuple[InputLayout, list[jax.Array]]:
        """A bucket's inputs with no sequences, packed and on the devices: what warm-up compiles and runs."""
        layout, buffers = pack_inputs(self._empty_host_inputs(bucket))
        return layout, self._device_inputs(buffers)

    def _empty_host_inputs(self, bucket: StepBucket) -> StepInputs:
        """A bucket's host inputs with no sequences (all padding), alike on every process."""
        return self._host_inputs([], bucket, with_penalties=False, penalty_width=0, banned=MIN_BANNED_WIDTH)

    def execute(self, output: SchedulerOutput) -> StepResult:
        """Runs one step; entry i of each list belongs to ``output.scheduled[i]``."""
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
        variant = (sampler.num_top_logprobs(seqs), sampler.num_prompt_logprobs(scheduled))
        if distributed.is_multiprocess():  # the lead: every follower must run this step too
            distributed.publish_plan(jax.tree.leaves(inputs), variant)
        result, prompt = jax.device_get(self._run(inputs, variant))
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
        out, prompt, self.kv_caches = self._executable(variant, layout, buffers)(self.state, self.kv_caches, buffers)
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
        starts = np.zeros(len(scheduled), np.int32)
        offset = 0
        for i, sched in enumerate(scheduled):  # per sequence only what needs its Python lists
            seq: Sequence = sched.seq
            start, n = sched.start, sched.num_new_tokens
            input_ids[offset : offset + n] = seq.token_slice(start, start + n)
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
        return StepInputs(input_ids, positions, attn, logits_indices, sampling, prompt_targets)

"""Where a step plan meets the devices: the step programs compiled per bucket, warm-up, launch and collect.

A step is two compiled programs per bucket (``jllm.step_programs``): the forward pass, with the pool donated so the
K/V writes happen in place, and the sampler, one per sampling variant, so only a few integers per row come back.
Every program a request can pick is compiled at start-up (per bucket: the forward, two base samplers and four
general ones), so no request waits on the compiler. Neither branches on device values, so launching a step never
waits for the GPU. The step's host inputs and plan are ``jllm.step_inputs``; unpacking its results is
``jllm.step_results``.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jllm import parallel, sampler, step_programs
from jllm.buckets import StepBucket, pick_bucket, step_buckets
from jllm.loader import LoadedModel
from jllm.sampler import PromptLogprobsOutput, SamplerOutput, SamplingMetadata, TokenConstraints
from jllm.sequence import ScheduledSequence, SchedulerOutput
from jllm.step_inputs import (
    BASE_VARIANTS,
    GENERAL_VARIANTS,
    InputLayout,
    StepInputs,
    StepPlan,
    Variant,
    host_constraints,
    host_inputs,
    pack_inputs,
    pick_variant,
    sampler_widths,
)
from jllm.step_results import StepResult, step_result

MAX_COMPILE_THREADS = 8
# XLA's CUDA-graph command buffers, re-pointed at each call's buffers by remapping virtual addresses instead of
# re-recording the graph. H100, Llama-3-8B decode step (scripts/profile_step.py, 2026-11-26): 5.71 ms of device time
# at batch 1 (the call returns after 1.34 ms) against 6.44 ms with command buffers off (returns after 3.14 ms).
# CPU compiles ignore it.
COMPILER_OPTIONS = {"xla_gpu_command_buffer_update_mode": "SKIP_PROFILED"}


@dataclasses.dataclass(frozen=True)
class DeviceStep:
    """A plan on the devices: its inputs packed and transferred, ready for the step's programs (``dispatch``)."""

    layout: InputLayout
    buffers: list[jax.Array]  # one flat buffer per dtype, replicated over the mesh
    variant: Variant
    # The sampler's own per-row inputs, packed apart: (SamplingMetadata, TokenConstraints) — penalty lists, stop-id
    # bans, token mask and logit bias have request-chosen widths, which must never change the forward's program.
    sampler_layout: InputLayout
    sampler_buffers: list[jax.Array]


@dataclasses.dataclass
class LaunchedStep:
    """A step on its way through the device: what ran, and its results, still device arrays."""

    output: SchedulerOutput
    result: SamplerOutput
    prompt: PromptLogprobsOutput | None


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
        max_stop_token_ids: int,
        attention_backend: str = "reference",
    ):
        self.loaded = loaded  # the model it runs: its settings, HF config and mesh
        self.graphdef, self.state = nnx.split(loaded.model)
        self.vocab_size = loaded.args.vocab_size
        self.kv_caches = kv_caches
        self.kv_sharding = kv_caches[0].sharding  # as allocated: the tensor-parallel layout
        self.mesh = loaded.mesh
        self.page_size = page_size
        self.pages_per_seq = -(-max_model_len // page_size)
        self.buckets = step_buckets(max_num_batched_tokens, max_num_seqs)
        self.eos_token_ids = eos_token_ids
        self.general_banned = sampler.banned_cap(max_stop_token_ids, eos_token_ids)
        self.attention_backend = attention_backend
        # The last launched step's sampled tokens on the device (padded to every bucket's rows), and the row of each
        # sequence that sampled in it: the next step reads its pending inputs from there.
        num_rows = max(bucket.num_seqs for bucket in self.buckets)
        self._last_tokens = jax.device_put(np.zeros(num_rows, np.int32), parallel.replicated(self.mesh))
        self._last_rows: dict[int, int] = {}
        # Every plan's StepInputs share one tree; only the shapes change: what a follower decodes plans into.
        self.input_structure = jax.tree.structure(self._host_inputs([], self.buckets[0], BASE_VARIANTS[0]))
        # Compiled ahead of time and keyed by every input shape, so each program is compiled exactly once and
        # ``num_compilations`` counts real XLA compilations: forward programs by layout, samplers by (variant, layout,
        # sampler-inputs layout): a penalty or mask width compiles a sampler, never a forward.
        self._forward_programs: dict[InputLayout, jax.stages.Compiled] = {}
        self._sampler_programs: dict[tuple[Variant, InputLayout, InputLayout], jax.stages.Compiled] = {}

    def _lower_forward(self, layout: InputLayout, buffers: list[jax.Array]) -> jax.stages.Lowered:
        fn = functools.partial(step_programs.forward, self.graphdef, self.kv_sharding, layout)
        return jax.jit(fn, donate_argnums=(1,)).lower(self.state, self.kv_caches, buffers, self._last_tokens)

    def _lower_sampler(self, step: DeviceStep, variant: Variant, hidden: Any) -> jax.stages.Lowered:
        """``hidden``: the forward's output, or its ``ShapeDtypeStruct`` (warm-up lowers before anything runs)."""
        num_rows = self._last_tokens.shape[0]
        fn = functools.partial(
            step_programs.sample, self.graphdef, variant, step.layout, step.sampler_layout, num_rows=num_rows
        )
        return jax.jit(fn).lower(self.state, hidden, step.buffers, step.sampler_buffers)

    def _forward_program(self, layout: InputLayout, buffers: list[jax.Array]) -> jax.stages.Compiled:
        if layout not in self._forward_programs:
            self._forward_programs[layout] = self._lower_forward(layout, buffers).compile(COMPILER_OPTIONS)
        return self._forward_programs[layout]

    def _sampler_program(self, step: DeviceStep, hidden: jax.Array) -> jax.stages.Compiled:
        key = (step.variant, step.layout, step.sampler_layout)
        if key not in self._sampler_programs:
            self._sampler_programs[key] = self._lower_sampler(step, step.variant, hidden).compile(COMPILER_OPTIONS)
        return self._sampler_programs[key]

    @property
    def num_compilations(self) -> int:
        """Programs compiled so far: per bucket one forward and six samplers at warm-up; any more is a shape warm-up
        missed (``jllm:programs_compiled_after_startup`` counts them)."""
        return len(self._forward_programs) + len(self._sampler_programs)

    def compiled_programs(self) -> Iterator[tuple[Variant | None, InputLayout, jax.stages.Compiled]]:
        """Every program compiled so far, for inspection (HLO dumps): the forwards with variant None, then the
        samplers with theirs."""
        for layout, compiled in self._forward_programs.items():
            yield None, layout, compiled
        for (variant, layout, _), compiled in self._sampler_programs.items():
            yield variant, layout, compiled

    def release(self) -> None:
        """Deletes the weights, the KV pool and the last sampled tokens on the device (the engine unloading a
        model): their memory is free at once, whoever still holds a reference; the runner cannot run after."""
        arrays = [*jax.tree.leaves((self.state, nnx.state(self.loaded.model))), *self.kv_caches, self._last_tokens]
        for array in arrays:
            if isinstance(array, jax.Array) and not array.is_deleted():
                array.delete()
        self._forward_programs.clear()
        self._sampler_programs.clear()

    def warmup(self, show_progress: bool = True) -> None:
        """Compiles every bucket's forward and every sampler a request can pick (``warmup_plans``) now, so no request
        waits on the compiler.

        Tracing holds the GIL but XLA compiles without it, so each program compiles on a worker thread while the
        next one is traced: on a many-core host the buckets of a large model compile side by side.
        """
        workers = min(MAX_COMPILE_THREADS, os.cpu_count() or 1, len(self.buckets))
        with (
            ThreadPoolExecutor(workers) as pool,
            tqdm(total=len(self.buckets), desc="compiling step buckets", disable=not show_progress) as bar,
        ):
            pending = []
            for bucket in self.buckets:
                steps = [self.put(plan) for plan in self.warmup_plans(bucket)]
                forward = self._lower_forward(steps[0].layout, steps[0].buffers)
                hidden = jax.ShapeDtypeStruct(
                    forward.out_info[0].shape, forward.out_info[0].dtype, sharding=parallel.replicated(self.mesh)
                )
                samplers = [self._lower_sampler(step, step.variant, hidden) for step in steps]
                compiles = [pool.submit(lowered.compile, COMPILER_OPTIONS) for lowered in [forward, *samplers]]
                pending.append((steps, compiles))
            for steps, (forward, *samplers) in pending:
                self._forward_programs[steps[0].layout] = forward.result()
                for step, future in zip(steps, samplers, strict=True):
                    self._sampler_programs[(step.variant, step.layout, step.sampler_layout)] = future.result()
                bar.update()
        if self.mesh.devices.flat[0].platform == "cpu":
            return  # no first-run cost to pay ahead on a CPU, where running every bucket's padding takes ~20 s
        for steps, _ in pending:  # one run each: loads the programs onto the devices
            for step in steps:
                self.dispatch(step)

    def warmup_plans(self, bucket: StepBucket) -> list[StepPlan]:
        """One all-padding plan (alike on every process) per sampler program a step of ``bucket`` can pick: the base
        variants, and each general one with penalty lists 128 wide and the whole context's."""
        plans = [StepPlan(self._host_inputs([], bucket, v), v) for v in BASE_VARIANTS]
        constraints = host_constraints([], GENERAL_VARIANTS[0], bucket.num_seqs, self.vocab_size)
        for variant in GENERAL_VARIANTS:
            for penalty in (
                sampler.SHORT_PENALTY_WIDTH,
                sampler.long_penalty_width(self.pages_per_seq * self.page_size),
            ):
                plans.append(StepPlan(self._host_inputs([], bucket, variant, penalty), variant, constraints))
        return plans

    # ---------------------------------------------------------------- the lead

    def plan(self, output: SchedulerOutput, *, constraints_later: bool = False) -> StepPlan:
        """The step's host inputs, sampler variant and token constraints: host work only, which the lead publishes
        before running it. ``constraints_later``: the token mask waits for tokens still being sampled, so
        ``launch`` fills it once the forward is queued (the plan then has none: a single process only)."""
        bucket = pick_bucket(self.buckets, output.num_batched_tokens, len(output.scheduled))
        variant = pick_variant(output.scheduled, self.vocab_size, self.eos_token_ids)
        inputs = self._host_inputs(output.scheduled, bucket, variant)
        constraints = (
            None if constraints_later else host_constraints(output.scheduled, variant, bucket.num_seqs, self.vocab_size)
        )
        return StepPlan(inputs, variant, constraints)

    def launch(
        self, output: SchedulerOutput, plan: StepPlan, before_sampling: Callable[[], None] | None = None
    ) -> LaunchedStep:
        """Runs ``plan`` (made from ``output``); returns as soon as its programs are queued on the device.

        A sequence whose last input the previous launch is still sampling gets it on the device
        (``ScheduledSequence.pending_input``), so a step can be launched before the one before it has finished.
        ``before_sampling`` (with a plan made ``constraints_later``) runs once the forward is queued: the engine
        takes the previous step's tokens there, then the token mask is filled while the device runs the forward.
        """
        step = self.put(plan)
        hidden = self._forward(step)
        if before_sampling is not None:
            before_sampling()
            constraints = host_constraints(output.scheduled, plan.variant, plan.bucket.num_seqs, self.vocab_size)
            layout, buffers = self._put_tree(_sampler_tree(plan, constraints))
            step = dataclasses.replace(step, sampler_layout=layout, sampler_buffers=buffers)
        result, prompt = self._sample(step, hidden)
        self._last_rows = {s.seq.seq_id: i for i, s in enumerate(output.scheduled) if s.samples_token}
        for x in jax.tree.leaves((result, prompt)):
            x.copy_to_host_async()  # starts when the step ends, so collect() need not wait for the transfer
        return LaunchedStep(output, result, prompt)

    def collect(self, launched: LaunchedStep) -> StepResult:
        """Waits for a launched step; entry i of each list belongs to ``launched.output.scheduled[i]``."""
        result, prompt = jax.device_get((launched.result, launched.prompt))
        return step_result(launched.output.scheduled, result, prompt)

    def _host_inputs(
        self, scheduled: list[ScheduledSequence], bucket: StepBucket, variant: Variant, penalty_width: int = 0
    ) -> StepInputs:
        """``penalty_width``: warm-up's choice of a general variant's width (0: the one the sequences need)."""
        widths = sampler_widths(
            [s.seq for s in scheduled],
            variant,
            context_len=self.pages_per_seq * self.page_size,
            eos_token_ids=self.eos_token_ids,
            general_banned=self.general_banned,
        )
        return host_inputs(
            scheduled,
            bucket,
            page_size=self.page_size,
            pages_per_seq=self.pages_per_seq,
            last_rows=self._last_rows,
            eos_token_ids=self.eos_token_ids,
            widths=(penalty_width or widths[0], widths[1]),
            attention_backend=self.attention_backend,
            mesh=self.mesh,
        )

    # ---------------------------------------------------------------- every process

    def run(self, plan: StepPlan) -> tuple[SamplerOutput, PromptLogprobsOutput | None]:
        """Runs a step on every process alike (a follower runs each plan the lead publishes); the results stay on
        the device."""
        return self.dispatch(self.put(plan))

    def put(self, plan: StepPlan) -> DeviceStep:
        """Packs the plan's host inputs and transfers them, replicated over the mesh. Each process gives the whole
        array for its own devices, which holds when the mesh spans processes too (``jnp.asarray`` fills one local
        device)."""
        forward_inputs = dataclasses.replace(plan.inputs, sampling=None)
        return DeviceStep(
            *self._put_tree(forward_inputs), plan.variant, *self._put_tree(_sampler_tree(plan, plan.constraints))
        )

    def _put_tree(self, tree: Any) -> tuple[InputLayout, list[jax.Array]]:
        layout, buffers = pack_inputs(tree)
        return layout, jax.make_array_from_process_local_data(parallel.replicated(self.mesh), buffers)

    def dispatch(self, step: DeviceStep) -> tuple[SamplerOutput, PromptLogprobsOutput | None]:
        """Queues the step's forward and sampler programs (compiling them on first use) on inputs already on the
        devices; scripts call it back to back to time the compiled step alone."""
        return self._sample(step, self._forward(step))

    def _forward(self, step: DeviceStep) -> jax.Array:
        forward = self._forward_program(step.layout, step.buffers)
        hidden, self.kv_caches = forward(self.state, self.kv_caches, step.buffers, self._last_tokens)
        return hidden

    def _sample(self, step: DeviceStep, hidden: jax.Array) -> tuple[SamplerOutput, PromptLogprobsOutput | None]:
        sample = self._sampler_program(step, hidden)
        out, prompt, self._last_tokens = sample(self.state, hidden, step.buffers, step.sampler_buffers)
        return out, prompt


def _sampler_tree(plan: StepPlan, constraints: TokenConstraints | None) -> tuple[SamplingMetadata, TokenConstraints]:
    """What only the sampler reads, packed apart from the forward's inputs (zero-width constraints without any)."""
    return plan.inputs.sampling, constraints or sampler.no_constraints(plan.bucket.num_seqs)

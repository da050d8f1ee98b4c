"""Where a step plan meets the devices: the step programs compiled per bucket, warm-up, launch and collect.

A step is two compiled programs per bucket (``jllm.step_programs``): the forward pass, with the pool donated so the
K/V writes happen in place, and the sampler, one per sampling variant, so only a few integers per row come back.
Every program a request can pick is compiled at start-up (per bucket: the forward, two base samplers and four
general ones), so no request waits on the compiler; a warm start loads them from ``jllm.executable_cache``. Neither
branches on device values, so launching a step never waits for the GPU. The step's host inputs and plan are
``jllm.step_inputs``; unpacking its results is ``jllm.step_results``.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jllm import parallel, sampler, step_programs
from jllm.buckets import StepBucket, pick_bucket, step_buckets
from jllm.executable_cache import Entry, ExecutableCache, ProgramCall, describe_program
from jllm.loader import LoadedModel
from jllm.lora.manager import LoRAManager
from jllm.models.lora import LoRAWeights
from jllm.sampler import PromptLogprobsOutput, SamplerOutput, SamplingMetadata, SamplingMode, TokenConstraints
from jllm.sampling import MAX_LOGPROBS
from jllm.sequence import ScheduledSequence, SchedulerOutput
from jllm.step_inputs import (
    BASE_SAMPLERS,
    GENERAL_SAMPLER,
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
from jllm.timing import WarmupReport, timed
from jllm.weight_swap import swap_into

# Each program compiles on one worker thread, using about one core: a cold Llama-3-8B start on a 16-core H200 host
# (2026-12-04) spent 276 s compiling 60 programs over 8 threads in a 43 s warm-up, 7 of its 16 cores busy.
MAX_COMPILE_THREADS = 16


def compile_threads() -> int:
    """Threads that compile or load programs at start: one a core, at most ``MAX_COMPILE_THREADS``."""
    return min(MAX_COMPILE_THREADS, os.cpu_count() or 1)


# XLA's CUDA-graph command buffers, re-pointed at each call's buffers by remapping virtual addresses instead of
# re-recording the graph. H100, Llama-3-8B decode step (scripts/profile_step.py, 2026-11-26): 5.71 ms of device time
# at batch 1 (the call returns after 1.34 ms) against 6.44 ms with command buffers off (returns after 3.14 ms).
# CPU compiles ignore it (and the autotuning level below).
COMPILER_OPTIONS: dict[str, Any] = {"xla_gpu_command_buffer_update_mode": "SKIP_PROFILED"}


def autotune_options(xla_flags: str) -> dict[str, int]:
    """XLA's GEMM autotuning at level 1: each candidate timed, without the default level 4's random fill of its
    buffers, their re-fill and the comparison of its result with the reference GEMM's (which only logs a mismatch:
    level 5 is the one that skips such a candidate). A cold Llama-3-8B start on an H100 (2026-12-06, one call): ready
    in 35.0 s at level 4, 23.2 s at level 1 (compiles 362 against 228 thread-s). Unless ``xla_flags`` (the process's
    XLA_FLAGS) sets a level: a compile option would override it."""
    return {} if "xla_gpu_autotune_level" in xla_flags else {"xla_gpu_autotune_level": 1}


COMPILER_OPTIONS |= autotune_options(os.environ.get("XLA_FLAGS", ""))

# XLA's Triton GEMMs (each tiling candidate compiled and timed at start-up) only in programs whose matmuls have at
# most this many rows; cuBLAS alone above. H100, Llama-3-8B (2026-12-06, nineteenth session, one call): with cuBLAS
# alone decode was 3.9-4.0 % slower at batch 1 and 8 but as fast at 32 (TPOT 6.39 against 6.42 ms) and prefill as
# fast (TTFT of 32 x 128 tokens 101.2 against 103.1 ms), while the Triton candidates were most of a cold start's
# compiling (the forwards 105 against 28 thread-s, the slowest compile 13.0 against 2.8 s).
TRITON_GEMM_MAX_ROWS = 16


def gemm_options(rows: int, quantized: bool, xla_flags: str) -> dict[str, bool]:
    """Compile options choosing the GEMM kernels of a program whose matmuls have ``rows`` rows: XLA's Triton GEMMs
    off above ``TRITON_GEMM_MAX_ROWS``. Quantized weights keep them at every size (a Triton GEMM widens the stored
    weights as it loads them; cuBLAS would read a widened copy written first), and so does an ``XLA_FLAGS`` that
    sets ``xla_gpu_enable_triton_gemm`` (the user's choice, which a compile option would override)."""
    if quantized or rows <= TRITON_GEMM_MAX_ROWS or "xla_gpu_enable_triton_gemm" in xla_flags:
        return {}
    return {"xla_gpu_enable_triton_gemm": False}


ProgramKey = tuple[str, tuple[int, SamplingMode] | None, InputLayout]  # (kind, static variant, input layout)


StepBuffer = jax.Array | np.ndarray  # a step's packed inputs: NumPy on one process (``ModelRunner.put``)


@dataclasses.dataclass(frozen=True)
class DeviceStep:
    """A plan ready for the step's programs (``dispatch``): its inputs packed, and where a mesh spans processes,
    transferred."""

    layout: InputLayout
    buffer: StepBuffer  # the packed inputs (uint32 words), replicated over the mesh
    variant: Variant
    bucket: StepBucket  # the step's shape: its matmuls' rows choose their compile options (``gemm_options``)
    # The sampler's own per-row inputs, packed apart: (SamplingMetadata, TokenConstraints) — penalty lists, stop-id
    # bans, token mask and logit bias have request-chosen widths, which must never change the forward's program.
    sampler_layout: InputLayout
    sampler_buffer: StepBuffer


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
        executable_cache: ExecutableCache | None = None,
        lora: LoRAManager | None = None,
        num_speculative_tokens: int = 0,
    ):
        self.loaded = loaded  # the model it runs: its settings, HF config and mesh
        self.lora = lora  # with enable_lora: the adapters' slots, written to the device before each forward
        self.graphdef, self.state = nnx.split(loaded.model)
        # The programs take the state's leaves: flattening a list of arrays costs microseconds a call, the nnx.State
        # ~0.56 ms (Llama-3-8B's 195 leaves, this CPU), paid by every program a step runs.
        self.params, self.state_def = jax.tree.flatten(self.state)
        # The sampler's and prompt logprobs' programs take the LM head's leaves alone (shared with ``params``).
        self.head_graphdef, head_state = nnx.split(loaded.model.logits_head())
        self.head_params, self.head_def = jax.tree.flatten(head_state)
        self.vocab_size = loaded.args.vocab_size
        self.long_rope = loaded.args.long_rope_from is not None  # steps mark longrope sequences' positions
        self.kv_caches = kv_caches
        # as allocated: the tensor-parallel layout of the pages (an attention layer's pool; with DeepSeek Sparse
        # Attention's indexer the pair of pools, laid out alike), and of every layer's pool (a hybrid model's state
        # pools are tuples, split by heads); no pages' (None) for an attention-free model, which ``pooling`` refuses
        args = loaded.args
        paged = (kv for kv, spec in zip(kv_caches, args.layers, strict=True) if args.state_spec(spec) is None)
        self.kv_sharding = next((jax.tree.leaves(kv)[0].sharding for kv in paged if jax.tree.leaves(kv)), None)
        self.pool_shardings = tuple(jax.tree.map(lambda x: x.sharding, kv) for kv in kv_caches)
        self.mesh = loaded.mesh
        self.page_size = page_size
        self.pages_per_seq = -(-max_model_len // page_size)
        self.buckets = step_buckets(max_num_batched_tokens, max_num_seqs)
        self.eos_token_ids = eos_token_ids
        self.general_banned = sampler.banned_cap(max_stop_token_ids, eos_token_ids)
        self.long_penalty_width = sampler.long_penalty_width(self.pages_per_seq * page_size)
        self.attention_backend = attention_backend
        # K, the drafts a row may carry (speculative decoding; 0: off): every forward gathers K + 1 rows a sequence
        # and every sampler verifies (``jllm.spec_verify``), so warm-up's programs are the ones steps run
        self.num_speculative_tokens = num_speculative_tokens
        self.executable_cache = executable_cache  # warm-up loads the programs it holds instead of tracing them
        # While asleep (``sleep``): the weights' (shape, dtype, sharding), the pool's specs (``_delete_pool``), the
        # weights' host copies
        self._weights_asleep: list[tuple] | None = None
        self._pool_asleep: Any = None
        self._host_weights: list[np.ndarray] | None = None
        # The last launched step's sampled tokens on the device (padded to every bucket's rows), and the row of each
        # sequence that sampled in it: the next step reads its pending inputs from there.
        num_rows = max(bucket.sampler_rows for bucket in self.buckets)
        self._last_tokens = jax.device_put(np.zeros(num_rows, np.int32), parallel.replicated(self.mesh))
        self._last_rows: dict[int, int] = {}
        # Every plan's StepInputs share one tree; only the shapes change: what a follower decodes plans into.
        self.input_structure = jax.tree.structure(
            self._host_inputs([], self.buckets[0], (0, None, SamplingMode.GREEDY))
        )
        # Compiled ahead of time and keyed by every input shape, so each program is compiled exactly once and
        # ``num_compilations`` counts real XLA compilations: (kind, static variant, input layout) -> program. Forwards
        # and prompt logprobs by the step's layout, samplers by their own inputs' (whose shapes give S, not T): a
        # penalty or mask width would compile a sampler, never a forward.
        self._programs: dict[ProgramKey, jax.stages.Compiled] = {}

    def _program_keys(self, step: DeviceStep) -> list[ProgramKey]:
        """The programs ``step`` runs: its forward, its sampler, and the prompt logprobs if a row asks for them."""
        top, prompt, mode = step.variant
        keys = [("forward", None, step.layout), ("sampler", (top, mode), step.sampler_layout)]
        return keys + ([("prompt_logprobs", None, step.layout)] if prompt is not None else [])

    def _call(self, key: ProgramKey, step: DeviceStep, outputs: tuple[Any, Any] | None) -> ProgramCall:
        """The program ``key`` as jit traces it. ``outputs``: the forward's (hidden, rows), or their
        ``ShapeDtypeStruct``s (warm-up traces before anything runs); unused for the forward itself."""
        kind, variant, _ = key
        if kind == "forward":
            fn = functools.partial(step_programs.forward, self.graphdef, self.pool_shardings, step.layout)
            buffer = self._traced_buffer(step.buffer)
            args = (self.params, self.kv_caches, buffer, self._last_tokens, self._lora_weights)
            return ProgramCall(fn, self.state_def, (1,), args, self.compiler_options(step.bucket.num_tokens))
        hidden, rows = outputs
        if kind == "sampler":
            num_rows = self._last_tokens.shape[0]
            head = self.head_graphdef
            fn = functools.partial(step_programs.sample, head, variant, step.sampler_layout, num_rows=num_rows)
            options = self.compiler_options(step.bucket.sampler_rows)
            args = (self.head_params, rows, self._traced_buffer(step.sampler_buffer))
            return ProgramCall(fn, self.head_def, (), args, options)
        fn = functools.partial(step_programs.prompt_logprobs, self.head_graphdef, step.layout)
        options = self.compiler_options(step.bucket.num_tokens)
        args = (self.head_params, hidden, self._traced_buffer(step.buffer))
        return ProgramCall(fn, self.head_def, (), args, options)

    def _traced_buffer(self, buffer: StepBuffer) -> jax.ShapeDtypeStruct:
        """What a step's packed inputs are traced as, NumPy or transferred: replicated over the mesh."""
        return jax.ShapeDtypeStruct(buffer.shape, buffer.dtype, sharding=parallel.replicated(self.mesh))

    def compiler_options(self, gemm_rows: int) -> dict[str, Any]:
        """What a program of this model whose matmuls have ``gemm_rows`` rows is compiled with."""
        quantized = self.loaded.args.quant is not None
        return COMPILER_OPTIONS | gemm_options(gemm_rows, quantized, os.environ.get("XLA_FLAGS", ""))

    def _program(
        self, key: ProgramKey, step: DeviceStep, outputs: tuple[Any, Any] | None = None
    ) -> jax.stages.Compiled:
        if key not in self._programs:  # a shape warm-up missed: compiled here, while the step waits
            call = self._call(key, step, outputs)
            self._programs[key] = trace(call).lower().compile(call.options)
        return self._programs[key]

    @property
    def num_compilations(self) -> int:
        """Programs compiled so far: at warm-up per bucket a forward and the prompt logprobs, per row count the
        samplers (``warmup_plans``); any more is a shape warm-up missed (``jllm:programs_compiled_after_startup``)."""
        return len(self._programs)

    def compiled_programs(self) -> Iterator[tuple[str, InputLayout, jax.stages.Compiled]]:
        """Every program compiled so far, for inspection (HLO dumps): its name ("forward", "prompt_logprobs",
        "sampler_<top logprobs>_<mode>"), its input layout (the step's, or the sampler's own inputs')."""
        for key, compiled in self._programs.items():
            yield _program_name(key), key[2], compiled

    def swap_weights(self, new: LoadedModel) -> None:
        """Runs ``new``'s weights from the next step on (``jllm.weight_swap``: the same model, checked), deleting
        the old ones: the compiled programs take the weights as arguments, so none is traced or compiled again."""
        old = swap_into(self.loaded, new)
        self._bind_weights()
        kept = {id(x) for x in self.params}
        for array in old:
            if id(array) not in kept and not array.is_deleted():
                array.delete()

    def _bind_weights(self) -> None:
        """The programs' weight arguments (``params``, ``head_params``) from the model's modules, after their
        arrays were replaced (the same paths, shapes and shardings, so the same programs run them)."""
        self.graphdef, self.state = nnx.split(self.loaded.model)
        self.params, state_def = jax.tree.flatten(self.state)
        assert state_def == self.state_def, "the same parameters, new arrays"
        self.head_graphdef, head_state = nnx.split(self.loaded.model.logits_head())
        self.head_params = jax.tree.leaves(head_state)

    def sleep(self, keep_weights: bool) -> None:
        """Frees the weights' and the KV pool's device memory (vLLM's sleep mode): the weights copied to the host
        first (``keep_weights``: level 1) or discarded (level 2, before ``swap_weights`` brings others); the pool's
        contents are discarded. The compiled programs stay, for ``wake_up``."""
        weights = jax.tree.leaves(self.state)
        self._weights_asleep = [(x.shape, x.dtype, x.sharding) for x in weights]
        self._host_weights = [np.asarray(x) for x in weights] if keep_weights else None
        self._pool_asleep = _delete_pool(self.kv_caches)
        for array in weights:
            array.delete()
        self.kv_caches = None

    def wake_up(self) -> None:
        """The weights (as they were, or zeros after a level-2 sleep) and a zeroed KV pool back on the devices,
        where they were."""
        host = self._host_weights or [None] * len(self._weights_asleep)
        arrays = [
            parallel.device_zeros(shape, dtype, sharding) if x is None else jax.device_put(x, sharding)
            for x, (shape, dtype, sharding) in zip(host, self._weights_asleep, strict=True)
        ]
        nnx.update(self.loaded.model, jax.tree.unflatten(self.state_def, arrays))
        self._bind_weights()
        self.kv_caches = _zeroed_pool(self._pool_asleep)
        self._host_weights = self._weights_asleep = self._pool_asleep = None

    def release(self) -> None:
        """Deletes the weights, the KV pool and the last sampled tokens on the device (the engine unloading a
        model): their memory is free at once, whoever still holds a reference; the runner cannot run after."""
        arrays = [
            *jax.tree.leaves((self.state, nnx.state(self.loaded.model), self._lora_weights)),
            *jax.tree.leaves(self.kv_caches),
            self._last_tokens,
        ]
        for array in arrays:
            if isinstance(array, jax.Array) and not array.is_deleted():
                array.delete()
        self._programs.clear()

    def warmup(self, show_progress: bool = True, run: bool | None = None) -> WarmupReport:
        """Compiles every program a request can pick (``warmup_plans``) now, so no request waits on the compiler.

        A program the executable cache holds (``jllm.executable_cache``) is loaded from it, neither traced nor
        lowered. Tracing and lowering hold the GIL but XLA compiles (and loads) without it, so each program compiles
        on a worker thread while the next one is traced: on a many-core host the buckets of a large model compile
        side by side. ``run`` (default: off a CPU, where running every bucket's padding takes ~20 s and pays no
        first-run cost ahead) then runs each bucket's forward once and every sampler on it, which loads the programs
        onto the devices.
        """
        report = WarmupReport(threads=compile_threads())
        pending: dict[ProgramKey, Future[jax.stages.Compiled | None]] = {}
        # what a cached program is traced as if it fails to load: (call, cache key, name)
        loading: dict[ProgramKey, tuple[ProgramCall, str, str]] = {}
        with self._pool_freed(), report.counting_cache_hits(), ThreadPoolExecutor(report.threads) as pool:
            runs = [[self.put(plan) for plan in self.warmup_plans(bucket)] for bucket in self.buckets]
            # Every forward first: they take the longest to compile (15-23 s each against ~5 for a sampler on an
            # H200, 2026-12-05), so they start while the main thread still lowers the small programs. Smallest bucket
            # first: the largest first was slower on an H100 (cold starts 28.3 / 30.6 s against 25.8 / 24.2,
            # alternating, 2026-12-07), the few-row forwards (XLA's Triton GEMMs, autotuned) then ending last.
            outputs = [
                self._submit_compiles(b, s, ("forward",), None, pending, loading, pool, report)
                for b, s in zip(self.buckets, runs, strict=True)
            ]
            # Then one sampler variant at a time over the buckets: a variant's programs differ in their GEMM shapes
            # (the LM head's rows) and the variants of one row count share them, so a shape's autotuning (which XLA
            # keeps per process) can be done before its next program compiles rather than beside it (unmeasured).
            kinds = ("sampler", "prompt_logprobs")
            for plan in range(max(len(steps) for steps in runs)):
                for bucket, steps, forward_outputs in zip(self.buckets, runs, outputs, strict=True):
                    self._submit_compiles(
                        bucket, steps[plan : plan + 1], kinds, forward_outputs, pending, loading, pool, report
                    )
            for key, future in tqdm(pending.items(), desc="compiling step programs", disable=not show_progress):
                compiled = future.result()
                if compiled is None:  # a cached entry that did not load (logged): compiled as before
                    call, cache_key, name = loading[key]
                    compiled = self.compile(
                        self.lower(call, key[0], report)[1], call.options, key[0], cache_key, report, name
                    )
                self._programs[key] = compiled
        if run is None:
            run = self.mesh.devices.flat[0].platform != "cpu"
        if run:
            with timed() as elapsed:
                for steps in runs:
                    outputs = self._forward(steps[0])  # the plans of a bucket differ only in what they sample
                    for step in steps:
                        self._sample(step, outputs)
                jax.block_until_ready(self._last_tokens)
            report.run_s = elapsed.seconds
        return report

    @contextlib.contextmanager
    def _pool_freed(self) -> Iterator[None]:
        """The KV pool's device memory free while the block runs, its arrays' shapes and placements in their place
        (what jit traces them as), then a zeroed pool where it was. XLA autotunes a program's GEMMs in the device
        memory left beside what is allocated, and the warm-up's compiles run side by side: on an H100 the 10 % that
        ``gpu_memory_utilization`` 0.9 left beside the pool did not hold their scratch (a cold Llama-3-8B start,
        2026-12-05: out of memory allocating 1,018 MiB in XLA's autotuner)."""
        self.kv_caches = specs = _delete_pool(self.kv_caches)
        try:
            yield
        finally:
            self.kv_caches = _zeroed_pool(specs)

    def _submit_compiles(
        self,
        bucket: StepBucket,
        steps: list[DeviceStep],
        kinds: tuple[str, ...],
        outputs: tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct] | None,
        pending: dict[ProgramKey, Future[jax.stages.Compiled | None]],
        loading: dict[ProgramKey, tuple[ProgramCall, str, str]],
        pool: ThreadPoolExecutor,
        report: WarmupReport,
    ) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct] | None:
        """Queues, for each program of ``kinds`` in ``bucket``'s ``steps`` not yet ``pending``, the load of its
        executable-cache entry, or else its compile after tracing and lowering it here. ``outputs``: the forward's
        (hidden, rows) shapes the other programs are traced on; returns them once a forward is queued."""
        for step in steps:
            for key in self._program_keys(step):
                if key in pending or key[0] not in kinds:
                    continue
                kind = key[0]
                name = f"{_program_name(key)} {bucket.num_tokens}x{bucket.num_seqs}"
                call = self._call(key, step, outputs)
                cache_key, entry = self.cache_entry(call)
                if entry is not None:
                    pending[key] = pool.submit(self.load, entry, kind, report)
                    loading[key] = (call, cache_key, name)
                    avals = entry.out_avals
                else:
                    traced, lowered = self.lower(call, kind, report)
                    pending[key] = pool.submit(self.compile, lowered, call.options, kind, cache_key, report, name)
                    avals = tuple((o.shape, o.dtype) for o in jax.tree.leaves(traced.out_info))
                if key[0] == "forward":  # the others are traced on its outputs' (hidden, rows) shapes
                    replicated = parallel.replicated(self.mesh)
                    outputs = tuple(jax.ShapeDtypeStruct(s, dtype, sharding=replicated) for s, dtype in avals[:2])
        return outputs

    # What warm-up does to each program, for any program on this runner's model (``jllm.pooling``'s too).

    def cache_entry(self, call: ProgramCall) -> tuple[str | None, Entry | None]:
        """The program's executable-cache key (None: no cache, or not cacheable) and its entry (None: a miss)."""
        if self.executable_cache is None:
            return None, None
        cache_key = self.executable_cache.key(describe_program(call))
        return cache_key, None if cache_key is None else self.executable_cache.read(cache_key)

    def lower(self, call: ProgramCall, kind: str, report: WarmupReport) -> tuple[jax.stages.Traced, jax.stages.Lowered]:
        """Traces and lowers (on this thread, timed into ``report`` under ``kind``)."""
        times = report.kinds[kind]
        with timed() as tracing:
            traced = trace(call)
        with timed() as lowering:
            lowered = traced.lower()
        times.programs += 1
        times.trace_s += tracing.seconds
        times.lower_s += lowering.seconds
        return traced, lowered

    def compile(
        self,
        lowered: jax.stages.Lowered,
        options: dict[str, Any],
        kind: str,
        cache_key: str | None,
        report: WarmupReport,
        name: str,
    ) -> jax.stages.Compiled:
        """On a worker thread: XLA's compile, timed into ``report`` (as ``name``: kind, variant, bucket), then stored
        under ``cache_key`` (if any)."""
        with timed() as elapsed:
            compiled = lowered.compile(options)
        report.add_compile(kind, elapsed.seconds, name)
        if cache_key is not None:
            self.executable_cache.store(cache_key, compiled)
        return compiled

    def load_or_compile(self, call: ProgramCall, kind: str, name: str, report: WarmupReport) -> jax.stages.Compiled:
        """On this thread: ``call``'s executable-cache entry loaded, or else (a miss, or an entry that did not load)
        traced, lowered and compiled (and stored)."""
        cache_key, entry = self.cache_entry(call)
        compiled = None if entry is None else self.load(entry, kind, report)
        if compiled is None:
            compiled = self.compile(self.lower(call, kind, report)[1], call.options, kind, cache_key, report, name)
        return compiled

    def load(self, entry: Entry, kind: str, report: WarmupReport) -> jax.stages.Compiled | None:
        """On a worker thread: an executable-cache entry loaded, timed into ``report``; None if it did not load."""
        with timed() as elapsed:
            compiled = self.executable_cache.load(entry)
        if compiled is not None:
            report.add_load(kind, elapsed.seconds)
        return compiled

    def warmup_plans(self, bucket: StepBucket) -> list[StepPlan]:
        """All-padding plans (alike on every process) that run every program a step of ``bucket`` can pick: the base
        samplers, the general one with penalty lists 128 wide and the whole context's, and the prompt logprobs. With
        speculative decoding, which refuses penalties and prompt logprobs (``jllm.speculative``), the general sampler
        at the short width alone (top-k / top-p draws take it)."""
        plans = [
            StepPlan(self._host_inputs([], bucket, (top, None, mode)), (top, None, mode)) for top, mode in BASE_SAMPLERS
        ]
        top, mode = GENERAL_SAMPLER
        constraints = host_constraints([], (top, None, mode), bucket.sampler_rows, self.vocab_size)
        general = [(sampler.SHORT_PENALTY_WIDTH, None)]
        if not self.num_speculative_tokens:
            general.append((self.long_penalty_width, MAX_LOGPROBS))
        for penalty, prompt in general:
            variant = (top, prompt, mode)
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
            None
            if constraints_later
            else host_constraints(output.scheduled, variant, bucket.sampler_rows, self.vocab_size)
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
        outputs = self._forward(step)
        if before_sampling is not None:
            before_sampling()
            constraints = host_constraints(output.scheduled, plan.variant, plan.bucket.sampler_rows, self.vocab_size)
            ((layout, buffer),) = self._put_trees(_sampler_tree(plan, constraints))
            step = dataclasses.replace(step, sampler_layout=layout, sampler_buffer=buffer)
        result, prompt = self._sample(step, outputs)
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
            num_speculative_tokens=self.num_speculative_tokens,
            attention_backend=self.attention_backend,
            mesh=self.mesh,
            long_rope=self.long_rope,
        )

    # ---------------------------------------------------------------- every process

    def run(self, plan: StepPlan) -> tuple[SamplerOutput, PromptLogprobsOutput | None]:
        """Runs a step on every process alike (a follower runs each plan the lead publishes); the results stay on
        the device."""
        return self.dispatch(self.put(plan))

    def put(self, plan: StepPlan) -> DeviceStep:
        """Packs the plan's host inputs, one buffer for the forward's and one for the sampler's."""
        forward_inputs = dataclasses.replace(plan.inputs, sampling=None)
        forward, sampler = self._put_trees(forward_inputs, _sampler_tree(plan, plan.constraints))
        return DeviceStep(*forward, plan.variant, plan.bucket, *sampler)

    def _put_trees(self, *trees: Any) -> list[tuple[InputLayout, StepBuffer]]:
        """Each tree packed into one buffer. Where this process holds every device the buffers stay NumPy arrays:
        the programs' dispatch moves its arguments to their devices itself, which cost an H100's host 119 us a step
        where a ``jax.device_put`` of both before the call cost 302 (``scripts/bench_host_transfer.py``, 2026-12-07;
        an FP8 batch-1 step 4.222 -> 4.033 ms there). A mesh across processes takes each process's whole array for
        its own devices."""
        layouts, buffers = zip(*(pack_inputs(tree) for tree in trees), strict=True)
        if jax.process_count() > 1:
            sharding = parallel.replicated(self.mesh)
            buffers = tuple(jax.make_array_from_process_local_data(sharding, buffer) for buffer in buffers)
        return list(zip(layouts, buffers, strict=True))

    def dispatch(self, step: DeviceStep) -> tuple[SamplerOutput, PromptLogprobsOutput | None]:
        """Queues the step's programs (compiling any warm-up missed) on its packed inputs; scripts call it back to
        back to time the compiled step alone (their inputs then moved by each call, as in a step)."""
        return self._sample(step, self._forward(step))

    def _forward(self, step: DeviceStep) -> tuple[jax.Array, jax.Array]:
        """The hidden states of every token [T, hidden] and of the rows that sample [S, hidden]."""
        if self.lora is not None:
            self.lora.sync()  # adapters the scheduler gave a slot since the last step
        forward = self._program(("forward", None, step.layout), step)
        args = (self.params, self.kv_caches, step.buffer, self._last_tokens, self._lora_weights)
        hidden, rows, self.kv_caches = forward(*args)
        return hidden, rows

    @property
    def _lora_weights(self) -> list[LoRAWeights] | None:
        """The adapters' stacked per-layer slots (``jllm.lora.manager``), or None without LoRA."""
        return None if self.lora is None else self.lora.weights

    def _sample(
        self, step: DeviceStep, outputs: tuple[jax.Array, jax.Array]
    ) -> tuple[SamplerOutput, PromptLogprobsOutput | None]:
        (hidden, rows), (_, sampler_key, *prompt_key) = outputs, self._program_keys(step)
        sampler = self._program(sampler_key, step, outputs)
        out, self._last_tokens = sampler(self.head_params, rows, step.sampler_buffer)
        prompt = None
        if prompt_key:
            prompt = self._program(prompt_key[0], step, outputs)(self.head_params, hidden, step.buffer)
        return out, prompt


def _delete_pool(pool: Any) -> Any:
    """Deletes the pool's arrays; returns their shapes, dtypes and placements as ``ShapeDtypeStruct``s (what jit
    traces an array as, and what ``_zeroed_pool`` allocates again)."""
    specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), pool)
    for array in jax.tree.leaves(pool):
        array.delete()
    return specs


def _zeroed_pool(specs: Any) -> Any:
    """A zero-filled pool of ``specs`` (``_delete_pool``'s), each array where it was."""
    return jax.tree.map(lambda x: parallel.device_zeros(x.shape, x.dtype, x.sharding), specs)


def _program_name(key: ProgramKey) -> str:
    """ "forward", "prompt_logprobs", or "sampler_<top logprobs>_<mode>"."""
    kind, variant, _ = key
    return "_".join(map(str, (kind, *variant))) if variant else kind


def trace(call: ProgramCall) -> jax.stages.Traced:
    """``call`` traced as jit traces it (its state's leaves first)."""
    return jax.jit(_on_leaves(call.fn, call.treedef), donate_argnums=call.donate).trace(*call.args)


def _on_leaves(fn: Callable[..., Any], treedef: Any) -> Callable[..., Any]:
    """``fn(state, *args)`` as a function of the state's leaves (``treedef`` flattened)."""
    return lambda leaves, *args: fn(jax.tree.unflatten(treedef, leaves), *args)


def _sampler_tree(plan: StepPlan, constraints: TokenConstraints | None) -> tuple[SamplingMetadata, TokenConstraints]:
    """What only the sampler reads, packed apart from the forward's inputs (zero-width constraints without any)."""
    return plan.inputs.sampling, constraints or sampler.no_constraints(plan.bucket.sampler_rows)

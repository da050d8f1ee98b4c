"""The step loop: schedule -> launch -> (previous step's) tokens -> stop checks -> detokenize -> outputs.

``LLMEngine`` is single-threaded; the offline API and the async server engine both drive it. With async scheduling
(the default) each call schedules and launches a step, then waits for and processes the step launched by the call
before, so the host's work for step N+1 overlaps the device's for step N; a step's outputs come one call later.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import jax
import numpy as np

from jllm import distributed, kv_cache, parallel, sampler
from jllm.attention import resolve_backend
from jllm.block_manager import BlockManager
from jllm.config import EngineConfig
from jllm.loader import LoadedModel, load_model
from jllm.model_source import cache_dir, resolve_model
from jllm.outputs import CompletionOutput, Logprob, RequestOutput
from jllm.runner import LaunchedStep, ModelRunner
from jllm.sampling import RequestOutputKind, SamplingParams
from jllm.scheduler import Scheduler
from jllm.sequence import Sequence, SequenceStatus
from jllm.step_results import PromptTokenLogprob, SampledToken
from jllm.tokenizer import IncrementalDetokenizer, Tokenizer

logger = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 1 << 30  # a CPU has no free-memory reading to size the pool from


class ContextLengthError(ValueError):
    """The prompt (plus max_tokens) does not fit the model's context; the server maps it to a 400."""


@dataclass
class SampleState:
    """Per-sample output bookkeeping beside its ``Sequence``."""

    seq: Sequence
    detokenizer: IncrementalDetokenizer
    logprobs: list[dict[int, Logprob]] | None
    cumulative_logprob: float = 0.0
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    samples: list[SampleState]
    arrival_time: float
    prompt_logprobs: list[dict[int, Logprob] | None] | None  # vLLM's shape: None for the first prompt token
    first_token_time: float | None = None  # time.monotonic() seconds, as arrival_time
    last_token_time: float | None = None

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.samples)


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache under the jllm cache, unless the user already pointed it elsewhere:
    a restart with the same model and shapes then loads its step programs instead of compiling them."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))


class LLMEngine:
    def __init__(self, config: EngineConfig, *, show_progress: bool = True):
        self.config = config
        distributed.initialize(config.parallel)  # before anything touches a device
        self.publisher = distributed.claim_engine()  # the lead of several processes publishes each step's plan
        enable_compilation_cache()
        model_dir = resolve_model(config.model.model)
        self.mesh = parallel.make_mesh(config.parallel.tensor_parallel_size)
        self.loaded: LoadedModel = load_model(
            model_dir,
            mesh=self.mesh,
            dtype=config.model.dtype,
            load_format=config.model.load_format,
            seed=config.model.seed,
        )
        self.tokenizer = Tokenizer.from_pretrained(model_dir)
        args = self.loaded.args
        self.max_model_len = config.model.max_model_len or args.max_position_embeddings
        if self.max_model_len > args.max_position_embeddings:
            raise ValueError(
                f"max_model_len={self.max_model_len} exceeds the model's max_position_embeddings="
                f"{args.max_position_embeddings}"
            )
        page_size = config.cache.page_size
        spec = kv_cache.KVCacheSpec(args.num_layers, args.num_kv_heads, args.head_dim, page_size, args.dtype)
        num_pages = self._num_pages(spec)
        if (num_pages - 1) * page_size < self.max_model_len:
            raise ValueError(
                f"the KV pool of {num_pages} pages x {page_size} tokens cannot hold one sequence of max_model_len="
                f"{self.max_model_len} tokens; raise num_pages / kv_cache_memory_bytes or lower max_model_len"
            )
        pool = kv_cache.allocate_kv_pool(spec, num_pages, sharding=parallel.kv_pool_sharding(self.mesh))
        self.block_manager = BlockManager(num_pages, page_size, config.cache.enable_prefix_caching)
        sched = config.scheduler
        self.scheduler = Scheduler(
            self.block_manager,
            max_num_seqs=sched.max_num_seqs,
            max_num_batched_tokens=sched.max_num_batched_tokens,
            max_model_len=self.max_model_len,
        )
        self.runner = ModelRunner(
            self.loaded,
            pool,
            page_size=page_size,
            max_model_len=self.max_model_len,
            max_num_seqs=sched.max_num_seqs,
            max_num_batched_tokens=sched.max_num_batched_tokens,
            eos_token_ids=self.tokenizer.eos_token_ids,
            attention_backend=self._attention_backend(),
        )
        self.runner.warmup(show_progress=show_progress)
        self.requests: dict[str, RequestState] = {}
        self._in_flight: LaunchedStep | None = None  # launched, its tokens not yet processed
        self._seq_ids = itertools.count()
        self._rng = np.random.default_rng(config.model.seed)
        self.stats = {"prompt_tokens": 0, "generation_tokens": 0}

    def _num_pages(self, spec: kv_cache.KVCacheSpec) -> int:
        cache = self.config.cache
        if cache.num_pages is not None:
            return cache.num_pages
        if cache.kv_cache_memory_bytes is not None or jax.devices()[0].platform == "cpu":
            return kv_cache.num_pages_for_budget(spec, cache.kv_cache_memory_bytes or CPU_KV_CACHE_BYTES)
        leaves = jax.tree.leaves(self.loaded.model)
        params_bytes = sum(x.addressable_shards[0].data.nbytes for x in leaves)  # per device
        num_pages = kv_cache.num_pages_from_device_memory(
            spec,
            cache.gpu_memory_utilization,
            params_bytes,
            devices=self.mesh.local_devices,  # only this process's devices report their memory
            kv_shards=self.mesh.size,
        )
        return distributed.min_over_processes(num_pages)  # one pool: every process allocates the same pages

    def _attention_backend(self) -> str:
        return resolve_backend(self.config.model.attention_backend, jax.default_backend())

    # ------------------------------------------------------------------ requests

    def add_request(
        self, request_id: str, prompt: str | list[int], params: SamplingParams, *, prompt_text: str | None = None
    ) -> None:
        """Queues a request; bad input raises ``ValueError`` here, never later in the step loop."""
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        if isinstance(prompt, str):
            prompt_text, token_ids = prompt, self.tokenizer.encode(prompt)
        else:
            token_ids = list(prompt)
        self._check_prompt(token_ids, params)
        seed = params.seed if params.seed is not None else int(self._rng.integers(2**32))
        now = time.monotonic()
        samples = []
        for i in range(params.n):
            seq = Sequence(
                seq_id=next(self._seq_ids),
                request_id=request_id,
                sample_index=i,
                prompt_token_ids=token_ids,
                sampling_params=params,
                arrival_time=now,
                sampling_seed=seed,
            )
            detok = IncrementalDetokenizer(
                self.tokenizer,
                token_ids,
                skip_special_tokens=params.skip_special_tokens,
                stop=params.stop,
                include_stop_str_in_output=params.include_stop_str_in_output,
                min_tokens=params.min_tokens,
                final_only=params.output_kind is RequestOutputKind.FINAL_ONLY,
            )
            samples.append(SampleState(seq, detok, [] if params.logprobs is not None else None))
        prompt_logprobs = None if params.prompt_logprobs is None else [None]
        self.requests[request_id] = RequestState(
            request_id, prompt_text, token_ids, params, samples, now, prompt_logprobs
        )
        self.scheduler.add([s.seq for s in samples])

    def _check_prompt(self, token_ids: list[int], params: SamplingParams) -> None:
        if not token_ids:
            raise ValueError("the prompt is empty: give at least one token")
        vocab = self.loaded.args.vocab_size
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab})")
        requested = len(token_ids) + (params.max_tokens or 1)
        if len(token_ids) >= self.max_model_len or requested > self.max_model_len:
            raise ContextLengthError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{requested} tokens ({len(token_ids)} in the prompt, {params.max_tokens or 1} for the completion). "
                "Please reduce the length of the prompt or the completion."
            )

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Frees the request's pages at once; returns its final output (finish_reason "abort")."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return None
        self.scheduler.abort(request_id)
        for sample in state.samples:
            if sample.finish_reason is None:
                sample.finish_reason = "abort"
                sample.detokenizer.flush()
        self._drop_moot_step()
        return self._output(state)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests) or self._in_flight is not None

    # ------------------------------------------------------------------ the step

    def step(self) -> list[RequestOutput]:
        """Runs one step; returns an output for every request that finished, and for every streaming
        (``RequestOutputKind.CUMULATIVE``) request that got new tokens."""
        touched: dict[str, RequestState] = {}
        if self._in_flight is not None and self._needs_tokens_first(self._in_flight):
            self._process(self._in_flight, touched)
            self._in_flight = None
        out = self.scheduler.schedule()
        for seq, reason in out.rejected:
            logger.error("request %s rejected: %s", seq.request_id, reason)
            state = self.requests.get(seq.request_id)
            if state is not None:
                state.samples[seq.sample_index].finish_reason = "abort"
                state.samples[seq.sample_index].detokenizer.flush()
                touched[state.request_id] = state
        launched = None
        if not out.is_empty:
            plan = self.runner.plan(out)
            if self.publisher is not None:  # every follower runs this step too
                self.publisher.publish(plan)
            launched = self.runner.launch(out, plan)
            self.scheduler.on_step_launched(out)
        if self._in_flight is not None:  # the device ran it while this step was scheduled and launched
            self._process(self._in_flight, touched)
        self._in_flight = launched
        if launched is not None and not self.config.scheduler.async_scheduling:
            self._process(launched, touched)
            self._in_flight = None
        outputs = []
        for state in touched.values():
            if state.finished:
                del self.requests[state.request_id]
            elif state.params.output_kind is RequestOutputKind.FINAL_ONLY:
                continue
            outputs.append(self._output(state))
        self._drop_moot_step()
        return outputs

    def _drop_moot_step(self) -> None:
        """Once every request has ended, the step in flight only computes tokens nobody will read."""
        if not self.requests:
            self._in_flight = None

    @staticmethod
    def _needs_tokens_first(launched: LaunchedStep) -> bool:
        """Penalties count every output token, so the next step's inputs need the tokens this one samples."""
        return sampler.needs_penalties(s.seq for s in launched.output.scheduled)

    def _process(self, launched: LaunchedStep, touched: dict[str, RequestState]) -> None:
        """Waits for a launched step and appends its tokens. A sequence that stopped or was aborted after the step
        was scheduled drops the token the step computed for it."""
        result = self.runner.collect(launched)
        self.scheduler.on_step_finished(launched.output)
        now = time.monotonic()
        for sched, token, prompt in zip(launched.output.scheduled, result.tokens, result.prompt_logprobs, strict=True):
            seq = sched.seq
            seq.num_pending_tokens -= sched.samples_token
            state = self.requests.get(seq.request_id)
            if state is None:  # aborted
                continue
            if prompt and seq.sample_index == 0:
                self._append_prompt_logprobs(state, prompt)
            sample = state.samples[seq.sample_index]
            if token is None or sample.finish_reason is not None:
                continue
            state.first_token_time = state.first_token_time or now
            state.last_token_time = now
            self._append(sample, token)
            touched[state.request_id] = state

    def _append(self, sample: SampleState, token: SampledToken) -> None:
        seq = sample.seq
        seq.output_token_ids.append(token.token_id)
        self.stats["generation_tokens"] += 1
        if seq.num_output_tokens == 1:
            self.stats["prompt_tokens"] += seq.num_prompt_tokens
        sample.cumulative_logprob += token.logprob
        if sample.logprobs is not None:
            sample.logprobs.append(
                self._logprob_entry(token.token_id, token.logprob, token.top_ids, token.top_logprobs)
            )
        reason = self._finish_reason(sample, token.token_id)
        if reason is not None:
            sample.finish_reason = reason
            status = SequenceStatus.FINISHED_LENGTH if reason == "length" else SequenceStatus.FINISHED_STOPPED
            self.scheduler.finish(seq, status)

    def _finish_reason(self, sample: SampleState, token_id: int) -> str | None:
        """Stop checks in vLLM's order: stop token (its text is never shown), stop string, then length."""
        seq, params, detok = sample.seq, sample.seq.sampling_params, sample.detokenizer
        is_eos = token_id in self.tokenizer.eos_token_ids
        if seq.num_output_tokens >= params.min_tokens and (
            token_id in params.stop_token_ids or (is_eos and not params.ignore_eos)
        ):
            sample.stop_reason = None if is_eos else token_id
            detok.flush()
            return "stop"
        detok.add_tokens([token_id])
        if detok.finished:
            sample.stop_reason = detok.stop_reason
            return "stop"
        if seq.reaches_length_limit(self.max_model_len):
            detok.flush()
            return "length"
        return None

    def _append_prompt_logprobs(self, state: RequestState, chunk: list[PromptTokenLogprob]) -> None:
        """Positions already recorded (recomputed after a preemption) are skipped."""
        assert state.prompt_logprobs is not None
        for entry in chunk:
            if entry.position == len(state.prompt_logprobs):
                state.prompt_logprobs.append(
                    self._logprob_entry(entry.token_id, entry.logprob, entry.top_ids, entry.top_logprobs)
                )

    def _logprob_entry(
        self, token_id: int, logprob: float, top_ids: list[int], top_logprobs: list[float]
    ) -> dict[int, Logprob]:
        """The top tokens by rank, then the chosen one if it is not among them (rank unknown)."""
        decode = self.tokenizer.decode
        entry = {
            tid: Logprob(lp, rank=i + 1, decoded_token=decode([tid], skip_special_tokens=False))
            for i, (tid, lp) in enumerate(zip(top_ids, top_logprobs, strict=True))
        }
        if token_id not in entry:
            entry[token_id] = Logprob(logprob, None, decode([token_id], skip_special_tokens=False))
        return entry

    @staticmethod
    def _metrics(state: RequestState) -> dict[str, float]:
        """vLLM's request timings (``time.monotonic()`` seconds), with the time to first token worked out."""
        metrics = {"arrival_time": state.arrival_time}
        if state.first_token_time is not None and state.last_token_time is not None:
            metrics |= {
                "first_token_time": state.first_token_time,
                "last_token_time": state.last_token_time,
                "time_to_first_token": state.first_token_time - state.arrival_time,
            }
        return metrics

    def _output(self, state: RequestState) -> RequestOutput:
        completions = [
            CompletionOutput(
                index=i,
                text=s.detokenizer.text,
                token_ids=list(s.seq.output_token_ids),
                cumulative_logprob=s.cumulative_logprob if s.logprobs is not None else None,
                logprobs=None if s.logprobs is None else list(s.logprobs),
                finish_reason=s.finish_reason,
                stop_reason=s.stop_reason,
            )
            for i, s in enumerate(state.samples)
        ]
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            prompt_logprobs=None if state.prompt_logprobs is None else list(state.prompt_logprobs),
            outputs=completions,
            finished=state.finished,
            num_cached_tokens=state.samples[0].seq.num_cached_tokens,
            metrics=self._metrics(state),
        )

"""The step loop: schedule -> launch -> (the previous step's) tokens -> scheduler update -> text and outputs.

``LLMEngine`` receives its parts ready-made (``jllm.build.build_engine`` wires them): the scheduler owns the sequences
and their progress, the runner the device, the output processor what clients see. It is single-threaded; the
offline API and the async server engine both drive it. With async scheduling (the default) each call schedules and
launches a step, then waits for and processes the step launched by the call before, so the host's work for step
N+1 overlaps the device's for step N; a step's outputs come one call later. Two things need step N's tokens first:
penalties (step N+1's inputs count them), processed before scheduling; and a grammar's mask, which only step N+1's
sampler needs, so the runner queues N+1's forward and then calls back for them (``before_sampling``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from jllm import sampler
from jllm.bad_words import bad_word_ids
from jllm.block_manager import BlockManager
from jllm.classify import ClassifierHead
from jllm.errors import InputError
from jllm.inputs import InputProcessor, Prompt
from jllm.loader import LoadedModel
from jllm.lora.manager import LoRAManager
from jllm.lora.request import LoRARequest
from jllm.output_processor import OutputProcessor, RequestState
from jllm.outputs import RequestOutput
from jllm.pooling import Encoder
from jllm.runner import LaunchedStep
from jllm.sampling import SamplingParams
from jllm.scheduler import Scheduler
from jllm.sequence import SchedulerOutput, Sequence, SequenceStatus
from jllm.step_inputs import StepPlan
from jllm.step_results import StepResult
from jllm.step_timeline import StepTimeline, StepTimes
from jllm.structured_output import GrammarCompiler, GrammarMatcher
from jllm.thinking_budget import ThinkingBudget
from jllm.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


class StepRunner(Protocol):
    """What the loop needs of a runner (``jllm.runner.ModelRunner``, or a scripted fake in tests)."""

    def plan(self, output: SchedulerOutput, *, constraints_later: bool = False) -> StepPlan: ...

    def launch(
        self, output: SchedulerOutput, plan: StepPlan, before_sampling: Callable[[], None] | None = None
    ) -> LaunchedStep: ...

    def collect(self, launched: LaunchedStep) -> StepResult: ...

    def release(self) -> None: ...

    def swap_weights(self, new: LoadedModel) -> None: ...

    def sleep(self, keep_weights: bool) -> None: ...

    def wake_up(self) -> None: ...

    @property
    def num_compilations(self) -> int:
        """Programs compiled so far (the server reports those after start-up)."""
        ...


class LLMEngine:
    """``publish``: under ``jax.distributed``, hands each step's plan to the followers before the lead runs it."""

    def __init__(
        self,
        scheduler: Scheduler,
        runner: StepRunner,
        inputs: InputProcessor,
        *,
        async_scheduling: bool = True,
        seed: int | None = None,
        publish: Callable[[StepPlan], None] | None = None,
        sampling_defaults: dict[str, Any] | None = None,
        lora: LoRAManager | None = None,
        classifier: ClassifierHead | None = None,
        timeline: StepTimeline | None = None,
    ) -> None:
        """``sampling_defaults``: the fields a request that leaves them unset samples with (the model's
        generation_config.json's, ``jllm.sampling.generation_defaults``); the front ends apply them. ``lora``: the
        adapters (with ``enable_lora``; the runner's and the scheduler's slots too). ``classifier``: a sequence
        classifier's head (the front ends refuse to generate with it). ``timeline``: where each launched step's
        clock goes (``step_timeline_path``)."""
        self.scheduler = scheduler
        self.lora = lora
        self.classifier = classifier
        self.sampling_defaults = dict(sampling_defaults or {})
        self.runner = runner
        self.sleep_level: int | None = None  # asleep (``sleep``): 1 or 2
        self.weights_discarded = False  # by a level-2 sleep, until ``swap_weights``
        self.inputs = inputs
        self.outputs = OutputProcessor(inputs.tokenizer)
        self.async_scheduling = async_scheduling
        self.publish = publish
        self.timeline = timeline
        self._in_flight: LaunchedStep | None = None  # launched, its tokens not yet processed
        self._seq_ids = itertools.count()
        self._rng = np.random.default_rng(seed)
        self.grammars = GrammarCompiler(inputs.tokenizer, inputs.vocab_size, inputs.tokenizer.eos_token_ids)

    @property
    def encoder(self) -> Encoder:
        """Hidden states and embeddings on the runner's model, outside the step loop; built on first use (a
        ``ModelRunner`` only). Call it where the steps run: it shares the runner's weights and device queue."""
        self._check_awake()
        return self._encoder

    @functools.cached_property
    def _encoder(self) -> Encoder:
        return Encoder(self.runner, self.max_model_len)  # type: ignore[arg-type]

    @property
    def num_compilations(self) -> int:
        """Programs compiled (or loaded) so far, the runner's and the encoder's: the server counts those after its
        start, each of which stalled every stream of the model."""
        encoder = self.__dict__.get("_encoder")  # the cached property: not built yet, it has none
        return self.runner.num_compilations + (0 if encoder is None else encoder.num_compilations)

    @property
    def tokenizer(self) -> Tokenizer:
        return self.inputs.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.inputs.max_model_len

    @property
    def requests(self) -> dict[str, RequestState]:
        """Unfinished requests by id."""
        return self.outputs.requests

    @property
    def block_manager(self) -> BlockManager:
        return self.scheduler.block_manager

    # ------------------------------------------------------------------ requests

    def add_lora(self, lora_request: LoRARequest) -> None:
        """Reads and checks the adapter's files (once per ``lora_int_id``), so a request can name it; a bad adapter
        raises ``jllm.lora.peft_files.AdapterError`` naming what is wrong."""
        if self.lora is None:
            raise ValueError(f"lora_request {lora_request.lora_name!r} needs the engine started with enable_lora: true")
        self.lora.add(lora_request)

    def remove_lora(self, lora_int_id: int) -> None:
        """Forgets an adapter (its slot freed); a ``ValueError`` while a request, running or waiting, uses it."""
        if self.lora is None:
            raise ValueError("remove_lora needs the engine started with enable_lora: true")
        queued = [*self.scheduler.waiting, *self.scheduler.running]
        users = {
            s.request_id for s in queued if s.lora_request is not None and s.lora_request.lora_int_id == lora_int_id
        }
        if users:
            raise ValueError(f"adapter {lora_int_id} is in use by {len(users)} unfinished requests")
        self.lora.remove(lora_int_id)

    def add_request(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams,
        grammar: GrammarMatcher | None = None,
        lora_request: LoRARequest | None = None,
        thinking: ThinkingBudget | None = None,
        priority: int = 0,
    ) -> None:
        """Queues a prompt that ``jllm.inputs`` has checked; ``params.n`` samples, each its own sequence.
        ``grammar``: the constraint's matcher, built beforehand off this thread (``GrammarCompiler.matcher``: a
        large grammar takes a second or more); else built here. ``lora_request``: its adapter (read here if new).
        ``thinking``: the reply's thinking budget (``jllm.thinking_budget``; the chat route builds it from the served
        model's reasoning format), forked for each further sample as the grammar is. ``priority``: vLLM's (lower runs
        first), only under the priority scheduling policy (``check_priority``)."""
        self._check_awake()
        if request_id in self.outputs.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        self.check_priority(priority)
        if lora_request is not None:
            self.add_lora(lora_request)
        seed = params.seed if params.seed is not None else int(self._rng.integers(2**32))
        now = time.monotonic()
        if grammar is None and params.structured_outputs is not None:
            grammar = self.grammars.matcher(params.structured_outputs)
        banned_words = bad_word_ids(params.bad_words, self.tokenizer) if params.bad_words else ()
        seqs = [
            Sequence(
                seq_id=next(self._seq_ids),
                request_id=request_id,
                sample_index=i,
                prompt_token_ids=prompt.token_ids,
                sampling_params=params,
                arrival_time=now,
                sampling_seed=seed,
                grammar=grammar if grammar is None or i == 0 else grammar.fork(),
                bad_word_ids=banned_words,
                thinking=thinking if thinking is None or i == 0 else thinking.fork(),
                lora_request=lora_request,
                cache_salt=prompt.cache_salt,
                priority=priority,
            )
            for i in range(params.n)
        ]
        self.outputs.add_request(request_id, prompt, params, seqs, arrival_time=now)
        self.scheduler.add(seqs)

    def check_priority(self, priority: object) -> None:
        """A request's ``priority``: an integer, and other than 0 only under the priority scheduling policy (vLLM's
        rule: a priority the scheduler would ignore is refused)."""
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise InputError(f"priority must be an integer, got {priority!r}", param="priority")
        if priority and self.scheduler.policy != "priority":
            raise InputError(
                f"priority={priority}: the engine schedules first come, first served; start it with "
                "scheduling_policy: priority (--scheduling-policy priority) to order requests by priority",
                param="priority",
            )

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Frees the request's pages at once; returns its final output (finish_reason "abort")."""
        output = self.outputs.abort(request_id)
        if output is None:
            return None
        self.scheduler.abort(request_id)
        self._drop_moot_step()
        return output

    def release(self) -> None:
        """Frees the device memory (weights, KV pool) at once, even where a reference to an array lingers; the
        engine cannot run again. For unloading a model from a server that goes on serving others."""
        self._in_flight = None
        self.__dict__.pop("_encoder", None)  # its compiled programs go with it
        self.runner.release()
        if self.timeline is not None:
            self.timeline.close()

    def check_weights_swappable(self) -> None:
        """Raises unless ``swap_weights`` may run now (checked before new weights are read, and again there)."""
        self._check_idle("weights are swapped")
        if self.sleep_level is not None:
            raise RuntimeError("the engine is asleep: wake_up() before loading weights")
        if self.classifier is not None:
            raise ValueError("a classifier's head is read once at start: start a new engine for other weights")

    def sleep(self, level: int = 1) -> None:
        """vLLM's sleep mode, between requests: frees the KV pool's and the weights' device memory (to JAX's
        allocator in this process) for other work, keeping the compiled programs. Level 1 keeps the weights on the
        host; level 2 discards them, for ``swap_weights`` to bring others after ``wake_up``."""
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 (weights kept on the host) or 2 (discarded), got {level!r}")
        self._check_idle("the engine sleeps")
        if self.sleep_level is not None:
            raise RuntimeError(f"the engine is already asleep (level {self.sleep_level})")
        self.runner.sleep(keep_weights=level == 1)
        self.block_manager.reset_prefix_cache()
        self.sleep_level = level
        self.weights_discarded = level == 2

    def wake_up(self) -> None:
        """The weights and a fresh KV pool back on the devices (after a level-2 sleep the weights are zeros until
        ``swap_weights``); waking an engine that is awake does nothing."""
        if self.sleep_level is not None:
            self.runner.wake_up()
            self.sleep_level = None

    def _check_awake(self) -> None:
        """Raises where nothing may run: asleep, or without weights after a level-2 sleep."""
        if self.sleep_level is not None:
            raise RuntimeError("the engine is asleep: wake_up() first")
        if self.weights_discarded:
            raise RuntimeError("the engine has no weights since its level-2 sleep: load_weights first")

    def _check_idle(self, what: str) -> None:
        if self.has_unfinished_requests():
            raise RuntimeError(f"{what} between requests: finish or abort the running ones first")

    def swap_weights(self, new: LoadedModel) -> None:
        """Runs another checkpoint of the same model from the next step (``jllm.weight_swap``), between requests:
        the prefix cache is emptied, since its pages hold the old weights' K/V."""
        self.check_weights_swappable()
        self.runner.swap_weights(new)
        self.weights_discarded = False
        self.block_manager.reset_prefix_cache()

    def has_unfinished_requests(self) -> bool:
        return bool(self.outputs.requests) or self._in_flight is not None

    # ------------------------------------------------------------------ the step

    def step(self) -> list[RequestOutput]:
        """Runs one step; returns the outputs due: every request that finished, and every streaming request
        (``DELTA`` or ``CUMULATIVE``) that got new tokens."""
        times = StepTimes()
        touched: dict[str, None] = {}
        if self._in_flight is not None and self._needs_tokens_first(self._in_flight):
            touched |= self._process(self._in_flight, times)
            self._in_flight = None
        scheduled_at = time.perf_counter()
        out = self.scheduler.schedule()
        for seq, reason in out.rejected:
            logger.error("request %s rejected: %s", seq.request_id, reason)
            if (request_id := self.outputs.reject(seq)) is not None:
                touched[request_id] = None
        launched = None
        launched_at = time.perf_counter()
        times.schedule_s = launched_at - scheduled_at
        if not out.is_empty:
            masks_wait = self._in_flight is not None and self._masks_wait_for(self._in_flight)
            plan = self.runner.plan(out, constraints_later=masks_wait)
            if self.publish is not None:
                self.publish(plan)

            def take_tokens() -> None:  # the grammars' next masks follow from the step in flight's tokens
                assert self._in_flight is not None
                touched.update(self._process(self._in_flight, times))
                self._in_flight = None

            launched = self.runner.launch(out, plan, take_tokens if masks_wait else None)
            self.scheduler.on_step_launched(out)
            times.launched = out
        times.launch_s = time.perf_counter() - launched_at
        if self._in_flight is not None:  # the device ran it while this step was scheduled and launched
            touched |= self._process(self._in_flight, times)
        self._in_flight = launched
        if launched is not None and not self.async_scheduling:
            touched |= self._process(launched, times)
            self._in_flight = None
        outputs = self.outputs.outputs(touched)
        self._drop_moot_step()
        if self.timeline is not None and launched is not None:
            self.timeline.write(times)
        return outputs

    def _drop_moot_step(self) -> None:
        """Once every request has ended, the step in flight only computes tokens nobody will read: they are dropped
        once the device has run it (it runs anyway). Dropped unwaited, a step was left running with no owner, and a
        server stopping right after (SIGTERM past its drain) exited from under it: SIGABRT ("terminate called
        without an active exception")."""
        if not self.outputs.requests and self._in_flight is not None:
            self.runner.collect(self._in_flight)
            self._in_flight = None

    def _needs_tokens_first(self, launched: LaunchedStep) -> bool:
        """Penalties count every output token, so the next step's inputs need the tokens this one samples; so does
        a grammar's mask when the plan is published (followers get the mask in the plan), and speculative decoding's
        next proposal."""
        if self.scheduler.speculative is not None:  # the next drafts are proposed from this step's tokens
            return True
        seqs = [s.seq for s in launched.output.scheduled]
        return sampler.needs_penalties(seqs) or (self.publish is not None and self._masks_wait_for(launched))

    @staticmethod
    def _masks_wait_for(launched: LaunchedStep) -> bool:
        """A grammar's next mask (a multi-token bad word's, a thinking budget's) follows from the token this step
        samples: the next step's sampler waits for it, its forward does not (``ModelRunner.launch``'s
        ``before_sampling``)."""
        return any(sampler.mask_follows_tokens(s.seq) for s in launched.output.scheduled)

    def _process(self, launched: LaunchedStep, times: StepTimes) -> dict[str, None]:
        """Waits for a launched step; the scheduler appends its tokens, the output processor turns them into text.
        Returns the requests it changed."""
        waited_at = time.perf_counter()
        result = self.runner.collect(launched)
        processed_at = time.perf_counter()
        times.wait_s += processed_at - waited_at
        sampled = [[token.token_id for token in result.row_tokens(row)] for row in range(len(result.tokens))]
        appended = self.scheduler.update_from_output(launched.output, sampled)
        touched, stopped = self.outputs.process(launched.output, result, appended)
        for seq, num_output_tokens in stopped:
            self.scheduler.finish(seq, SequenceStatus.FINISHED_STOPPED, num_output_tokens)
        times.process_s += time.perf_counter() - processed_at
        return touched

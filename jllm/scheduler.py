"""Continuous batching: which sequences run each step, and how many tokens each. Plain Python, no JAX.

vLLM V1's rule "schedule tokens, not phases": every step has one token budget. Running sequences go first, each
getting the tokens it has not computed yet (a decode gets 1, a partial prefill its next chunk), then waiting ones
are admitted in FIFO order with whatever budget is left. A prefill chunk may also be capped below the budget
(``long_prefill_token_threshold``, vLLM's), so one long prompt cannot take a whole step from the others. When the
pool runs out, the newest running sequence is preempted by recompute: it drops its pages and goes back to the front
of the queue (its full pages stay in the prefix cache, so the recompute is often cheap). The oldest running sequence
is never preempted for a newer one, so a sequence that fits the pool by itself always makes progress.

vLLM's ``--scheduling-policy priority`` (``policy="priority"``): each request carries a ``priority`` (lower runs
first; 0 by default), and both queues are kept in (priority, arrival) order instead: admission takes the most urgent
waiting sequence first, and preemption takes the least urgent running one (the newest among equals). A preempted
sequence goes back by its own priority and arrival, so it still runs before later arrivals of its priority.

The device runs a step padded up to the next compiled step size (``step_sizes``: the runner's buckets, 256, 512,
1024, 2048 tokens ...), and once a step is compute-bound a padded token costs as much as a real one: 32 decodes
beside a 1,024-token prompt would run as 2,048. So a step that passes a step size by at most half the way to the
next has its newest prefill chunks shortened to end on that size (each keeps one token at least, so every prefill
progresses); the tokens cut ride in the next step, which the decodes run anyway.

Async scheduling: the next step is scheduled while the device still runs the last one, whose sampled tokens are
"pending" (``Sequence.num_pending_tokens``): a decode's input may be a token only the device knows yet, and a sequence
that a pending token ends by length is not scheduled again. Tokens a pending EOS or stop string makes moot are
computed once and dropped, as in vLLM.

The scheduler is the one owner of a sequence's progress: it counts computed tokens when a step launches, appends the
step's sampled tokens when it returns (``update_from_output``), ends sequences on token-level stops (EOS, stop ids,
length) and frees their pages. The engine only detokenizes and reports stop strings back through ``finish``.
Prompts reach it checked by ``jllm.inputs`` (at least one token, inside the context); it refuses only what the pool
can never hold. With LoRA (``lora_slots``) a running sequence holds its adapter's device slot; one whose adapter finds
every slot held by others' running sequences waits, and the queue behind it is admitted past it. A hybrid model's
running sequence holds a recurrent state slot (``state_slots``) from admission to finish or preemption; there each
of a request's ``n`` samples prefills its own prompt (no fork: a forked page holds no recurrent state).

Speculative decoding (``speculative``: ``jllm.speculative``'s n-gram proposer): a running sequence with one token to
compute also gets the drafts proposed from its tokens, within the budget, max_tokens and the context, with pages for
them. The step's verified tokens come back together; the computed count then covers the accepted drafts alone (the
rejected drafts' K/V rows are overwritten later, and no page holding them is hashed for the prefix cache), and an
accepted run is cut at the first stop token or the length limit. The engine runs such steps one at a time (no async
scheduling): the next proposal needs this step's tokens.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Collection
from collections.abc import Sequence as Seq

from jllm.block_manager import BlockManager
from jllm.lora.slots import LoRASlots
from jllm.repetition import ends_in_repetition
from jllm.sequence import ScheduledSequence, SchedulerOutput, Sequence, SequenceStatus
from jllm.speculative import NgramProposer, NgramSpec
from jllm.state_slots import StateSlots

SCHEDULING_POLICIES = ("fcfs", "priority")  # vLLM's --scheduling-policy values


def _urgency(seq: Sequence) -> tuple[int, float, int]:
    """The priority policy's order: lower priority values first, then earlier arrivals, then sample order."""
    return seq.priority, seq.arrival_time, seq.seq_id


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        eos_token_ids: Collection[int] = (),
        long_prefill_token_threshold: int = 0,
        step_sizes: Seq[int] = (),
        lora_slots: LoRASlots | None = None,
        state_slots: StateSlots | None = None,
        speculative: NgramSpec | None = None,
        policy: str = "fcfs",
        long_rope_from: int | None = None,
    ) -> None:
        for name, value in [
            ("max_num_seqs", max_num_seqs),
            ("max_num_batched_tokens", max_num_batched_tokens),
            ("max_model_len", max_model_len),
        ]:
            if value < 1:
                raise ValueError(f"{name}={value} must be at least 1")
        if long_prefill_token_threshold < 0:
            raise ValueError(f"long_prefill_token_threshold={long_prefill_token_threshold} must be >= 0 (0 = off)")
        if long_rope_from is not None and state_slots is not None:  # a recompute would start from a stale state
            raise ValueError("longrope with recurrent state slots (a hybrid model) is not supported")
        if policy not in SCHEDULING_POLICIES:
            raise ValueError(f"scheduling policy {policy!r} is not one of {', '.join(SCHEDULING_POLICIES)}")
        self.policy = policy
        self.block_manager = block_manager
        self.lora_slots = lora_slots
        self.state_slots = state_slots
        self.speculative = speculative
        self.proposer = NgramProposer(speculative) if speculative is not None else None
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.long_rope_from = long_rope_from  # a longrope model's original context (see _to_long_rope)
        # a step's tokens for one sequence: the step's budget, and a long prefill's cap where one is set
        self.max_tokens_per_sequence = long_prefill_token_threshold or max_num_batched_tokens
        self.eos_token_ids = frozenset(eos_token_ids)
        # the step token counts prefill chunks are shortened to end on (``_end_on_step_size``); () = never
        self.step_sizes = sorted(step_sizes)
        self.waiting: deque[Sequence] = deque()
        # in admission order ("priority": in (priority, arrival) order): the last is preempted first
        self.running: list[Sequence] = []
        self._requests: dict[str, list[Sequence]] = {}  # unfinished requests' samples, by sample_index
        self._rejected: list[tuple[Sequence, str]] = []  # reported by the next schedule()
        self._num_preemptions = 0
        self.num_prompt_tokens = 0  # prompt tokens of sequences that produced their first token (vLLM's metric)
        self.num_generation_tokens = 0  # sampled tokens appended
        self.num_draft_tokens = 0  # drafts verified (vLLM's spec_decode_num_draft_tokens)
        self.num_accepted_tokens = 0  # of those, accepted (vLLM's spec_decode_num_accepted_tokens)

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_preemptions(self) -> int:
        return self._num_preemptions

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self._rejected)

    def add(self, seqs: list[Sequence]) -> None:
        """Queue one request's samples, or reject them all (status FINISHED_ABORTED, reason in the next output)."""
        if not seqs:
            raise ValueError("add() needs at least one sequence")
        request_id = seqs[0].request_id
        if any(s.request_id != request_id for s in seqs):
            raise ValueError(
                f"add() takes one request's samples, got request ids {sorted({s.request_id for s in seqs})}"
            )
        if request_id in self._requests:
            raise ValueError(f"request {request_id!r} is already scheduled")
        seqs = sorted(seqs, key=lambda s: s.sample_index)
        reason = self.rejection_reason(seqs[0].num_prompt_tokens, seqs[0].sampling_params.max_tokens)
        if reason is not None:
            for seq in seqs:
                seq.status = SequenceStatus.FINISHED_ABORTED
                self._rejected.append((seq, reason))
            return
        self._requests[request_id] = seqs
        for seq in seqs:
            seq.long_rope = self.long_rope_from is not None and seq.num_prompt_tokens > self.long_rope_from
            self._enqueue(seq, front=False)

    def _enqueue(self, seq: Sequence, *, front: bool) -> None:
        """Into the waiting queue: at its end (or, preempted, its ``front``), or by (priority, arrival) under the
        priority policy."""
        if self.policy == "priority":
            self.waiting.insert(bisect_right(self.waiting, _urgency(seq), key=_urgency), seq)
        elif front:
            self.waiting.appendleft(seq)
        else:
            self.waiting.append(seq)

    def rejection_reason(self, num_prompt: int, max_tokens: int | None) -> str | None:
        """Why a request can never run (its tokens need more pages than the pool holds): admitting it anyway could
        deadlock the pool. ``LLM.generate`` asks before adding any request: a batch fails whole, naming the prompt."""
        limit = self.max_model_len
        plus = "" if max_tokens is None else f" plus max_tokens={max_tokens}"
        total = limit if max_tokens is None else min(num_prompt + max_tokens, limit)
        bm = self.block_manager
        if bm.num_pages_needed(total) > bm.num_usable_pages:
            return (
                f"prompt of {num_prompt} tokens{plus} needs KV cache for {total} tokens "
                f"({bm.num_pages_needed(total)} pages of {bm.page_size}) but the pool holds {bm.num_usable_pages} "
                f"pages ({bm.num_usable_pages * bm.page_size} tokens); lower max_tokens or give the KV cache more "
                "memory"
            )
        return None

    def schedule(self) -> SchedulerOutput:
        """One step's work: running sequences first (preempting the newest when pages run out), then admissions."""
        out = SchedulerOutput(scheduled=[], rejected=self._rejected)
        self._rejected = []
        budget = self._schedule_running(out, self.max_num_batched_tokens)
        if not out.preempted:  # pages are short while anyone is preempted, and the preempted go first next step
            self._admit_waiting(out, budget)
        self._end_on_step_size(out)
        return out

    def _end_on_step_size(self, out: SchedulerOutput) -> None:
        """Shortens the newest prefill chunks so the step's tokens fill a step size instead of padding most of the
        way to the next one. Their pages stay allocated: the next step computes the tokens cut."""
        total, sizes = out.num_batched_tokens, self.step_sizes
        i = bisect_left(sizes, total)
        if i == 0 or i == len(sizes) or sizes[i] == total:
            return
        lower, upper = sizes[i - 1], sizes[i]
        excess = total - lower
        if 2 * excess > upper - lower:  # nearer the size above: padding to it wastes less than a cut defers
            return
        cuts = {}
        for k in reversed(range(len(out.scheduled))):
            s = out.scheduled[k]
            cuts[k] = 0 if s.draft_token_ids else min(excess, s.num_new_tokens - 1)  # drafts ride whole or not at all
            excess -= cuts[k]
            if not excess:
                break
        if excess:  # the chunks are too short to cut that much
            return
        for k, cut in cuts.items():
            s = out.scheduled[k]
            out.scheduled[k] = ScheduledSequence(s.seq, s.num_new_tokens - cut, s.draft_token_ids)

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        """Gives each running sequence the tokens it has not computed, in admission order; returns the budget left."""
        bm = self.block_manager
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            num_new = self._tokens_to_compute(seq, budget)
            if num_new <= 0 or self._ends_with_pending(seq):  # nothing to compute until the engine appends a token
                i += 1
                continue
            if self._to_long_rope(seq, num_new):
                num_new = self._tokens_to_compute(seq, budget)  # from its first token again
            drafts = self._drafts(seq, budget) if num_new == 1 else []
            if drafts and not bm.allocate(seq, 1 + len(drafts)):  # drafts only where pages are free: none preempted
                drafts = []
            num_new += len(drafts)
            while not bm.allocate(seq, num_new):
                victim = self.running[-1]  # the newest; never one already scheduled this step (those sit before i)
                if victim is seq and i == 0:  # alone and still short: admission promised it fits, so a bug
                    raise RuntimeError(
                        f"sequence {seq.seq_id} of {seq.num_tokens} tokens cannot fit the pool of "
                        f"{bm.num_usable_pages} pages by itself; did it grow past max_model_len={self.max_model_len}?"
                    )
                self.running.pop()
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:  # allocated
                out.scheduled.append(ScheduledSequence(seq, num_new, drafts))
                budget -= num_new
                i += 1
        return budget

    def _tokens_to_compute(self, seq: Sequence, budget: int) -> int:
        """A running sequence's tokens this step: those not computed yet, within the budget and the per-sequence cap."""
        return min(seq.num_tokens_with_pending - seq.num_computed_tokens, budget, self.max_tokens_per_sequence)

    def _to_long_rope(self, seq: Sequence, num_new: int) -> bool:
        """A longrope model's sequence about to compute past the original context: from now on it takes the long
        factors, and its K/V so far are computed again with them (Phi-3's ``generate`` in transformers drops its
        cache there and runs the whole sequence again). Its pages go back (their short-factor K/V stay cached for
        other short sequences), and it starts over from its first token, as a preempted one would, still running."""
        if self.long_rope_from is None or seq.long_rope or seq.num_computed_tokens + num_new <= self.long_rope_from:
            return False
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.long_rope = True
        return True

    def _drafts(self, seq: Sequence, budget: int) -> list[int]:
        """The n-gram drafts for a decode of ``seq``: as many as the budget, the per-sequence cap, max_tokens and the
        context leave room for beside its one token (each accepted draft is one more output token, and the step
        emits one more after them)."""
        spec = self.speculative
        if spec is None or seq.num_pending_tokens or not seq.num_output_tokens:
            return []
        room = [spec.num_speculative_tokens, budget - 1, self.max_tokens_per_sequence - 1]
        room.append(self.max_model_len - seq.num_tokens - 1)
        if self.long_rope_from is not None and not seq.long_rope:  # no draft past the original context (see above)
            room.append(self.long_rope_from - seq.num_computed_tokens - 1)
        if seq.sampling_params.max_tokens is not None:
            room.append(seq.sampling_params.max_tokens - seq.num_output_tokens - 1)
        k = min(room)
        return self.proposer.propose(seq, k) if k > 0 else []

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        """Admits waiting sequences in FIFO order while budget, slots and pages last; the first that does not fit
        blocks the rest, so none starves."""
        bm = self.block_manager
        i = 0
        while i < len(self.waiting) and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[i]
            wait_for_prompt, parent = self._sibling_source(seq)
            if wait_for_prompt or seq.num_pending_tokens:  # waits on a sibling or a token, not on pages: don't block
                i += 1
                continue
            if not self._take_lora_slot(seq):  # waits for an adapter slot, not on pages: don't block either
                i += 1
                continue
            if not self._take_state_slot(seq):  # every state slot held: nothing else can be admitted either
                self._release_lora_slot(seq)
                return
            if parent is not None:
                seq.num_computed_tokens = seq.num_cached_tokens = bm.fork(parent, seq)
            elif seq.sampling_params.prompt_logprobs is None:  # cached tokens would have no prompt logprobs (vLLM)
                seq.num_computed_tokens = seq.num_cached_tokens = bm.match_prefix(seq)
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget, self.max_tokens_per_sequence)
            if not bm.allocate(seq, num_new):
                bm.free(seq)  # give the matched pages back
                seq.num_computed_tokens = 0
                self._release_slots(seq)
                return
            del self.waiting[i]
            seq.status = SequenceStatus.RUNNING
            if self.policy == "priority":  # its place among the running, so the least urgent is preempted first
                self.running.insert(bisect_right(self.running, _urgency(seq), key=_urgency), seq)
            else:
                self.running.append(seq)
            out.scheduled.append(ScheduledSequence(seq, num_new))
            budget -= num_new

    def _sibling_source(self, seq: Sequence) -> tuple[bool, Sequence | None]:
        """(wait, parent) for admitting ``seq``: n samples of one prompt prefill it once.

        A fresh sibling waits until sample 0 has computed the prompt, then forks its pages. If sample 0 finished
        first, the sibling prefills for itself (the prefix cache may still hold the prompt). On a hybrid model (state
        slots) every sample prefills itself: a forked page carries no recurrent state.
        """
        if seq.sample_index == 0 or seq.num_output_tokens or self.state_slots is not None:
            return False, None
        first = self._requests[seq.request_id][0]
        if first.is_finished:
            return False, None
        if first.status is SequenceStatus.RUNNING and first.num_computed_tokens >= first.num_prompt_tokens:
            return False, first
        return True, None

    def _take_lora_slot(self, seq: Sequence) -> bool:
        """Holds the device slot of ``seq``'s adapter (assigned if needed); False when every slot is held."""
        if seq.lora_request is None:
            return True
        if self.lora_slots is None:
            raise ValueError(f"sequence {seq.seq_id} has a LoRA adapter but the scheduler has no lora_slots")
        slot = self.lora_slots.acquire(seq.lora_request.lora_int_id)
        seq.lora_slot = slot or 0
        return slot is not None

    def _release_lora_slot(self, seq: Sequence) -> None:
        """``seq`` left the device (preempted, finished, or not admitted after all): its slot may be reused."""
        if seq.lora_request is not None and self.lora_slots is not None:
            self.lora_slots.release(seq.lora_request.lora_int_id)
            seq.lora_slot = 0

    def _take_state_slot(self, seq: Sequence) -> bool:
        """Gives ``seq`` a recurrent state slot where the model has recurrent layers; False when none is free."""
        if self.state_slots is None:
            return True
        slot = self.state_slots.acquire()
        seq.state_slot = slot or 0
        return slot is not None

    def _release_slots(self, seq: Sequence) -> None:
        """``seq`` left the device: its adapter's slot and its state slot may be reused (a preempted sequence
        computes its state again from scratch)."""
        self._release_lora_slot(seq)
        if seq.state_slot:
            self.state_slots.release(seq.state_slot)
            seq.state_slot = 0

    def _preempt(self, seq: Sequence) -> None:
        """Recompute, not swap: the pages go back to the pool and the tokens are computed again later."""
        self._release_slots(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self._num_preemptions += 1
        self._enqueue(seq, front=True)

    def _ends_with_pending(self, seq: Sequence) -> bool:
        """The token a launched step is sampling ends ``seq`` by length: computing past it would be waste, and could
        pass max_model_len."""
        return bool(seq.num_pending_tokens) and seq.reaches_length_limit(self.max_model_len, with_pending=True)

    def on_step_launched(self, output: SchedulerOutput) -> None:
        """The step is on the device, which runs steps in order: its K/V are written before any later step reads
        them, so its tokens count as computed now, and the tokens it samples are pending until the engine appends
        them."""
        for s in output.scheduled:
            s.seq.num_computed_tokens += s.num_new_tokens
            s.seq.num_pending_tokens += s.samples_token

    def update_from_output(self, output: SchedulerOutput, sampled: Seq[int | Seq[int] | None]) -> list[int]:
        """A launched step's sampled token ids are back (``sampled[i]`` for ``output.scheduled[i]``, None where it
        sampled nothing; a row with drafts: its accepted drafts, then the token after them): append each to its
        sequence and end the sequences a token ends. Returns the row of each token appended, in order (a row with
        accepted drafts once per token); a sequence that stopped or was aborted since the step was scheduled drops
        its tokens, and one a token ends drops the tokens after it.

        A row's rejected drafts leave its computed count first, so no page is hashed over them; then newly full
        pages are made findable, so a sequence its token finishes still leaves them cached.
        """
        rows = [[] if t is None else [t] if isinstance(t, int) else list(t) for t in sampled]
        for s, tokens in zip(output.scheduled, rows, strict=True):
            if s.draft_token_ids:
                accepted = len(tokens) - 1
                self.num_draft_tokens += len(s.draft_token_ids)
                self.num_accepted_tokens += accepted
                if not s.seq.is_finished:
                    s.seq.num_computed_tokens -= len(s.draft_token_ids) - accepted
            if not s.seq.is_finished:  # a finished one (stopped, aborted) has its pages freed already
                self.block_manager.cache_full_pages(s.seq)
        appended = []
        for row, (s, tokens) in enumerate(zip(output.scheduled, rows, strict=True)):
            seq = s.seq
            seq.num_pending_tokens -= s.samples_token
            for token_id in tokens:
                if seq.is_finished:
                    break
                seq.output_token_ids.append(token_id)
                self.num_generation_tokens += 1
                if seq.num_output_tokens == 1:
                    self.num_prompt_tokens += seq.num_prompt_tokens
                status = self._stop_status(seq, token_id)
                if status is not None:
                    self.finish(seq, status)
                appended.append(row)
        return appended

    def _stop_status(self, seq: Sequence, token_id: int) -> SequenceStatus | None:
        """Token-level stops in vLLM's order: a broken grammar first (the sequence ends with an error), a stop token
        (EOS unless ignored, or a stop id; only once min_tokens are out), a complete grammar (its matcher consumes
        every token), the length limit, then a loop at the output's end (``repetition_detection``, once min_tokens are
        out). Stop strings need the text: the engine checks those."""
        params = seq.sampling_params
        if seq.thinking is not None:
            seq.thinking.accept(token_id)
        # The matcher consumes stop tokens too: a grammar that broke while filling its mask allows only EOS, which
        # must end the sequence with the error, not as a "stop".
        complete = seq.grammar is not None and seq.grammar.accept(token_id)
        if seq.grammar is not None and seq.grammar.error is not None:
            return SequenceStatus.FINISHED_ERROR
        if seq.num_output_tokens >= params.min_tokens and (
            token_id in params.stop_token_ids or (token_id in self.eos_token_ids and not params.ignore_eos)
        ):
            return SequenceStatus.FINISHED_STOPPED
        if complete:  # nothing may follow
            return SequenceStatus.FINISHED_STOPPED
        if seq.reaches_length_limit(self.max_model_len):
            return SequenceStatus.FINISHED_LENGTH
        loops = params.repetition_detection
        if loops is not None and seq.num_output_tokens >= params.min_tokens:
            if ends_in_repetition(seq.output_token_ids, loops):
                return SequenceStatus.FINISHED_REPETITION
        return None

    def finish(self, seq: Sequence, status: SequenceStatus, num_output_tokens: int | None = None) -> None:
        """``num_output_tokens``: where a stop string ended the text, the tokens kept (a verified run of drafts may
        have appended more after it, which decoding one token a step would never have produced)."""
        if not status.is_finished:
            raise ValueError(f"finish() needs a finished status, got {status}")
        if num_output_tokens is not None and num_output_tokens < seq.num_output_tokens:  # ended or not
            self.num_generation_tokens -= seq.num_output_tokens - num_output_tokens
            del seq.output_token_ids[num_output_tokens:]
        if seq.is_finished:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self._release_slots(seq)
        else:
            self.waiting.remove(seq)
        seq.status = status
        self.block_manager.free(seq)
        if self.proposer is not None:
            self.proposer.forget(seq)
        samples = self._requests.get(seq.request_id)
        if samples is not None and all(s.is_finished for s in samples):
            del self._requests[seq.request_id]

    def abort(self, request_id: str) -> list[Sequence]:
        """Finish every unfinished sample of the request at once; returns those it finished."""
        aborted = [s for s in self._requests.get(request_id, []) if not s.is_finished]
        for seq in aborted:
            self.finish(seq, SequenceStatus.FINISHED_ABORTED)
        return aborted

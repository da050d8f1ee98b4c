"""The scheduler driven by a fake engine whose fake KV pool checks every token reads back its own prefix's K/V."""

from __future__ import annotations

import itertools
import random

import pytest

from jllm.block_manager import BlockManager
from jllm.buckets import step_buckets
from jllm.sampling import SamplingParams
from jllm.scheduler import Scheduler
from jllm.sequence import SchedulerOutput, Sequence, SequenceStatus

_ids = itertools.count()


def make_request(
    prompt: list[int], n: int = 1, max_tokens: int | None = 8, request_id: str | None = None, priority: int = 0
):
    request_id = request_id or f"req{next(_ids)}"
    params = SamplingParams(max_tokens=max_tokens, n=n)
    return [
        Sequence(
            seq_id=next(_ids),
            request_id=request_id,
            sample_index=i,
            prompt_token_ids=list(prompt),
            sampling_params=params,
            arrival_time=0.0,
            sampling_seed=i,
            priority=priority,
        )
        for i in range(n)
    ]


def make_scheduler(
    num_pages=64,
    page_size=4,
    caching=True,
    max_num_seqs=8,
    budget=64,
    max_model_len=128,
    long_prefill=0,
    step_sizes=(),
    policy="fcfs",
):
    bm = BlockManager(num_pages, page_size, caching)
    return Scheduler(
        bm,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=budget,
        max_model_len=max_model_len,
        long_prefill_token_threshold=long_prefill,
        step_sizes=step_sizes,
        policy=policy,
    )


def fingerprints(tokens: list[int], h: int = 0) -> list[int]:
    """What a token's K/V depends on: the token, its position and everything before it (``h``: the fingerprint of
    the token before the first, 0 for none)."""
    out = []
    for t in tokens:
        h = hash((h, t))
        out.append(h)
    return out


def first_difference(got: list, want: list) -> int:
    return next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))


class FakeEngine:
    """The engine's side of the contract, with a KV pool of fingerprints instead of arrays.

    ``pipelined``: async scheduling, as ``LLMEngine`` does it: each step is launched before the previous one's
    sampled tokens are appended, so a decode's input may be a token only the fake device knows yet.
    """

    def __init__(
        self, sched: Scheduler, rng: random.Random | None = None, stop_prob: float = 0.0, pipelined: bool = False
    ) -> None:
        self.sched, self.bm = sched, sched.block_manager
        self.rng, self.stop_prob, self.pipelined = rng or random.Random(0), stop_prob, pipelined
        self.pool: dict[int, list[int | None]] = {}  # page -> the fingerprint at each offset (None: never written)
        self.known: dict[int, tuple[list[int], list[int]]] = {}  # seq_id -> (device tokens, fingerprints) last seen
        self.seqs: list[Sequence] = []
        # The launched step whose tokens the host has not appended yet, and those tokens by seq_id.
        self.in_flight: SchedulerOutput | None = None
        self.in_flight_tokens: dict[int, int] = {}

    def add(self, seqs: list[Sequence]) -> None:
        self.seqs.extend(seqs)
        self.sched.add(seqs)

    def device_tokens(self, seq: Sequence) -> list[int]:
        """Every token the device knows: the host's, plus the one it sampled and the host has not appended yet."""
        return seq.token_ids + ([self.in_flight_tokens[seq.seq_id]] if seq.num_pending_tokens else [])

    def device_fingerprints(self, seq: Sequence, end: int) -> list[int]:
        """``fingerprints(self.device_tokens(seq)[:end])``, from the ones last computed for ``seq`` where its tokens
        still begin with theirs (recomputed from the first token at every step they were a sixth of the random
        workloads' time)."""
        tokens = self.device_tokens(seq)[:end]
        known, fps = self.known.get(seq.seq_id, ([], []))
        if known[: len(tokens)] == tokens:  # no token past those (a recomputation after preemption too)
            return fps[: len(tokens)]
        if tokens[: len(known)] != known:  # other tokens than last time: from the first
            known, fps = [], []
        fps = fps + fingerprints(tokens[len(known) :], fps[-1] if fps else 0)
        self.known[seq.seq_id] = (tokens, fps)
        return fps

    def read(self, seq: Sequence, n: int) -> list[int | None]:
        """What attention reads for the first ``n`` tokens of ``seq``: each one's slot in the pool, in order."""
        size = self.bm.page_size
        pages = [self.pool.get(page) or [None] * size for page in seq.block_table[: -(-n // size)]]
        return list(itertools.chain.from_iterable(pages))[:n]

    def step(self) -> SchedulerOutput:
        sched = self.sched
        out = sched.schedule()
        assert out.num_batched_tokens <= sched.max_num_batched_tokens
        assert sched.num_running <= sched.max_num_seqs
        assert len({id(s.seq) for s in out.scheduled}) == len(out.scheduled)
        sampled = {}
        for s in out.scheduled:
            seq = s.seq
            assert seq.status is SequenceStatus.RUNNING and s.num_new_tokens > 0
            end = seq.num_computed_tokens + s.num_new_tokens
            assert end <= seq.num_tokens_with_pending and len(seq.block_table) >= self.bm.num_pages_needed(end)
            assert end <= sched.max_model_len
            fps = self.device_fingerprints(seq, end)
            computed = seq.num_computed_tokens
            read = self.read(seq, computed)  # attention reads the cached/shared/earlier K/V
            assert read == fps[:computed], f"seq {seq.seq_id} reads wrong K/V at {first_difference(read, fps)}"
            for t in range(computed, end):
                page, offset = seq.block_table[t // self.bm.page_size], t % self.bm.page_size
                assert self.bm.ref_count(page) == 1, "write into a shared page"
                self.pool.setdefault(page, [None] * self.bm.page_size)[offset] = fps[t]
            if s.samples_token:  # what the device samples from this step's logits
                sampled[seq.seq_id] = (seq.sampling_seed * 31 + end * 17 + seq.seq_id) % 7
        sched.on_step_launched(out)
        if self.pipelined:
            finished, tokens = self.in_flight, self.in_flight_tokens
            self.in_flight, self.in_flight_tokens = (out, sampled) if out.scheduled else (None, {})
        else:
            finished, tokens = out, sampled
        if finished is not None:
            self.finish(finished, tokens)
        self.check()
        return out

    def finish(self, out: SchedulerOutput, tokens: dict[int, int]) -> None:
        """The host learns the step's sampled tokens: the scheduler appends them and ends sequences by length;
        a random stop stands for a stop string, which the engine reports back."""
        sched = self.sched
        sampled = [tokens[s.seq.seq_id] if s.samples_token else None for s in out.scheduled]
        for row in sched.update_from_output(out, sampled):
            seq = out.scheduled[row].seq
            assert seq.output_token_ids[-1] == tokens[seq.seq_id]
            max_tokens = seq.sampling_params.max_tokens or sched.max_model_len
            ends = seq.num_output_tokens >= max_tokens or seq.num_tokens >= sched.max_model_len
            assert (seq.status is SequenceStatus.FINISHED_LENGTH) == ends
            if not ends and self.rng.random() < self.stop_prob:
                sched.finish(seq, SequenceStatus.FINISHED_STOPPED)

    def check(self) -> None:
        self.bm.check_invariants(self.sched.running)
        for seq in self.sched.waiting:
            assert seq.status is SequenceStatus.WAITING and not seq.block_table
        for seq in self.sched.running:
            assert seq.status is SequenceStatus.RUNNING

    def run_until_done(self, max_steps: int = 10_000) -> int:
        for step in range(max_steps):
            if not self.sched.has_unfinished() and self.in_flight is None:
                return step
            self.step()
        raise AssertionError(f"still unfinished after {max_steps} steps: livelock?")


def chunks(out: SchedulerOutput) -> list[tuple[str, int]]:
    return [(s.seq.request_id, s.num_new_tokens) for s in out.scheduled]


def test_chunked_prefill_splits_prompt_by_budget() -> None:
    engine = FakeEngine(make_scheduler(budget=16))
    [seq] = make_request(list(range(40)), max_tokens=3, request_id="a")
    engine.add([seq])
    outs = [engine.step() for _ in range(5)]
    assert [chunks(o) for o in outs] == [[("a", 16)], [("a", 16)], [("a", 8)], [("a", 1)], [("a", 1)]]
    assert [o.scheduled[0].samples_token for o in outs] == [False, False, True, True, True]
    assert seq.status is SequenceStatus.FINISHED_LENGTH and seq.num_output_tokens == 3
    assert not engine.sched.has_unfinished()
    assert engine.bm.num_allocated_pages == 0


def test_decode_and_prefill_mixed_in_one_step() -> None:
    engine = FakeEngine(make_scheduler(budget=16))
    engine.add(make_request(list(range(10)), max_tokens=20, request_id="a"))
    assert chunks(engine.step()) == [("a", 10)]
    engine.add(make_request(list(range(50, 80)), max_tokens=20, request_id="b"))
    assert chunks(engine.step()) == [("a", 1), ("b", 15)]
    assert chunks(engine.step()) == [("a", 1), ("b", 15)]
    assert chunks(engine.step()) == [("a", 1), ("b", 1)]


def test_long_prefill_threshold_caps_each_prompt_s_chunk_so_prompts_share_a_step() -> None:
    engine = FakeEngine(make_scheduler(budget=16, long_prefill=6))
    engine.add(make_request(list(range(20)), max_tokens=4, request_id="a"))
    engine.add(make_request(list(range(50, 60)), max_tokens=4, request_id="b"))
    assert chunks(engine.step()) == [("a", 6), ("b", 6)]
    assert chunks(engine.step()) == [("a", 6), ("b", 4)]
    assert chunks(engine.step()) == [("a", 6), ("b", 1)]
    assert chunks(engine.step()) == [("a", 2), ("b", 1)]  # a decode is never held back by the cap


def test_a_step_just_past_a_step_size_ends_its_newest_prefill_chunk_on_it() -> None:
    """Four decodes beside a 16-token prompt make 20 tokens: with sizes 8 / 16 / 32 the prompt's chunk is cut to 12
    (the step fills 16 instead of padding to 32), and its last 4 tokens ride with the decodes in the next step."""
    engine = FakeEngine(make_scheduler(budget=32, step_sizes=(8, 16, 32)))
    for rid in "abcd":
        engine.add(make_request([1, 2], max_tokens=10, request_id=rid))
    assert chunks(engine.step()) == [(r, 2) for r in "abcd"]
    engine.add(make_request(list(range(10, 26)), max_tokens=4, request_id="e"))
    assert chunks(engine.step()) == [(r, 1) for r in "abcd"] + [("e", 12)]
    out = engine.step()
    assert chunks(out) == [(r, 1) for r in "abcd"] + [("e", 4)] and out.scheduled[-1].samples_token


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        ([20], [("p0", 16)]),  # 4 past 16, a quarter of the way to 32: cut to 16
        ([26], [("p0", 26)]),  # past half way to 32: padded, not cut
        ([12, 6], [("p0", 12), ("p1", 4)]),  # the newest chunk gives the excess
        ([17, 1], [("p0", 15), ("p1", 1)]),  # each keeps one token at least; the one before gives the rest
        ([1] * 17, [(f"p{i}", 1) for i in range(17)]),  # one-token chunks: nothing to cut
        ([7], [("p0", 7)]),  # below the smallest size: untouched
        ([16], [("p0", 16)]),  # on a size
    ],
)
def test_prefill_chunks_are_cut_only_where_a_step_passes_a_size_by_at_most_half_the_gap(prompts, expected) -> None:
    sched = make_scheduler(budget=32, max_num_seqs=32, step_sizes=(8, 16, 32))
    for i, n in enumerate(prompts):
        sched.add(make_request(list(range(n)), request_id=f"p{i}"))
    assert chunks(sched.schedule()) == expected


def test_negative_long_prefill_threshold_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"long_prefill_token_threshold=-1 must be >= 0"):
        make_scheduler(long_prefill=-1)


def test_max_num_seqs_caps_running() -> None:
    engine = FakeEngine(make_scheduler(max_num_seqs=2))
    for rid in "abc":
        engine.add(make_request([1, 2, 3], max_tokens=2, request_id=rid))
    assert chunks(engine.step()) == [("a", 3), ("b", 3)]
    assert engine.sched.num_waiting == 1
    assert chunks(engine.step()) == [("a", 1), ("b", 1)]  # both finish at max_tokens=2
    assert chunks(engine.step()) == [("c", 3)]


def test_waiting_head_blocks_later_requests() -> None:
    engine = FakeEngine(make_scheduler(num_pages=9, page_size=4))  # 8 usable pages
    engine.add(make_request(list(range(20)), max_tokens=10, request_id="a"))  # 5 pages
    engine.add(make_request(list(range(100, 116)), max_tokens=10, request_id="b"))  # 4 pages: does not fit yet
    engine.add(make_request([7], max_tokens=2, request_id="c"))  # would fit, but must not overtake b
    assert chunks(engine.step()) == [("a", 20)]
    assert [s.request_id for s in engine.sched.waiting] == ["b", "c"]
    engine.run_until_done()


def test_prefix_hit_on_second_request_shares_pages() -> None:
    engine = FakeEngine(make_scheduler(page_size=4))
    system = list(range(100, 116))
    [a] = make_request(system + [1, 2, 3], max_tokens=5, request_id="a")
    engine.add([a])
    engine.step()
    [b] = make_request(system + [9], max_tokens=5, request_id="b")
    engine.add([b])
    out = engine.step()
    assert chunks(out) == [("a", 1), ("b", 1)]
    assert b.num_cached_tokens == 16 and b.block_table[:4] == a.block_table[:4]
    assert engine.bm.prefix_cache_hits == 16
    engine.run_until_done()
    assert engine.bm.num_allocated_pages == 0


def test_siblings_prefill_prompt_once_then_fork() -> None:
    engine = FakeEngine(make_scheduler(page_size=4, caching=False))
    seqs = make_request(list(range(10)), n=3, max_tokens=4, request_id="a")
    engine.add(seqs)
    out = engine.step()
    assert [(s.seq.sample_index, s.num_new_tokens) for s in out.scheduled] == [(0, 10)]
    out = engine.step()
    assert [(s.seq.sample_index, s.num_new_tokens) for s in out.scheduled] == [(0, 1), (1, 2), (2, 2)]
    shared = seqs[0].block_table[:2]
    assert all(s.block_table[:2] == shared and s.num_cached_tokens == 8 for s in seqs[1:])
    assert [engine.bm.ref_count(p) for p in shared] == [3, 3]
    engine.run_until_done()
    assert all(s.status is SequenceStatus.FINISHED_LENGTH for s in seqs)
    assert engine.bm.num_allocated_pages == 0


def test_sibling_prefills_itself_when_sample_zero_finished_first() -> None:
    engine = FakeEngine(make_scheduler(page_size=4, max_num_seqs=1))
    seqs = make_request(list(range(10)), n=2, max_tokens=1, request_id="a")
    engine.add(seqs)
    assert [s.seq.sample_index for s in engine.step().scheduled] == [0]
    assert seqs[0].is_finished
    out = engine.step()
    assert [(s.seq.sample_index, s.num_new_tokens) for s in out.scheduled] == [(1, 2)]  # prefix cache hit
    assert not engine.sched.has_unfinished()


def test_preemption_takes_newest_first_and_resumes_to_same_state() -> None:
    sched = make_scheduler(num_pages=7, page_size=4, max_num_seqs=3)  # 6 usable pages
    engine = FakeEngine(sched)
    a, b, c = (make_request([i] * 8, max_tokens=12, request_id=r)[0] for i, r in enumerate("abc"))
    for seq in (a, b, c):
        engine.add([seq])
    assert chunks(engine.step()) == [("a", 8), ("b", 8), ("c", 8)]  # all 6 pages
    c_tokens = list(c.token_ids)
    out = engine.step()  # a's 9th token needs a page: c, the newest, goes
    assert out.preempted == [c] and chunks(out) == [("a", 1), ("b", 1)]
    assert c.status is SequenceStatus.WAITING and c.num_computed_tokens == 0 and c.block_table == []
    assert c.num_preemptions == 1 and sched.num_preemptions == 1 and sched.waiting[0] is c
    preempted = [o.preempted for o in (engine.step() for _ in range(4))]
    assert [p for p in preempted if p] == [[b]]  # the next page shortage takes b, never a
    assert list(sched.waiting) == [b, c]
    resumed = {}
    while sched.has_unfinished():
        for s in engine.step().scheduled:
            resumed.setdefault(s.seq.request_id, s.num_new_tokens if s.seq.num_preemptions else 0)
    assert c.token_ids[: len(c_tokens)] == c_tokens  # recompute reproduced the state the fake pool checked
    assert resumed["c"] == len(c_tokens)  # recomputes prompt + its first output token in one chunk
    assert a.num_preemptions == 0 and all(s.status is SequenceStatus.FINISHED_LENGTH for s in (a, b, c))
    assert engine.bm.num_allocated_pages == 0


def test_the_priority_policy_admits_the_most_urgent_waiting_request_first() -> None:
    engine = FakeEngine(make_scheduler(max_num_seqs=1, policy="priority"))
    for rid, priority in [("late", 5), ("urgent", 0), ("later", 5), ("soon", 1)]:
        engine.add(make_request([1, 2, 3], max_tokens=2, request_id=rid, priority=priority))
    order = []
    while engine.sched.has_unfinished():
        order += [s.seq.request_id for s in engine.step().scheduled if s.seq.request_id not in order]
    assert order == ["urgent", "soon", "late", "later"]  # equal priorities keep their arrival order


def test_the_priority_policy_preempts_the_least_urgent_running_sequence_even_the_oldest() -> None:
    sched = make_scheduler(num_pages=7, page_size=4, max_num_seqs=3, policy="priority")  # 6 usable pages
    engine = FakeEngine(sched)
    x, y, z = (
        make_request([i] * 8, max_tokens=12, request_id=r, priority=p)[0]
        for i, r, p in [(0, "x", 9), (1, "y", 0), (2, "z", 1)]
    )
    for seq in (x, y, z):
        engine.add([seq])
    assert chunks(engine.step()) == [("y", 8), ("z", 8), ("x", 8)]  # admitted most urgent first
    out = engine.step()  # y's 9th token needs a page: x, the least urgent (and the oldest), goes
    assert out.preempted == [x] and chunks(out) == [("y", 1), ("z", 1)]
    assert sched.waiting[0] is x
    engine.run_until_done()
    assert y.num_preemptions == 0 and all(s.status is SequenceStatus.FINISHED_LENGTH for s in (x, y, z))
    fcfs = FakeEngine(make_scheduler(num_pages=7, page_size=4, max_num_seqs=3))  # the default: the newest goes
    seqs = [make_request([i] * 8, max_tokens=12, request_id=r)[0] for i, r in enumerate("xyz")]
    for seq in seqs:
        fcfs.add([seq])
    fcfs.step()
    assert fcfs.step().preempted == [seqs[2]]


def test_an_unknown_scheduling_policy_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="scheduling policy 'lifo' is not one of fcfs, priority"):
        make_scheduler(policy="lifo")


def test_sequence_filling_the_pool_alone_always_progresses() -> None:
    sched = make_scheduler(num_pages=5, page_size=4, budget=8, max_model_len=64)  # 16 tokens of KV
    engine = FakeEngine(sched)
    for r in "abcd":
        engine.add(make_request([ord(r)] * 6, max_tokens=10, request_id=r))
    engine.run_until_done(max_steps=500)
    assert sched.num_preemptions > 0
    assert engine.bm.num_allocated_pages == 0


def test_abort_frees_pages_at_once() -> None:
    sched = make_scheduler(page_size=4)
    engine = FakeEngine(sched)
    engine.add(make_request(list(range(10)), n=2, max_tokens=50, request_id="a"))
    engine.add(make_request(list(range(20, 30)), max_tokens=50, request_id="b"))
    engine.step()
    engine.step()
    out = sched.schedule()  # abort arrives while this step runs
    sched.on_step_launched(out)
    aborted = sched.abort("a")
    assert len(aborted) == 2 and all(s.status is SequenceStatus.FINISHED_ABORTED and not s.block_table for s in aborted)
    assert sched.abort("a") == []
    [b] = sched.running
    assert engine.bm.num_allocated_pages == len(b.block_table)
    appended = sched.update_from_output(out, [7 if s.samples_token else None for s in out.scheduled])
    assert [out.scheduled[row].seq for row in appended] == [b]  # the aborted ones drop their tokens
    engine.bm.check_invariants(sched.running)
    engine.add(make_request([1] * 100, max_tokens=20, request_id="c"))  # still waiting: no step ran
    assert [s.status for s in sched.abort("c")] == [SequenceStatus.FINISHED_ABORTED]
    sched.abort("b")
    assert not sched.has_unfinished()
    engine.bm.check_invariants([])
    assert engine.bm.num_free_pages == engine.bm.num_usable_pages


def test_requests_the_pool_can_never_hold_are_rejected() -> None:
    """Prompts too long for the context never get here (``jllm.inputs`` refuses them); the pool is the
    scheduler's own limit."""
    small = make_scheduler(num_pages=9, page_size=4, max_model_len=64)  # 32 tokens of KV
    seqs = make_request([1] * 20, n=2, max_tokens=20)
    small.add(seqs)
    out = small.schedule()
    assert [s for s, _ in out.rejected] == seqs
    assert "needs KV cache for 40 tokens (10 pages of 4) but the pool holds 8 pages (32 tokens)" in out.rejected[0][1]
    small.add(make_request([1] * 20, max_tokens=None))  # None means up to max_model_len=64
    assert "needs KV cache for 64 tokens" in small.schedule().rejected[0][1]
    [rejected] = make_request([1] * 20, max_tokens=40)
    small.add([rejected])
    small.add(make_request([1] * 20, max_tokens=12))  # 32 tokens: fits exactly
    out = small.schedule()
    assert len(out.scheduled) == 1 and [s for s, _ in out.rejected] == [rejected]
    assert rejected.status is SequenceStatus.FINISHED_ABORTED and small.schedule().rejected == []

    capped = make_scheduler(num_pages=9, page_size=4, max_model_len=32)
    capped.add(make_request([1] * 20, max_tokens=None))  # min(20 + inf, 32) fits the pool
    capped.add(make_request([1] * 20, max_tokens=1000))
    assert capped.schedule().rejected == [] and capped.num_running + capped.num_waiting == 2


def test_add_rejects_mixed_or_duplicate_requests() -> None:
    sched = make_scheduler()
    a, b = make_request([1]), make_request([2])
    with pytest.raises(ValueError, match="one request's samples"):
        sched.add(a + b)
    sched.add(a)
    with pytest.raises(ValueError, match="already scheduled"):
        sched.add(make_request([1], request_id=a[0].request_id))


CONFIGS = [  # num_pages, page_size, caching, max_num_seqs, budget, max_model_len, long_prefill_token_threshold
    (12, 4, True, 4, 16, 48, 0),  # max_model_len past the pool: max_tokens=None is rejected
    (12, 4, False, 4, 16, 40, 5),
    (6, 2, True, 3, 5, 10, 0),  # one sequence can fill the whole pool
    (40, 8, True, 8, 64, 96, 8),
    (20, 1, True, 6, 4, 24, 0),
    (12, 16, False, 2, 32, 160, 0),
]


# pipelined (the engine's async scheduling) with and without the step-size alignment; unpipelined without; the
# priority policy (random priorities) pipelined, in the full suite only (the fast subset keeps under two minutes)
@pytest.mark.parametrize(
    ("pipelined", "aligned", "policy"),
    [
        (False, False, "fcfs"),
        (True, False, "fcfs"),
        (True, True, "fcfs"),
        pytest.param(True, False, "priority", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("config", CONFIGS)
def test_random_workload_keeps_invariants_and_finishes(
    config: tuple, seed: int, pipelined: bool, aligned: bool, policy: str
) -> None:
    num_pages, page_size, caching, max_num_seqs, budget, max_model_len, long_prefill = config
    rng = random.Random(seed)
    sizes = [b.num_tokens for b in step_buckets(budget, max_num_seqs)] if aligned else []
    sched = make_scheduler(
        num_pages, page_size, caching, max_num_seqs, budget, max_model_len, long_prefill, sizes, policy
    )
    engine = FakeEngine(sched, rng, stop_prob=0.05, pipelined=pipelined)
    prefixes = [[rng.randrange(5) for _ in range(rng.randrange(1, 3 * page_size))] for _ in range(3)]
    requests: list[list[Sequence]] = []
    for _ in range(300):
        if rng.random() < 0.3:
            prompt = rng.choice(prefixes) + [rng.randrange(5) for _ in range(rng.randrange(max_model_len // 2))]
            prompt = prompt[: rng.randrange(1, max_model_len + 2)]
            max_tokens = rng.choice([None, rng.randrange(1, max_model_len // 2), rng.randrange(1, 2 * max_model_len)])
            priority = rng.randrange(3) if policy == "priority" else 0
            seqs = make_request(prompt, n=rng.randrange(1, 4), max_tokens=max_tokens, priority=priority)
            requests.append(seqs)
            engine.add(seqs)
        if requests and rng.random() < 0.03:
            sched.abort(rng.choice(requests)[0].request_id)
            engine.check()
        engine.step()
    engine.run_until_done(max_steps=5_000)
    assert all(s.is_finished for seqs in requests for s in seqs)
    engine.bm.check_invariants([])
    assert engine.bm.num_free_pages == engine.bm.num_usable_pages

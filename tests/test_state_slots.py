"""A hybrid model's recurrent state slots: the allocator, and the scheduler driven by the fake engine of
``test_scheduler`` with a fake state pool that checks every row continues its own state (or starts fresh)."""

from __future__ import annotations

import random

import pytest
from test_scheduler import CONFIGS, FakeEngine, chunks, make_request

from jllm.block_manager import BlockManager
from jllm.scheduler import Scheduler
from jllm.sequence import SchedulerOutput, Sequence, SequenceStatus
from jllm.state_slots import StateSlots


def test_state_slots_hand_out_each_slot_once_and_take_it_back() -> None:
    slots = StateSlots(3)
    assert [slots.acquire(), slots.acquire(), slots.acquire()] == [1, 2, None]  # slot 0 is padding's
    slots.release(1)
    assert slots.num_free == 1 and slots.acquire() == 1


@pytest.mark.parametrize("slot", [0, 2, 5])
def test_releasing_a_slot_not_held_is_refused_naming_it(slot: int) -> None:
    slots = StateSlots(4)
    slots.acquire()
    with pytest.raises(ValueError, match=f"state slot {slot}, which is not held"):
        slots.release(slot)


def test_state_slots_need_one_beside_the_reserved_slot() -> None:
    with pytest.raises(ValueError, match="num_slots=1 must be >= 2"):
        StateSlots(1)


class StateCheckingEngine(FakeEngine):
    """``FakeEngine`` with a fake recurrent state pool: slot -> the fingerprint of the last token folded into it. At
    launch every row must start fresh (nothing computed before: the device zeroes its state) or find its own
    previous token's state in its slot; running sequences hold distinct slots, never slot 0."""

    def __init__(self, sched: Scheduler, **kwargs) -> None:
        super().__init__(sched, **kwargs)
        self.states: dict[int, int] = {}
        self.fresh_starts = 0
        launch = sched.on_step_launched

        def check_then_launch(out: SchedulerOutput) -> None:
            self.check_states(out)
            launch(out)

        sched.on_step_launched = check_then_launch

    def check_states(self, out: SchedulerOutput) -> None:
        held = [seq.state_slot for seq in self.sched.running]
        assert 0 not in held and len(set(held)) == len(held), held
        for s in out.scheduled:
            seq = s.seq
            fps = self.device_fingerprints(seq, s.start + s.num_new_tokens)
            if s.start == 0:
                self.fresh_starts += 1
            else:
                assert self.states.get(seq.state_slot) == fps[s.start - 1], f"seq {seq.seq_id} reads another state"
            self.states[seq.state_slot] = fps[-1]

    def check(self) -> None:
        super().check()
        assert all(seq.state_slot == 0 for seq in self.sched.waiting)


def hybrid_scheduler(num_pages: int = 64, page_size: int = 4, max_num_seqs: int = 8, budget: int = 64, **kwargs):
    return Scheduler(
        BlockManager(num_pages, page_size, enable_prefix_caching=False),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=budget,
        max_model_len=kwargs.pop("max_model_len", 128),
        state_slots=StateSlots(max_num_seqs + 1),
        **kwargs,
    )


def test_samples_of_one_request_each_prefill_into_their_own_slot() -> None:
    """n > 1 on a hybrid model: no sibling waits to fork sample 0's pages (a page holds no recurrent state); each
    prefills the prompt itself, in its own state slot."""
    engine = StateCheckingEngine(hybrid_scheduler())
    seqs = make_request(list(range(10)), n=3, max_tokens=4, request_id="a")
    engine.add(seqs)
    out = engine.step()
    assert [(s.seq.sample_index, s.num_new_tokens) for s in out.scheduled] == [(0, 10), (1, 10), (2, 10)]
    assert sorted(s.state_slot for s in seqs) == [1, 2, 3]
    engine.run_until_done()
    assert all(s.status is SequenceStatus.FINISHED_LENGTH and s.state_slot == 0 for s in seqs)
    assert engine.sched.state_slots.num_free == 8


def test_preempted_sequence_gives_its_slot_back_and_restarts_fresh() -> None:
    sched = hybrid_scheduler(num_pages=7, max_num_seqs=3)  # 6 usable pages of 4
    engine = StateCheckingEngine(sched)
    a, b, c = (make_request([i] * 8, max_tokens=12, request_id=r)[0] for i, r in enumerate("abc"))
    for seq in (a, b, c):
        engine.add([seq])
    assert chunks(engine.step()) == [("a", 8), ("b", 8), ("c", 8)]
    out = engine.step()
    assert out.preempted == [c] and c.state_slot == 0 and sched.state_slots.num_free == 1
    engine.run_until_done()
    assert c.num_preemptions >= 1 and engine.fresh_starts > 3  # c started fresh again on resumption
    assert sched.state_slots.num_free == 3


def test_abort_frees_the_state_slots_at_once() -> None:
    sched = hybrid_scheduler()
    engine = StateCheckingEngine(sched)
    engine.add(make_request(list(range(10)), n=2, max_tokens=50, request_id="a"))
    engine.add(make_request(list(range(20, 30)), max_tokens=50, request_id="b"))
    engine.step()
    assert sched.state_slots.num_free == 5
    aborted = sched.abort("a")
    assert len(aborted) == 2 and all(s.state_slot == 0 for s in aborted)
    assert sched.state_slots.num_free == 7


@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("config", CONFIGS)
def test_random_hybrid_workload_keeps_every_row_on_its_own_state(config: tuple, seed: int, pipelined: bool) -> None:
    """Chunked prefills, decodes, preemptions, aborts, stops and n > 1 at random: every row reads its own state."""
    num_pages, page_size, _, max_num_seqs, budget, max_model_len, long_prefill = config
    rng = random.Random(seed)
    sched = hybrid_scheduler(
        num_pages,
        page_size,
        max_num_seqs,
        budget,
        max_model_len=max_model_len,
        long_prefill_token_threshold=long_prefill,
    )
    engine = StateCheckingEngine(sched, rng=rng, stop_prob=0.05, pipelined=pipelined)
    requests: list[list[Sequence]] = []
    for _ in range(200):
        if rng.random() < 0.3:
            prompt = [rng.randrange(5) for _ in range(rng.randrange(1, max_model_len))]  # checked by jllm.inputs
            max_tokens = rng.choice([None, rng.randrange(1, max_model_len // 2)])
            requests.append(make_request(prompt, n=rng.randrange(1, 4), max_tokens=max_tokens))
            engine.add(requests[-1])
        if requests and rng.random() < 0.03:
            sched.abort(rng.choice(requests)[0].request_id)
            engine.check()
        engine.step()
    engine.run_until_done(max_steps=5_000)
    assert all(s.is_finished and s.state_slot == 0 for seqs in requests for s in seqs)
    assert sched.state_slots.num_free == max_num_seqs

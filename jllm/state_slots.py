"""Which running sequence holds which recurrent state slot of a hybrid model: plain Python, the scheduler's to
consult.

Slot 0 is reserved for padding rows (as page 0 is); slots 1..num_slots-1 each hold one running sequence's recurrent
states in every recurrent layer (``jllm.models.recurrent_state``). A sequence takes a slot at admission and gives it
back when it finishes, is aborted or is preempted (preemption recomputes from scratch, so nothing in the slot is
kept). The engine sizes the pools ``max_num_seqs + 1``, so a slot is free whenever a sequence may be admitted.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations


class StateSlots:
    def __init__(self, num_slots: int) -> None:
        if num_slots < 2:
            raise ValueError(f"num_slots={num_slots} must be >= 2 (slot 0 is reserved for padding rows)")
        self.num_slots = num_slots
        self._free = list(range(num_slots - 1, 0, -1))  # popped from the end: the lowest slot first

    @property
    def num_free(self) -> int:
        return len(self._free)

    def acquire(self) -> int | None:
        """A free slot, or None when every slot is held (the caller waits)."""
        return self._free.pop() if self._free else None

    def release(self, slot: int) -> None:
        """``slot`` is free again; refused for the reserved slot, one out of range or one already free."""
        if not 0 < slot < self.num_slots or slot in self._free:
            raise ValueError(f"release of state slot {slot}, which is not held (slots 1..{self.num_slots - 1})")
        self._free.append(slot)

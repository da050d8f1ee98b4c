"""Which adapter sits in which device slot: plain Python, the scheduler's to consult.

Slot 0 is no adapter (zeros); slots 1..max_loras hold adapters. A running sequence holds its adapter's slot (a user
count); an adapter nobody uses stays resident until a slot is wanted for another, the least recently used going
first (vLLM's LRU). When every slot is held, a request for another adapter waits in the queue (the scheduler admits
the others past it) until a slot's users finish. A newly assigned slot is a pending load until the runner writes
the adapter's weights there, before the next step's forward.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from collections import Counter, OrderedDict


class LoRASlots:
    def __init__(self, max_loras: int) -> None:
        if max_loras < 1:
            raise ValueError(f"max_loras={max_loras} must be >= 1")
        self.max_loras = max_loras
        self._resident: OrderedDict[int, int] = OrderedDict()  # adapter id -> slot, least recently used first
        self._users: Counter[int] = Counter()  # adapter id -> running sequences
        self._loads: dict[int, int] = {}  # slot -> adapter id still to be written there

    def acquire(self, lora_int_id: int) -> int | None:
        """The adapter's slot, assigned (evicting the least recently used idle adapter) if it has none; None when
        every slot is held by running sequences (the caller waits)."""
        slot = self._resident.get(lora_int_id)
        if slot is None:
            slot = self._free_slot()
            if slot is None:
                return None
            self._resident[lora_int_id] = slot
            self._loads[slot] = lora_int_id
        self._resident.move_to_end(lora_int_id)
        self._users[lora_int_id] += 1
        return slot

    def release(self, lora_int_id: int) -> None:
        """A running sequence of the adapter left the device (finished or preempted)."""
        if self._users[lora_int_id] < 1:
            raise ValueError(f"release of adapter {lora_int_id} that no running sequence holds")
        self._users[lora_int_id] -= 1
        if not self._users[lora_int_id]:
            del self._users[lora_int_id]

    def evict(self, lora_int_id: int) -> None:
        """Frees the adapter's slot (an unloaded adapter); refused while a running sequence uses it."""
        if self._users[lora_int_id]:
            raise ValueError(f"adapter {lora_int_id} is in use by {self._users[lora_int_id]} running sequences")
        slot = self._resident.pop(lora_int_id, None)
        if slot is not None:
            self._loads.pop(slot, None)

    def take_loads(self) -> dict[int, int]:
        """Slot -> adapter id for every slot assigned since the last call: the writes the device still needs."""
        loads, self._loads = self._loads, {}
        return loads

    def slot_of(self, lora_int_id: int) -> int | None:
        return self._resident.get(lora_int_id)

    def users(self, lora_int_id: int) -> int:
        return self._users[lora_int_id]

    def _free_slot(self) -> int | None:
        taken = set(self._resident.values())
        free = [slot for slot in range(1, self.max_loras + 1) if slot not in taken]
        if free:
            return free[0]
        idle = next((lora_id for lora_id in self._resident if not self._users[lora_id]), None)
        return None if idle is None else self._resident.pop(idle)

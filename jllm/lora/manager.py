"""The engine's adapters: those known (read from their PEFT folders when first named, kept on the host), their device
slots (``jllm.lora.slots``, shared with the scheduler) and the stacked per-layer arrays the forward program takes
(``jllm.models.lora.LoRAWeights``, ``[max_loras + 1, ...]``, slot 0 zeros). Writing an adapter into a slot is one
small compiled update of those arrays (donated): the step programs never recompile for it. Under tensor parallelism
the arrays are split as their base projections are (``jllm.models.lora.AXES``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jllm import parallel
from jllm.lora.peft_files import AdapterError, check_architecture, read_adapter, zero_slot_shapes
from jllm.lora.request import LoRARequest
from jllm.lora.slots import LoRASlots
from jllm.models.lora import AXES, LoRAWeights
from jllm.models.model_args import ModelArgs


class LoRAManager:
    def __init__(
        self,
        args: ModelArgs,
        hf_config: dict[str, Any],
        mesh: Mesh,
        *,
        max_loras: int,
        max_lora_rank: int,
        kv_replicas: int = 1,
    ) -> None:
        """``kv_replicas``: copies of each checkpoint KV head in the model (``LoadedModel.kv_replicas``)."""
        check_architecture(hf_config)
        if args.quant is not None:
            raise AdapterError(f"enable_lora with quantization={args.quant.name!r} is not supported; leave it unset")
        self.args, self.max_lora_rank, self.kv_replicas = args, max_lora_rank, kv_replicas
        self.slots = LoRASlots(max_loras)
        self._adapters: dict[int, tuple[LoRARequest, LoRAWeights]] = {}  # id -> (request, host arrays)
        shapes = zero_slot_shapes(args, max_lora_rank)  # the projections the family's adapters may target
        shardings = LoRAWeights(**{name: parallel.param_sharding(mesh, AXES[name]) for name in shapes})
        self.weights: list[LoRAWeights] = [  # per layer, [max_loras + 1, ...]
            LoRAWeights(
                **{
                    name: jax.device_put(np.zeros((max_loras + 1, *shape[1:]), args.dtype), getattr(shardings, name))
                    for name, shape in shapes.items()
                }
            )
            for _ in range(args.num_layers)
        ]
        self._write = jax.jit(_write_slot, donate_argnums=0, out_shardings=[shardings] * args.num_layers)

    def add(self, request: LoRARequest) -> None:
        """Knows ``request``'s adapter from now on (its files read and checked here, once per id). An id already
        known under another name or path is refused."""
        known = self._adapters.get(request.lora_int_id)
        if known is not None:
            if known[0] != request:
                raise AdapterError(
                    f"lora_int_id={request.lora_int_id} is already adapter {known[0].lora_name!r} at "
                    f"{known[0].lora_path!r}, not {request.lora_name!r} at {request.lora_path!r}"
                )
            return
        weights = read_adapter(request.lora_path, self.args, self.max_lora_rank, self.kv_replicas)
        self._adapters[request.lora_int_id] = (request, weights)

    def remove(self, lora_int_id: int) -> None:
        """Forgets the adapter and frees its slot; refused (``ValueError``) while a running request uses it."""
        self.slots.evict(lora_int_id)
        self._adapters.pop(lora_int_id, None)

    @property
    def adapters(self) -> list[LoRARequest]:
        return [request for request, _ in self._adapters.values()]

    def sync(self) -> None:
        """Writes every newly assigned slot's adapter into the device arrays (before a forward reads them)."""
        for slot, lora_int_id in self.slots.take_loads().items():
            self.weights = self._write(self.weights, jnp.int32(slot), self._adapters[lora_int_id][1])


def _write_slot(weights: list[LoRAWeights], slot: jax.Array, new: LoRAWeights) -> list[LoRAWeights]:
    """``new`` (one slot, every layer: ``[num_layers, ...]``) into slot ``slot`` of each layer's arrays."""
    return [
        jax.tree.map(lambda w, n, i=i: w.at[slot].set(n[i].astype(w.dtype)), layer, new)
        for i, layer in enumerate(weights)
    ]

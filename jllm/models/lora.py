"""LoRA deltas on the fused projections, for a batch whose tokens each carry an adapter slot.

Every adapter resident on the device has a slot in per-layer stacked arrays (slot 0: no adapter, all zeros); the
step passes them apart from the weights, so loading an adapter into a slot changes values, never a program. Each
fused projection has one A ``[slots, in, rank]`` and one B ``[slots, rank, *out]`` laid out as its kernel's output
(``jllm.lora.peft_files`` puts q/k/v's and gate/up's ranks side by side, or a fused module's (Phi-3's
``qkv_proj``) in one rank block, their B rows in the fused layout, and folds the adapter's scaling into B). A token's
delta is ``(x @ A[slot]) @ B[slot]``, taken for every slot at once as two matmuls (``x`` against all slots' A, the
other slots' columns masked to zero, then against all slots' B stacked by rank), with no per-token gather of a
``[T, in, rank]`` tensor: shape-static, and cheap for the few slots a device holds.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jllm.parallel import KV_HEADS

# Each ``LoRAWeights`` field's logical axes (``jllm.parallel``): B split as its base kernel's outputs (q/k/v by KV
# head, gate/up by the MLP axis) where the base is split by columns, A split as its input rows where the base is split
# by rows (o, down: each device's partial product summed by XLA); the other factor replicated.
AXES: dict[str, tuple[str | None, ...]] = {
    "qkv_a": (None, "embed", None),
    "qkv_b": (None, None, KV_HEADS, None, None),
    "o_a": (None, "q_heads", None),
    "o_b": (None, None, "embed"),
    "gate_up_a": (None, "embed", None),
    "gate_up_b": (None, None, None, "mlp"),
    "up_a": (None, "embed", None),
    "up_b": (None, None, "mlp"),
    "down_a": (None, "mlp", None),
    "down_b": (None, None, "embed"),
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoRAWeights:
    """One layer's stacked adapters: per fused projection A ``[slots, in, n * rank]`` and B
    ``[slots, n * rank, *out]`` (scaling folded in), ``n`` the PEFT modules the family's checkpoint has for it
    (q/k/v's three, Phi-3's one ``qkv_proj``). A projection the family lacks is None: a gated MLP's up, a plain MLP's
    gate/up (StarCoder2's ``c_fc``), a mixture of experts' every MLP one."""

    qkv_a: jax.Array  # [L, hidden, n * r]
    qkv_b: jax.Array  # [L, n * r, kv_heads, group + 2, head_dim]
    o_a: jax.Array  # [L, heads * head_dim, r]
    o_b: jax.Array  # [L, r, hidden]
    gate_up_a: jax.Array | None = None  # [L, hidden, n * r]
    gate_up_b: jax.Array | None = None  # [L, n * r, 2, mlp]
    up_a: jax.Array | None = None  # [L, hidden, r]: a plain MLP's
    up_b: jax.Array | None = None  # [L, r, mlp]
    down_a: jax.Array | None = None  # [L, mlp, r]
    down_b: jax.Array | None = None  # [L, r, hidden]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerLoRA:
    """What one layer's projections add: its stacked adapters and each token's slot as a one-hot row."""

    weights: LoRAWeights
    onehot: jax.Array  # [T, L] in the activations' dtype: 1 at each token's slot

    def delta(self, target: str, x: jax.Array) -> jax.Array:
        """``x [T, in]`` -> the target's delta ``[T, *out]``, each token through its own slot's adapter."""
        a, b = getattr(self.weights, f"{target}_a"), getattr(self.weights, f"{target}_b")
        t, (slots, _, rank) = x.shape[0], a.shape
        xa = jnp.einsum("ti,lir->tlr", x, a.astype(x.dtype)) * self.onehot[:, :, None].astype(x.dtype)
        y = xa.reshape(t, slots * rank) @ b.reshape(slots * rank, -1).astype(x.dtype)
        return y.reshape(t, *b.shape[2:])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LoRABatch:
    """A step's adapters: every layer's stacked weights and each token's slot (``StepInputs.lora_slots``)."""

    layers: list[LoRAWeights]
    slots: jax.Array  # [T] int32: each token's adapter slot, 0 = none

    def layer(self, index: int, dtype: jnp.dtype) -> LayerLoRA:
        num_slots = self.layers[index].o_a.shape[0]
        return LayerLoRA(self.layers[index], jax.nn.one_hot(self.slots, num_slots, dtype=dtype))

"""Where every array lives: the device mesh and the one table from logical axes to mesh axes.

Models name logical axes only (``("embed", "q_heads")``); this table turns them into ``PartitionSpec``s.
Megatron-style tensor parallelism: QKV and gate/up split by columns (heads), O and down by rows, embedding and
LM head by vocabulary, the KV pool on its KV-head axis; a mixture of experts' kernels like a dense MLP's, along each
expert's inner axis, with the router replicated. XLA inserts the collectives from these shardings.

A hybrid model's recurrent layers (gated DeltaNet, Mamba2, LFM2's short conv, RWKV, RG-LRU, mLSTM) split the same
way over their heads (``recurrent_heads``: DeltaNet's key-head groups with their value heads, Mamba2's heads, the
short conv's and RWKV's channels, the RG-LRU's and mLSTM's heads),
as vLLM does: each projection's parts column-parallel per head (``layers.StoredParts`` groups a fused projection's
parts by head), the conv channels and the state pools' head axis with them (``StateSpec.axes``), ``out_proj``
row-parallel; Mamba2's B and C (its ``n_groups``) stay replicated.

With fewer KV heads than devices, KV heads are replicated as vLLM does: the model is built with ``tp`` KV heads
(each of the checkpoint's heads repeated ``tp / num_kv_heads`` times), so device d holds exactly the one KV head its
query heads read and a pool page costs every device ``1 / tp`` of its bytes. The only parameter with a KV-head axis
is the fused QKV projection ``[.., kv_heads, group + 2, head_dim]``; orbax checkpoints keep it in a "stored" layout
with the checkpoint's own KV heads, each with its whole query group, so they restore at any TP size.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

TP_AXIS = "tp"
# Second axis of the (tp / replicas, replicas) view of the mesh that places a replicated KV head's copies.
KV_REPLICA_AXIS = "kv_replica"
KV_HEADS = "kv_heads"
RECURRENT_HEADS = "recurrent_heads"

# logical axis -> mesh axis (None = replicated)
LOGICAL_AXIS_RULES: dict[str, str | None] = {
    "vocab": TP_AXIS,
    "embed": None,
    "q_heads": TP_AXIS,
    KV_HEADS: TP_AXIS,
    "mlp": TP_AXIS,  # a dense MLP's inner axis, and each expert's (experts split along their inner dimension)
    "experts": None,  # every device holds a slice of every expert: no expert parallelism
    RECURRENT_HEADS: TP_AXIS,  # a recurrent layer's heads (and the conv channels and states that follow them)
}


def make_mesh(tensor_parallel_size: int = 1, devices: list[jax.Device] | None = None) -> Mesh:
    devices = devices if devices is not None else jax.devices()
    if tensor_parallel_size > len(devices):
        raise ValueError(
            f"tensor_parallel_size={tensor_parallel_size} exceeds the {len(devices)} available "
            f"{devices[0].platform} device(s)"
        )
    return Mesh(np.array(devices[:tensor_parallel_size]), (TP_AXIS,))


def partition_spec(axes: tuple[str | None, ...]) -> PartitionSpec:
    return PartitionSpec(*(LOGICAL_AXIS_RULES.get(a) if a is not None else None for a in axes))


def param_sharding(mesh: Mesh, axes: tuple[str | None, ...]) -> NamedSharding:
    return NamedSharding(mesh, partition_spec(axes))


def kv_pool_sharding(mesh: Mesh) -> NamedSharding:
    """Pool layout ``[planes, num_kv_heads, num_pages, page_size, head_dim]`` (planes: K and V, or one latent row):
    split on the KV-head axis."""
    return NamedSharding(mesh, PartitionSpec(None, LOGICAL_AXIS_RULES[KV_HEADS], None, None, None))


def constrain(x: jax.Array, mesh: Mesh | None, axes: tuple[str | None, ...]) -> jax.Array:
    """``x`` inside a jitted step held as its logical ``axes`` say on ``mesh`` (as is without one): where XLA's own
    choice would split a small replicated computation and gather it back every step (Mamba2's B and C)."""
    if mesh is None or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, param_sharding(mesh, axes))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def device_zeros(shape: tuple[int, ...], dtype: Any, sharding: jax.sharding.Sharding | None = None) -> jax.Array:
    """A zero-filled array made where ``sharding`` puts it (None: the default device), each shard on its own device
    (no host copy). Zero-filled, not empty: ``jnp.empty`` returns uninitialised memory since JAX 0.11."""
    return _zeros_program(tuple(shape), jnp.dtype(dtype), sharding)()


@functools.cache
def _zeros_program(shape: tuple[int, ...], dtype: jnp.dtype, sharding: jax.sharding.Sharding | None) -> Any:
    """One compiled program per shape, dtype and placement: a pool's layers, or a model's like leaves, share it."""
    placed = {} if sharding is None else {"out_shardings": sharding}
    return jax.jit(lambda: jnp.zeros(shape, dtype), **placed)


def check_divisible(
    tensor_parallel_size: int,
    *,
    num_heads: int,
    num_kv_heads: int,
    vocab_size: int,
    intermediate_size: int,
    shared_expert_size: int = 0,
    dense_mlp_sizes: tuple[int, ...] = (),
    head_vocab_size: int | None = None,
    recurrent_sizes: tuple[tuple[str, int], ...] = (),
    attends: bool = True,
) -> None:
    """Refuse a TP size the model's shapes do not split over, naming the numbers. ``recurrent_sizes``: (name, count)
    of what a hybrid model's recurrent layers split (``recurrent_heads``), checked first; ``attends`` False: an
    attention-free model (Mamba), whose heads are placeholders."""
    tp = tensor_parallel_size
    if attends and not _heads_allow(tp, num_heads, num_kv_heads):
        raise ValueError(
            f"tensor_parallel_size={tp} does not fit the model's {num_heads} attention heads and {num_kv_heads} KV "
            "heads: it must divide the attention heads and either divide the KV heads or be a multiple of them "
            f"(KV heads are then replicated); the heads allow {valid_sizes(num_heads, num_kv_heads)}"
        )
    sizes = [*recurrent_sizes, ("vocabulary size", vocab_size), ("MLP intermediate size", intermediate_size)]
    if shared_expert_size:
        sizes.append(("shared expert's intermediate size", shared_expert_size))
    sizes += [("dense layers' MLP intermediate size", n) for n in dense_mlp_sizes]
    if head_vocab_size:
        sizes.append(("LM head's rows (a pruned head)", head_vocab_size))
    for name, n in sizes:
        if n % tp:
            raise ValueError(f"tensor_parallel_size={tp} does not divide the model's {name} of {n}")


def valid_sizes(num_heads: int, num_kv_heads: int) -> list[int]:
    """Every TP size the heads allow (vLLM's rules; the vocabulary and MLP width must divide too)."""
    return [tp for tp in range(1, num_heads + 1) if _heads_allow(tp, num_heads, num_kv_heads)]


def _heads_allow(tp: int, num_heads: int, num_kv_heads: int) -> bool:
    return num_heads % tp == 0 and (num_kv_heads % tp == 0 if tp <= num_kv_heads else tp % num_kv_heads == 0)


def kv_head_replicas(num_kv_heads: int, tensor_parallel_size: int) -> int:
    """How many devices hold a copy of each KV head: 1 unless there are fewer KV heads than devices."""
    return max(1, tensor_parallel_size // num_kv_heads)


def _stored_shape(shape: tuple[int, ...], axes: tuple[str | None, ...], kv_replicas: int) -> tuple[int, ...]:
    """A parameter's shape as saved: the fused QKV axes ``[kv_heads, group + 2]`` without KV-head copies, so each
    stored KV head carries its whole query group (``replicas x`` the model's)."""
    if kv_replicas == 1 or KV_HEADS not in axes:
        return shape
    i = axes.index(KV_HEADS)
    heads, width = shape[i], shape[i + 1]
    return (*shape[:i], heads // kv_replicas, (width - 2) * kv_replicas + 2, *shape[i + 2 :])


def _stored_sharding(mesh: Mesh, axes: tuple[str | None, ...], kv_replicas: int) -> NamedSharding:
    """Sharding of a stored parameter that gives each device the stored KV head its model KV head comes from.

    The KV-head axis splits over the first axis of a ``(tp / replicas, replicas)`` view of the mesh, so device d
    holds stored KV head ``d // replicas``.
    """
    if kv_replicas == 1 or KV_HEADS not in axes:
        return param_sharding(mesh, axes)
    view = Mesh(mesh.devices.reshape(-1, kv_replicas), (TP_AXIS, KV_REPLICA_AXIS))
    return NamedSharding(view, partition_spec(axes))


def stored_struct(
    abstract: jax.ShapeDtypeStruct, mesh: Mesh, axes: tuple[str | None, ...], kv_replicas: int
) -> jax.ShapeDtypeStruct:
    """A model parameter's shape, dtype and sharding in its stored layout: what orbax writes and restores."""
    shape = _stored_shape(abstract.shape, axes, kv_replicas)
    return jax.ShapeDtypeStruct(shape, abstract.dtype, sharding=_stored_sharding(mesh, axes, kv_replicas))


def to_model_layout(x: jax.Array, mesh: Mesh, axes: tuple[str | None, ...], kv_replicas: int) -> jax.Array:
    """A stored parameter -> the model's: stored KV head c becomes model heads ``c * replicas + j``, each with the
    j-th share of c's query group and a copy of c's K and V."""
    if kv_replicas == 1 or KV_HEADS not in axes:
        return x
    i = axes.index(KV_HEADS)

    def split(stored: jax.Array) -> jax.Array:
        s = jnp.moveaxis(stored, (i, i + 1), (0, 1))  # [kv, group + 2, ...]
        kv, width = s.shape[:2]
        q = s[:, : width - 2].reshape(kv * kv_replicas, (width - 2) // kv_replicas, *s.shape[2:])
        k_v = jnp.repeat(s[:, width - 2 :], kv_replicas, axis=0)
        return jnp.moveaxis(jnp.concatenate([q, k_v], axis=1), (0, 1), (i, i + 1))

    return jax.jit(split, out_shardings=param_sharding(mesh, axes))(x)


def to_stored_layout(x: jax.Array, mesh: Mesh, axes: tuple[str | None, ...], kv_replicas: int) -> jax.Array:
    """The inverse of ``to_model_layout``: one copy of each KV head with its whole query group, for saving."""
    if kv_replicas == 1 or KV_HEADS not in axes:
        return x
    i = axes.index(KV_HEADS)

    def merge(model: jax.Array) -> jax.Array:
        m = jnp.moveaxis(model, (i, i + 1), (0, 1))  # [kv * replicas, group / replicas + 2, ...]
        heads, width = m.shape[:2]
        q = m[:, : width - 2].reshape(heads // kv_replicas, (width - 2) * kv_replicas, *m.shape[2:])
        k_v = m[::kv_replicas, width - 2 :]
        return jnp.moveaxis(jnp.concatenate([q, k_v], axis=1), (0, 1), (i, i + 1))

    return jax.jit(merge, out_shardings=_stored_sharding(mesh, axes, kv_replicas))(x)

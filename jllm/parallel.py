"""Where every array lives: the device mesh and the one table from logical axes to mesh axes.

Models name logical axes only (``("embed", "q_heads")``); this table turns them into ``PartitionSpec``s.
Megatron-style tensor parallelism: QKV and gate/up split by columns (heads), O and down by rows, embedding and
LM head by vocabulary, the KV pool on its KV-head axis. XLA inserts the collectives from these shardings.

With fewer KV heads than devices, KV heads are replicated as vLLM does: the model is built with ``tp`` KV heads
(each of the checkpoint's heads repeated ``tp / num_kv_heads`` times), so device d holds exactly the one KV head its
query heads read and a pool page costs every device ``1 / tp`` of its bytes. Checkpoints (safetensors and orbax)
keep the model's own KV heads; the "stored" layout below maps one to the other without moving a byte.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

TP_AXIS = "tp"
# Second axis of the (tp / replicas, replicas) view of the mesh that places a replicated KV head's copies.
KV_REPLICA_AXIS = "kv_replica"
KV_HEADS = "kv_heads"

# logical axis -> mesh axis (None = replicated)
LOGICAL_AXIS_RULES: dict[str, str | None] = {
    "vocab": TP_AXIS,
    "embed": None,
    "q_heads": TP_AXIS,
    KV_HEADS: TP_AXIS,
    "mlp": TP_AXIS,
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
    """Pool layout ``[2, num_kv_heads, num_pages, page_size, head_dim]``: split on the KV-head axis."""
    return NamedSharding(mesh, PartitionSpec(None, LOGICAL_AXIS_RULES[KV_HEADS], None, None, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_divisible(
    tensor_parallel_size: int, *, num_heads: int, num_kv_heads: int, vocab_size: int, intermediate_size: int
) -> None:
    """Refuse a TP size the model's shapes do not split over, naming the numbers."""
    tp = tensor_parallel_size
    if not _heads_allow(tp, num_heads, num_kv_heads):
        raise ValueError(
            f"tensor_parallel_size={tp} does not fit the model's {num_heads} attention heads and {num_kv_heads} KV "
            "heads: it must divide the attention heads and either divide the KV heads or be a multiple of them "
            f"(KV heads are then replicated); the heads allow {valid_sizes(num_heads, num_kv_heads)}"
        )
    for name, n in (("vocabulary size", vocab_size), ("MLP intermediate size", intermediate_size)):
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
    """A parameter's shape in the checkpoint: the KV-head axis without its replicas."""
    return tuple(n // kv_replicas if a == KV_HEADS else n for n, a in zip(shape, axes, strict=True))


def _stored_sharding(mesh: Mesh, axes: tuple[str | None, ...], kv_replicas: int) -> NamedSharding:
    """Sharding of a parameter in its stored shape that gives every device the same bytes as the model's.

    The KV-head axis splits over the first axis of a ``(tp / replicas, replicas)`` view of the mesh, so that device
    d holds stored KV head ``d // replicas``: the one that model KV head d repeats.
    """
    if kv_replicas == 1 or KV_HEADS not in axes:
        return param_sharding(mesh, axes)
    view = Mesh(mesh.devices.reshape(-1, kv_replicas), (TP_AXIS, KV_REPLICA_AXIS))
    return NamedSharding(view, partition_spec(axes))


def stored_struct(
    abstract: jax.ShapeDtypeStruct, mesh: Mesh, axes: tuple[str | None, ...], kv_replicas: int
) -> jax.ShapeDtypeStruct:
    """A model parameter's shape, dtype and sharding in its stored layout: what loaders read and orbax writes."""
    shape = _stored_shape(abstract.shape, axes, kv_replicas)
    return jax.ShapeDtypeStruct(shape, abstract.dtype, sharding=_stored_sharding(mesh, axes, kv_replicas))


def to_model_layout(x: jax.Array, mesh: Mesh, axes: tuple[str | None, ...], kv_replicas: int) -> jax.Array:
    """A parameter in its stored layout -> the model's (KV heads repeated), reusing each device's buffer."""
    if kv_replicas == 1 or KV_HEADS not in axes:
        return x
    shape = tuple(n * kv_replicas if a == KV_HEADS else n for n, a in zip(x.shape, axes, strict=True))
    return _relayout(x, shape, param_sharding(mesh, axes))


def to_stored_layout(x: jax.Array, mesh: Mesh, axes: tuple[str | None, ...], kv_replicas: int) -> jax.Array:
    """The inverse of ``to_model_layout``: one copy of each KV head, for saving."""
    if kv_replicas == 1 or KV_HEADS not in axes:
        return x
    return _relayout(x, _stored_shape(x.shape, axes, kv_replicas), _stored_sharding(mesh, axes, kv_replicas))


def _relayout(x: jax.Array, shape: tuple[int, ...], sharding: NamedSharding) -> jax.Array:
    """The same per-device buffers seen as another global array: both layouts put identical data on each device."""
    return jax.make_array_from_single_device_arrays(shape, sharding, [s.data for s in x.addressable_shards])

"""Where every array lives: the device mesh and the one table from logical axes to mesh axes.

Models name logical axes only (``("embed", "q_heads")``); this table turns them into ``PartitionSpec``s.
Megatron-style tensor parallelism: QKV and gate/up split by columns (heads), O and down by rows, embedding and
LM head by vocabulary, the KV pool on its KV-head axis. XLA inserts the collectives from these shardings.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

TP_AXIS = "tp"

# logical axis -> mesh axis (None = replicated)
LOGICAL_AXIS_RULES: dict[str, str | None] = {
    "vocab": TP_AXIS,
    "embed": None,
    "q_heads": TP_AXIS,
    "kv_heads": TP_AXIS,
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
    return NamedSharding(mesh, PartitionSpec(None, LOGICAL_AXIS_RULES["kv_heads"], None, None, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_divisible(num_heads: int, num_kv_heads: int, vocab_size: int, tensor_parallel_size: int) -> None:
    """Refuse a TP size the model's heads do not divide, naming the numbers."""
    for name, n in (("attention heads", num_heads), ("KV heads", num_kv_heads), ("vocabulary size", vocab_size)):
        if n % tensor_parallel_size:
            raise ValueError(
                f"tensor_parallel_size={tensor_parallel_size} does not divide the model's {n} {name}; "
                f"choose a size that divides {num_heads} attention heads and {num_kv_heads} KV heads"
            )

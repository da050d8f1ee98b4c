"""Orbax save and restore of a model's parameters, restored straight onto a (possibly different) mesh.

Parameters are saved in their stored layout (one copy of each KV head, as in the HF checkpoint), so a model saved at
one tensor-parallel size restores at any other. ``jllm.loader`` puts them in a model directory (``save_model``) and
reads them back (``load_format: orbax``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from flax import nnx
from jax.sharding import Mesh

from jllm import parallel


def save_params(params: nnx.State, params_dir: Path, mesh: Mesh, kv_replicas: int) -> None:
    """Writes ``params`` (laid out for ``mesh``) to ``params_dir`` in their stored layout, replacing what is there."""
    stored = {
        path: parallel.to_stored_layout(var.get_value(), mesh, var.axes, kv_replicas)
        for path, var in nnx.to_flat_state(params)
    }
    # Uncompressed: zstd (StandardCheckpointer's default) saves a third of float32 bytes but makes every restore
    # decompress, and restoring is the point of a saved model (docs/benchmarks.md: 0.9 s vs 0.7 s for 135M params).
    with _orbax().PyTreeCheckpointer(use_compression=False) as checkpointer:
        checkpointer.save(params_dir, nnx.to_pure_dict(nnx.from_flat_state(stored)), force=True)


def restore_params(params_dir: Path, abstract_state: nnx.State, mesh: Mesh, kv_replicas: int) -> nnx.State:
    """Restores into ``abstract_state``'s structure, each leaf on its sharding for ``mesh`` (any TP size)."""
    if not params_dir.is_dir():
        raise FileNotFoundError(f"orbax checkpoint directory {str(params_dir)!r} does not exist")
    target = {
        path: parallel.stored_struct(var.get_value(), mesh, var.axes, kv_replicas)
        for path, var in nnx.to_flat_state(abstract_state)
    }
    target_tree = nnx.to_pure_dict(nnx.from_flat_state(target))
    with _orbax().StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(params_dir.absolute(), target_tree)
    nnx.replace_by_pure_dict(abstract_state, restored)
    for _, var in nnx.to_flat_state(abstract_state):
        var.set_value(parallel.to_model_layout(var.get_value(), mesh, var.axes, kv_replicas))
    return abstract_state


def _orbax() -> ModuleType:
    """orbax, imported on first use: importing it configures the root logger (absl's ``logging.basicConfig``), which
    would void the server's own logging set-up, and takes half a second that a safetensors load never needs."""
    import orbax.checkpoint

    return orbax.checkpoint

"""New weights for a running engine without a new start: another checkpoint of the same model (a fine-tune, a training
run's next save) read onto the devices and handed to the compiled step programs, which take the weights as arguments
and so run them as they are, nothing traced or compiled again (vLLM's ``reload_weights``, SGLang's
``update_weights_from_disk``). A sweep over such checkpoints pays the start-up once.

Only weights change: a checkpoint whose model differs (any ``ModelArgs`` field: sizes, rotary, norms; a parameter's
shape or dtype) or whose tokenizer, chat template or generation config differs is refused by name, since the engine
would keep the old ones.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
from flax import nnx

from jllm.loader import SIDE_FILES, LoadedModel

# What must be byte-equal beside the weights (config.json is compared as the model it describes, not as text)
SAME_FILES = tuple(name for name in SIDE_FILES if name != "config.json")


class WeightsMismatch(ValueError):
    """The checkpoint is not the running model's: it needs a new engine."""


def check_side_files(running_dir: Path, new_dir: Path) -> None:
    """The tokenizer, chat template and generation config the engine keeps must be the new checkpoint's too."""
    for name in SAME_FILES:
        old, new = running_dir / name, new_dir / name
        if old.is_file() != new.is_file() or (old.is_file() and old.read_bytes() != new.read_bytes()):
            raise WeightsMismatch(
                f"{new_dir}: its {name} differs from the running model's ({running_dir}); the engine keeps its "
                "tokenizer, chat template and generation config, so start a new engine for this checkpoint"
            )


def check_same_model(running: LoadedModel, new: LoadedModel) -> None:
    """The same ``ModelArgs`` and every parameter at the same path with the same shape, dtype and sharding."""
    for field in dataclasses.fields(running.args):
        old_value, new_value = getattr(running.args, field.name), getattr(new.args, field.name)
        if old_value != new_value:
            raise WeightsMismatch(
                f"{new.model_dir}: its model differs from the running one in {field.name} ({new_value!r}, running "
                f"{old_value!r}); start a new engine for it"
            )
    old_leaves = dict(nnx.to_flat_state(nnx.state(running.model)))
    new_leaves = dict(nnx.to_flat_state(nnx.state(new.model)))
    for path in old_leaves.keys() | new_leaves.keys():
        arrays = [None if v is None else v.get_value() for v in (old_leaves.get(path), new_leaves.get(path))]
        described = [None if x is None else (x.shape, x.dtype, x.sharding) for x in arrays]
        if described[0] != described[1]:
            name = ".".join(map(str, path))
            raise WeightsMismatch(f"{new.model_dir}: parameter {name} is {described[1]}, running {described[0]}")


def swap_into(running: LoadedModel, new: LoadedModel) -> list[jax.Array]:
    """Moves ``new``'s weights into the running model's modules (checked alike first); returns the old arrays, for
    the caller to delete once nothing holds them. The running ``LoadedModel`` names the new checkpoint after."""
    check_same_model(running, new)
    old = jax.tree.leaves(nnx.state(running.model))
    nnx.update(running.model, nnx.state(new.model))
    running.model_dir, running.hf_config, running.generation_config = (
        new.model_dir,
        new.hf_config,
        new.generation_config,
    )
    return old

"""Readers for checkpoints that keep a parameter otherwise than transformers holds it in memory (OLMo-Hybrid, Kimi
Linear, BailingHybrid): the gated DeltaNet's fused ``in_proj_qkv`` and ``conv1d`` stored as q's, k's and v's tensors
apart, and tensors under the names transformers' ``conversion_mapping`` renames on load (and ``save_pretrained`` writes
back). A family's ``WeightMap.reader`` calls them.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np

from jllm.safetensors_index import hf_names

# our fused parameters -> the three stored tensors they are read from, in order, and whether each is a torch Linear's
# weight (``[out, in]``; else a depthwise conv's ``[channels, 1, K]``)
FUSED = {"in_proj_qkv": (("q_proj", "k_proj", "v_proj"), True), "conv1d": (("q_conv1d", "k_conv1d", "v_conv1d"), False)}


def read_qkv_apart(index: Any, path: tuple[Any, ...], shape: tuple[int, ...], dtype: Any) -> Any:
    """The gated DeltaNet's ``in_proj_qkv`` (kernel ``[hidden, conv_dim]``) or ``conv1d`` (``[conv_dim, 1, K]``)
    read from q's, k's and v's tensors, concatenated, where the checkpoint has no fused one; None otherwise."""
    module = str(path[-2])
    name = hf_names(path, index.weights)[0][0]
    if module not in FUSED or name in index.tensors:
        return None
    parts, linear = FUSED[module]
    names = [name.replace(f".{module}.", f".{part}.") for part in parts]
    sizes = [index.tensors[n].slice().get_shape()[0] for n in names]  # each part's rows (channels), as stored
    readers = [
        index.slice_reader(n, (*shape[:-1], size) if linear else (size, *shape[1:]), linear, dtype)
        for n, size in zip(names, sizes, strict=True)
    ]
    whole = tuple(slice(None) for _ in shape)

    def read(where: tuple[slice, ...]) -> np.ndarray:
        return np.concatenate([r(whole) for r in readers], axis=-1 if linear else 0)[where]

    return read


def read_renamed(
    index: Any, path: tuple[Any, ...], shape: tuple[int, ...], dtype: Any, renames: tuple[tuple[str, str], ...]
) -> Any:
    """The parameter read with ``renames`` (our module -> the checkpoint's) over the family's own where the
    checkpoint holds no tensor under the family's names but one under these; None otherwise."""
    if hf_names(path, index.weights)[0][0] in index.tensors:
        return None
    other = copy.copy(index)
    other.weights = dataclasses.replace(index.weights, rename=(*index.weights.rename, *renames), reader=None)
    return other.param_reader(path, shape, dtype, 1) if hf_names(path, other.weights)[0][0] in index.tensors else None

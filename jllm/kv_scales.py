"""Per-layer FP8 KV-cache scales from a checkpoint: the names it stores them under, whether it has them, and the
attention's two parameters that hold them.

FP8 checkpoints that vLLM serves often carry one K and one V scale per attention layer, which vLLM uses when it
stores the KV cache in FP8 (``--kv-cache-dtype fp8``) and ignores otherwise; jllm does the same. A model whose
checkpoint has them gets float32 scalar parameters ``k_scale`` / ``v_scale`` in each attention layer (replicated
under tensor parallelism): weights like any other, so a weight swap carries them and no program recompiles. A model
without them has no such parameters and its attention passes 1.0, the programs of a model without scales.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from jllm.models.layers import param
from pallas_kernels.kv_quant import Scale, is_fp8

# our parameter -> the checkpoint's names for it after its attention module's (first stored one read), as vLLM's
# ``maybe_remap_kv_scale_name`` maps them: compressed-tensors' (a ``kv_cache_scheme``), the older FP8 checkpoints'
# one ``kv_scale`` for both, ModelOpt's and Quark's projection output scales, and ModelOpt's older per-projection names
KV_SCALE_NAMES = {
    "k_scale": ("k_scale", "kv_scale", "k_proj.output_scale", "k_proj.k_scale", "qkv_proj.k_scale"),
    "v_scale": ("v_scale", "kv_scale", "v_proj.output_scale", "v_proj.v_scale", "qkv_proj.v_scale"),
}


def stores_kv_scales(names: Iterable[str]) -> bool:
    """Whether a checkpoint of these tensor names stores KV-cache scales under any name vLLM reads."""
    suffixes = tuple(f".{name}" for names in KV_SCALE_NAMES.values() for name in names)
    return any(name.endswith(suffixes) for name in names)


def declares_kv_scales(hf_config: dict[str, Any]) -> bool:
    """Whether config.json says the checkpoint has KV-cache scales (compressed-tensors' ``kv_cache_scheme``,
    ModelOpt's ``kv_cache_quant_algo``): dummy weights of such a model get them (at 1.0), so a benchmark runs the
    programs the real checkpoint would."""
    qc = hf_config.get("quantization_config") or {}
    return bool(qc.get("kv_cache_scheme") or qc.get("kv_cache_quant_algo"))


def scale_params() -> tuple[nnx.Param, nnx.Param]:
    """An attention layer's (K scale, V scale): float32 scalars, replicated (no logical axis)."""
    return param((), jnp.float32, ()), param((), jnp.float32, ())


def pool_scales(pool_dtype: DTypeLike, k_scale: nnx.Param | None, v_scale: nnx.Param | None) -> dict[str, Scale]:
    """The ``paged_attention`` keywords for a layer's scales: its parameters for an FP8 pool, none otherwise (1.0:
    another pool stores K/V as they are)."""
    if k_scale is None or not is_fp8(pool_dtype):
        return {}
    return {"k_scale": k_scale[...], "v_scale": v_scale[...]}


def read_scale(name: str, values: np.ndarray) -> np.ndarray:
    """A stored scale as a float32 scalar, refused unless it is one positive finite value."""
    values = np.asarray(values, np.float32)
    if values.size != 1 or not np.isfinite(values).all() or not (values > 0).all():
        shown = values.ravel()[:4].tolist()
        raise ValueError(
            f"KV-cache scale {name!r} must be one positive finite value (a per-layer scale), got shape "
            f"{list(values.shape)} with values {shown}; per-head KV scales are not supported"
        )
    return values.reshape(())


def is_scale_param(path: tuple[Any, ...]) -> bool:
    return str(path[-1]) in KV_SCALE_NAMES


def describe_scales(pool_dtype: DTypeLike) -> str:
    """The start-up line of a model with KV-cache scales: whether its pool uses them (vLLM too ignores them for a
    pool not in FP8)."""
    if is_fp8(pool_dtype):
        return "KV-cache scales (k_scale / v_scale) from the checkpoint: used by the FP8 pool"
    return (
        "KV-cache scales (k_scale / v_scale) from the checkpoint: not used, the pool keeps K/V in "
        f"{jnp.dtype(pool_dtype).name} (they apply to kv_cache_dtype fp8)"
    )

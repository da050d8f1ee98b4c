"""The rotary scaling a GGUF file carries, back in the form the original HF config.json had it.

llama.cpp's `convert_hf_to_gguf.py` writes a model's `rope_scaling` in one of three ways, and transformers' GGUF
loader reads none of them (the model it builds runs unscaled: wrong past the original context). Here each becomes
config keys again:

- Llama 3.x (`rope_type: llama3`): only a `rope_freqs` tensor, each frequency's divisor. Its parameters come back by a
  fit (`llama3_scaling`), kept only where they reproduce every divisor.
- Phi-3 (`longrope`): `rope_factors_long` / `rope_factors_short` tensors are the config's lists as they were, with
  `rope.scaling.original_context_length`; the attention factor llama.cpp writes is the one the config implies.
- `linear` (Gemma 3's global layers, older Llamas): `rope.scaling.type` and `rope.scaling.factor`; `yarn` (Qwen2.5's
  long context) those, the original context and the betas / attention factor where the config had them.

A head that rotates fewer channels than it has (`rope.dimension_count` below the head size: Phi-4-mini's 96 of 128)
gets its `partial_rotary_factor` back too, which the longrope lists' length needs.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from jllm.models.rope import Rope

logger = logging.getLogger(__name__)

ROPE_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
# llama.cpp's Llama 3 context before scaling: the HF config's top-level `original_max_position_embeddings`, which no
# Llama 3.x config has, else 8192. The divisors fix only its ratios to the low / high frequency factors, so any value
# reproduces them; this one gives Llama 3.x's own parameters back.
LLAMA3_ORIGINAL_CONTEXT = 8192
FIT_RTOL = 1e-6  # float32 divisors against those the fitted parameters give
_YARN_KEYS = {"yarn_beta_fast": "beta_fast", "yarn_beta_slow": "beta_slow", "yarn_attn_factor": "attention_factor"}


def rope_config(
    meta: dict[str, Any], arch_name: str, config: dict[str, Any], tensors: dict[str, np.ndarray]
) -> dict[str, Any]:
    """The config.json keys for the file's rotary settings transformers leaves out: a partial rotary dimension
    (Phi-4-mini rotates 96 of a head's 128 channels) and the scaling; `tensors`: the file's `ROPE_TENSORS`,
    dequantized. A scaling this module does not read is a warning: the model runs unscaled."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    rotary_dim = int(meta.get(f"{arch_name}.rope.dimension_count", head_dim))
    partial = {} if rotary_dim == head_dim else {"partial_rotary_factor": rotary_dim / head_dim}
    return {**partial, **_scaling(meta, arch_name, (config["rope_theta"], rotary_dim), tensors)}


def _scaling(
    meta: dict[str, Any], arch_name: str, rotary: tuple[float, int], tensors: dict[str, np.ndarray]
) -> dict[str, Any]:
    """`rope_scaling` (and Phi-3's top-level original context) from the file's keys and tensors; `rotary`: the
    unscaled rotary base and dimension."""
    kind = meta.get(f"{arch_name}.rope.scaling.type", "none")
    if "rope_freqs.weight" in tensors:
        return _from_frequency_divisors(tensors["rope_freqs.weight"], *rotary)
    if "rope_factors_short.weight" in tensors:
        long, short = tensors["rope_factors_long.weight"], tensors["rope_factors_short.weight"]
        return {
            "rope_scaling": {
                "rope_type": "longrope",
                "long_factor": _as_floats(long),
                "short_factor": _as_floats(short),
            },
            "original_max_position_embeddings": int(meta[f"{arch_name}.rope.scaling.original_context_length"]),
        }
    if kind in ("linear", "yarn"):
        scaling = {"rope_type": kind, "factor": float(meta[f"{arch_name}.rope.scaling.factor"])}
        if kind == "yarn":
            scaling["original_max_position_embeddings"] = int(meta[f"{arch_name}.rope.scaling.original_context_length"])
            for gguf_key, name in _YARN_KEYS.items():  # written where the config had them
                if f"{arch_name}.rope.scaling.{gguf_key}" in meta:
                    scaling[name] = float(meta[f"{arch_name}.rope.scaling.{gguf_key}"])
        return {"rope_scaling": scaling}
    if kind != "none":
        logger.warning(
            "GGUF rope scaling %r (factor %s) is not read by this converter (it reads Llama 3's rope_freqs, Phi-3's "
            "longrope factor tensors, linear and YaRN scaling): the model runs with unscaled rotary embeddings",
            kind,
            meta.get(f"{arch_name}.rope.scaling.factor"),
        )
    return {}


def llama3_scaling(divisors: np.ndarray, theta: float, dim: int) -> dict[str, Any] | None:
    """Llama 3's `rope_scaling` whose inverse frequencies are the unscaled ones (`theta`, rotary `dim`) over
    `divisors`, or None where none does.

    llama.cpp writes 1 for the high frequencies, `factor` for the low ones, and between them `1 / ((1 - s) / factor
    + s)` with `s = (L / wavelength - low) / (high - low)`: so `L / wavelength = low (1 - s) + high s`, linear in
    the two unknowns once `L` is fixed, and solved by least squares over the (at least two) middle frequencies."""
    inv_freq = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    factor = float(divisors.max())
    middle = (divisors > 1) & (divisors < factor)
    if factor <= 1 or middle.sum() < 2:
        return None
    s = (1 / divisors[middle].astype(np.float64) - 1 / factor) / (1 - 1 / factor)
    x = LLAMA3_ORIGINAL_CONTEXT * inv_freq[middle] / (2 * math.pi)  # L / wavelength
    (low, high), *_ = np.linalg.lstsq(np.stack([1 - s, s], axis=1), x, rcond=None)
    expected = (inv_freq / divisors).astype(np.float32)
    rounded = (round(float(low), 4), round(float(high), 4))  # the config's own values (1, 4), where they fit
    for low_, high_ in (rounded, (float(low), float(high))):
        scaling = {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_,
            "high_freq_factor": high_,
            "original_max_position_embeddings": LLAMA3_ORIGINAL_CONTEXT,
        }
        if np.allclose(Rope.from_hf(theta, dim, scaling, 0).inv_freq(), expected, rtol=FIT_RTOL, atol=0):
            return scaling
    return None


def _from_frequency_divisors(divisors: np.ndarray, theta: float, dim: int) -> dict[str, Any]:
    """`rope_scaling` from Llama 3's `rope_freqs`, or a warning and none where no llama3 parameters give them."""
    if divisors.shape != (dim // 2,):
        raise ValueError(f"GGUF rope_freqs has shape {divisors.shape}; the rotary dimension {dim} needs ({dim // 2},)")
    scaling = llama3_scaling(divisors, theta, dim)
    if scaling is None:
        logger.warning(
            "GGUF rope_freqs %s are not Llama 3's scaling for any parameters: the model runs with unscaled rotary "
            "embeddings",
            np.array2string(divisors, precision=4, threshold=8),
        )
        return {}
    return {"rope_scaling": scaling}


def _as_floats(values: np.ndarray) -> list[float]:
    """float32 values as the shortest decimals that read back to them: a config's 1.03, not 1.0299999713897705."""
    return [float(str(v)) for v in values.astype(np.float32)]

"""Rotary position embeddings: the inverse frequencies of each scaling kind, and their application to a head's first
``rotary_dim`` channels (all of them, or a fraction as in GPT-NeoX and Phi-4-mini), rotating the halves' channel
pairs (i, i + rotary_dim / 2) as Llama does or neighbouring pairs (2i, 2i + 1) as Cohere and GPT-J do. Gemma 4's
"proportional" kind turns every pair of the head, those past its fraction at frequency zero (so unturned).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SCALING_KINDS = ("default", "linear", "dynamic", "llama3", "longrope", "yarn", "proportional")
# rope settings the caller has already turned into `theta` and `rotary_dim`
APPLIED = ("rope_theta", "partial_rotary_factor")
# A position with this bit set turns by longrope's long factors (``long_rope_positions`` sets it for a step's tokens).
LONG_FACTORS_BIT = 1 << 30


@dataclasses.dataclass(frozen=True)
class Rope:
    """One layer's rotary settings; hashable, since models keep their settings as static data."""

    theta: float
    rotary_dim: int  # leading channels of each head that rotate; the rest pass through
    scaling: tuple[tuple[str, Any], ...] = ()  # the checkpoint's rope_scaling, lists made tuples
    interleaved: bool = False  # rotates channels (2i, 2i + 1) together (Cohere, GPT-J), not (i, i + rotary_dim / 2)
    negated: bool = False  # rotates by minus the angle (NanoChat's ``rotate_half`` flips the halves' signs)

    @classmethod
    def from_hf(cls, theta: float, rotary_dim: int, scaling: dict[str, Any] | None, max_positions: int) -> Rope:
        """Checks the scaling kind at load, naming the supported ones."""
        scaling = {k: tuple(v) if isinstance(v, list) else v for k, v in (scaling or {}).items() if k not in APPLIED}
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        kind = "longrope" if kind == "su" else kind  # Phi-3's first name for it
        if kind not in SCALING_KINDS:
            raise ValueError(f"rope scaling type {kind!r} is not supported (supported: {', '.join(SCALING_KINDS)})")
        scaling = {**scaling, "rope_type": kind}
        if kind in ("longrope", "yarn"):
            scaling.setdefault("max_position_embeddings", max_positions)
        if kind == "yarn":
            scaling.setdefault("original_max_position_embeddings", max_positions)
        return cls(float(theta), rotary_dim, tuple(sorted(scaling.items())))

    def long_factors_from(self) -> int | None:
        """Longrope's original context (None for every other kind): transformers turns a forward by the long
        factors once its length passes it, and Phi-3's ``generate`` computes a sequence's cache again when it does;
        so a sequence longer than this takes them for every token (``Sequence.long_rope``)."""
        s = dict(self.scaling)
        return int(s["original_max_position_embeddings"]) if s.get("rope_type") == "longrope" else None

    def inv_freq(self, long: bool = False) -> np.ndarray:
        """``[rotary_dim // 2]`` float32 inverse frequencies after scaling (``long``: longrope's long factors)."""
        base = 1.0 / (self.theta ** (np.arange(0, self.rotary_dim, 2, dtype=np.float64) / self.rotary_dim))
        s = dict(self.scaling)
        kind = s.get("rope_type", "default")
        # "dynamic" (NTK): transformers stretches the base only once a forward's positions pass
        # max_position_embeddings, which a jllm context never does (max_model_len is capped there): the plain rotary
        if kind == "linear":
            base = base / s["factor"]
        elif kind == "llama3":
            base = _llama3(base, s)
        elif kind == "longrope":
            base = base / np.asarray(s["long_factor" if long else "short_factor"], np.float64)
        elif kind == "yarn":
            base = _yarn(base, s, self.theta, self.rotary_dim)
        elif kind == "proportional":  # the first ``rope_angles`` pairs turn as the whole head's would, the rest not
            base = np.where(np.arange(base.size) < s["rope_angles"], base, 0.0) / s.get("factor", 1.0)
        return base.astype(np.float32)

    def attention_scaling(self, long: bool = False) -> float:
        """The factor on cos and sin (longrope's and YaRN's attention factor), 1 otherwise; ``long``: longrope's
        with the long factors (Phi-MoE's ``long_mscale``, where its family sets one)."""
        s = dict(self.scaling)
        if s.get("rope_type") == "yarn":
            return _yarn_attention_factor(s)
        if s.get("rope_type") != "longrope":
            return 1.0
        if long and s.get("long_attention_factor") is not None:
            return float(s["long_attention_factor"])
        original = s["original_max_position_embeddings"]
        factor = s.get("factor") or s["max_position_embeddings"] / original
        if s.get("attention_factor") is not None:
            return float(s["attention_factor"])
        return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))

    def apply(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Rotates ``x [T, heads, head_dim]`` by ``positions [T]`` (longrope: those with ``LONG_FACTORS_BIT`` set
        by the long factors)."""
        sign = -1.0 if self.negated else 1.0
        inv_freq: np.ndarray | jax.Array = sign * self.inv_freq()
        scale: float | jax.Array = self.attention_scaling()
        if self.long_factors_from() is not None:
            long = positions >= LONG_FACTORS_BIT
            positions = jnp.where(long, positions - LONG_FACTORS_BIT, positions)
            inv_freq = jnp.where(long[:, None], sign * self.inv_freq(long=True), inv_freq)  # [T, rotary_dim / 2]
            scale = jnp.where(long, self.attention_scaling(long=True), scale)[:, None, None]
        return apply_rotary(x, positions, inv_freq, self.rotary_dim, scale, self.interleaved)

    def apply_last(self, x: jax.Array, positions: jax.Array, back: bool = False) -> jax.Array:
        """Rotates the last ``rotary_dim`` channels of ``x [T, heads, head_dim]`` by ``positions [T]`` (DeepSeek-V4
        lays each head out ``[nope | rope]``); ``back``: by minus the angle."""
        rope = dataclasses.replace(self, negated=not self.negated) if back else self
        rest, turned = x[..., : -self.rotary_dim], x[..., -self.rotary_dim :]
        return jnp.concatenate([rest, rope.apply(turned, positions)], axis=-1)


def _llama3(inv_freq: np.ndarray, s: dict[str, Any]) -> np.ndarray:
    """Llama 3's piecewise rescaling of the low frequencies."""
    factor = s["factor"]
    low_freq_factor = s.get("low_freq_factor", 1.0)
    high_freq_factor = s.get("high_freq_factor", 4.0)
    old_len = s["original_max_position_embeddings"]
    low_freq_wavelen = old_len / low_freq_factor
    high_freq_wavelen = old_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled)


def _yarn_factor(s: dict[str, Any]) -> float:
    """YaRN's context factor; without one, the ratio of the context to the original (DeepSeek-V3's configs)."""
    return s.get("factor") or s["max_position_embeddings"] / s["original_max_position_embeddings"]


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction (the paper's eq. 21), 1 for factors up to 1."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_attention_factor(s: dict[str, Any]) -> float:
    """The factor on cos and sin: the config's ``attention_factor``, else the mscale ratio transformers infers."""
    if s.get("attention_factor") is not None:
        return float(s["attention_factor"])
    factor, mscale, mscale_all_dim = _yarn_factor(s), s.get("mscale"), s.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    return yarn_mscale(factor)


def _yarn(inv_freq: np.ndarray, s: dict[str, Any], theta: float, dim: int) -> np.ndarray:
    """YaRN: high frequencies kept, low ones divided by the factor, a linear ramp between the dimensions that turn
    ``beta_fast`` and ``beta_slow`` times over the original context (bounds rounded out unless ``truncate`` is
    false, as gpt-oss sets it)."""
    factor, original = _yarn_factor(s), s["original_max_position_embeddings"]
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / ((high - low) or 0.001), 0, 1)
    extrapolation = 1 - ramp  # the share of each frequency kept as it was
    return inv_freq / factor * ramp + inv_freq * extrapolation


def apply_rotary(
    x: jax.Array,
    positions: jax.Array,
    inv_freq: np.ndarray | jax.Array,
    rotary_dim: int | None = None,
    scale: float | jax.Array = 1.0,
    interleaved: bool = False,
) -> jax.Array:
    """Rotates the first ``rotary_dim`` channels of ``x [T, heads, head_dim]`` by ``positions [T]``: pair i is
    channels (i, i + rotary_dim / 2), or with ``interleaved`` (2i, 2i + 1). ``inv_freq``: ``[rotary_dim / 2]``, or
    ``[T, rotary_dim / 2]`` per token; ``scale``: on cos and sin, a number or ``[T, 1, 1]`` per token."""
    rotary_dim = rotary_dim or x.shape[-1]
    freqs = positions.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq)  # [T, rotary_dim/2]
    cos = jnp.cos(freqs)[:, None, :]  # [T, 1, rotary_dim/2]
    sin = jnp.sin(freqs)[:, None, :]
    if not isinstance(scale, float | int) or scale != 1.0:
        cos, sin = cos * scale, sin * scale
    rot, rest = x[..., :rotary_dim].astype(jnp.float32), x[..., rotary_dim:]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(rot.shape).astype(x.dtype)
    else:
        x1, x2 = jnp.split(rot, 2, axis=-1)
        out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
    return out if rotary_dim == x.shape[-1] else jnp.concatenate([out, rest], axis=-1)


def long_rope_positions(positions: np.ndarray, long: np.ndarray) -> np.ndarray:
    """``positions`` with ``LONG_FACTORS_BIT`` set where ``long``: the tokens of sequences longer than longrope's
    original context (``Sequence.long_rope``), which transformers turns by the long factors, all of them: Phi-3's
    ``generate`` computes its cache again once a sequence passes that context."""
    return np.where(long, positions | LONG_FACTORS_BIT, positions).astype(positions.dtype)

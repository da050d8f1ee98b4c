"""MXFP4 (OCP microscaling FP4) as gpt-oss's checkpoints store their experts, dequantized to floats at load.

Each block of 32 values along a row shares one scale, an e8m0 power of two stored as a uint8 exponent with bias 127;
each value is an e2m1 4-bit float, two to a byte, the low nibble first. ``dequantize`` gives what transformers'
``convert_moe_packed_tensors`` gives before its transpose (tests/test_gpt_oss.py). jllm keeps no MXFP4 in memory: the
dequantized experts take the model dtype's bytes (gpt-oss-120b's ~230 GB in bfloat16, the 20b's ~38 GB).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import numpy as np

# e2m1 codes 0..15: sign bit 3, then 2 exponent bits and 1 mantissa bit
E2M1_VALUES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32
)
BLOCK = 32  # values per scale
SCALE_BIAS = 127


def dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``blocks`` u8[..., G, 16] and ``scales`` u8[..., G] -> f32[..., G * 32]: value j of block g is nibble j % 2 of
    byte j // 2, times ``2 ** (scales[g] - 127)`` (exact in float32)."""
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BLOCK // 2:
        raise ValueError(
            f"MXFP4 blocks {list(blocks.shape)} and scales {list(scales.shape)} must be [..., G, {BLOCK // 2}] and "
            "[..., G]"
        )
    nibbles = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*scales.shape, BLOCK)
    values = np.ldexp(E2M1_VALUES[nibbles], scales.astype(np.int32)[..., None] - SCALE_BIAS)
    return values.reshape(*scales.shape[:-1], -1)

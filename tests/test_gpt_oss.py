"""gpt-oss's MXFP4 experts: the dequantizer against transformers' ``convert_moe_packed_tensors``, and a tiny
checkpoint written in the released layout (``*_blocks`` / ``*_scales``) loaded as transformers dequantizes it. The
family's float forward and greedy batch are tests/test_families.py's (``gpt_oss``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from model_utils import TINY_CONFIG, jllm_logits, relative_error, save_tiny_checkpoint

from jllm import mxfp4
from jllm.loader import load_model
from jllm.parallel import make_mesh

# Relative (Frobenius) error of float32 logits against transformers' on the same MXFP4 checkpoint.
LOGITS_RTOL = 1e-5


def pack_mxfp4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """f32[experts, in, out] -> (u8[experts, out, in / 32, 16], u8[experts, out, in / 32]) as gpt-oss stores its
    experts: per 32 inputs of an output row, the power of two that brings their largest magnitude within e2m1's 6,
    and each value's nearest e2m1 code (precision is beside the point: both sides read the same codes)."""
    experts, d_in, d_out = w.shape
    rows = np.swapaxes(w, 1, 2).reshape(experts, d_out, d_in // mxfp4.BLOCK, mxfp4.BLOCK)
    exponent = np.ceil(np.log2(np.maximum(np.abs(rows).max(axis=-1), 1e-30) / 6.0)).clip(-127, 127).astype(np.int32)
    scaled = rows / np.ldexp(1.0, exponent)[..., None]
    codes = np.abs(scaled[..., None] - mxfp4.E2M1_VALUES).argmin(axis=-1).astype(np.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4), (exponent + mxfp4.SCALE_BIAS).astype(np.uint8)


@pytest.mark.slow  # importing transformers' integration takes ~10 s
def test_dequantized_mxfp4_equals_transformers_conversion() -> None:
    """Every code in every nibble, scales from 2^-20 to 2^20: transformers' result is ours with in and out swapped."""
    import torch
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(3, 5, 4, 16), dtype=np.uint8)  # [experts, out, in / 32, 16]
    scales = rng.integers(107, 148, size=(3, 5, 4), dtype=np.uint8)
    expected = convert_moe_packed_tensors(torch.from_numpy(blocks), torch.from_numpy(scales), dtype=torch.float32)
    got = mxfp4.dequantize(blocks, scales)  # [experts, out, in]
    assert got.dtype == np.float32 and expected.shape == (3, 128, 5)
    np.testing.assert_array_equal(np.swapaxes(got, 1, 2), expected.numpy())


def test_mismatched_blocks_and_scales_are_refused_naming_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"blocks \[2, 3, 16\] and scales \[2, 4\]"):
        mxfp4.dequantize(np.zeros((2, 3, 16), np.uint8), np.zeros((2, 4), np.uint8))


def write_mxfp4_checkpoint(model_dir: Path) -> None:
    """Rewrites a float gpt-oss checkpoint's expert kernels as the released ones are stored, in one file."""
    from safetensors.numpy import load_file, save_file

    tensors = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors |= load_file(shard)
        shard.unlink()
    (model_dir / "model.safetensors.index.json").unlink(missing_ok=True)
    for name in [n for n in tensors if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        tensors[name + "_blocks"], tensors[name + "_scales"] = pack_mxfp4(tensors.pop(name))
    save_file(tensors, model_dir / "model.safetensors")
    config = json.loads((model_dir / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
    }
    (model_dir / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def mxfp4_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny gpt-oss in the released layout: expert widths of 3 MXFP4 blocks (96) over 2 (hidden 64)."""
    config = dict(TINY_CONFIG, num_local_experts=4, num_experts_per_tok=2, sliding_window=16, initializer_range=0.3)
    model_dir = tmp_path_factory.mktemp("mxfp4") / "gpt_oss"
    save_tiny_checkpoint("GptOssForCausalLM", config, model_dir, perturb_constants=True)
    write_mxfp4_checkpoint(model_dir)
    return model_dir


@pytest.mark.slow
def test_mxfp4_checkpoint_logits_match_transformers_dequantized(mxfp4_checkpoint: Path) -> None:
    """The released layout (gate_up ``[experts, 2 * mlp, hidden / 32, 16]`` blocks, gate and up interleaved), read
    and dequantized at load: logits as transformers' own dequantizing load of the same files (measured 2.8e-6)."""
    import torch
    import transformers

    ids = np.random.default_rng(3).integers(0, TINY_CONFIG["vocab_size"], 40).tolist()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        mxfp4_checkpoint, dtype=torch.float32, quantization_config=transformers.Mxfp4Config(dequantize=True)
    ).eval()
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    got = jllm_logits(load_model(mxfp4_checkpoint, mesh=make_mesh(1), dtype="float32"), ids)
    assert relative_error(got, expected) < LOGITS_RTOL


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "shape", "index"),
    [  # a device's share under tensor parallelism: gate/up's columns, down's rows cutting MXFP4 blocks
        ("gate_up_proj", (4, 64, 2, 96), (slice(None), slice(None), slice(None), slice(40, 88))),
        ("down_proj", (4, 96, 64), (slice(1, 3), slice(8, 72), slice(None))),
    ],
)
def test_mxfp4_experts_read_any_slice_as_the_whole_tensors(mxfp4_checkpoint: Path, module: str, shape, index) -> None:
    """A slice (a device's share) reads as the same slice of the whole parameter, partial MXFP4 blocks included."""
    from contextlib import ExitStack

    from jllm.models.families.gpt_oss import gpt_oss, read_experts
    from jllm.safetensors_index import SafetensorsIndex

    weights = gpt_oss(json.loads((mxfp4_checkpoint / "config.json").read_text()), np.float32).weights
    with ExitStack() as stack:
        tensors = SafetensorsIndex(mxfp4_checkpoint, stack, weights)
        read = read_experts(tensors, ("layers", 1, "mlp", "experts", module, "kernel"), shape, np.float32)
        whole = read(tuple(slice(None) for _ in shape))
        np.testing.assert_array_equal(read(index), whole[index])
    assert np.count_nonzero(whole) > 0.5 * whole.size

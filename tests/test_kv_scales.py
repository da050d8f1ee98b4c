"""FP8 KV-cache scales read from checkpoints (``jllm.kv_scales``): every name vLLM reads them under, the logits of an
FP8 pool against transformers' forward with K/V rounded to e4m3 with the same scales, the scales ignored for a pool
in the model's dtype, greedy generation through ``LLM``, refusals."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from model_utils import TINY_CONFIG, jllm_logits, run_tp_worker
from test_quantization import save_fp8_checkpoint

from jllm.kv_scales import stores_kv_scales
from jllm.loader import abstract_model, load_model, save_model
from jllm.parallel import make_mesh
from jllm.quantization import resolve_scheme
from jllm.weight_swap import WeightsMismatch, swap_into
from pallas_kernels.kv_quant import FP8_DTYPE, FP8_MAX

# layer -> (k_scale, v_scale): not powers of two (those would only shift e4m3's exponent, rounding as 1.0 does), the
# size of absmax / 448 for this model's K and V (|k| up to ~0.6, |v| up to ~0.3)
SCALES = {0: (0.0013, 0.00071), 1: (0.0017, 0.00053)}
FLAT_SCALES = [s for pair in SCALES.values() for s in pair]
KV_SCHEME = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}
IDS = [int(i) for i in np.random.default_rng(0).integers(0, TINY_CONFIG["vocab_size"], 21)]


def with_tensors(src: Path, out: Path, tensors: dict[str, np.ndarray], kv_cache_scheme: bool = True) -> Path:
    """``src``'s checkpoint (one ``model.safetensors``, with its tokenizer files) plus ``tensors``; its
    quantization_config declaring a ``kv_cache_scheme`` as compressed-tensors writes it."""
    import torch
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy(f, out / f.name)
    stored = load_file(src / "model.safetensors") | {k: torch.tensor(v) for k, v in tensors.items()}
    save_file(stored, out / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    if kv_cache_scheme:
        config["quantization_config"]["kv_cache_scheme"] = KV_SCHEME
    (out / "config.json").write_text(json.dumps(config))
    return out


def scale_tensors(names: tuple[str, str]) -> dict[str, np.ndarray]:
    """``SCALES`` under a layout's (K, V) names after ``model.layers.N.self_attn.``, as compressed-tensors stores
    them (``[1]``); a V name of None: one scale for both (the older FP8 checkpoints' ``kv_scale``, the K one)."""
    out = {}
    for layer, (k, v) in SCALES.items():
        out[f"model.layers.{layer}.self_attn.{names[0]}"] = np.array([k], np.float32)
        if names[1] is not None:
            out[f"model.layers.{layer}.self_attn.{names[1]}"] = np.array([v], np.float32)
    return out


@pytest.fixture(scope="module")
def fp8_dir(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama as a compressed-tensors FP8 checkpoint (``out / "dequantized"``: its float32 twin), no KV
    scales, with the tiny model's tokenizer."""
    out = save_fp8_checkpoint(tiny_model, tmp_path_factory.mktemp("kv_scales") / "fp8", "compressed-tensors tensor")
    for f in tiny_model.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def scaled_dir(fp8_dir: Path) -> Path:
    return with_tensors(fp8_dir, fp8_dir.parent / "scaled", scale_tensors(("k_scale", "v_scale")))


def loaded_scales(model_dir: Path) -> list[float]:
    """Each layer's K and V scale as loaded, in turn."""
    model = load_model(model_dir, mesh=make_mesh(1), dtype="float32").model
    return [float(s[...]) for layer in model.layers for s in (layer.self_attn.k_scale, layer.self_attn.v_scale)]


@pytest.mark.parametrize(
    "names",
    [("k_proj.output_scale", "v_proj.output_scale"), ("k_proj.k_scale", "v_proj.v_scale"), ("kv_scale", None)],
    ids=["modelopt output_scale", "modelopt per-projection", "legacy kv_scale"],
)
def test_every_name_vllm_reads_loads_into_the_attention(fp8_dir: Path, tmp_path: Path, names: tuple) -> None:
    model = with_tensors(fp8_dir, tmp_path / "model", scale_tensors(names), kv_cache_scheme=False)
    want = [s for k, v in SCALES.values() for s in (k, k if names[1] is None else v)]  # kv_scale: K's for both
    assert loaded_scales(model) == pytest.approx(want, rel=1e-7)


def hf_fp8_kv_model(model_dir: Path, scales: dict[int, tuple[float, float]]):
    """transformers' float32 model with each layer's K and V (after the rotary) rounded as an FP8 pool stores them:
    ``clip(x / scale, +-448)`` to e4m3, times the scale; computed apart from jllm."""
    import torch
    import transformers
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def stored(x: torch.Tensor, scale: float) -> torch.Tensor:
        s = torch.tensor(scale, dtype=torch.float32)
        return (x / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * s

    def attention(module, query, key, value, *args, **kwargs):
        k_scale, v_scale = scales[module.layer_idx]
        return sdpa_attention_forward(module, query, stored(key, k_scale), stored(value, v_scale), *args, **kwargs)

    AttentionInterface.register("fp8_kv_reference", attention)
    return transformers.LlamaForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="fp8_kv_reference"
    ).eval()


def hf_fp8_kv_logits(model_dir: Path, scales: dict[int, tuple[float, float]], token_ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return hf_fp8_kv_model(model_dir, scales)(torch.tensor([token_ids])).logits[0].numpy()


def hf_fp8_kv_greedy(model_dir: Path, scales: dict[int, tuple[float, float]], ids: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``ids``, each from a whole forward (no cache: every step rounds all K/V anew)."""
    import torch

    model, ids = hf_fp8_kv_model(model_dir, scales), list(ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-n:]


@pytest.mark.slow  # transformers' forward twice, two jllm compiles: 4-10 s on a busy 2-core CPU
def test_fp8_pool_logits_match_k_and_v_rounded_with_the_checkpoints_scales(fp8_dir: Path, scaled_dir: Path) -> None:
    loaded = load_model(scaled_dir, mesh=make_mesh(1), dtype="float32")
    assert loaded.args.kv_scales and loaded_scales(scaled_dir) == pytest.approx(FLAT_SCALES, rel=1e-7)
    got = jllm_logits(loaded, IDS, pool_dtype=FP8_DTYPE)
    want = hf_fp8_kv_logits(fp8_dir / "dequantized", SCALES, IDS)
    unit = hf_fp8_kv_logits(fp8_dir / "dequantized", {layer: (1.0, 1.0) for layer in SCALES}, IDS)
    top = np.abs(want).max()
    err, bite = np.abs(got - want).max(), np.abs(unit - want).max()
    print(f"fp8 pool with scales: max |diff| {err:.2e}; scales 1.0 instead move logits {bite:.2e} (max {top:.2f})")
    # the same float32 weights and the same e4m3 rounding of K and V: only summation order differs
    assert err <= 1e-4 * top
    assert bite >= 100 * err  # the scales matter: rounding with 1.0 gives other logits
    unscaled = load_model(fp8_dir, mesh=make_mesh(1), dtype="float32")
    assert np.abs(jllm_logits(unscaled, IDS, pool_dtype=FP8_DTYPE) - unit).max() <= 1e-4 * top


@pytest.mark.slow  # the Pallas kernel in Pallas' interpreter (3-10 s)
def test_the_pallas_kernel_reads_the_scaled_pages_as_the_reference(scaled_dir: Path) -> None:
    loaded = load_model(scaled_dir, mesh=make_mesh(1), dtype="float32")
    want = jllm_logits(loaded, IDS, pool_dtype=FP8_DTYPE)
    got = jllm_logits(loaded, IDS, pool_dtype=FP8_DTYPE, backend="pallas")
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()  # measured 1.6e-7 of 0.65


def test_a_pool_in_the_model_dtype_ignores_the_scales(fp8_dir: Path, scaled_dir: Path) -> None:
    scaled = jllm_logits(load_model(scaled_dir, mesh=make_mesh(1), dtype="float32"), IDS)
    plain = jllm_logits(load_model(fp8_dir, mesh=make_mesh(1), dtype="float32"), IDS)
    np.testing.assert_array_equal(scaled, plain)


@pytest.mark.slow  # two engines start, programs compiled as they run (5-25 s)
def test_greedy_generation_with_an_fp8_pool_and_scales(
    fp8_dir: Path, scaled_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from jllm.llm import LLM
    from jllm.sampling import SamplingParams

    # weight-only FP8 matmuls in every step (the padded prefill reaches 32 tokens): the reference's float32 weights
    keys = dict(max_model_len=64, max_num_batched_tokens=32, max_num_seqs=2, num_pages=16, compile_at_start=False)
    keys |= dict(dtype="float32", fp8_dot_min_tokens=1 << 20)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    with caplog.at_level(logging.INFO, logger="jllm"):
        LLM(str(scaled_dir), **keys)
        assert "KV-cache scales (k_scale / v_scale) from the checkpoint: not used" in caplog.text
        fp8 = LLM(str(scaled_dir), kv_cache_dtype="fp8", **keys)
        assert "KV-cache scales (k_scale / v_scale) from the checkpoint: used by the FP8 pool" in caplog.text
    outputs = fp8.generate(["Hello world", "abcabc"], params, False)
    for out in outputs:  # prefill, then decodes reading the pages written with the scales
        want = hf_fp8_kv_greedy(fp8_dir / "dequantized", SCALES, list(out.prompt_token_ids), 8)
        assert list(out.outputs[0].token_ids) == want


@pytest.mark.slow  # a subprocess with two fake devices compiles the model twice (~20 s)
def test_scales_are_replicated_and_tp2_equals_tp1(scaled_dir: Path, tmp_path: Path) -> None:
    found = run_tp_worker({"model_dir": str(scaled_dir), "ids": IDS}, tmp_path, 300, "kv_scales_tp_worker.py")
    assert found["k_scale_sharding"] == "P()" and found["k_scale_devices"] == 2
    # each device quantizes its own KV heads with the same scale: only the all-reduces' summation order differs
    print(f"kv scales TP 2 vs 1: max |diff| {found['max_abs_diff']:.2e} (max |logit| {found['max_abs']:.2f})")
    assert found["max_abs_diff"] <= 1e-5 * found["max_abs"]


def test_a_weight_swap_carries_the_scales_and_refuses_a_checkpoint_without_them(
    fp8_dir: Path, scaled_dir: Path, tmp_path: Path
) -> None:
    running = load_model(scaled_dir, mesh=make_mesh(1), dtype="float32")
    halved = {name: value / 2 for name, value in scale_tensors(("k_scale", "v_scale")).items()}
    swap_into(running, load_model(with_tensors(fp8_dir, tmp_path / "halved", halved), mesh=make_mesh(1)))
    assert float(running.model.layers[1].self_attn.v_scale[...]) == pytest.approx(SCALES[1][1] / 2, rel=1e-7)
    with pytest.raises(WeightsMismatch, match=r"differs from the running one in kv_scales \(False, running True\)"):
        swap_into(running, load_model(fp8_dir, mesh=make_mesh(1)))


def test_a_scale_that_is_not_one_positive_finite_value_is_refused_naming_it(fp8_dir: Path, tmp_path: Path) -> None:
    for i, bad in enumerate([np.array([-0.5], np.float32), np.array([np.inf], np.float32), np.ones(2, np.float32)]):
        tensors = scale_tensors(("k_scale", "v_scale")) | {"model.layers.1.self_attn.v_scale": bad}
        model = with_tensors(fp8_dir, tmp_path / str(i), tensors)
        with pytest.raises(ValueError, match=r"KV-cache scale 'model.layers.1.self_attn.v_scale' must be one positive"):
            load_model(model, mesh=make_mesh(1), dtype="float32")


def test_a_missing_v_scale_is_refused_naming_what_was_looked_for(fp8_dir: Path, tmp_path: Path) -> None:
    tensors = scale_tensors(("k_scale", "v_scale"))
    del tensors["model.layers.0.self_attn.v_scale"]
    with pytest.raises(KeyError, match=r"not v_scale of 'model.layers.0.self_attn' \(looked for \['model"):
        load_model(with_tensors(fp8_dir, tmp_path / "m", tensors), mesh=make_mesh(1), dtype="float32")


def test_dummy_weights_of_a_config_with_a_kv_cache_scheme_have_scales_of_one(scaled_dir: Path) -> None:
    loaded = load_model(scaled_dir, mesh=make_mesh(1), dtype="float32", load_format="dummy")
    assert [float(layer.self_attn.k_scale[...]) for layer in loaded.model.layers] == [1.0, 1.0]
    assert [float(layer.self_attn.v_scale[...]) for layer in loaded.model.layers] == [1.0, 1.0]


def test_save_model_refuses_a_float_model_with_scales(fp8_dir: Path, tmp_path: Path) -> None:
    float_dir = with_tensors(fp8_dir / "dequantized", tmp_path / "float", scale_tensors(("kv_scale", None)), False)
    loaded = load_model(float_dir, mesh=make_mesh(1), dtype="float32")
    assert loaded.args.quant is None and loaded.args.kv_scales
    with pytest.raises(ValueError, match="save_model does not write a model's FP8 KV-cache scales"):
        save_model(loaded, tmp_path / "saved")


def test_a_model_without_scales_has_no_scale_parameters(fp8_dir: Path, tiny_model: Path) -> None:
    for model in (fp8_dir, tiny_model):  # one file; shards named by an index
        attn = load_model(model, mesh=make_mesh(1), dtype="float32").model.layers[0].self_attn
        assert attn.k_scale is None and attn.v_scale is None


def test_a_compressed_tensors_checkpoint_of_kv_scales_alone_keeps_float_weights() -> None:
    kv_only = {"quant_method": "compressed-tensors", "config_groups": {}, "kv_cache_scheme": KV_SCHEME}
    assert resolve_scheme(None, {"quantization_config": kv_only}) is None


def test_scales_are_recognised_under_vllms_names_only() -> None:
    assert stores_kv_scales(["model.layers.3.self_attn.kv_scale", "model.norm.weight"])
    assert stores_kv_scales(["model.layers.0.self_attn.qkv_proj.v_scale"])
    assert not stores_kv_scales(["model.layers.0.self_attn.k_proj.weight_scale", "model.layers.0.mlp.input_scale"])


def test_latent_attention_with_scales_is_refused_by_name() -> None:
    deepseek = {
        "architectures": ["DeepseekV3ForCausalLM"],
        **TINY_CONFIG,
        "kv_lora_rank": 32,
        "q_lora_rank": None,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 16,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "n_group": 1,  # DeepseekV3Config's default groups (8) need at least 8 experts
        "topk_group": 1,
        "moe_intermediate_size": 32,
        "first_k_dense_replace": 2,
    }
    abstract_model(deepseek, jnp.float32)  # the config itself builds
    with pytest.raises(ValueError, match=r"read for grouped-query attention only, not for multi-head latent"):
        abstract_model(deepseek, jnp.float32, kv_scales=True)

"""Gemma 3n's own pieces against transformers' modules (AltUp's predict / correct, the LAuReL block, the MLP's
Gaussian top-k sparsity), its image-text-audio checkpoint served as text, and how its config is read: hub layouts,
tensor-parallel sizes, what is refused. Its whole model's logits, chunked prefill, greedy batch and TP 2 are its
``gemma3n`` row in tests/test_families.py."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
from model_utils import TINY_CONFIG, hf_model, jllm_logits, relative_error

from jllm.errors import InputError
from jllm.loader import abstract_model, load_model
from jllm.models.altup import AltUp
from jllm.models.families.gemma3n import gemma3n_text
from jllm.models.layers import MLP, Laurel, RMSNorm
from jllm.parallel import make_mesh
from jllm.pooling import Encoder
from jllm.quantization import QuantScheme

# Relative (Frobenius) error of float32 outputs against transformers' (as tests/test_families.py's LOGITS_RTOL)
RTOL = 1e-5
SMALL = dict(TINY_CONFIG, head_dim=16, num_kv_shared_layers=0, hidden_size_per_layer_input=8, laurel_rank=8)


def _text_config(**change: Any) -> Any:
    from transformers import Gemma3nTextConfig

    return Gemma3nTextConfig(**{**SMALL, **change})


def _randomized(module: Any, seed: int) -> Any:
    """``module`` with every parameter random (transformers initialises AltUp's output scale to zeros, norms to
    ones)."""
    import torch

    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    return module.eval()


def _linear(ours: Any, theirs: Any) -> None:
    """A torch ``Linear``'s ``[out, in]`` weight into our ``[in, out]`` kernel."""
    ours.kernel.set_value(theirs.weight.detach().numpy().T)


@pytest.mark.slow  # importing torch and transformers' modeling costs ~5 s of CPU
@pytest.mark.parametrize("correct_scale", [True, False])
def test_altup_predicts_and_corrects_as_transformers(correct_scale):
    """Four streams of 10 tokens: the predictions, the corrections from a new active state and the corrected active
    stream the per-layer input reads (scaled by ``correct_output_scale`` or not) against ``Gemma3nTextAltUp``."""
    import torch
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextAltUp

    config = _text_config(altup_correct_scale=correct_scale)
    theirs = _randomized(Gemma3nTextAltUp(config), 0)
    ours = AltUp(gemma3n_text(config.to_dict(), jnp.float32))
    ours.correct_output_scale.set_value(theirs.correct_output_scale.detach().numpy())
    ours.router_norm.weight.set_value(theirs.router_norm.weight.detach().numpy())
    for name in ("correction_coefs", "prediction_coefs", "modality_router"):
        _linear(getattr(ours, name), getattr(theirs, name))
    streams, activated = torch.randn(4, 1, 10, 64), torch.randn(1, 10, 64)
    with torch.no_grad():
        predicted = theirs.predict(streams)
        corrected = theirs.correct(predicted, activated)
        active = corrected[0] if not correct_scale else theirs.scale_corrected_output(corrected[0])
    got = ours.predict(jnp.asarray(streams[:, 0].numpy()))
    assert relative_error(np.asarray(got), predicted[:, 0].numpy()) < RTOL
    got = ours.correct(jnp.asarray(predicted[:, 0].numpy()), jnp.asarray(activated[0].numpy()))
    assert relative_error(np.asarray(got), corrected[:, 0].numpy()) < RTOL
    assert relative_error(np.asarray(ours.active_output(got)), active[0].numpy()) < RTOL


@pytest.mark.slow
def test_laurel_block_and_sparse_mlp_match_transformers():
    """``Gemma3nTextLaurelBlock`` and ``Gemma3nTextMLP`` on layer 0 (sparsity 0.95: about one gate value in twenty
    passes the cutoff) and layer 1 (dense) against ours, on 12 random tokens."""
    import torch
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextLaurelBlock, Gemma3nTextMLP

    config = _text_config(activation_sparsity_pattern=[0.95, 0.0])
    x = torch.randn(1, 12, 64)
    laurel = _randomized(Gemma3nTextLaurelBlock(config), 1)
    ours = Laurel(64, 8, jnp.float32, RMSNorm(64, 1e-6, jnp.float32, float32_weight=True))
    _linear(ours.linear_left, laurel.linear_left)
    _linear(ours.linear_right, laurel.linear_right)
    ours.post_laurel_norm.weight.set_value(laurel.post_laurel_norm.weight.detach().numpy())
    with torch.no_grad():
        expected = laurel(x)[0].numpy()
    assert relative_error(np.asarray(ours(jnp.asarray(x[0].numpy()))), expected) < RTOL

    for layer, sparsity in enumerate((0.95, 0.0)):
        theirs = _randomized(Gemma3nTextMLP(config, layer_idx=layer), 2 + layer)
        mlp = MLP(64, 96, jnp.float32, "gelu_tanh", sparsity=sparsity)
        gate, up = (getattr(theirs, n).weight.detach().numpy().T for n in ("gate_proj", "up_proj"))
        mlp.gate_up_proj.kernel.set_value(np.stack([gate, up], axis=1))
        _linear(mlp.down_proj, theirs.down_proj)
        with torch.no_grad():
            expected = theirs(x)[0].numpy()
            kept = (theirs._gaussian_topk(theirs.gate_proj(x)) > 0).float().mean().item()
        assert relative_error(np.asarray(mlp(jnp.asarray(x[0].numpy()))), expected) < RTOL
        if sparsity:  # the cutoff keeps few gate values: the test compares a sparse MLP
            assert 0.0 < kept < 0.2


@pytest.mark.slow  # a tiny image-text-audio model and jllm's program: ~10 s
def test_image_text_audio_checkpoint_serves_its_language_model(tmp_path, monkeypatch):
    """``Gemma3nForConditionalGeneration`` as transformers saves it (the language model under
    ``model.language_model.``, the audio tower, embedders and a vision tower beside it): jllm's logits on a text
    prompt against transformers' image-text model's. transformers' vision tower is timm's MobileNet, which this
    environment lacks: a stand-in module takes its place (text never reaches it)."""
    import torch
    import transformers
    from transformers.models.gemma3n import modeling_gemma3n

    from_config = modeling_gemma3n.AutoModel.from_config

    def without_timm(config: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(config, transformers.Gemma3nVisionConfig):
            return torch.nn.Linear(2, 2)
        return from_config(config, *args, **kwargs)

    monkeypatch.setattr(modeling_gemma3n.AutoModel, "from_config", without_timm)
    text = dict(
        SMALL,
        model_type="gemma3n_text",
        vocab_size=512,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=16,
        activation_sparsity_pattern=[0.95, 0.0],
        initializer_range=0.3,
        tie_word_embeddings=False,  # the head is tied as the text config says (multimodal._text_only)
    )
    audio = dict(
        hidden_size=32,
        conf_num_attention_heads=2,
        conf_num_hidden_layers=1,
        sscp_conv_channel_size=[8, 8],
        input_feat_size=16,
    )
    config = transformers.Gemma3nConfig(
        text_config=text, vision_config=dict(hidden_size=32), audio_config=audio, tie_word_embeddings=False
    )
    torch.manual_seed(0)
    transformers.Gemma3nForConditionalGeneration(config).save_pretrained(tmp_path, safe_serialization=True)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["architectures"] == ["Gemma3nForConditionalGeneration"]

    ids = np.random.default_rng(3).integers(0, 512, 40).tolist()
    with torch.no_grad():
        expected = hf_model(tmp_path)(torch.tensor([ids])).logits[0].numpy()
    got = jllm_logits(load_model(tmp_path, mesh=make_mesh(1), dtype="float32"), ids)
    assert relative_error(got, expected) < RTOL
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


# gemma-3n-E2B-it's text_config keys as released (transformers 4.53's names: rope_theta / rope_local_base_freq)
E2B = dict(
    hidden_size=2048,
    intermediate_size=[8192] * 30,
    num_hidden_layers=30,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=256,
    num_kv_shared_layers=10,
    layer_types=(["sliding_attention"] * 4 + ["full_attention"]) * 6,
    activation_sparsity_pattern=[0.95] * 10 + [0.0] * 20,
    rope_theta=1_000_000.0,
    rope_local_base_freq=10_000.0,
    query_pre_attn_scalar=256,
    model_type="gemma3n_text",
)


def test_e2b_layers_read_as_transformers_lays_them_out():
    """gemma-3n-E2B's text config: each layer's window, rotary base, K/V source (the last 10 layers read the last
    earlier layer of their kind) and MLP sparsity as transformers' Gemma3nTextConfig gives them; the hub's defaults
    for the rest (a tied head, soft-capped logits, 4 AltUp streams)."""
    from transformers import Gemma3nTextConfig

    hf = Gemma3nTextConfig(**{k: v for k, v in E2B.items() if k != "model_type"})
    args = gemma3n_text(E2B, jnp.float32)
    modes = hf.kv_sharing_modes
    for i, spec in enumerate(args.layers):
        sliding = hf.layer_types[i] == "sliding_attention"
        assert spec.sliding_window == (512 if sliding else None), i
        assert spec.rope.theta == hf.rope_parameters[hf.layer_types[i]]["rope_theta"], i
        assert (spec.kv_source is not None) == (modes[i] == "reuse"), i
        if spec.kv_source is not None:
            assert modes[spec.kv_source] == "store" and hf.layer_types[spec.kv_source] == hf.layer_types[i]
        assert spec.activation_sparsity == hf.activation_sparsity_pattern[i] and spec.dense_mlp_size == 8192, i
    assert args.tie_word_embeddings and args.final_softcap == 30.0 and args.sm_scale == 1.0
    assert (args.altup_streams, args.laurel_rank, args.per_layer_input_size) == (4, 64, 256)
    # a config leaving activation_sparsity_pattern out: transformers' default, the first 10 layers sparse
    default = gemma3n_text({k: v for k, v in E2B.items() if k != "activation_sparsity_pattern"}, jnp.float32)
    assert [spec.activation_sparsity for spec in default.layers] == E2B["activation_sparsity_pattern"]


def _small_e2b(**change: Any) -> dict[str, Any]:
    """E2B's heads (8 query, 2 KV) and kinds of layer, 10 of them (the last 5 KV-shared), at a small width, as a
    config.json."""
    return dict(
        E2B,
        architectures=["Gemma3nForCausalLM"],
        num_hidden_layers=10,
        layer_types=E2B["layer_types"][:10],
        num_kv_shared_layers=5,
        activation_sparsity_pattern=[0.95] * 10,
        vocab_size=256,
        hidden_size=64,
        intermediate_size=64,
        head_dim=8,
        hidden_size_per_layer_input=4,
        vocab_size_per_layer_input=256,
        laurel_rank=4,
        **change,
    )


def test_tensor_parallel_splits_e2b_heads_up_to_8_devices_or_is_refused():
    """E2B's 8 query heads split over up to 8 devices, its 2 KV heads replicated past 2 (4 copies at TP 8, every
    layer alike, the KV-shared ones read their source's pages); a size that does not divide the heads is refused
    naming them."""
    for tp, replicas in ((2, 1), (4, 2), (8, 4)):
        assert abstract_model(_small_e2b(), jnp.float32, tp)[3] == replicas
    with pytest.raises(ValueError, match="tensor_parallel_size=3 does not fit the model's 8 attention heads"):
        abstract_model(_small_e2b(), jnp.float32, 3)


def test_quantization_and_hidden_states_are_refused_for_gemma3n_by_name():
    """Quantized weights are not yet checked against float's logits; hidden states and embeddings would be AltUp's
    streams, not one state: both refused naming Gemma 3n."""
    with pytest.raises(ValueError, match="quantization='int8' is not supported for Gemma 3n"):
        abstract_model(_small_e2b(), jnp.float32, 1, QuantScheme("int8"))
    runner = SimpleNamespace(loaded=SimpleNamespace(args=gemma3n_text(_small_e2b(), jnp.float32)))
    with pytest.raises(InputError, match="hidden states and embeddings are not supported for Gemma 3n"):
        Encoder(runner, max_model_len=64)


def test_gemma3n_config_keys_absent_from_a_hub_config_take_transformers_defaults():
    """A config naming only its sizes takes Gemma3nTextConfig's defaults: a full layer every fifth, 15 KV-shared
    layers, per-layer inputs 256 wide from a 262,144-row table, LAuReL rank 64."""
    from transformers import Gemma3nTextConfig

    sizes = dict(num_hidden_layers=20, hidden_size=64, intermediate_size=64, head_dim=8)
    hf = Gemma3nTextConfig(**sizes)
    args = gemma3n_text(sizes, jnp.float32)
    assert [spec.sliding_window is None for spec in args.layers] == [t == "full_attention" for t in hf.layer_types]
    assert sum(spec.kv_source is not None for spec in args.layers) == hf.num_kv_shared_layers == 15
    assert (args.vocab_size, args.per_layer_vocab_size) == (hf.vocab_size, hf.vocab_size_per_layer_input)
    assert (args.per_layer_input_size, args.laurel_rank) == (hf.hidden_size_per_layer_input, hf.laurel_rank)
    assert [spec.activation_sparsity for spec in args.layers] == hf.activation_sparsity_pattern

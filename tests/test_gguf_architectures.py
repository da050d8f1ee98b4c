"""GGUF files of every architecture the converter reads, written from tiny random transformers models as llama.cpp
writes them, converted, and checked against transformers' own GGUF loading of the same file: config, tensors,
logits, token ids."""

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import quantize
from test_gguf_convert import assert_same_config, assert_same_tensors, transformers_gguf_load

import jllm.gguf_convert as gguf_convert
import jllm.gguf_tokenizer as gguf_tokenizer

SP_PIECES = ["▁", "t", "h", "e", "l", "o", "w", "r", "d", "▁t", "he", "▁the", "ll", "llo", "▁w", "or", "▁wor", "ld"]
SP_PIECES += ["▁world", "▁h", "▁he", "▁hello", "▁▁", "ello"]
# llama.cpp's token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte
K_QUANT_SCALE_OFFSETS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
K_QUANT_SCALE = {Q.Q2_K: 1.0, Q.Q3_K: 0.3, Q.Q4_K: 0.05, Q.Q5_K: 0.03, Q.Q6_K: 0.01}


def gguf_bytes(weights: np.ndarray, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """`weights` in `qtype`'s blocks; gguf-py cannot quantize K-quants, so those are random blocks with small finite
    f16 scales (both loaders dequantize the same bytes, which is all the comparison needs)."""
    from gguf import GGML_QUANT_SIZES

    try:
        return quantize(weights, qtype)
    except NotImplementedError:
        pass
    block, size = GGML_QUANT_SIZES[qtype]
    rows = int(np.prod(weights.shape[:-1]))
    raw = rng.integers(0, 256, (rows, weights.shape[-1] // block, size), dtype=np.uint8)
    for offset in K_QUANT_SCALE_OFFSETS.get(qtype, (0,)):  # the IQ types keep their f16 scale first
        scale = rng.uniform(0.005, 0.02, raw.shape[:2]) * K_QUANT_SCALE.get(qtype, 0.1)
        raw[..., offset : offset + 2] = scale.astype(np.float16).view(np.uint8).reshape(*raw.shape[:2], 2)
    return raw.reshape(*weights.shape[:-1], -1)


def add_tokenizer(w: GGUFWriter, kind: str, arch: str) -> int:
    """A tiny vocabulary of `kind` ('gpt2': byte-level BPE with merges, Qwen's; 'llama': SentencePiece with byte
    fallback, scores and no merges, as llama.cpp writes Llama 2 / Gemma / Phi-3), with a user-defined token."""
    if kind == "gpt2":
        alphabet = [gguf_tokenizer.bytes_to_unicode()[b] for b in range(256)]
        merges = ["Ġ t", "h e", "Ġt he", "l l", "ll o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tokens = [*specials, *alphabet, *(m.replace(" ", "") for m in merges), "<think>"]
        types = [3, 3, 3] + [1] * (len(tokens) - 4) + [4]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("bloom" if arch == "bloom" else "qwen2")  # BLOOM's split: transformers reads none
        w.add_token_merges(merges)
        w.add_bos_token_id(0)
        w.add_eos_token_id(0)
        w.add_eot_token_id(2)
        w.add_pad_token_id(0)
        w.add_add_bos_token(False)
        w.add_add_space_prefix(True)  # transformers' GPT-2 tokenizer does not read it
    else:
        gemma = arch.startswith("gemma")
        specials = ["<pad>", "<eos>", "<bos>", "<unk>"] if gemma else ["<unk>", "<s>", "</s>"]
        pieces = [p.replace("▁▁", "  ") if gemma else p for p in SP_PIECES]  # Gemma files spell spaces as spaces
        tokens = [*specials, *(f"<0x{b:02X}>" for b in range(256)), *pieces, "<think>"]
        types = [3] * len(specials) + [6] * 256 + [1] * len(pieces) + [4]
        types[specials.index("<unk>")] = 2
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_scores([0.0] * (len(specials) + 256) + [-float(i) for i in range(len(pieces))] + [0.0])
        w.add_bos_token_id(specials.index("<bos>" if gemma else "<s>"))
        w.add_eos_token_id(specials.index("<eos>" if gemma else "</s>"))
        w.add_unk_token_id(specials.index("<unk>"))
        w.add_pad_token_id(0)
        w.add_add_space_prefix(not gemma)  # as llama.cpp writes them; transformers' builders do not read it
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_chat_template("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    return len(tokens)


GEMMA = {"head_dim": 16, "tie_word_embeddings": True, "pad_token_id": 0}  # gguf-py has no untied Gemma 2 head
MOE = {"num_experts": 4, "num_experts_per_tok": 2, "shared_expert_intermediate_size": 5632}
# arch -> (transformers class, GGUF writer architecture, tokenizer kind, config overrides)
ARCH_CASES = {
    "mistral": ("MistralForCausalLM", "llama", "llama", {"sliding_window": None}),  # llama.cpp writes it as Llama
    "qwen2": ("Qwen2ForCausalLM", "qwen2", "gpt2", {}),
    "qwen3": ("Qwen3ForCausalLM", "qwen3", "gpt2", {"head_dim": 128}),
    "gemma2": ("Gemma2ForCausalLM", "gemma2", "llama", {**GEMMA, "sliding_window": 4}),
    "gemma3": ("Gemma3ForCausalLM", "gemma3", "llama", {**GEMMA, "sliding_window": 4}),
    # the experts' widths are transformers' class defaults, which its GGUF loader takes in place of the file's
    "qwen2moe": ("Qwen2MoeForCausalLM", "qwen2moe", "gpt2", MOE),
    "qwen3moe": ("Qwen3MoeForCausalLM", "qwen3moe", "gpt2", {**MOE, "head_dim": 16, "norm_topk_prob": True}),
    "falcon": ("FalconForCausalLM", "falcon", "gpt2", {"num_key_value_heads": 1, "tie_word_embeddings": True}),
    "phi3": ("Phi3ForCausalLM", "phi3", "llama", {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}),
    "gpt2": ("GPT2LMHeadModel", "gpt2", "gpt2", {}),
    "bloom": ("BloomForCausalLM", "bloom", "gpt2", {"tie_word_embeddings": True}),
    "stablelm": ("StableLmForCausalLM", "stablelm", "gpt2", {"use_qkv_bias": True}),
    "stablelm-parallel": ("StableLmForCausalLM", "stablelm", "gpt2", {"use_parallel_residual": True}),
    "starcoder2": ("Starcoder2ForCausalLM", "starcoder2", "gpt2", {}),
    "nemotron": ("NemotronForCausalLM", "nemotron", "llama", {}),
}
# keys transformers' GGUF reader drops (its config class's default instead) that the converter reads, as llama.cpp
# runs the file: the reference is transformers' model with them set
READ_WHERE_TRANSFORMERS_DROPS = {"starcoder2": {"rope_theta": 5000.0}}
# keys transformers' GGUF reader sets that its config class has no use for (the converter leaves them out)
TRANSFORMERS_UNUSED_KEYS = {"gpt2": ("n_ctx", "feed_forward_length")}


def add_hparams(w: GGUFWriter, arch: str, config: dict, model_config) -> None:
    """The `<arch>.*` keys llama.cpp writes for this model."""
    width = config["hidden_size"]
    head_dim = config.get("head_dim") or width // config["num_attention_heads"]
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(model_config.n_positions if arch == "gpt2" else 256)  # GPT-2's: `wpe`'s rows
    w.add_embedding_length(width)
    w.add_feed_forward_length(4 * width if arch in ("falcon", "gpt2", "bloom") else width)
    w.add_head_count(config["num_attention_heads"])
    # no rotary (`GPT2Model`, `BloomModel.set_gguf_parameters`; the KV-head count BLOOM's writes, its head count, is
    # read by neither reader)
    if arch in ("gpt2", "bloom"):
        w.add_layer_norm_eps(1e-5)
        return
    w.add_head_count_kv(config["num_key_value_heads"])
    if arch != "stablelm":  # llama.cpp writes none for StableLM
        w.add_rope_freq_base(5000.0)
    if arch in ("falcon", "stablelm", "starcoder2", "nemotron"):
        w.add_layer_norm_eps(1e-5 if arch != "nemotron" else 1e-6)
    if arch not in ("falcon", "stablelm", "starcoder2"):  # newer llama.cpp writes Nemotron's epsilon twice
        w.add_layer_norm_rms_eps(1e-6)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
    elif arch in ("stablelm", "nemotron"):  # the rotated channels, as llama.cpp counts them
        partial = model_config.rope_parameters["partial_rotary_factor"]
        rotated = partial * head_dim if arch == "stablelm" else partial * width // config["num_attention_heads"]
        w.add_rope_dimension_count(int(rotated))
    if config.get("sliding_window") and arch.startswith("gemma"):
        w.add_sliding_window(config["sliding_window"])
    if "num_experts" in config:
        w.add_expert_count(config["num_experts"])
        w.add_expert_used_count(config["num_experts_per_tok"])
        w.add_expert_feed_forward_length(model_config.moe_intermediate_size)
        if arch == "qwen2moe":
            w.add_expert_shared_feed_forward_length(config["shared_expert_intermediate_size"])


def write_arch_gguf(
    path: Path, case: str, qtype: Q = Q.F32, width: int = 64, rope: dict | None = None, omit: tuple[str, ...] = ()
) -> Path:
    """A two-layer random `case` model written as llama.cpp writes that architecture: gguf-py's tensor names, Llama's
    q/k rows permuted, Gemma's norms as `w + 1`, matrices in `qtype` (1-D tensors F32, as llama.cpp keeps them);
    `rope`: an HF config's rotary scaling, written as llama.cpp writes it (`add_rope_scaling`); `omit`: metadata keys
    (after the architecture's name) left out."""
    import gguf
    import torch
    import transformers
    from gguf import GGML_QUANT_SIZES

    model_cls, arch, tokenizer_kind, overrides = ARCH_CASES[case]
    rng = np.random.default_rng(0)
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny {case}")
    vocab = add_tokenizer(w, tokenizer_kind, arch)
    config = {**TINY_GGUF_CONFIG, "hidden_size": width, "intermediate_size": width, "vocab_size": vocab, **overrides}
    torch.manual_seed(0)
    model_cls = getattr(transformers, model_cls)
    model = model_cls(model_cls.config_class(**config))
    add_hparams(w, arch, config, model.config)
    if arch == "phi3":  # Phi3MiniModel: a head's rotary channels, fewer with a partial_rotary_factor (Phi-4-mini)
        partial = (rope or {}).get("partial_rotary_factor", 1.0)
        w.add_rope_dimension_count(int(partial * width) // config["num_attention_heads"])

    for key in omit:
        del w.kv_data[0][f"{arch}.{key}"]
    if rope is not None:
        rotary_dim = int(rope.get("partial_rotary_factor", 1.0) * width) // config["num_attention_heads"]
        add_rope_scaling(w, rope, rotary_dim)

    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), 2)
    for hf_name, weights in hf_state_as_gguf(model):
        if hf_name == "lm_head.weight" and model.config.tie_word_embeddings and arch != "bloom":
            continue  # llama.cpp writes BLOOM's tied head as a copy of the embeddings
        base, suffix = hf_name.rsplit(".", 1)
        base = base.removeprefix("transformer.") if arch == "bloom" else base  # gguf-py's BLOOM names lack it
        name = f"{names.get_name(base)}.{suffix}" if names.get_name(base) else hf_name
        if weights.ndim == 1:
            weights = weights + 0.3 * rng.standard_normal(weights.shape).astype(np.float32)  # not the init's constants
        weights = as_llama_cpp_stores(weights, name, arch, config)
        kind = qtype if weights.ndim >= 2 else Q.F32
        if weights.shape[-1] % GGML_QUANT_SIZES[kind][0]:
            kind = Q.Q8_0  # rows narrower than a K-quant block: llama.cpp falls back the same way
        w.add_tensor(name, gguf_bytes(weights.astype(np.float32), kind, rng), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def as_llama_cpp_stores(weights: np.ndarray, name: str, arch: str, config: dict) -> np.ndarray:
    """An HF tensor as llama.cpp's converter writes it: Llama's q/k rows permuted, GPT-2's `Conv1D` matrices
    transposed, BLOOM's fused q/k/v regrouped, Gemma's and Nemotron's norms as `w + 1`."""
    if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
        n = config["num_attention_heads"] if "attn_q" in name else config["num_key_value_heads"]
        return weights.reshape(n, 2, weights.shape[0] // n // 2, -1).swapaxes(1, 2).reshape(weights.shape)
    if arch == "gpt2" and name.endswith(("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")):
        return weights.T  # [in, out] -> [out, in]
    if arch == "bloom" and ".attn_qkv." in name:  # per head [q_h; k_h; v_h] -> [q; k; v] (`BloomModel.modify_tensors`)
        heads = config["num_attention_heads"]
        return weights.reshape(heads, 3, -1, *weights.shape[1:]).swapaxes(0, 1).reshape(weights.shape)
    if arch.startswith(("gemma", "nemotron")) and name.endswith("norm.weight"):
        return weights + 1
    return weights


def add_rope_scaling(w: GGUFWriter, rope: dict, rotary_dim: int) -> None:
    """`rope` (an HF `rope_scaling`, with Phi-3's top-level `original_max_position_embeddings` and
    `partial_rotary_factor` in it) as llama.cpp's
    convert_hf_to_gguf.py writes it: Llama 3's as `rope_freqs` divisors (`LlamaModel.generate_extra_tensors`: in
    float32, with the top-level original context, else 8192), Phi-3's longrope as its two factor lists, the original
    context and the attention factor (`Phi3MiniModel`), YaRN as its keys, linear (Gemma 3, Llama) or another kind as
    two keys; kind
    "divisors": a `rope_freqs` tensor of any values. The rope base and the context are `add_hparams`' (5000, 256)."""
    import gguf

    kind = rope["rope_type"]
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    elif kind == "llama3":
        freqs = 1.0 / (np.float32(5000.0) ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / rotary_dim))
        factor, low, high, old = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"], 8192
        divisors = []
        for freq in freqs:
            wavelen = 2 * np.pi / freq
            if wavelen < old / high:
                divisors.append(1)
            elif wavelen > old / low:
                divisors.append(factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                divisors.append(1 / ((1 - smooth) / factor + smooth))
        w.add_tensor("rope_freqs.weight", np.array(divisors, np.float32))
    elif kind == "longrope" and "short_factor" in rope:
        original = rope["original_max_position_embeddings"]
        w.add_rope_scaling_orig_ctx_len(original)
        w.add_rope_scaling_attn_factors(np.sqrt(1 + np.log(256 / original) / np.log(original)))
        w.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], np.float32))
        w.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], np.float32))
    elif kind == "divisors":  # any `rope_freqs`, Llama 3's or not
        w.add_tensor("rope_freqs.weight", np.array(rope["divisors"], np.float32))
    else:  # TextModel.set_gguf_parameters: yarn's keys, or another kind's (longrope without lists) type and factor
        w.add_rope_scaling_type(gguf.RopeScalingType(kind))
        w.add_rope_scaling_factor(rope["factor"])
        if kind == "yarn":
            w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
            w.add_rope_scaling_yarn_beta_fast(rope["beta_fast"])
            w.add_rope_scaling_yarn_beta_slow(rope["beta_slow"])


def hf_state_as_gguf(model) -> list[tuple[str, np.ndarray]]:
    """The model's tensors, transformers' fused experts as llama.cpp's three ``[experts, out, in]`` tensors (named
    here as they are in the file) and the shared expert's gate as a vector."""
    out = []
    for hf_name, tensor in model.state_dict().items():
        weights = tensor.float().numpy()
        if hf_name.endswith("experts.gate_up_proj"):
            block = hf_name.split(".")[2]
            gate, up = np.split(weights, 2, axis=1)
            out += [(f"blk.{block}.ffn_gate_exps.weight", gate), (f"blk.{block}.ffn_up_exps.weight", up)]
        elif hf_name.endswith("experts.down_proj"):
            out.append((f"blk.{hf_name.split('.')[2]}.ffn_down_exps.weight", weights))
        elif hf_name.endswith("shared_expert_gate.weight"):
            out.append((hf_name, weights.reshape(-1)))
        else:
            out.append((hf_name, weights))
    return out


TINY_GGUF_CONFIG = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)


def gguf_reference_logits(
    gguf: Path, prompts: list[list[int]], dropped: dict | None = None
) -> tuple[dict, list[np.ndarray]]:
    """transformers' float32 logits ``[T, vocab]`` per prompt for its own loading of `gguf`: the model its GGUF
    config builds, filled from `load_gguf_checkpoint` (what `from_pretrained(gguf_file=...)` runs for these
    architectures; that call itself insists on `accelerate`); `dropped`: rope parameters its reader drops, set."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config, tensors = transformers_gguf_load(gguf)
    if dropped:
        config["rope_parameters"] = {**config["rope_parameters"], **dropped}
    for key in TRANSFORMERS_UNUSED_KEYS.get(config["model_type"], ()):
        del config[key]
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32).eval()
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    with torch.no_grad():
        return config, [model(torch.tensor([ids])).logits[0].numpy() for ids in prompts]


@pytest.mark.slow  # ~16 s over its cases: the fast tier stays under its 2 minutes
@pytest.mark.parametrize(
    ("case", "qtype", "width"),
    [
        ("mistral", Q.F16, 64),
        ("qwen2", Q.Q8_0, 64),
        ("qwen2", Q.Q4_K, 256),
        ("qwen3", Q.BF16, 64),
        ("gemma2", Q.Q4_0, 64),
        ("gemma3", Q.Q6_K, 256),
        ("phi3", Q.Q5_1, 64),
        ("qwen2moe", Q.Q8_0, 64),
        ("qwen3moe", Q.Q5_K, 256),
        ("falcon", Q.Q8_0, 64),
        ("gpt2", Q.F32, 64),
        ("gpt2", Q.Q4_0, 64),
        ("bloom", Q.F32, 64),
        ("bloom", Q.Q5_0, 64),
        ("stablelm", Q.F32, 64),
        ("stablelm-parallel", Q.Q8_0, 64),
        ("starcoder2", Q.F32, 64),
        ("starcoder2", Q.Q4_K, 256),
        ("nemotron", Q.F32, 64),
        ("nemotron", Q.Q6_K, 256),
    ],
    ids=lambda value: value.name if isinstance(value, Q) else str(value),
)
def test_architecture_gguf_logits_equal_transformers(tmp_path: Path, case: str, qtype: Q, width: int) -> None:
    """Config, float32 tensors and every position's logits of the converted directory equal transformers' own
    loading of the same GGUF: ``max|ours - theirs| / max|theirs|`` below 1e-4 (float32 on both sides; the bytes are
    dequantized identically), the same top-1 token everywhere."""
    from model_utils import jllm_batch_logits

    from jllm.loader import load_model
    from jllm.parallel import make_mesh

    gguf = write_arch_gguf(tmp_path / f"{case}.gguf", case, qtype, width)
    out = gguf_convert.convert_gguf(gguf, tmp_path / "out")
    prompts = [[5, 77, 120, 9, 31, 200, 3, 64, 17, 88, 140, 250, 6], [40, 2, 99]]
    config, expected = gguf_reference_logits(gguf, prompts, READ_WHERE_TRANSFORMERS_DROPS.get(case))
    assert_same_config(out, config)
    theirs = transformers_gguf_load(gguf)[1]
    if config["tie_word_embeddings"]:
        theirs.pop("lm_head.weight", None)  # a tied head's copy of the embeddings (BLOOM's `output`) is not written
    assert_same_tensors(out, theirs)
    loaded = load_model(out, mesh=make_mesh(1), dtype="float32")
    for ours, theirs in zip(jllm_batch_logits(loaded, prompts), expected, strict=True):
        assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-4
        np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))


# BLOOM's tokenizer.json split (bigscience/bloom), which llama.cpp applies to a `bloom` file and transformers' GGUF
# reader, with no entry for it, replaces by GPT-2's: the converter's reference is transformers' with it put back
BLOOM_SPLIT = " ?[^(\\s|[.,!?…。，、।۔،])]+"


@pytest.mark.parametrize(
    "case", ["mistral", "qwen2", "gemma2", "gemma3", "phi3", "gpt2", "bloom", "stablelm", "starcoder2", "nemotron"]
)
def test_architecture_gguf_tokenizer_equals_transformers(tmp_path: Path, case: str) -> None:
    """The rebuilt tokenizer.json equals transformers' GGUF tokenizer's backend, and gives its ids: byte-level BPE
    with Qwen's split (qwen2) or BLOOM's (its tokenizer.json's, where transformers splits as GPT-2), SentencePiece
    with byte fallback and merges recovered from the scores (Llama-style: mistral), from the token order with spaces
    respelled (Gemma), with the prefix space as a normalizer (Phi-3)."""
    from tokenizers import Regex, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    gguf = write_arch_gguf(tmp_path / f"{case}.gguf", case)
    out = gguf_convert.convert_gguf(gguf, tmp_path / "out")
    reference = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=gguf.name)
    if case == "bloom":
        split = pre_tokenizers.Split(Regex(BLOOM_SPLIT), behavior="isolated")
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        reference.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    ours = PreTrainedTokenizerFast.from_pretrained(str(out))
    ours_json, theirs_json = (json.loads(t.backend_tokenizer.to_str()) for t in (ours, reference))
    vocab = len(reader_tokens(gguf))
    theirs_json["added_tokens"] = [t for t in theirs_json["added_tokens"] if t["id"] < vocab]  # GPT-2's extra eos
    assert ours_json == theirs_json
    generation = json.loads((out / "generation_config.json").read_text())
    end_of_turn = [0, 2] if ARCH_CASES[case][2] == "gpt2" else reference.eos_token_id  # + end of turn
    assert generation["eos_token_id"] == end_of_turn
    for text in [
        "hello the world",
        " the  world 123 héllo",
        "don't x-y2",
        "<s>x</s><bos>",
        "😀 wor\nld",
        "  hello<think>  ",
        "",
    ]:
        assert ours.encode(text) == reference.encode(text), text
        assert ours.decode(ours.encode(text)) == reference.decode(reference.encode(text)), text


def reader_tokens(gguf: Path) -> list[str]:
    from gguf import GGUFReader

    return GGUFReader(gguf).fields["tokenizer.ggml.tokens"].contents()


@pytest.mark.parametrize(
    "qtype",
    [Q.F32, Q.Q4_1, Q.Q5_0, Q.Q2_K, Q.Q3_K, Q.Q5_K, Q.IQ4_NL, Q.IQ4_XS, Q.IQ2_XXS, Q.IQ3_S, Q.TQ2_0, Q.MXFP4],
    ids=lambda qtype: qtype.name,
)
def test_every_dequantizable_weight_type_converts_as_transformers_reads_it(tmp_path: Path, qtype: Q) -> None:
    """The types the logits test does not cover: tensors equal to transformers' (both dequantize the same bytes)."""
    gguf = write_arch_gguf(tmp_path / "qwen2.gguf", "qwen2", qtype, width=256)
    out = gguf_convert.convert_gguf(gguf, tmp_path / "out")
    types = {t.tensor_type for t in gguf_convert.GGUFReader(gguf).tensors}
    assert qtype in types
    assert_same_tensors(out, transformers_gguf_load(gguf)[1])


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
SHORT = [1.0, 1.02, 1.05, 1.1, 1.25, 1.5, 2.0, 2.5]  # Phi-3's are lists of this kind, one per frequency
LONGROPE = {"rope_type": "longrope", "short_factor": SHORT, "long_factor": [4 * f for f in SHORT]}
PARTIAL_LONGROPE = {**LONGROPE, "short_factor": SHORT[::2], "long_factor": LONGROPE["long_factor"][::2]}  # half rotates
YARN_BETAS = {"beta_fast": 16.0, "beta_slow": 2.0}  # not the defaults, so they must come through


@pytest.mark.parametrize(
    ("case", "width", "rope"),
    [
        ("mistral", 256, {**LLAMA3, "original_max_position_embeddings": 8192}),  # Llama 3.1's
        ("mistral", 256, {**LLAMA3, "factor": 32.0, "original_max_position_embeddings": 8192}),  # Llama 3.2's
        ("phi3", 64, {**LONGROPE, "original_max_position_embeddings": 64}),
        ("phi3", 64, {**PARTIAL_LONGROPE, "original_max_position_embeddings": 64, "partial_rotary_factor": 0.5}),
        ("gemma3", 64, {"rope_type": "linear", "factor": 8.0}),  # its global layers'
        ("mistral", 64, {"rope_type": "linear", "factor": 4.0}),
        ("qwen2", 64, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, **YARN_BETAS}),
    ],
    ids=[
        "llama3.1",
        "llama3.2",
        "phi3-longrope",
        "phi4mini-partial-longrope",
        "gemma3-linear",
        "llama-linear",
        "qwen2-yarn",
    ],
)
def test_rope_scaling_comes_back_as_the_hf_config_had_it(tmp_path: Path, case: str, width: int, rope: dict) -> None:
    """transformers' GGUF loader drops the rotary scaling llama.cpp wrote (Llama 3's `rope_freqs` divisors, Phi-3's
    factor tensors, the linear keys); the converter writes it back as the HF config had it, so the converted model's
    scaled inverse frequencies and attention factor are transformers' for that config (float32 rounding apart)."""
    import jax.numpy as jnp
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from jllm.models.registry import build_args

    gguf = write_arch_gguf(tmp_path / f"{case}.gguf", case, width=width, rope=rope)
    config = json.loads((gguf_convert.convert_gguf(gguf, tmp_path / "out") / "config.json").read_text())
    original, top_level = dict(rope), {}
    if rope["rope_type"] == "longrope":  # top-level keys in Phi-3's config
        top_level = {
            k: original.pop(k) for k in ("original_max_position_embeddings", "partial_rotary_factor") if k in rope
        }
    assert config["rope_scaling"] == original and config | top_level == config

    _, args = build_args({**config, "num_hidden_layers": 6}, jnp.float32)  # six: Gemma 3's first global layer
    [scaled] = {layer.rope for layer in args.layers if dict(layer.rope.scaling)["rope_type"] != "default"}
    config_cls = {"mistral": "LlamaConfig", "phi3": "Phi3Config", "gemma3": "LlamaConfig", "qwen2": "Qwen2Config"}[case]
    hf_config = getattr(transformers, config_cls)(
        hidden_size=width,
        num_attention_heads=4,
        head_dim=16 if case == "gemma3" else width // 4,
        max_position_embeddings=256,
        rope_parameters={**original, "rope_theta": 5000.0},
        **top_level,
    )
    inv_freq, attention = ROPE_INIT_FUNCTIONS[rope["rope_type"]](hf_config, "cpu")
    np.testing.assert_allclose(scaled.inv_freq(), inv_freq.numpy(), rtol=1e-6)
    assert scaled.attention_scaling() == pytest.approx(attention, rel=1e-7)


def test_frequency_divisors_no_llama3_parameters_give_are_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Divisors that are not Llama 3's piecewise shape, or a scaling kind not read here (longrope's type without its
    factor tensors), leave the rotary unscaled, as transformers' GGUF loader leaves it, and say so; the weights
    convert as it reads them."""
    bare = write_arch_gguf(tmp_path / "bare.gguf", "mistral", rope={"rope_type": "longrope", "factor": 4.0})
    odd = write_arch_gguf(tmp_path / "odd.gguf", "mistral", rope={"rope_type": "divisors", "divisors": range(1, 9)})
    for file, message in [(bare, "rope scaling 'longrope' (factor 4.0) is not read"), (odd, "are not Llama 3's")]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="jllm.gguf_rope"):
            out = gguf_convert.convert_gguf(file, tmp_path / "out")
        config, tensors = transformers_gguf_load(file)
        assert_same_config(out, config)
        assert_same_tensors(out, tensors)
        assert message in caplog.text


@pytest.mark.parametrize(
    ("case", "omit"),
    [
        ("gemma2", ("attention.sliding_window",)),
        ("qwen2moe", ("expert_feed_forward_length", "expert_shared_feed_forward_length", "feed_forward_length")),
    ],
)
def test_keys_a_file_leaves_out_take_transformers_defaults(tmp_path: Path, case: str, omit: tuple[str, ...]) -> None:
    """Where the metadata says nothing, config.json states the default transformers' config class applies (jllm's
    family readers would otherwise assume their own: no sliding window, no expert width)."""
    gguf = write_arch_gguf(tmp_path / f"{case}.gguf", case, omit=omit)
    out = gguf_convert.convert_gguf(gguf, tmp_path / "out")
    assert_same_config(out, transformers_gguf_load(gguf)[0])
    config = json.loads((out / "config.json").read_text())
    expected = {
        "gemma2": {"sliding_window": 4096},
        "qwen2moe": {"moe_intermediate_size": 1408, "intermediate_size": 5632},
    }
    assert {key: config.get(key) for key in expected[case]} == expected[case]


def rewritten_gguf(
    source: Path, path: Path, arch: str, values: dict | None = None, tensors: dict[str, np.ndarray] | None = None
) -> Path:
    """`source`'s metadata (`values` replacing some) and tensors (`tensors` added, float32) under architecture
    `arch`: a file no writer here produces directly; a tensor in `tensors` replaces the file's of that name."""
    reader = gguf_convert.GGUFReader(source)
    old_arch = reader.fields["general.architecture"].contents()
    w = GGUFWriter(str(path), arch)
    for field in reader.fields.values():
        if not field.name.startswith("GGUF.") and field.name != "general.architecture":
            name = field.name.replace(f"{old_arch}.", f"{arch}.", 1)
            value = (values or {}).get(name, field.contents())
            w.add_key_value(name, value, field.types[0], field.types[-1] if len(field.types) > 1 else None)
    for tensor in reader.tensors:
        if tensor.name not in (tensors or {}):
            w.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    for name, weights in (tensors or {}).items():
        w.add_tensor(name, weights.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_falcon_with_grouped_kv_heads_is_refused(tmp_path: Path) -> None:
    """transformers' GGUF reader builds every Falcon file as Falcon-7B (multi-query), which a Falcon-40B-style file
    with several KV heads is not."""
    gguf = write_arch_gguf(tmp_path / "falcon.gguf", "falcon")
    path = rewritten_gguf(gguf, tmp_path / "falcon40b.gguf", "falcon", {"falcon.attention.head_count_kv": 8})
    with pytest.raises(NotImplementedError, match=r"Falcon GGUF with 8 KV heads .*head_count_kv = 1"):
        gguf_convert.convert_gguf(path, tmp_path / "out")


def test_a_mistral_architecture_file_is_refused_and_a_llama_one_named_mistral_converts_as_llama(
    tmp_path: Path,
) -> None:
    """llama.cpp writes Mistral models as `llama`; transformers' reader turns a `llama` file named exactly "mistral"
    (or a `mistral` one) into a Mistral config whose tensors it then cannot place (gguf-py has no such
    architecture). A `mistral` file is refused by name; a `llama` file named "mistral" converts as every other
    `llama` file, tensors equal to transformers' loading of it under another name."""
    gguf = write_arch_gguf(tmp_path / "llama.gguf", "mistral")
    with pytest.raises(NotImplementedError, match=r"architecture 'mistral' is not supported: llama.cpp writes"):
        gguf_convert.convert_gguf(rewritten_gguf(gguf, tmp_path / "m.gguf", "mistral"), tmp_path / "out")
    named = rewritten_gguf(gguf, tmp_path / "named.gguf", "llama", {"general.name": "mistral"})
    out = gguf_convert.convert_gguf(named, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert_same_tensors(out, transformers_gguf_load(gguf)[1])


def test_nemotron_with_heads_wider_than_hidden_over_heads_is_refused(tmp_path: Path) -> None:
    """transformers' GGUF reader builds Nemotron heads of hidden / heads channels, which Minitron-8B's (128 of a 4096
    hidden over 48 heads) are not."""
    gguf = write_arch_gguf(tmp_path / "nemotron.gguf", "nemotron")
    path = rewritten_gguf(gguf, tmp_path / "wide.gguf", "nemotron", {"nemotron.attention.key_length": 128})
    with pytest.raises(NotImplementedError, match=r"heads of 128 channels .* hidden / heads = 16"):
        gguf_convert.convert_gguf(path, tmp_path / "out")


@pytest.mark.parametrize(
    ("case", "tensors", "message"),
    [
        ("stablelm", {"attn_q_norm.weight": (4, 16), "attn_k_norm.weight": (2, 16)}, "StableLM 2 12B's per-head q/k"),
        ("nemotron", {"attn_q.bias": (64,), "ffn_down.bias": (64,)}, "Nemotron's attention / MLP biases"),
    ],
    ids=["stablelm-qk-norms", "nemotron-biases"],
)
def test_tensors_transformers_drops_are_refused(tmp_path: Path, case: str, tensors: dict, message: str) -> None:
    """Tensors transformers' GGUF reader drops (its model would run without them: StableLM 2 12B's per-head q/k
    LayerNorms, Nemotron biases its config says it has not) are refused by name."""
    gguf = write_arch_gguf(tmp_path / f"{case}.gguf", case)
    extra = {f"blk.0.{name}": np.ones(shape) for name, shape in tensors.items()}
    path = rewritten_gguf(gguf, tmp_path / "extra.gguf", case, tensors=extra)
    with pytest.raises(NotImplementedError, match=rf"'blk.0.{next(iter(tensors))}' is not supported: {message}"):
        gguf_convert.convert_gguf(path, tmp_path / "out")


def test_bloom_head_stored_apart_from_the_embeddings_is_untied(tmp_path: Path) -> None:
    """llama.cpp writes BLOOM's tied head as a copy of the embeddings (`output`), which its quantizer may store in
    another type; transformers' `from_pretrained` then unties the head (tied weights whose checkpoint values differ),
    and so does the converter: config untied, the head's own weights, logits within 1e-4 of transformers' untied
    float32 model (relative to their largest)."""
    import torch
    from model_utils import jllm_batch_logits
    from transformers import BloomConfig, BloomForCausalLM

    from jllm.loader import load_model
    from jllm.parallel import make_mesh

    gguf = write_arch_gguf(tmp_path / "bloom.gguf", "bloom")
    embeddings = gguf_convert.GGUFReader(gguf).get_tensor(0)
    assert embeddings.name == "token_embd.weight"
    head = np.asarray(embeddings.data, np.float32) + np.float32(0.01)  # [vocab, hidden]: not the embeddings' values
    path = rewritten_gguf(gguf, tmp_path / "untied.gguf", "bloom", tensors={"output.weight": head})
    out = gguf_convert.convert_gguf(path, tmp_path / "out")

    config, tensors = transformers_gguf_load(path)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert_same_tensors(out, tensors)
    model = BloomForCausalLM(BloomConfig(**{**config, "tie_word_embeddings": False})).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    prompts = [[5, 77, 120, 9, 31], [40, 2, 99]]
    with torch.no_grad():
        expected = [model(torch.tensor([ids])).logits[0].numpy() for ids in prompts]
    loaded = load_model(out, mesh=make_mesh(1), dtype="float32")
    for ours, theirs in zip(jllm_batch_logits(loaded, prompts), expected, strict=True):
        assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-4

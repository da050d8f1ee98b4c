"""Turn a Llama-architecture GGUF file into an HF-style model directory.

The rest of jllm reads one format (config.json + safetensors + tokenizer.json), so a GGUF is converted once, up
front: weights dequantized to float32, llama.cpp's rotary row order undone, the tokenizer rebuilt from the metadata.
Every step mirrors what transformers' own GGUF loader does, and the tests hold us to its output.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

_CONTROL = 3  # llama.cpp's token type for special tokens like <|im_end|>

# GGUF tensor name (block index stripped) -> HF Llama name.
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

# Llama-3-style vocabularies were learned on text split by this regex (transformers' GGUF tokenizer table);
# every other `tokenizer.ggml.pre` value gets plain GPT-2 byte-level splitting, as in transformers.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_SPLITS = dict.fromkeys(
    ["llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe"], _LLAMA3_SPLIT
)


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert `gguf_path` into `out_dir` (replacing it) and return `out_dir`.

    Everything is written into a temporary sibling directory which is renamed into place at the end, so a killed
    conversion leaves either no directory or a complete one, never half of one.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    reader = GGUFReader(gguf_path)
    meta = {name: field.contents() for name, field in reader.fields.items()}
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise NotImplementedError(f"{gguf_path}: GGUF architecture {arch!r} is not supported; only 'llama' is.")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        config = _hf_config(meta, has_lm_head=any(t.name == "output.weight" for t in reader.tensors))
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json", _generation_config(config))
        save_file(_hf_tensors(reader, config), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _build_tokenizer(meta).save(str(tmp / "tokenizer.json"))
        _write_json(tmp / "tokenizer_config.json", _tokenizer_config(meta))
        for path in (tmp, *tmp.iterdir()):  # mkdtemp and safetensors create owner-only files; a cache is shared
            path.chmod(0o755 if path.is_dir() else 0o644)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename `tmp` to `out_dir`; an existing `out_dir` is moved aside first and removed after."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / out_dir.name)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _hf_config(meta: dict[str, Any], has_lm_head: bool) -> dict[str, Any]:
    """config.json for LlamaForCausalLM, from llama.cpp's `llama.*` keys (names as transformers maps them)."""
    if meta.get("llama.rope.scaling.type", "none") != "none":
        raise NotImplementedError(f"rope scaling {meta['llama.rope.scaling.type']!r} in GGUF files is not supported")
    hidden = int(meta["llama.embedding_length"])
    heads = int(meta["llama.attention.head_count"])
    head_dim = meta.get("llama.attention.key_length") or meta.get("llama.rope.dimension_count") or hidden // heads
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(meta["llama.feed_forward_length"]),
        "num_hidden_layers": int(meta["llama.block_count"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get("llama.attention.head_count_kv", heads)),
        "head_dim": int(head_dim),
        "hidden_act": "silu",
        "rms_norm_eps": float(meta["llama.attention.layer_norm_rms_epsilon"]),
        "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "max_position_embeddings": int(meta["llama.context_length"]),
        "vocab_size": int(meta.get("llama.vocab_size") or len(meta["tokenizer.ggml.tokens"])),
        "tie_word_embeddings": not has_lm_head,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "unk_token_id": meta.get("tokenizer.ggml.unknown_token_id"),
        "torch_dtype": "float32",
    }


def _generation_config(config: dict[str, Any]) -> dict[str, Any]:
    return {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id") if config[key] is not None}


def _hf_tensors(reader: GGUFReader, config: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every tensor dequantized to float32 under its HF name, q/k rows back in HF's rotary order."""
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    tensors = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        weights = dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)  # [out, in] or [n]
        if ".attn_q." in tensor.name:
            weights = _unpermute_rotary(weights, heads)
        elif ".attn_k." in tensor.name:
            weights = _unpermute_rotary(weights, kv_heads)
        tensors[name] = np.ascontiguousarray(weights)
    return tensors


def _hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    raise NotImplementedError(f"GGUF tensor {gguf_name!r} has no Llama equivalent in this converter")


def _unpermute_rotary(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (rotary halves interleaved per head), as transformers'
    `LlamaTensorProcessor._reverse_permute_weights` does."""
    half = weights.shape[0] // n_head // 2
    return weights.reshape(n_head, half, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are spelled in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def _build_tokenizer(meta: dict[str, Any]) -> Tokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` built the way transformers builds it from the same metadata."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise NotImplementedError(f"GGUF tokenizer model {kind!r} is not supported; only byte-level BPE ('gpt2') is.")
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    vocab = {
        tok if set(tok) <= alphabet else "".join(spelling[b] for b in tok.encode("utf-8")): i
        for i, tok in enumerate(tokens)
    }
    merges = [tuple(merge.split(" ")) for merge in meta["tokenizer.ggml.merges"]]
    bpe = models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    tokenizer = Tokenizer(bpe)
    add_prefix_space = bool(meta.get("tokenizer.ggml.add_space_prefix", False))
    split = _PRE_TOKENIZER_SPLITS.get(meta.get("tokenizer.ggml.pre", ""))
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = _post_processor(meta)
    # A control token spelled outside the byte alphabet is a llama.cpp mislabel; transformers skips those too.
    token_types = meta.get("tokenizer.ggml.token_type") or []
    control = [tok for tok, kind in zip(tokens, token_types, strict=False) if kind == _CONTROL and set(tok) <= alphabet]
    tokenizer.add_special_tokens([AddedToken(tok, normalized=False, special=True) for tok in control])
    return tokenizer


def _post_processor(meta: dict[str, Any]) -> processors.TemplateProcessing:
    """BOS/EOS insertion as the file asks, in the template form transformers writes."""
    tokens = meta["tokenizer.ggml.tokens"]
    bos_id, eos_id = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    bos = tokens[bos_id] if meta.get("tokenizer.ggml.add_bos_token", False) and bos_id is not None else None
    eos = tokens[eos_id] if meta.get("tokenizer.ggml.add_eos_token", False) and eos_id is not None else None

    single = " ".join(f"{p}:0" for p in (bos, "$A", eos) if p is not None)
    pair = single + " " + " ".join(f"{p}:1" for p in (bos, "$B", eos) if p is not None)
    special = [(tok, i) for tok, i in ((bos, bos_id), (eos, eos_id)) if tok is not None]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def _tokenizer_config(meta: dict[str, Any]) -> dict[str, Any]:
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key: str) -> str | None:
        token_id = meta.get(f"tokenizer.ggml.{key}")
        return tokens[token_id] if token_id is not None else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "pad_token": token("padding_token_id"),
        "unk_token": token("unknown_token_id"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta["llama.context_length"]),
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return config

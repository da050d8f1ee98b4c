"""Turn a GGUF file (Llama, Mistral, Qwen2/3, Qwen2/3-MoE, Gemma 2/3, Phi-3, Falcon-7B, GPT-2, BLOOM, StableLM,
StarCoder2, Nemotron) into an HF model directory.

The rest of jllm reads one format (config.json + safetensors + tokenizer.json), so a GGUF is converted once, up
front: weights dequantized to float32 (every type gguf-py dequantizes), llama.cpp's Llama rotary row order, Gemma's
and Nemotron's `w + 1` norms, GPT-2's transposed matrices and BLOOM's regrouped q/k/v undone, the tokenizer rebuilt
from the metadata (`jllm.gguf_tokenizer`). Every step mirrors what transformers' own GGUF loader does (its legacy
`load_gguf_checkpoint` path, for these architectures), and the tests hold us to its output, but three: the rotary
scaling it drops is written back into config.json (`jllm.gguf_rope`), so a Llama 3.1 or a Phi-3-128k runs as its
original config says, StarCoder2's rope base is the file's (transformers keeps its class default, 10000, where
StarCoder2 checkpoints have 1e5-1e6), and BLOOM text is split by BLOOM's own pre-tokenizer regex (transformers
splits it as GPT-2's, which llama.cpp does not). A file transformers' reader would load wrong in a way not worth
repairing (Falcon-40B's KV heads, StableLM 2 12B's q/k norms, Minitron-8B's head width) is refused by name; what
each architecture is in HF terms is `jllm.gguf_architectures`.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, ReaderTensor
from gguf.quants import dequantize
from safetensors.numpy import save_file

from jllm.gguf_architectures import Architecture, architecture
from jllm.gguf_rope import ROPE_TENSORS, rope_config
from jllm.gguf_tokenizer import build_tokenizer, tokenizer_config

SHARD_BYTES = 2 << 30  # converted weights are written in shards of at most this many bytes
_TOKEN_IDS = {
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "pad_token_id": "padding_token_id",
    "unk_token_id": "unknown_token_id",
}


def _dequantizable(qtype: GGMLQuantizationType) -> bool:
    """Whether gguf-py dequantizes `qtype` (asked of one zero block, so a newer gguf-py's types come for free)."""
    try:
        dequantize(np.zeros((1, GGML_QUANT_SIZES[qtype][1]), np.uint8), qtype)
    except (NotImplementedError, KeyError, ValueError):
        return False
    return True


SUPPORTED_TENSOR_TYPES = tuple(t for t in GGMLQuantizationType if _dequantizable(t))


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert `gguf_path` into `out_dir` (replacing it) and return `out_dir`.

    An architecture or weight type this converter does not read is refused before anything is written. Everything
    is written into a temporary sibling directory which is renamed into place at the end, so a killed conversion
    leaves either no directory or a complete one, never half of one.
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    try:
        reader = GGUFReader(gguf_path)
    except (ValueError, OSError, IndexError) as e:  # gguf's own words ("GGUF magic invalid") name no file
        raise ValueError(f"{gguf_path} is not a readable GGUF file: {e}") from e
    meta = {name: field.contents() for name, field in reader.fields.items()}
    arch_name, arch = architecture(gguf_path, meta)
    _check_tensors(gguf_path, reader, arch)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        config = _hf_config(meta, arch_name, arch, {t.name for t in reader.tensors})
        if arch.tied_head:
            config["tie_word_embeddings"] = _output_is_the_embeddings(reader)
        rope_tensors = {t.name: _dequantized(t) for t in reader.tensors if t.name in ROPE_TENSORS}
        config.update(rope_config(meta, arch_name, config, rope_tensors))
        _write_json(tmp / "config.json", _named(config, arch.config_names))
        _write_json(tmp / "generation_config.json", _generation_config(config, meta))
        _save_tensors(_hf_tensors(reader, config, arch), tmp)
        build_tokenizer(meta, arch_name).save(str(tmp / "tokenizer.json"))
        _write_json(tmp / "tokenizer_config.json", tokenizer_config(meta, config["max_position_embeddings"]))
        for path in (tmp, *tmp.iterdir()):  # mkdtemp and safetensors create owner-only files; a cache is shared
            path.chmod(0o755 if path.is_dir() else 0o644)
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _check_tensors(gguf_path: Path, reader: GGUFReader, arch: Architecture) -> None:
    """Refuse a weight type gguf-py cannot dequantize, or a tensor with no place in the HF model, by name."""
    for tensor in reader.tensors:
        if tensor.tensor_type not in SUPPORTED_TENSOR_TYPES:
            supported = ", ".join(t.name for t in SUPPORTED_TENSOR_TYPES)
            raise NotImplementedError(
                f"{gguf_path}: tensor {tensor.name!r} has type {tensor.tensor_type.name}, which is not supported "
                f"(supported: {supported})"
            )
        if tensor.name not in ROPE_TENSORS:  # read into config.json's rope_scaling
            _hf_name(tensor.name, arch)


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


def _hf_config(meta: dict[str, Any], arch_name: str, arch: Architecture, tensor_names: set[str]) -> dict[str, Any]:
    """config.json from llama.cpp's `<arch>.*` keys, named as transformers maps them, plus the class defaults
    transformers fills in that jllm's family readers would otherwise not see, and what it reads off the tensors."""

    def key(name: str, default: Any = None) -> Any:
        return meta.get(f"{arch_name}.{name}", default)

    heads = int(key("attention.head_count"))
    config = {
        "architectures": [arch.hf_class],
        "model_type": arch.model_type,
        "hidden_size": int(key("embedding_length")),
        "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "rope_theta": float(key("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(key("context_length")),
        "vocab_size": int(key("vocab_size") or len(meta["tokenizer.ggml.tokens"])),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "torch_dtype": "float32",
        **arch.extra_config,
    }
    for name, gguf_key in _TOKEN_IDS.items():  # only those the file has: the rest stay the config class's defaults
        if f"tokenizer.ggml.{gguf_key}" in meta:
            config[name] = int(meta[f"tokenizer.ggml.{gguf_key}"])
    # Falcon's LayerNorm epsilon is not read (transformers' mapping has only the RMS key)
    keys = {"feed_forward_length": "intermediate_size", "attention.layer_norm_rms_epsilon": "rms_norm_eps"}
    for gguf_key, name in {**keys, **arch.keys}.items():
        if key(gguf_key) is not None:  # where the file has none, the class default above (or transformers')
            config[name] = key(gguf_key)
    if arch.from_tensors is not None:
        config.update(arch.from_tensors(tensor_names))
    if arch.head_dim_key is not None and key(arch.head_dim_key) is not None:
        config["head_dim"] = int(key(arch.head_dim_key))
    return config


def _named(config: dict[str, Any], names: dict[str, str | None]) -> dict[str, Any]:
    """`config` with its keys renamed to the family's own (GPT-2's `n_embd`, ...), those it has no use for left out."""
    return {names.get(key, key): value for key, value in config.items() if names.get(key, key) is not None}


def _generation_config(config: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The config's special ids; generation also stops at the file's end-of-turn / end-of-message tokens (Gemma's
    `<end_of_turn>`, Llama 3's `<|eot_id|>`), which config.json, as transformers reads it, has no place for."""
    generation = {key: config[key] for key in ("bos_token_id", "eos_token_id", "pad_token_id") if key in config}
    stops = [generation["eos_token_id"]] if "eos_token_id" in generation else []
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        if key in meta and int(meta[key]) not in stops:
            stops.append(int(meta[key]))
    if len(stops) > 1:
        generation["eos_token_id"] = stops
    return generation


def _save_tensors(tensors: Iterator[tuple[str, np.ndarray]], out_dir: Path) -> None:
    """`model.safetensors`, or shards of at most `SHARD_BYTES` with HF's index past that, so a conversion holds one
    shard in memory (float32 weights are four to eight times the size of a quantized file)."""
    shards: list[tuple[Path, list[str]]] = []
    current: dict[str, np.ndarray] = {}
    size = total = 0
    for name, weights in itertools.chain(tensors, [(None, None)]):  # the end flushes the last shard
        if current and (name is None or size + weights.nbytes > SHARD_BYTES):
            path = out_dir / f".shard-{len(shards)}.safetensors"
            save_file(current, str(path), metadata={"format": "pt"})
            shards.append((path, list(current)))
            current, size = {}, 0
        if name is not None:
            current[name] = weights
            size += weights.nbytes
            total += weights.nbytes
    if len(shards) == 1:
        os.replace(shards[0][0], out_dir / "model.safetensors")
        return
    weight_map = {}
    for i, (path, names) in enumerate(shards, start=1):
        final = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        os.replace(path, out_dir / final)
        weight_map.update(dict.fromkeys(names, final))
    _write_json(out_dir / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def _hf_tensors(reader: GGUFReader, config: dict[str, Any], arch: Architecture) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor dequantized to float32 under its HF name, one at a time: q/k rows back in HF's rotary order
    (Llama), Gemma's norms back to `w` from llama.cpp's `w + 1`, stacked experts one tensor each."""
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    for tensor in reader.tensors:
        if tensor.name in ROPE_TENSORS or (tensor.name == "output.weight" and config["tie_word_embeddings"]):
            continue  # a tied head's copy of the embeddings (BLOOM's) is not written: vocab x hidden float32 unread
        weights = _dequantized(tensor)  # [out, in] or [n]
        if arch.rotary_permuted and ".attn_q." in tensor.name:
            weights = _unpermute_rotary(weights, heads)
        elif arch.rotary_permuted and ".attn_k." in tensor.name:
            weights = _unpermute_rotary(weights, kv_heads)
        elif arch.norm_offset and "norm.weight" in tensor.name:
            weights = weights - np.float32(1.0)
        elif tensor.name.split(".", 2)[-1] in arch.transposed:
            weights = weights.T
        elif arch.qkv_per_head and ".attn_qkv." in tensor.name:
            weights = _qkv_per_head(weights, heads)
        name = _hf_name(tensor.name, arch)
        if "{e}" in name:  # [experts, out, in]: one tensor per expert
            yield from ((name.format(e=e), np.ascontiguousarray(w)) for e, w in enumerate(weights))
            continue
        if tensor.name.endswith("ffn_gate_inp_shexp.weight"):
            weights = weights.reshape(1, -1)  # the shared expert's gate, [1, hidden] in HF checkpoints
        yield name, np.ascontiguousarray(weights)


def _output_is_the_embeddings(reader: GGUFReader) -> bool:
    """Whether the file has no `output` head or one of the embeddings' type and bytes, the head transformers' model
    ties (it unties one holding other values: llama.cpp's quantizer may store BLOOM's copy in another type)."""
    tensors = {t.name: t for t in reader.tensors if t.name in ("output.weight", "token_embd.weight")}
    if "output.weight" not in tensors:
        return True
    head, embeddings = tensors["output.weight"], tensors["token_embd.weight"]
    return head.tensor_type == embeddings.tensor_type and np.array_equal(head.data, embeddings.data)


def _dequantized(tensor: ReaderTensor) -> np.ndarray:
    return dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)


def _hf_name(gguf_name: str, arch: Architecture) -> str:
    if gguf_name in arch.global_names:
        return arch.global_names[gguf_name]
    match = re.fullmatch(r"blk\.(\d+)\.(.+)", gguf_name)
    if match and match.group(2) in arch.layer_names:
        return f"{arch.prefix}{match.group(1)}.{arch.layer_names[match.group(2)]}"
    if match and match.group(2) in arch.refused:
        raise NotImplementedError(
            f"GGUF tensor {gguf_name!r} is not supported: {arch.refused[match.group(2)]} (the model would run "
            "without it)"
        )
    moe = (
        " (a mixture of experts in a 'llama' file, as llama.cpp writes Mixtral, is not supported)"
        if "_exps" in gguf_name
        else ""
    )
    raise NotImplementedError(f"GGUF tensor {gguf_name!r} has no {arch.hf_class} equivalent in this converter{moe}")


def _qkv_per_head(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's fused [q; k; v] rows (or bias) back in HF's per-head [q_h; k_h; v_h] order, as transformers'
    `BloomTensorProcessor` reorders them."""
    return weights.reshape(3, n_head, -1, *weights.shape[1:]).swapaxes(0, 1).reshape(weights.shape)


def _unpermute_rotary(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (rotary halves interleaved per head), as transformers'
    `LlamaTensorProcessor._reverse_permute_weights` does."""
    half = weights.shape[0] // n_head // 2
    return weights.reshape(n_head, half, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)

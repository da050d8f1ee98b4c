"""A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) read into one slot of the fused projections'
layout (``jllm.models.lora.LoRAWeights`` without the slot axis), NumPy on the host.

PEFT stores ``lora_A.weight [r, in]`` and ``lora_B.weight [out, r]`` per target linear and adds
``scaling * B @ A @ x``, ``scaling = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``). Here A is
transposed to ``[in, r]``, B to ``[r, out]`` with the scaling folded in, each padded to the slots' rank, and q/k/v's
(gate/up's) ranks sit side by side with their B rows placed where the fused kernel keeps that part's outputs:
``[kv_heads, group + 2, head_dim]`` (query heads of KV head c at ``[c, :group]``, its K at ``[c, group]``, V at
``[c, group + 1]``) and ``[2, mlp]``. With KV heads replicated for tensor parallelism (``kv_replicas``, as the loader
builds the model: model KV head m is checkpoint head ``m // replicas`` with its ``m % replicas``-th share of the query
group) K's and V's B rows repeat per copy. What this does not implement is refused by name when the adapter loads.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from jllm.models.lora import TARGETS, LoRAWeights
from jllm.models.model_args import ModelArgs

# Families in Llama's layout: separate q/k/v and gate/up tensors, a sequential residual, a dense gated MLP.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
SUPPORTED_MODULES = tuple(name for names in TARGETS.values() for name in names)
_KEY = re.compile(
    r"base_model\.model\.model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_(A|B)\.weight"
)  # PEFT's saved names (the adapter name "default" dropped)


class AdapterError(ValueError):
    """An adapter jllm cannot serve; the message names the folder, the field or tensor, and what is supported."""


def check_architecture(hf_config: dict[str, Any]) -> None:
    """LoRA serving is implemented for the Llama-layout families only."""
    names = hf_config.get("architectures") or []
    if not any(name in SUPPORTED_ARCHITECTURES for name in names):
        raise AdapterError(
            f"enable_lora is not supported for architectures {names}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )


def read_adapter(path: str | Path, args: ModelArgs, max_rank: int, kv_replicas: int = 1) -> LoRAWeights:
    """The adapter's tensors in one slot's layout, per layer stacked on a leading axis of ``num_layers``:
    ``LoRAWeights`` of NumPy arrays ``[num_layers, ...]`` in the model's dtype. ``kv_replicas``: copies of each
    checkpoint KV head in the model (``args.num_kv_heads`` counts them)."""
    folder = Path(path)
    config = _read_config(folder)
    rank = config["r"]
    if not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"adapter {str(folder)!r}: r={rank!r} must be an integer >= 1")
    if rank > max_rank:
        raise AdapterError(f"adapter {str(folder)!r} has rank r={rank} > max_lora_rank={max_rank}; raise max_lora_rank")
    alpha = config.get("lora_alpha", 8)
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tensors = _read_tensors(folder, args)
    out = _zeros(args, max_rank)
    expected = _shapes(args, kv_replicas)
    for (layer, module, part), value in tensors.items():
        n_in, n_out = expected[module]
        want = (rank, n_in) if part == "A" else (n_out, rank)
        if value.shape != want:
            name = f"layers.{layer}.{module}.lora_{part}.weight"
            raise AdapterError(f"adapter {str(folder)!r}: {name} has shape {value.shape}, expected {want}")
        _place(out, args, max_rank, layer, module, part, value.T if part == "A" else value.T * scaling)
    return LoRAWeights(**{name: array.astype(args.dtype) for name, array in out.items()})


def _read_config(folder: Path) -> dict[str, Any]:
    file = folder / "adapter_config.json"
    if not file.is_file():
        raise AdapterError(f"no adapter_config.json in LoRA adapter folder {str(folder)!r} (a PEFT save_pretrained)")
    config = json.loads(file.read_text())
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise AdapterError(f"adapter {str(folder)!r}: peft_type={peft_type!r} is not supported; supported: 'LORA'")
    refused = {
        "use_dora": "DoRA",
        "modules_to_save": "fully trained modules",
        "rank_pattern": "per-module ranks",
        "alpha_pattern": "per-module alphas",
        "lora_bias": "LoRA biases",
        "trainable_token_indices": "trainable tokens",
        "target_parameters": "parameter targets",
        "alora_invocation_tokens": "activated LoRA",
        "layer_replication": "layer replication",
    }
    for key, what in refused.items():
        if config.get(key):
            raise AdapterError(f"adapter {str(folder)!r}: {key}={config[key]!r} ({what}) is not supported")
    if config.get("bias", "none") != "none":
        raise AdapterError(f"adapter {str(folder)!r}: bias={config['bias']!r} is not supported; supported: 'none'")
    _check_targets(folder, config.get("target_modules"))
    if "r" not in config:
        raise AdapterError(f"adapter {str(folder)!r}: adapter_config.json has no 'r' (the LoRA rank)")
    return config


def _check_targets(folder: Path, given: object) -> None:
    """``target_modules``: names among the supported ones (or PEFT's "all-linear", which here means them all)."""
    targets = given
    if targets == "all-linear":  # PEFT's every linear but the LM head: in these families, the supported seven
        targets = list(SUPPORTED_MODULES)
    elif isinstance(targets, str):  # PEFT reads any other string as a regular expression over module names
        targets = [targets] if targets in SUPPORTED_MODULES else None
    if not isinstance(targets, list):
        raise AdapterError(
            f"adapter {str(folder)!r}: target_modules={given!r} must be a list of module "
            f"names; supported: {', '.join(SUPPORTED_MODULES)}"
        )
    unsupported = sorted(set(targets) - set(SUPPORTED_MODULES))
    if unsupported:
        raise AdapterError(
            f"adapter {str(folder)!r}: target_modules {unsupported} are not supported; supported: "
            f"{', '.join(SUPPORTED_MODULES)}"
        )


def _read_tensors(folder: Path, args: ModelArgs) -> dict[tuple[int, str, str], np.ndarray]:
    """(layer, PEFT module, "A" or "B") -> float32 array, every key checked."""
    file = folder / "adapter_model.safetensors"
    if not file.is_file():
        raise AdapterError(f"no adapter_model.safetensors in LoRA adapter folder {str(folder)!r}")
    tensors = {}
    with safe_open(file, framework="flax") as handle:
        for key in handle.keys():
            match = _KEY.fullmatch(key)
            if match is None or match[2] not in SUPPORTED_MODULES:
                raise AdapterError(
                    f"adapter {str(folder)!r}: tensor {key!r} is not supported; LoRA targets supported: "
                    f"{', '.join(SUPPORTED_MODULES)} of the decoder layers"
                )
            layer = int(match[1])
            if layer >= args.num_layers:
                raise AdapterError(f"adapter {str(folder)!r}: tensor {key!r} names layer {layer} of {args.num_layers}")
            tensors[layer, match[2], match[3]] = np.asarray(handle.get_tensor(key), np.float32)
    return tensors


def _shapes(args: ModelArgs, kv_replicas: int) -> dict[str, tuple[int, int]]:
    """Each PEFT target's (in, out) features, as the checkpoint has them."""
    d, hd, mlp = args.hidden_size, args.head_dim, args.intermediate_size
    q, kv = args.num_heads * hd, args.num_kv_heads // kv_replicas * hd
    return {
        "q_proj": (d, q),
        "k_proj": (d, kv),
        "v_proj": (d, kv),
        "o_proj": (q, d),
        "gate_proj": (d, mlp),
        "up_proj": (d, mlp),
        "down_proj": (mlp, d),
    }


def _zeros(args: ModelArgs, rank: int) -> dict[str, np.ndarray]:
    """One slot's ``LoRAWeights`` fields, every layer, all zeros (float32 while placed)."""
    n, d, hd, mlp = args.num_layers, args.hidden_size, args.head_dim, args.intermediate_size
    kv, group = args.num_kv_heads, args.num_heads // args.num_kv_heads
    shapes = {
        "qkv_a": (d, 3 * rank),
        "qkv_b": (3 * rank, kv, group + 2, hd),
        "o_a": (args.num_heads * hd, rank),
        "o_b": (rank, d),
        "gate_up_a": (d, 2 * rank),
        "gate_up_b": (2 * rank, 2, mlp),
        "down_a": (mlp, rank),
        "down_b": (rank, d),
    }
    return {name: np.zeros((n, *shape), np.float32) for name, shape in shapes.items()}


def zero_slot_shapes(args: ModelArgs, rank: int) -> dict[str, tuple[int, ...]]:
    """``LoRAWeights``' field shapes for one slot, every layer: ``[num_layers, ...]``."""
    return {name: array.shape for name, array in _zeros(args, rank).items()}


def slots_bytes(args: ModelArgs, max_loras: int, rank: int) -> int:
    """The device bytes of every slot (``max_loras`` + the empty one), all layers, unsplit: what memory plans add."""
    elements = sum(math.prod(shape) for shape in zero_slot_shapes(args, rank).values())
    return elements * (max_loras + 1) * jnp.dtype(args.dtype).itemsize


def _place(
    out: dict[str, np.ndarray], args: ModelArgs, max_rank: int, layer: int, module: str, part: str, value: np.ndarray
) -> None:
    """``value``: A as ``[in, r]`` or B as ``[r, out]`` (scaled), into its fused projection's rank block and, for
    B, its part of the fused outputs."""
    target = next(t for t, names in TARGETS.items() if module in names)
    index = TARGETS[target].index(module)
    r = value.shape[1] if part == "A" else value.shape[0]
    ranks = slice(index * max_rank, index * max_rank + r)
    if part == "A":
        out[f"{target}_a"][layer][:, ranks] = value
        return
    b = out[f"{target}_b"][layer]
    kv, group = args.num_kv_heads, args.num_heads // args.num_kv_heads
    if target == "qkv":
        if module == "q_proj":  # query head h belongs to KV head h // group
            b[ranks, :, :group] = value.reshape(r, kv, group, args.head_dim)
        else:
            heads = value.reshape(r, -1, args.head_dim)  # the checkpoint's KV heads, each repeated per copy
            b[ranks, :, group + (module == "v_proj")] = np.repeat(heads, kv // heads.shape[1], axis=1)
    elif target == "gate_up":
        b[ranks, index] = value
    else:
        b[ranks] = value

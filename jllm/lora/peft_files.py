"""A PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) read into one slot of the fused projections'
layout (``jllm.models.lora.LoRAWeights`` without the slot axis), NumPy on the host.

PEFT stores ``lora_A.weight [r, in]`` and ``lora_B.weight [out, r]`` per target linear and adds
``scaling * B @ A @ x``, ``scaling = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with ``use_rslora``). Here A is
transposed to ``[in, r]``, B to ``[r, out]`` with the scaling folded in, each padded to the slots' rank. The PEFT
modules a family's adapter may target are its checkpoint's linears (``family_modules``, from its ``WeightMap``): q/k/v's
(gate/up's) ranks sit side by side, a fused module's (Phi-3's ``qkv_proj``, ``gate_up_proj``) in one rank block with
its B rows split into the parts it holds. B rows go where the fused kernel keeps that part's outputs:
``[kv_heads, group + 2, head_dim]`` (query heads of KV head c at ``[c, :group]``, its K at ``[c, group]``, V at
``[c, group + 1]``) and ``[2, mlp]``. With KV heads replicated for tensor parallelism (``kv_replicas``, as the loader
builds the model: model KV head m is checkpoint head ``m // replicas`` with its ``m % replicas``-th share of the query
group) K's and V's B rows repeat per copy. What this does not implement is refused by name when the adapter loads.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from jllm.models.lora import LoRAWeights
from jllm.models.model_args import ModelArgs

# Families whose adapters match PEFT's forward (tests/test_lora_families.py): a grouped-query attention with q/k/v
# and o linears and, where the MLP is a dense one (gated or plain), its linears (a mixture of experts: attention
# targets only), sequential or parallel residual
SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "GraniteForCausalLM",
    "Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM",
    "MixtralForCausalLM",
    "Phi3ForCausalLM",
    "SmolLM3ForCausalLM",
    "Olmo2ForCausalLM",
    "CohereForCausalLM",
    "StableLmForCausalLM",
    "GlmForCausalLM",
    "Glm4ForCausalLM",
    "Starcoder2ForCausalLM",
    "Cohere2ForCausalLM",
    "Olmo3ForCausalLM",
    "Exaone4ForCausalLM",
    "Ernie4_5ForCausalLM",
    "SeedOssForCausalLM",
    "ArceeForCausalLM",
    "HeliumForCausalLM",
    "Ministral3ForCausalLM",
    "ApertusForCausalLM",
    "OlmoeForCausalLM",
    "GraniteMoeForCausalLM",
    "PhimoeForCausalLM",
    "Gemma3ForConditionalGeneration",
    "Mistral3ForConditionalGeneration",
)
# What a text-only load of an image-text checkpoint never reads (``jllm.models.families.multimodal``): an adapter's
# tensors there change nothing a text prompt computes, and are skipped
_VISION = re.compile(r"base_model\.model\.(?:model\.)?(?:vision_tower|multi_modal_projector)\.[\w.]+")


class AdapterError(ValueError):
    """An adapter jllm cannot serve; the message names the folder, the field or tensor, and what is supported."""


def check_architecture(hf_config: dict[str, Any]) -> None:
    """LoRA serving is implemented for the families ``SUPPORTED_ARCHITECTURES`` names."""
    names = hf_config.get("architectures") or []
    if not any(name in SUPPORTED_ARCHITECTURES for name in names):
        raise AdapterError(
            f"enable_lora is not supported for architectures {names}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )


@dataclasses.dataclass(frozen=True)
class PeftModule:
    """A PEFT target of a family: its layer's block (``self_attn``, ``mlp``), our fused projection it adds to, its
    rank block there, and the parts of that projection's outputs its B rows hold, in order."""

    block: str
    target: str
    rank_block: int
    parts: tuple[str, ...]


def family_modules(args: ModelArgs) -> dict[str, PeftModule]:
    """The PEFT modules an adapter of this model may target, by the checkpoint's names (its ``WeightMap``): separate
    q/k/v or Phi-3's concatenated ``qkv_proj``, o, and a dense MLP's separate gate/up, fused ``gate_up_proj`` (Phi-3,
    GLM) or plain up (StarCoder2's ``c_fc``), and down. A mixture of experts' MLP has none (its experts' LoRA is not
    implemented)."""
    weights, renamed = args.weights, dict(args.weights.rename)
    if weights.qkv_layout == "separate":
        modules = {
            name: PeftModule("self_attn", "qkv", i, (part,))
            for i, (name, part) in enumerate(zip(weights.qkv, "qkv", strict=True))
        }
    else:  # "concat": all query rows, then K's, then V's (check_architecture keeps out the "grouped" families)
        modules = {weights.qkv[0]: PeftModule("self_attn", "qkv", 0, ("q", "k", "v"))}
    modules[renamed.get("o_proj", "o_proj")] = PeftModule("self_attn", "o", 0, ("o",))
    if args.num_experts:
        return modules
    if not args.mlp_gated:  # a plain MLP's up (StarCoder2's ``c_fc``)
        modules[renamed.get("up_proj", "up_proj")] = PeftModule("mlp", "up", 0, ("up",))
    elif len(weights.gate_up) == 2:
        parts = zip(weights.gate_up, ("gate", "up"), strict=True)
        modules.update({name: PeftModule("mlp", "gate_up", i, (part,)) for i, (name, part) in enumerate(parts)})
    else:  # gate rows, then up rows
        modules[weights.gate_up[0]] = PeftModule("mlp", "gate_up", 0, ("gate", "up"))
    modules[renamed.get("down_proj", "down_proj")] = PeftModule("mlp", "down", 0, ("down",))
    return modules


def read_adapter(path: str | Path, args: ModelArgs, max_rank: int, kv_replicas: int = 1) -> LoRAWeights:
    """The adapter's tensors in one slot's layout, per layer stacked on a leading axis of ``num_layers``:
    ``LoRAWeights`` of NumPy arrays ``[num_layers, ...]`` in the model's dtype. ``kv_replicas``: copies of each
    checkpoint KV head in the model (``args.num_kv_heads`` counts them)."""
    folder = Path(path)
    modules = family_modules(args)
    config = _read_config(folder, modules)
    rank = config["r"]
    if not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"adapter {str(folder)!r}: r={rank!r} must be an integer >= 1")
    if rank > max_rank:
        raise AdapterError(f"adapter {str(folder)!r} has rank r={rank} > max_lora_rank={max_rank}; raise max_lora_rank")
    alpha = config.get("lora_alpha", 8)
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    tensors = _read_tensors(folder, args, modules)
    out = _zeros(args, max_rank)
    inputs, widths = _widths(args, kv_replicas)
    for (layer, name, kind), value in tensors.items():
        module = modules[name]
        want = (rank, inputs[module.target]) if kind == "A" else (sum(widths[part] for part in module.parts), rank)
        if value.shape != want:
            key = f"layers.{layer}.{module.block}.{name}.lora_{kind}.weight"
            raise AdapterError(f"adapter {str(folder)!r}: {key} has shape {value.shape}, expected {want}")
        ranks = slice(module.rank_block * max_rank, module.rank_block * max_rank + rank)
        if kind == "A":
            out[f"{module.target}_a"][layer][:, ranks] = value.T
            continue
        rows = np.cumsum([widths[part] for part in module.parts])[:-1]  # B's rows, split into its parts
        for part, part_b in zip(module.parts, np.split(value.T * scaling, rows, axis=1), strict=True):
            _place_b(out[f"{module.target}_b"][layer], args, ranks, module.target, part, part_b)
    return LoRAWeights(**{name: array.astype(args.dtype) for name, array in out.items()})


def _read_config(folder: Path, modules: dict[str, PeftModule]) -> dict[str, Any]:
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
    _check_targets(folder, config.get("target_modules"), modules)
    if "r" not in config:
        raise AdapterError(f"adapter {str(folder)!r}: adapter_config.json has no 'r' (the LoRA rank)")
    return config


def _check_targets(folder: Path, given: object, modules: dict[str, PeftModule]) -> None:
    """``target_modules``: names among the family's ``modules`` (or PEFT's "all-linear": its linears' tensors are
    checked as they are read)."""
    supported, targets = list(modules), given
    if targets == "all-linear":
        return
    if isinstance(targets, str):  # PEFT reads any other string as a regular expression over module names
        targets = [targets] if targets in supported else None
    if not isinstance(targets, list):
        raise AdapterError(
            f"adapter {str(folder)!r}: target_modules={given!r} must be a list of module "
            f"names; supported: {_supported(modules)}"
        )
    unsupported = sorted(set(targets) - set(supported))
    if unsupported:
        raise AdapterError(
            f"adapter {str(folder)!r}: target_modules {unsupported} are not supported for this model; supported: "
            f"{_supported(modules)}"
        )


def _supported(modules: dict[str, PeftModule]) -> str:
    """The family's targets, for an error message (a mixture of experts' say what its MLP lacks)."""
    names = ", ".join(modules)
    return names if any(m.block == "mlp" for m in modules.values()) else f"{names} (its MLP's experts take no LoRA)"


def _read_tensors(
    folder: Path, args: ModelArgs, modules: dict[str, PeftModule]
) -> dict[tuple[int, str, str], np.ndarray]:
    """(layer, PEFT module, "A" or "B") -> float32 array, every key checked."""
    file = folder / "adapter_model.safetensors"
    if not file.is_file():
        raise AdapterError(f"no adapter_model.safetensors in LoRA adapter folder {str(folder)!r}")
    paths = {f"{module.block}.{name}": name for name, module in modules.items()}  # where PEFT saves them
    key_pattern = _key_pattern(args)
    image_text = bool(args.weights.head_prefix)  # the language model under a prefix of its own
    tensors = {}
    with safe_open(file, framework="flax") as handle:
        for key in handle.keys():
            if image_text and _VISION.fullmatch(key):
                continue
            match = key_pattern.fullmatch(key)
            if match is None or match[2] not in paths:
                raise AdapterError(
                    f"adapter {str(folder)!r}: tensor {key!r} is not supported; LoRA targets supported for this "
                    f"model: {_supported(modules)} of the decoder layers"
                )
            layer = int(match[1])
            if layer >= args.num_layers:
                raise AdapterError(f"adapter {str(folder)!r}: tensor {key!r} names layer {layer} of {args.num_layers}")
            tensors[layer, paths[match[2]], match[3]] = np.asarray(handle.get_tensor(key), np.float32)
    return tensors


def _key_pattern(args: ModelArgs) -> re.Pattern[str]:
    """PEFT's saved name of a decoder layer's module's A or B (the adapter name "default" dropped): the layers under
    the checkpoint's prefix or a name transformers keeps for it (an image-text model's ``model.language_model.``)."""
    prefix = args.weights.prefix
    prefixes = [prefix, *(alias for alias, name in args.weights.aliases if name == prefix)]
    alternatives = "|".join(map(re.escape, prefixes))
    return re.compile(rf"base_model\.model\.(?:{alternatives})layers\.(\d+)\.([\w.]+)\.lora_(A|B)\.weight")


def _widths(args: ModelArgs, kv_replicas: int) -> tuple[dict[str, int], dict[str, int]]:
    """Each fused projection's input features, and each of its parts' output features, as the checkpoint has them."""
    d, hd, mlp = args.hidden_size, args.head_dim, args.intermediate_size
    q, kv = args.num_heads * hd, args.num_kv_heads // kv_replicas * hd
    inputs = {"qkv": d, "o": q, "gate_up": d, "up": d, "down": mlp}
    return inputs, {"q": q, "k": kv, "v": kv, "o": d, "gate": mlp, "up": mlp, "down": d}


def _zeros(args: ModelArgs, rank: int) -> dict[str, np.ndarray]:
    """One slot's ``LoRAWeights`` fields, every layer, all zeros (float32 while placed): a rank block per module
    the family has for the projection, no field for a projection it has none for."""
    n, d, hd, mlp = args.num_layers, args.hidden_size, args.head_dim, args.intermediate_size
    kv, group = args.num_kv_heads, args.num_heads // args.num_kv_heads
    blocks = collections.Counter(module.target for module in family_modules(args).values())
    shapes = {
        "qkv_a": (d, blocks["qkv"] * rank),
        "qkv_b": (blocks["qkv"] * rank, kv, group + 2, hd),
        "o_a": (args.num_heads * hd, rank),
        "o_b": (rank, d),
        "gate_up_a": (d, blocks["gate_up"] * rank),
        "gate_up_b": (blocks["gate_up"] * rank, 2, mlp),
        "up_a": (d, blocks["up"] * rank),
        "up_b": (blocks["up"] * rank, mlp),
        "down_a": (mlp, rank),
        "down_b": (rank, d),
    }
    return {name: np.zeros((n, *shape), np.float32) for name, shape in shapes.items() if blocks[name[: -len("_a")]]}


def zero_slot_shapes(args: ModelArgs, rank: int) -> dict[str, tuple[int, ...]]:
    """``LoRAWeights``' field shapes for one slot, every layer: ``[num_layers, ...]`` (the fields the family has)."""
    return {name: array.shape for name, array in _zeros(args, rank).items()}


def slots_bytes(args: ModelArgs, max_loras: int, rank: int) -> int:
    """The device bytes of every slot (``max_loras`` + the empty one), all layers, unsplit: what memory plans add."""
    elements = sum(math.prod(shape) for shape in zero_slot_shapes(args, rank).values())
    return elements * (max_loras + 1) * jnp.dtype(args.dtype).itemsize


def _place_b(b: np.ndarray, args: ModelArgs, ranks: slice, target: str, part: str, value: np.ndarray) -> None:
    """One part's B ``[r, out]`` (scaled) into its rank block ``ranks`` of the fused projection ``target``'s B ``b``
    ``[n * rank, *out]``, where the kernel keeps that part's outputs."""
    kv, group = args.num_kv_heads, args.num_heads // args.num_kv_heads
    r = value.shape[0]
    if part == "q":  # query head h belongs to KV head h // group
        b[ranks, :, :group] = value.reshape(r, kv, group, args.head_dim)
    elif part in ("k", "v"):
        heads = value.reshape(r, -1, args.head_dim)  # the checkpoint's KV heads, each repeated per copy
        b[ranks, :, group + (part == "v")] = np.repeat(heads, kv // heads.shape[1], axis=1)
    elif target == "gate_up":
        b[ranks, ("gate", "up").index(part)] = value
    else:
        b[ranks] = value

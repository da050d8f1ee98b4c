"""A checkpoint's safetensors tensors read by our parameters' names, any slice at a time.

Our NNX parameter paths become the checkpoint's tensor names through the family's ``WeightMap`` (``hf_names``); a
``Reader`` then reads any slice of a parameter in our orientation, straight from the memory-mapped files, so each
device reads only its own slice. Fused projections (QKV, gate/up) are assembled slice by slice from their
checkpoint parts, and with KV heads replicated over more devices than there are heads (``jllm.parallel``), each
device reads the one checkpoint KV head it holds; a recurrent layer's projection kept grouped by head
(``layers.StoredParts``) is gathered from its parts the same way. FP8 tensors are read as stored (memory-mapped:
safetensors' own readers have no float8 type), with their ``weight_scale`` as one value per output channel.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from safetensors import safe_open

from jllm.kv_scales import KV_SCALE_NAMES, is_scale_param, read_scale
from jllm.models.layers import StoredParts
from jllm.models.model_args import CODEGEN_SHARDS, WeightMap
from jllm.quantization import FP8

Reader = Callable[[tuple[slice, ...]], np.ndarray]  # a slice of a parameter (our orientation) -> its values


# our parameters' leaf names -> the checkpoint's; other leaves (a norm's ``weight``, ``bias``, a router's
# ``e_score_correction_bias``) keep theirs, unless the family's ``rename`` names them
SUFFIXES = {"kernel": "weight", "embedding": "weight", "scale": "weight_scale"}
# our modules outside the base model, named without its ``WeightMap.prefix``: the LM head, a classifier's, and
# ModernBERT's prediction head and tied head's bias
HEAD_MODULES = ("lm_head", "score", "head_transform", "head_bias")


def hf_names(path: tuple[Any, ...], weights: WeightMap) -> tuple[list[str], bool]:
    """NNX parameter path -> (the HF tensor names it is made of, whether each HF tensor is the transpose of ours)."""
    *module_path, leaf = (str(p) for p in path)
    rename = {"head_bias": "lm_head", **dict(weights.rename)}  # a tied head's bias: its nn.Linear's, by default
    prefix = weights.head_prefix if module_path[0] in HEAD_MODULES else weights.prefix  # the heads: top level
    suffix = rename.get(leaf, SUFFIXES.get(leaf, leaf))
    module = module_path[-1]
    parents = _renamed(module_path[:-1], rename)
    # a parameter stored elsewhere in its layer, its key "module.leaf" or longer: beside its module (MiniMax-M2's
    # router bias on the MoE block) or further up (AFMoE's, Kolibri-1's)
    for k in range(1, len(module_path)):
        if (kept := ".".join([*module_path[k:], leaf])) in rename:
            return [prefix + ".".join([*_renamed(module_path[:k], rename), rename[kept]])], False
    if weights.expert_params and module_path[-2:-1] == ["experts"]:  # bare [experts, in, out] or [experts, out, in]
        return [prefix + ".".join([*parents, module])], weights.expert_params == "out_in" and leaf == "kernel"
    parts = {"qkv_proj": weights.qkv, "gate_up_proj": weights.gate_up}.get(module, (rename.get(module, module),))
    conv1d = weights.conv1d and module_path[0] != "lm_head"  # GPT-2's LM head is an nn.Linear
    return [prefix + ".".join([*parents, part, suffix]) for part in parts], leaf == "kernel" and not conv1d


def _renamed(modules: list[str], rename: dict[str, str]) -> list[str]:
    """Our module path as the checkpoint names it: ``rename`` maps one module (``mlp``) or a dotted run of them
    (``mlp.shared_expert``, the longest run first) to the checkpoint's name; a module renamed to "" has no level
    there (Granite's experts, stored in their parent's tensors)."""
    out, i = [], 0
    while i < len(modules):
        j = next((j for j in range(len(modules), i, -1) if ".".join(modules[i:j]) in rename), i + 1)
        out.append(rename.get(".".join(modules[i:j]), modules[i]))
        i = j
    return [name for name in out if name]


def _swap_last(axes: tuple[Any, ...]) -> tuple[Any, ...]:
    """A shape or index with its last two axes swapped: a torch ``Linear`` weight is ``[out, in]`` where ours is
    ``[in, out]``, and experts stacked in one tensor are ``[experts, out, in]`` (Granite MoE's)."""
    return (*axes[:-2], axes[-1], axes[-2])


def _shift(index: slice, size: int, offset: int) -> slice:
    """``index`` over an axis of ``size``, moved ``offset`` along (a part's place inside a fused tensor)."""
    start, stop, step = index.indices(size)
    return slice(start + offset, stop + offset, step)


def _weight_map(model_dir: Path) -> dict[str, str] | None:
    """A sharded checkpoint's index (tensor name -> shard file); None for a checkpoint of one file."""
    index = model_dir / "model.safetensors.index.json"
    return json.loads(index.read_text())["weight_map"] if index.is_file() else None


def shard_files(model_dir: Path) -> list[str]:
    """The checkpoint's safetensors files: the index's shards, or the one ``model.safetensors``."""
    if (weight_map := _weight_map(model_dir)) is not None:
        return sorted(set(weight_map.values()))
    if (model_dir / "model.safetensors").is_file():
        return ["model.safetensors"]
    raise FileNotFoundError(
        f"no model.safetensors or model.safetensors.index.json in model directory {str(model_dir)!r}"
    )


def stored_names(model_dir: Path) -> set[str]:
    """Every tensor name the checkpoint stores: its index's, or its one file's header (no tensor is read)."""
    if (weight_map := _weight_map(model_dir)) is not None:
        return set(weight_map)
    with safe_open(model_dir / shard_files(model_dir)[0], framework="flax") as handle:
        return set(handle.keys())


class StoredTensor(NamedTuple):
    """Where one checkpoint tensor lies: its open file, the file's path, and its name there."""

    handle: Any
    file: Path
    name: str

    def slice(self) -> Any:
        return self.handle.get_slice(self.name)


class ReadTensors(dict):
    """Our name for a tensor -> where it lies, recording each one looked up (``read``: stored names), so the loader
    can name those nothing read (``jllm.unread_tensors``). A membership test is not a read."""

    def __init__(self, items: Any = ()):
        super().__init__(items)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> StoredTensor:
        stored = super().__getitem__(key)
        self.read.add(stored.name)
        return stored

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default


class SafetensorsIndex:
    """Tensor name -> open safetensors file, over one file or a sharded index."""

    def __init__(self, model_dir: Path, stack: ExitStack, weights: WeightMap):
        self.weights = weights
        self.tensors = ReadTensors()  # by our name for the tensor
        self.spelled: dict[str, str] = {}  # every tensor name the files hold -> ours
        for file in shard_files(model_dir):
            if not (model_dir / file).is_file():
                raise FileNotFoundError(f"checkpoint shard {file!r} listed in the index is missing from {model_dir}")
            handle = stack.enter_context(safe_open(model_dir / file, framework="flax"))
            spelled = {key: _alias(key, weights) for key in handle.keys()}
            self.spelled |= spelled
            self.tensors.update({ours: StoredTensor(handle, model_dir / file, key) for key, ours in spelled.items()})
        prefix = weights.prefix
        if prefix and not any(key.startswith(prefix) for key in self.tensors):
            # saved from the base model (GPT-2's hub files: ``h.0.attn...``, no ``transformer.``), as transformers
            # reads it through ``base_model_prefix``
            self.tensors = ReadTensors({prefix + key: stored for key, stored in self.tensors.items()})
            self.spelled = {name: prefix + ours for name, ours in self.spelled.items()}

    def unread(self) -> dict[str, str]:
        """The stored tensors that no reader has looked up: stored name -> ours (``hf_names``' spelling, after
        ``WeightMap.aliases`` and a base model's missing prefix)."""
        return {name: ours for name, ours in self.spelled.items() if name not in self.tensors.read}

    def stores_fp8(self, path: tuple[Any, ...]) -> bool:
        """Whether a kernel's (first) checkpoint tensor is stored in e4m3, to be read as stored."""
        name = hf_names(path, self.weights)[0][0]
        return name in self.tensors and self.tensors[name].slice().get_dtype() == "F8_E4M3"

    def slice_reader(self, name: str, shape: tuple[int, ...], transpose: bool, dtype: Any) -> Reader:
        """Reads any slice (in our orientation) of one tensor, checking its shape once here."""
        if name.endswith(".weight_scale"):
            return self._scale_reader(name, shape)
        if name not in self.tensors:
            raise KeyError(f"checkpoint is missing tensor {name!r}")
        stored = self.tensors[name]
        tensor = stored.slice()
        if tensor.get_dtype().startswith("F8"):
            tensor = _fp8_tensor(stored.file, stored.name, tensor.get_dtype())
        found = tuple(tensor.get_shape() if hasattr(tensor, "get_shape") else tensor.shape)
        expected = _swap_last(shape) if transpose else shape
        if found != expected:
            raise ValueError(f"tensor {name!r} has shape {list(found)}, expected {list(expected)}")

        def read(index: tuple[slice, ...]) -> np.ndarray:
            hf_index = _swap_last(index) if transpose else index
            with jax.default_device(jax.local_devices(backend="cpu")[0]):  # this process's host memory
                part = np.asarray(tensor[hf_index])
            return (np.swapaxes(part, -1, -2) if transpose else part).astype(dtype)

        return read

    def _stored_name(self, name: str) -> str | None:
        """``name`` as the checkpoint stores it (an FP8 weight's ``weight_scale`` may be transformers'
        ``weight_scale_inv``, the same multiplier); None where it is not stored."""
        return next((n for n in (name, name + "_inv") if n in self.tensors), None)

    def _scale_reader(self, name: str, shape: tuple[int, ...]) -> Reader:
        """An FP8 weight's scale as one value per output channel: a per-tensor scale repeated over the weight's rows
        (exact), or a per-channel ``[out]`` / ``[out, 1]`` column. transformers' ``weight_scale_inv`` is the same
        multiplier under another name."""
        stored_name = self._stored_name(name)
        if stored_name is None:
            raise KeyError(f"checkpoint is missing tensor {name!r} (the scale of an FP8 weight)")
        name = stored_name
        with jax.default_device(jax.local_devices(backend="cpu")[0]):
            stored = self.tensors[name]
            values = np.asarray(stored.handle.get_tensor(stored.name), np.float32)
        if values.size == 1:
            values = np.full(shape, values.reshape(()), np.float32)
        elif values.size == int(np.prod(shape)):
            values = values.reshape(shape)
        else:
            raise ValueError(
                f"scale {name!r} has shape {list(values.shape)}; expected one value (per tensor) or {list(shape)} "
                "(per output channel)"
            )
        return lambda index: values[index]

    def param_reader(
        self,
        path: tuple[Any, ...],
        shape: tuple[int, ...],
        dtype: Any,
        kv_replicas: int,
        stored: StoredParts | None = None,
    ) -> Reader:
        """Reads any slice of one model parameter, assembling fused projections from their checkpoint parts;
        ``stored``: the parameter's metadata where its last two axes are parts the checkpoint keeps apart."""
        if stored is not None:
            return self._parts_reader(path, shape, dtype, kv_replicas, stored)
        if is_scale_param(path):
            return self._kv_scale_reader(path)
        if self.weights.reader is not None and (read := self.weights.reader(self, path, shape, dtype)) is not None:
            return read
        names, transpose = hf_names(path, self.weights)
        if "{e}" in names[0]:
            return self._experts_reader(names, str(path[-2]), shape, transpose, dtype)
        return self._reader(names, str(path[-2]), shape, transpose, dtype, kv_replicas)

    def _kv_scale_reader(self, path: tuple[Any, ...]) -> Reader:
        """An attention layer's K or V scale (``jllm.kv_scales``): the first of the names vLLM reads it under."""
        leaf = str(path[-1])
        attention = hf_names(path, self.weights)[0][0].removesuffix(f".{leaf}")
        candidates = [f"{attention}.{name}" for name in KV_SCALE_NAMES[leaf]]
        name = next((c for c in candidates if c in self.tensors), None)
        if name is None:
            raise KeyError(f"checkpoint has KV-cache scales but not {leaf} of {attention!r} (looked for {candidates})")
        stored = self.tensors[name]
        with jax.default_device(jax.local_devices(backend="cpu")[0]):
            value = read_scale(name, stored.handle.get_tensor(stored.name))
        return lambda index: value[index]

    def _parts_reader(
        self, path: tuple[Any, ...], shape: tuple[int, ...], dtype: Any, kv_replicas: int, stored: StoredParts
    ) -> Reader:
        """``[*lead, groups, width]`` gathered from the checkpoint's flat ``[*lead, length]`` (``StoredParts``): a
        slice of groups reads one run of stored columns per part (a device's heads of q, then of k, then of v)."""
        source = path if stored.source is None else (*path[:-2], stored.source, path[-1])
        flat = self.param_reader(source, (*shape[:-2], stored.length), dtype, kv_replicas)
        columns = stored.indices()  # [groups, width]

        def read(index: tuple[slice, ...]) -> np.ndarray:
            *lead_index, group_index, width_index = index
            want = columns[group_index, width_index]
            wanted = np.unique(want)
            runs = np.split(wanted, np.flatnonzero(np.diff(wanted) != 1) + 1)
            values = np.concatenate([flat((*lead_index, slice(r[0], r[-1] + 1))) for r in runs], axis=-1)
            return values[..., np.searchsorted(wanted, want)]

        return read

    def _experts_reader(
        self, names: list[str], module: str, shape: tuple[int, ...], transpose: bool, dtype: Any
    ) -> Reader:
        """``[experts, *per_expert]`` stacked from one checkpoint tensor (or fused part) per expert (or per head)."""
        experts = [
            self._reader([n.format(e=e) for n in names], module, shape[1:], transpose, dtype, 1)
            for e in range(shape[0])
        ]

        def read(index: tuple[slice, ...]) -> np.ndarray:
            return np.stack([experts[e](index[1:]) for e in range(*index[0].indices(shape[0]))])

        return read

    def _reader(
        self, names: list[str], module: str, shape: tuple[int, ...], transpose: bool, dtype: Any, kv_replicas: int
    ) -> Reader:
        if module == "qkv_proj":
            return self._qkv_reader(names, shape, transpose, dtype, kv_replicas)
        if module == "gate_up_proj":
            return self._gate_up_reader(names, shape, transpose, dtype)
        if module == "attn_gate":  # each head's second half of the "gated" query tensor, or its own projection's rows
            gated = self.weights.qkv_layout == "gated"
            return self._head_rows_reader(names[0], shape, transpose, dtype, int(gated), 1 + gated)
        return self.slice_reader(names[0], shape, transpose, dtype)

    def _head_rows_reader(
        self, name: str, shape: tuple[int, ...], transpose: bool, dtype: Any, block: int, blocks: int
    ) -> Reader:
        """``[*lead, heads, head_dim]`` from a tensor of ``blocks * heads * head_dim`` rows, each head's ``blocks``
        in turn, ``block`` the one read: MiniCPM5-MoE's ``q_proj`` (2: the queries, 0, then the output gate's), or an
        output gate's own projection (1)."""
        *lead, heads, hd = shape
        stored = self.slice_reader(name, (*lead, blocks * heads * hd), transpose, dtype)

        def read(index: tuple[slice, ...]) -> np.ndarray:
            *lead_index, head_index, dim_index = index
            rows = [(blocks * h + block) * hd for h in range(*head_index.indices(heads))]
            parts = [stored((*lead_index, slice(r, r + hd)))[..., dim_index] for r in rows]
            return np.stack(parts, axis=-2)

        return read

    def _gate_up_reader(self, names: list[str], shape: tuple[int, ...], transpose: bool, dtype: Any) -> Reader:
        """``[*lead, 2, mlp]`` from gate and up: two tensors, or one with the gate's rows first (Phi-3)."""
        *lead, _, width = shape
        if len(names) == 2:
            parts = [(self.slice_reader(name, (*lead, width), transpose, dtype), 0) for name in names]
        else:
            fused = self.slice_reader(names[0], (*lead, 2 * width), transpose, dtype)
            parts = [(fused, 0), (fused, width)]

        def read(index: tuple[slice, ...]) -> np.ndarray:
            *lead_index, part_index, width_index = index
            chosen = parts[part_index]
            return np.stack([r((*lead_index, _shift(width_index, width, at))) for r, at in chosen], axis=-2)

        return read

    def _qkv_reader(
        self, names: list[str], shape: tuple[int, ...], transpose: bool, dtype: Any, replicas: int
    ) -> Reader:
        """``[*lead, kv_heads, group + 2, head_dim]`` from q/k/v: model KV head m is checkpoint KV head
        ``m // replicas`` with its ``m % replicas``-th share of that head's query group. A layer whose values are its
        keys' projection (Gemma 4's ``attention_k_eq_v``: its checkpoint stores no ``v_proj``) is ``group + 1``
        wide, q and k alone."""
        *lead, heads, width, head_dim = shape
        keys_only = self.weights.qkv_layout == "separate" and self._stored_name(names[2]) is None
        group = width - (1 if keys_only else 2)  # query heads per model KV head
        kv = heads // replicas  # the checkpoint's KV heads
        try:
            rows = self._qkv_rows(names, (*lead,), transpose, dtype, kv * replicas * group, kv, head_dim, keys_only)
        except ValueError:
            if keys_only:  # q's rows are not those of a layer without V: the checkpoint lacks it
                raise KeyError(f"checkpoint is missing tensor {names[2]!r}") from None
            raise

        def read(index: tuple[slice, ...]) -> np.ndarray:
            *lead_index, head_index, width_index, dim_index = index
            blocks = []
            for m in range(*head_index.indices(heads)):
                c, j = divmod(m, replicas)
                parts = [
                    rows(lead_index, "q", (c * replicas + j) * group, group),
                    rows(lead_index, "k", c, 1),
                    *([] if keys_only else [rows(lead_index, "v", c, 1)]),
                ]
                blocks.append(np.concatenate([p.reshape(*p.shape[:-1], -1, head_dim) for p in parts], axis=-2))
            return np.stack(blocks, axis=-3)[..., width_index, dim_index]

        return read

    def _kv_readers(
        self, names: list[str], lead: tuple[int, ...], transpose: bool, dtype: Any, kv: int, hd: int
    ) -> list[Reader]:
        """K's (and V's) ``[*lead, kv * hd]`` readers from their own tensors; values stored narrower
        (``WeightMap.v_head_dim``, MiMo-V2-Flash's) zero-padded to ``hd`` a head."""
        vd = self.weights.v_head_dim or hd
        readers = [
            self.slice_reader(name, (*lead, kv * w), transpose, dtype)
            for name, w in zip(names, (hd, vd)[: len(names)], strict=True)
        ]
        return [readers[0], *(r if vd == hd else _padded_heads(r, vd, hd) for r in readers[1:])]

    def _qkv_rows(
        self,
        names: list[str],
        lead: tuple[int, ...],
        transpose: bool,
        dtype: Any,
        q_heads: int,
        kv: int,
        hd: int,
        keys_only: bool = False,
    ) -> Callable[[list[slice], str, int, int], np.ndarray]:
        """``rows(lead_index, part, first_head, n)``: ``n`` heads of q, k or v, wherever the layout keeps them
        (``keys_only``: no v stored)."""
        layout = self.weights.qkv_layout
        if layout in ("separate", "gated"):
            readers = self._kv_readers(names[1:2] if keys_only else names[1:], lead, transpose, dtype, kv, hd)
            if layout == "gated":  # the queries are each head's first half of the query tensor's rows
                q = _flat_heads(self._head_rows_reader(names[0], (*lead, q_heads, hd), transpose, dtype, 0, 2), hd)
            else:
                q = self.slice_reader(names[0], (*lead, q_heads * hd), transpose, dtype)
            readers = [q, *readers]
            first = {"q": (0, 0), "k": (1, 0), "v": (2, 0)}  # part -> (tensor, its first head's row / head_dim)
        elif layout in ("concat", "grouped", "codegen"):
            readers = [self.slice_reader(names[0], (*lead, (q_heads + 2 * kv) * hd), transpose, dtype)]
            first = {"q": (0, 0), "k": (0, q_heads), "v": (0, q_heads + kv)}
        else:
            raise ValueError(
                f"qkv layout {layout!r} is not supported (supported: 'separate', 'concat', 'grouped', 'codegen')"
            )
        group = q_heads // kv
        shard_heads = kv // CODEGEN_SHARDS  # CodeGen (multi-head): each shard's heads of q, then of v, then of k

        def start(part: str, head: int) -> tuple[int, int]:
            """(tensor, first row in head_dim units) of ``head`` of ``part``."""
            if layout == "codegen":
                shard, at = divmod(head, shard_heads)
                return 0, (3 * shard + "qvk".index(part)) * shard_heads + at
            if layout != "grouped":
                tensor, at = first[part]
                return tensor, at + head
            if part == "q":  # KV head c's block: its group's query heads, then its K, then its V
                return 0, head // group * (group + 2) + head % group
            return 0, head * (group + 2) + group + (part == "v")

        def rows(lead_index: list[slice], part: str, head: int, n: int) -> np.ndarray:
            if layout == "codegen" and n > 1:  # consecutive heads may straddle two shards
                return np.concatenate([rows(lead_index, part, h, 1) for h in range(head, head + n)], axis=-1)
            tensor, at = start(part, head)
            return readers[tensor]((*lead_index, slice(at * hd, (at + n) * hd)))

        return rows


def _padded_heads(read: Reader, width: int, hd: int) -> Reader:
    """A ``[*lead, heads * width]`` reader read as ``[*lead, heads * hd]``, by whole heads, each head's ``width``
    channels followed by zeros (MiMo-V2-Flash's values in heads as wide as its keys')."""

    def padded(index: tuple[slice, ...]) -> np.ndarray:
        *lead_index, rows = index
        first, last = rows.start // hd, rows.stop // hd
        part = read((*lead_index, slice(first * width, last * width)))
        part = part.reshape(*part.shape[:-1], last - first, width)
        return np.pad(part, [(0, 0)] * (part.ndim - 1) + [(0, hd - width)]).reshape(*part.shape[:-2], -1)

    return padded


def _flat_heads(read: Reader, hd: int) -> Reader:
    """A ``[*lead, heads, head_dim]`` reader read as ``[*lead, heads * head_dim]``, by whole heads."""

    def flat(index: tuple[slice, ...]) -> np.ndarray:
        *lead_index, rows = index
        part = read((*lead_index, slice(rows.start // hd, rows.stop // hd), slice(None)))
        return part.reshape(*part.shape[:-2], -1)

    return flat


def _alias(name: str, weights: WeightMap) -> str:
    """A stored tensor's name as ``hf_names`` spells it: its leading part replaced where ``weights.aliases`` say."""
    for stored, ours in weights.aliases:
        if name.startswith(stored):
            return ours + name.removeprefix(stored)
    return name


def _fp8_tensor(path: Path, name: str, dtype: str) -> np.ndarray:
    """An e4m3 tensor memory-mapped from its safetensors file (its 8-byte header length, JSON header, then data)."""
    if dtype != "F8_E4M3":
        raise ValueError(f"tensor {name!r} is stored as {dtype}; the only float8 type read is F8_E4M3 (e4m3fn)")
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        info = json.loads(f.read(header_len))[name]
    start, end = info["data_offsets"]
    raw = np.memmap(path, np.uint8, "r", offset=8 + header_len + start, shape=(end - start,))
    return raw.view(FP8).reshape(info["shape"])

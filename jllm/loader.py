"""HuggingFace model directory -> a Flax NNX model whose parameters already sit, sharded, on the mesh.

Each parameter is created with ``jax.make_array_from_callback``: every device reads only its own slice of the
memory-mapped safetensors tensors, so no full copy lands on one device first. Fused projections (QKV, gate/up) are
assembled slice by slice from their checkpoint parts, and with KV heads replicated over more devices than there are
heads (``jllm.parallel``), each device reads the one checkpoint KV head it holds.

Quantized models (``jllm.quantization``): a quantized linear's kernel is read in float and quantized on its own
devices, one tensor at a time (from safetensors, dummy weights, or a float orbax copy, which is restored whole
first), unless the checkpoint stores it in FP8: then the e4m3 values are read as stored (memory-mapped: safetensors'
own readers have no float8 type) with their ``weight_scale`` (a per-tensor scale repeated over its rows).

``save_model`` writes the other kind of model directory it reads: the same config and tokenizer files beside an
orbax checkpoint of the converted parameters (``jllm.checkpoint``), which loads without converting again.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from safetensors import safe_open

from jllm import parallel
from jllm.checkpoint import restore_params, save_params
from jllm.executable_cache import ExecutableCache, ProgramCall, load_or_compile
from jllm.models.decoder import WeightMap
from jllm.models.registry import build_args
from jllm.quantization import FP8, QuantScheme, resolve_scheme
from pallas_kernels import has_jax_triton

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
Reader = Callable[[tuple[slice, ...]], np.ndarray]  # a slice of a parameter (our orientation) -> its values
# Tensors a checkpoint may carry that the model rebuilds or does not need.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# Files copied beside the saved parameters so the saved directory is a complete model directory.
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",  # where transformers >= 4.50 saves the chat template
)


@dataclasses.dataclass
class LoadedModel:
    model: nnx.Module
    args: Any
    hf_config: dict[str, Any]
    generation_config: dict[str, Any]
    model_dir: Path
    mesh: Mesh
    kv_replicas: int  # devices holding a copy of each checkpoint KV head (args.num_kv_heads counts the copies)


def read_json(path: Path, required: bool = True) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path.name} not found in model directory {str(path.parent)!r}")
        return {}
    return json.loads(path.read_text())


def resolve_dtype(dtype: str, hf_config: dict[str, Any]) -> Any:
    """``auto`` means the checkpoint's own dtype, as in vLLM."""
    if dtype == "auto":
        dtype = hf_config.get("torch_dtype") or hf_config.get("dtype") or "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


# our parameters' leaf names -> the checkpoint's; other leaves (a norm's ``weight``, ``bias``, a router's
# ``e_score_correction_bias``) keep theirs, unless the family's ``rename`` names them
SUFFIXES = {"kernel": "weight", "embedding": "weight", "scale": "weight_scale"}


def hf_names(path: tuple[Any, ...], weights: WeightMap) -> tuple[list[str], bool]:
    """NNX parameter path -> (the HF tensor names it is made of, whether each HF tensor is the transpose of ours)."""
    *module_path, leaf = (str(p) for p in path)
    rename = dict(weights.rename)
    prefix = weights.head_prefix if module_path[0] == "lm_head" else weights.prefix
    suffix = rename.get(leaf, SUFFIXES.get(leaf, leaf))
    module = module_path[-1]
    parents = _renamed(module_path[:-1], rename)
    if weights.expert_params and module_path[-2:-1] == ["experts"]:  # Llama 4's bare [experts, in, out] tensors
        return [prefix + ".".join([*parents, module])], False
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


def abstract_model(
    hf_config: dict[str, Any], dtype: Any, tensor_parallel_size: int = 1, quant: QuantScheme | None = None
) -> tuple[nnx.GraphDef, nnx.State, Any, int]:
    """The model's structure without memory, and how many copies of each KV head ``tensor_parallel_size`` needs.

    With replicated KV heads the model is built with ``num_kv_heads * kv_replicas`` heads, so that every device owns
    whole KV heads and the attention maths stays the plain GQA of one device.
    """
    model_cls, args = build_args(hf_config, dtype)
    parallel.check_divisible(
        tensor_parallel_size,
        num_heads=args.num_heads,
        num_kv_heads=args.num_kv_heads,
        vocab_size=args.vocab_size,
        intermediate_size=args.intermediate_size,
        shared_expert_size=args.shared_expert_size,
        dense_mlp_sizes=tuple(sorted(args.dense_mlp_sizes)),
    )
    kv_replicas = parallel.kv_head_replicas(args.num_kv_heads, tensor_parallel_size)
    if kv_replicas > 1 and (args.qk_norm_all_heads or args.qk_norm_per_head):
        layout = "over all KV heads (OLMo 2, OLMoE)" if args.qk_norm_all_heads else "per KV head (StableLM, Cohere)"
        raise ValueError(
            f"tensor_parallel_size={tensor_parallel_size} would replicate the model's {args.num_kv_heads} KV heads, "
            f"which its k norm's weights {layout} do not support; use a tensor_parallel_size that divides "
            f"num_key_value_heads={args.num_kv_heads}"
        )
    args = dataclasses.replace(args, num_kv_heads=args.num_kv_heads * kv_replicas, quant=quant)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: model_cls(args)))
    return graphdef, state, args, kv_replicas


class StoredTensor(NamedTuple):
    """Where one checkpoint tensor lies: its open file, the file's path, and its name there."""

    handle: Any
    file: Path
    name: str

    def slice(self) -> Any:
        return self.handle.get_slice(self.name)


class SafetensorsIndex:
    """Tensor name -> open safetensors file, over one file or a sharded index."""

    def __init__(self, model_dir: Path, stack: ExitStack, weights: WeightMap):
        self.weights = weights
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (model_dir / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(
                f"no model.safetensors or model.safetensors.index.json in model directory {str(model_dir)!r}"
            )
        self.tensors: dict[str, StoredTensor] = {}  # by our name for the tensor
        for file in files:
            if not (model_dir / file).is_file():
                raise FileNotFoundError(f"checkpoint shard {file!r} listed in the index is missing from {model_dir}")
            handle = stack.enter_context(safe_open(model_dir / file, framework="flax"))
            self.tensors |= {_alias(key, weights): StoredTensor(handle, model_dir / file, key) for key in handle.keys()}
        prefix = weights.prefix
        if prefix and not any(key.startswith(prefix) for key in self.tensors):
            # saved from the base model (GPT-2's hub files: ``h.0.attn...``, no ``transformer.``), as transformers
            # reads it through ``base_model_prefix``
            self.tensors = {prefix + key: stored for key, stored in self.tensors.items()}

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

    def _scale_reader(self, name: str, shape: tuple[int, ...]) -> Reader:
        """An FP8 weight's scale as one value per output channel: a per-tensor scale repeated over the weight's rows
        (exact), or a per-channel ``[out]`` / ``[out, 1]`` column. transformers' ``weight_scale_inv`` is the same
        multiplier under another name."""
        if name not in self.tensors and name + "_inv" in self.tensors:
            name += "_inv"
        if name not in self.tensors:
            raise KeyError(f"checkpoint is missing tensor {name!r} (the scale of an FP8 weight)")
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

    def param_reader(self, path: tuple[Any, ...], shape: tuple[int, ...], dtype: Any, kv_replicas: int) -> Reader:
        """Reads any slice of one model parameter, assembling fused projections from their checkpoint parts."""
        if self.weights.reader is not None and (read := self.weights.reader(self, path, shape, dtype)) is not None:
            return read
        names, transpose = hf_names(path, self.weights)
        if "{e}" in names[0]:
            return self._experts_reader(names, str(path[-2]), shape, transpose, dtype)
        return self._reader(names, str(path[-2]), shape, transpose, dtype, kv_replicas)

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
        return self.slice_reader(names[0], shape, transpose, dtype)

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
        ``m // replicas`` with its ``m % replicas``-th share of that head's query group."""
        *lead, heads, width, head_dim = shape
        group = width - 2  # query heads per model KV head
        kv = heads // replicas  # the checkpoint's KV heads
        rows = self._qkv_rows(names, (*lead,), transpose, dtype, kv * replicas * group, kv, head_dim)

        def read(index: tuple[slice, ...]) -> np.ndarray:
            *lead_index, head_index, width_index, dim_index = index
            blocks = []
            for m in range(*head_index.indices(heads)):
                c, j = divmod(m, replicas)
                parts = [
                    rows(lead_index, "q", (c * replicas + j) * group, group),
                    rows(lead_index, "k", c, 1),
                    rows(lead_index, "v", c, 1),
                ]
                blocks.append(np.concatenate([p.reshape(*p.shape[:-1], -1, head_dim) for p in parts], axis=-2))
            return np.stack(blocks, axis=-3)[..., width_index, dim_index]

        return read

    def _qkv_rows(
        self, names: list[str], lead: tuple[int, ...], transpose: bool, dtype: Any, q_heads: int, kv: int, hd: int
    ) -> Callable[[list[slice], str, int, int], np.ndarray]:
        """``rows(lead_index, part, first_head, n)``: ``n`` heads of q, k or v, wherever the layout keeps them."""
        layout = self.weights.qkv_layout
        if layout == "separate":
            sizes = (q_heads, kv, kv)
            readers = [
                self.slice_reader(n, (*lead, s * hd), transpose, dtype) for n, s in zip(names, sizes, strict=True)
            ]
            first = {"q": (0, 0), "k": (1, 0), "v": (2, 0)}  # part -> (tensor, its first head's row / head_dim)
        elif layout in ("concat", "grouped"):
            readers = [self.slice_reader(names[0], (*lead, (q_heads + 2 * kv) * hd), transpose, dtype)]
            first = {"q": (0, 0), "k": (0, q_heads), "v": (0, q_heads + kv)}
        else:
            raise ValueError(f"qkv layout {layout!r} is not supported (supported: 'separate', 'concat', 'grouped')")
        group = q_heads // kv

        def start(part: str, head: int) -> tuple[int, int]:
            """(tensor, first row in head_dim units) of ``head`` of ``part``."""
            if layout != "grouped":
                tensor, at = first[part]
                return tensor, at + head
            if part == "q":  # KV head c's block: its group's query heads, then its K, then its V
                return 0, head // group * (group + 2) + head % group
            return 0, head * (group + 2) + group + (part == "v")

        def rows(lead_index: list[slice], part: str, head: int, n: int) -> np.ndarray:
            tensor, at = start(part, head)
            return readers[tensor]((*lead_index, slice(at * hd, (at + n) * hd)))

        return rows


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


@functools.cache
def _quantizer(quant: QuantScheme, kernel: jax.sharding.Sharding, scale: jax.sharding.Sharding) -> Callable:
    """One compiled per-channel quantizer per (scheme, shardings): the float kernel never leaves its devices."""
    return jax.jit(quant.quantize, out_shardings=(kernel, scale))


@functools.cache
def _input_last(kernel: jax.sharding.Sharding) -> Callable:
    """A stored quantized kernel ``[in, *out]`` -> ``[*out, in]`` on its devices."""
    return jax.jit(lambda w: jnp.moveaxis(w, 0, -1), out_shardings=kernel)


def _source_target(var: nnx.Variable, mesh: Mesh, dtype: Any = None) -> jax.ShapeDtypeStruct:
    """A quantized kernel ``[*out, in]`` as sources give it, ``[in, *out]``, sharded by the same axis names."""
    abstract = var.get_value()
    shape, axes = abstract.shape, tuple(var.axes)
    sharding = parallel.param_sharding(mesh, (axes[-1], *axes[:-1]))
    return jax.ShapeDtypeStruct((shape[-1], *shape[:-1]), dtype or abstract.dtype, sharding=sharding)


def _target(var: nnx.Variable, mesh: Mesh, dtype: Any = None) -> jax.ShapeDtypeStruct:
    abstract = var.get_value()
    sharding = parallel.param_sharding(mesh, var.axes)
    return jax.ShapeDtypeStruct(abstract.shape, dtype or abstract.dtype, sharding=sharding)


def _place(
    state: nnx.State,
    mesh: Mesh,
    make: Callable[[tuple, jax.ShapeDtypeStruct], jax.Array],
    quant: QuantScheme | None = None,
    float_dtype: Any = None,
    stored: Callable[[tuple], bool] = lambda path: False,
) -> None:
    """Replaces every abstract leaf of ``state`` with the array ``make`` builds on the leaf's sharding.

    Sources give every kernel ``[in, *out]``; a quantized linear keeps its kernel ``[*out, in]`` (``layers.Linear``),
    so ``make`` builds it in the source's orientation and the device moves the axis. One the source does not store
    quantized (``stored``) is made in ``float_dtype`` and quantized where it lies, filling the linear's scale too:
    one float tensor at a time."""
    flat = dict(nnx.to_flat_state(state))
    for path, var in flat.items():
        module, leaf = path[:-1], str(path[-1])
        quantized = quant is not None and (*module, "scale") in flat
        at_load = quantized and not stored((*module, "kernel"))
        if at_load and leaf == "scale":
            continue  # made with its kernel
        if not (quantized and leaf == "kernel"):
            var.set_value(make(path, _target(var, mesh)))
            continue
        source = _source_target(var, mesh, float_dtype if at_load else None)
        w = make(path, source)
        if at_load:
            scale = flat[(*module, "scale")]
            q, s = _quantizer(quant, _target(var, mesh).sharding, _target(scale, mesh).sharding)(w)
            scale.set_value(s)
        else:
            q = _input_last(_target(var, mesh).sharding)(w)
        w.delete()
        var.set_value(q)


def load_safetensors_params(state: nnx.State, model_dir: Path, mesh: Mesh, kv_replicas: int, args: Any) -> None:
    with ExitStack() as stack:
        index = SafetensorsIndex(model_dir, stack, args.weights)

        def make(path: tuple, target: jax.ShapeDtypeStruct) -> jax.Array:
            read = index.param_reader(path, target.shape, target.dtype, kv_replicas)
            return jax.make_array_from_callback(target.shape, target.sharding, read)

        _place(state, mesh, make, args.quant, args.dtype, index.stores_fp8)


def dummy_keys(seed: int, count: int) -> jax.Array:
    """The key data (``[count, 2]`` uint32) of parameters 0 to ``count - 1``: the seed's key folded with each index."""
    indices = jnp.arange(count, dtype=jnp.uint32)
    return jax.random.key_data(jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), indices))


def dummy_values(shape: tuple[int, ...], dtype: Any, is_norm: bool, key: jax.Array) -> jax.Array:
    """One parameter's dummy values from its key data: ``0.02 * normal`` (ones for an RMSNorm scale, which keep
    activations sane)."""
    if is_norm:
        return jnp.ones(shape, dtype)
    return (0.02 * jax.random.normal(jax.random.wrap_key_data(key), shape, jnp.float32)).astype(dtype)


def init_dummy_params(
    state: nnx.State, mesh: Mesh, seed: int, args: Any, executable_cache: ExecutableCache | None = None
) -> None:
    """Random weights made on the devices themselves (vLLM's ``load_format: dummy``), for benchmarks; quantized
    linears are made in float and quantized like a checkpoint's.

    Every parameter's key comes from one program, then one compiled initializer per distinct parameter kind (not
    per parameter: hundreds in a big model) takes it as an argument; a warm start loads these programs from
    ``executable_cache`` instead of tracing them."""
    count = len(jax.tree.leaves(state))
    keys_call = ProgramCall(functools.partial(dummy_keys, seed, count), None, (), ())
    keys = np.asarray(load_or_compile(executable_cache, keys_call)())  # [count, 2] uint32, on the host
    key_type = jax.ShapeDtypeStruct(keys.shape[1:], keys.dtype)
    counter = iter(range(count))

    @functools.cache
    def initializer(shape: tuple[int, ...], dtype: Any, sharding: jax.sharding.Sharding, is_norm: bool) -> Callable:
        fn = functools.partial(dummy_values, shape, dtype, is_norm)
        return load_or_compile(executable_cache, ProgramCall(fn, None, (), (key_type,)), sharding)

    def make(path: tuple, target: jax.ShapeDtypeStruct) -> jax.Array:
        is_norm = str(path[-1]) == "weight"
        return initializer(target.shape, jnp.dtype(target.dtype), target.sharding, is_norm)(keys[next(counter)])

    _place(state, mesh, make, args.quant, args.dtype)


def restore_quantized(
    state: nnx.State, model_dir: Path, mesh: Mesh, kv_replicas: int, hf_config: dict[str, Any], args: Any
) -> None:
    """A saved float model restored whole (orbax restores a tree), then its decoder linears quantized one at a time,
    each float kernel freed once quantized."""
    _, float_state, _, _ = abstract_model(hf_config, args.dtype, mesh.size)
    restored = dict(nnx.to_flat_state(restore_params(model_dir / "params", float_state, mesh, kv_replicas)))
    _place(state, mesh, lambda path, target: restored.pop(path).get_value(), args.quant, args.dtype)


def load_model(
    model_dir: str | Path,
    *,
    mesh: Mesh,
    dtype: str = "auto",
    load_format: str = "auto",
    seed: int = 0,
    quantization: str | None = None,
    fp8_dot_min_tokens: int | None = 512,
    fp8_kernel_max_tokens: int | None = 1,
    fp8_kernel_compute: str | None = None,
    fp8_kernel_backend: str = "triton",
    executable_cache: ExecutableCache | None = None,
) -> LoadedModel:
    """Reads config.json and the weights (or makes dummy ones) straight onto ``mesh``, quantizing the decoder's
    linears when ``quantization`` asks (or the checkpoint is stored in FP8). The FP8-weight kernels run on one CUDA
    device only (neither kernel call has a sharding rule; under tensor parallelism XLA's dot runs): the jax-triton
    one where jax-triton is installed, the Pallas one (``fp8_kernel_backend: pallas``) without it too. Dummy weights'
    initializers come from ``executable_cache`` where it holds them."""
    model_dir = Path(model_dir)
    hf_config = read_json(model_dir / "config.json")
    generation_config = read_json(model_dir / "generation_config.json", required=False)
    one_gpu = mesh.size == 1 and mesh.devices.flat[0].platform == "gpu"
    kernel_runs = one_gpu and (fp8_kernel_backend == "pallas" or has_jax_triton())  # Pallas needs no jax-triton
    max_tokens = fp8_kernel_max_tokens if kernel_runs else None
    quant = resolve_scheme(
        quantization, hf_config, fp8_dot_min_tokens, max_tokens, fp8_kernel_compute, fp8_kernel_backend
    )
    float_dtype = resolve_dtype(dtype, hf_config)
    graphdef, state, args, kv_replicas = abstract_model(hf_config, float_dtype, mesh.size, quant)
    if load_format == "auto":
        load_format = "orbax" if (model_dir / "params").is_dir() else "safetensors"
    if load_format == "dummy":
        init_dummy_params(state, mesh, seed, args, executable_cache)
    elif load_format == "safetensors":
        load_safetensors_params(state, model_dir, mesh, kv_replicas, args)
    elif load_format == "orbax" and quant is not None:
        restore_quantized(state, model_dir, mesh, kv_replicas, hf_config, args)
    elif load_format == "orbax":
        state = restore_params(model_dir / "params", state, mesh, kv_replicas)
    else:
        raise ValueError(f"load_format {load_format!r} is not supported; choose auto, safetensors, dummy or orbax")
    return LoadedModel(nnx.merge(graphdef, state), args, hf_config, generation_config, model_dir, mesh, kv_replicas)


def save_model(loaded: LoadedModel, out_dir: str | Path) -> Path:
    """Writes ``loaded`` as a model directory that ``load_model`` (``load_format: auto``) restores from ``params/``."""
    if loaded.args.quant is not None:
        raise ValueError(
            f"save_model writes float models only; this one is quantized ({loaded.args.quant.name}): save it "
            "unquantized and pass quantization when loading the saved copy"
        )
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SIDE_FILES:
        if (loaded.model_dir / name).is_file():
            shutil.copy2(loaded.model_dir / name, out_dir / name)
    save_params(nnx.state(loaded.model, nnx.Param), out_dir / "params", loaded.mesh, loaded.kv_replicas)
    return out_dir

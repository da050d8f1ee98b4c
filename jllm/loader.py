"""HuggingFace model directory -> a Flax NNX model whose parameters already sit, sharded, on the mesh.

Each parameter is created with ``jax.make_array_from_callback``: every device reads only its own slice of the
memory-mapped safetensors tensors (``jllm.safetensors_index``), so no full copy lands on one device first.

Quantized models (``jllm.quantization``): a quantized linear's kernel is read in float and quantized on its own
devices, one tensor at a time (from safetensors, dummy weights, or a float orbax copy, which is restored whole
first), unless the checkpoint stores it in FP8: then the e4m3 values are read as stored with their
``weight_scale`` (a per-tensor scale repeated over its rows). A checkpoint's FP8 KV-cache scales become each attention
layer's ``k_scale`` / ``v_scale`` (``jllm.kv_scales``).

``save_model`` writes the other kind of model directory it reads: the same config and tokenizer files beside an
orbax checkpoint of the converted parameters (``jllm.checkpoint``), which loads without converting again.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jllm import parallel
from jllm.checkpoint import restore_params, save_params
from jllm.executable_cache import ExecutableCache, ProgramCall, load_or_compile
from jllm.kv_scales import declares_kv_scales, is_scale_param, stores_kv_scales
from jllm.models.registry import build_args
from jllm.quantization import QuantScheme, resolve_scheme
from jllm.safetensors_index import SafetensorsIndex, stored_names
from jllm.unread_tensors import check_all_read
from pallas_kernels import has_jax_triton

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
DTYPES |= {"half": jnp.float16, "float": jnp.float32}  # vLLM's --dtype aliases
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
    """A model directory's JSON object (config.json, generation_config.json); a file that is not one is a ValueError
    naming it (the engine's doors print it, where a bare JSON or attribute error named no file)."""
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path.name} not found in model directory {str(path.parent)!r}")
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def resolve_dtype(dtype: str, hf_config: dict[str, Any]) -> Any:
    """``auto`` means the checkpoint's own dtype, as in vLLM."""
    if dtype == "auto":
        dtype = hf_config.get("torch_dtype") or hf_config.get("dtype") or "float32"
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def abstract_model(
    hf_config: dict[str, Any],
    dtype: Any,
    tensor_parallel_size: int = 1,
    quant: QuantScheme | None = None,
    kv_scales: bool = False,
    decode_gemv_max_tokens: int | None = None,
) -> tuple[nnx.GraphDef, nnx.State, Any, int]:
    """The model's structure without memory, and how many copies of each KV head ``tensor_parallel_size`` needs;
    ``kv_scales``: its attention layers hold FP8 KV-cache scales (``jllm.kv_scales``); ``decode_gemv_max_tokens``:
    set on ``ModelArgs`` (``jllm.models.decode_matmuls``).

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
        head_vocab_size=args.head_vocab_size,
        recurrent_sizes=_recurrent_sizes(args),
        attends=args.attends,
    )
    kv_replicas = parallel.kv_head_replicas(args.num_kv_heads, tensor_parallel_size) if args.attends else 1
    _check_layer_kv_heads(args, tensor_parallel_size)
    if kv_replicas > 1 and (args.qk_norm_all_heads or args.qk_norm_per_head):
        layout = "over all KV heads (OLMo 2, OLMoE)" if args.qk_norm_all_heads else "per KV head (StableLM, Cohere)"
        raise ValueError(
            f"tensor_parallel_size={tensor_parallel_size} would replicate the model's {args.num_kv_heads} KV heads, "
            f"which its k norm's weights {layout} do not support; use a tensor_parallel_size that divides "
            f"num_key_value_heads={args.num_kv_heads}"
        )
    args = dataclasses.replace(
        args, num_kv_heads=args.num_kv_heads * kv_replicas, quant=quant, kv_scales=kv_scales,
        decode_gemv_max_tokens=decode_gemv_max_tokens,
    )  # fmt: skip
    graphdef, state = nnx.split(nnx.eval_shape(lambda: model_cls(args)))
    return graphdef, state, args, kv_replicas


def _check_layer_kv_heads(args: Any, tensor_parallel_size: int) -> None:
    """Layers with KV heads of their own (Gemma 4's full-attention layers) split over the devices: every layer's KV
    heads divided by ``tensor_parallel_size``, none replicated (the copies are counted once, for the whole model)."""
    counts = sorted(args.layer_kv_heads)
    if len(counts) > 1 and any(n % tensor_parallel_size for n in counts):
        allowed = [tp for tp in range(1, counts[0] + 1) if all(n % tp == 0 for n in counts)]
        raise ValueError(
            f"tensor_parallel_size={tensor_parallel_size} does not divide every layer's KV heads {counts} (Gemma 4's "
            "num_key_value_heads and num_global_key_value_heads); KV heads of layers that differ are not replicated: "
            f"use a tensor_parallel_size of {allowed}"
        )


def _recurrent_sizes(args: Any) -> tuple[tuple[str, int], ...]:
    """What a hybrid model's recurrent layers split over tensor parallelism (``parallel.RECURRENT_HEADS``)."""
    sizes = []
    if args.deltanet is not None:
        sizes.append(("gated DeltaNet key heads (linear_num_key_heads)", args.deltanet.num_k_heads))
    if args.mamba2 is not None:
        sizes.append(
            ("Mamba2 heads (mamba_n_heads; pure Mamba2's num_heads, Zamba2's n_mamba_heads)", args.mamba2.num_heads)
        )
    if args.short_conv is not None:
        sizes.append(("short conv's channels (hidden_size)", args.hidden_size))
    if args.mamba is not None:
        sizes.append(("Mamba channels (intermediate_size, or mamba_expand x hidden_size)", args.mamba.inner))
        if args.mamba.heads > 1:  # Zamba v1's: each head's x_proj and dt_proj on one device
            sizes.append(("Mamba heads (n_mamba_heads)", args.mamba.heads))
    if args.rwkv is not None:
        sizes.append(("RWKV time mixing's channels (attention_hidden_size)", args.rwkv.attention_size))
    if args.mlstm is not None:
        sizes.append(("xLSTM heads (num_heads)", args.mlstm.heads))
    return tuple(sizes)


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


@dataclasses.dataclass(frozen=True)
class Placement:
    """One array ``make`` builds for ``_place``: the leaf at ``path`` as its source gives it (``target``)."""

    path: tuple
    target: jax.ShapeDtypeStruct
    quantized: bool  # a quantized linear's kernel: ``target`` is ``[in, *out]``, moved or quantized on the device
    at_load: bool  # quantized where it lies (the source stores it in float), filling the linear's scale too


def _placements(
    flat: dict[tuple, nnx.Variable],
    mesh: Mesh,
    quant: QuantScheme | None,
    float_dtype: Any,
    stored: Callable[[tuple], bool],
) -> list[Placement]:
    """What ``_place`` asks ``make`` for, leaf by leaf (a scale quantized at load comes with its kernel)."""
    placements = []
    for path, var in flat.items():
        module, leaf = path[:-1], str(path[-1])
        quantized = quant is not None and (*module, "scale") in flat
        at_load = quantized and not stored((*module, "kernel"))
        if at_load and leaf == "scale":
            continue
        if quantized and leaf == "kernel":
            target = _source_target(var, mesh, float_dtype if at_load else None)
            placements.append(Placement(path, target, True, at_load))
        else:
            placements.append(Placement(path, _target(var, mesh), False, False))
    return placements


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
    for placement in _placements(flat, mesh, quant, float_dtype, stored):
        var = flat[placement.path]
        w = make(placement.path, placement.target)
        if not placement.quantized:
            var.set_value(w)
            continue
        if placement.at_load:
            scale = flat[(*placement.path[:-1], "scale")]
            q, s = _quantizer(quant, _target(var, mesh).sharding, _target(scale, mesh).sharding)(w)
            scale.set_value(s)
        else:
            q = _input_last(_target(var, mesh).sharding)(w)
        w.delete()
        var.set_value(q)


def load_safetensors_params(
    state: nnx.State, model_dir: Path, mesh: Mesh, kv_replicas: int, args: Any, hf_config: dict[str, Any]
) -> None:
    """Every parameter read from the checkpoint; then every checkpoint tensor must have been read, or be one the
    family skips on purpose (``jllm.unread_tensors``: an unread one usually means a misread config key)."""
    with ExitStack() as stack:
        index = SafetensorsIndex(model_dir, stack, args.weights)

        stored = {path: var.get_metadata().get("stored") for path, var in nnx.to_flat_state(state)}

        def make(path: tuple, target: jax.ShapeDtypeStruct) -> jax.Array:
            read = index.param_reader(path, target.shape, target.dtype, kv_replicas, stored[path])
            return jax.make_array_from_callback(target.shape, target.sharding, read)

        _place(state, mesh, make, args.quant, args.dtype, index.stores_fp8)
        check_all_read(index.unread(), args.weights.skipped, hf_config, args.num_layers, args.tie_word_embeddings)


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

    def kind(path: tuple, target: jax.ShapeDtypeStruct) -> tuple[tuple[int, ...], Any, jax.sharding.Sharding, bool]:
        """What an initializer is compiled for: the shape, dtype, sharding, and whether an RMSNorm scale (ones)."""
        return target.shape, jnp.dtype(target.dtype), target.sharding, str(path[-1]) == "weight"

    def initializer(shape: tuple[int, ...], dtype: Any, sharding: jax.sharding.Sharding, is_norm: bool) -> Callable:
        fn = functools.partial(dummy_values, shape, dtype, is_norm)
        return load_or_compile(executable_cache, ProgramCall(fn, None, (), (key_type,)), sharding)

    # Every kind's initializer compiled (or loaded) at once, on threads: compiled one after the other, they were most
    # of what a cold Llama-3-8B start's weights phase spent over a warm one's (5.7 against 2.7 s, H200 2026-12-06).
    placements = _placements(dict(nnx.to_flat_state(state)), mesh, args.quant, args.dtype, lambda path: False)
    kinds = list(dict.fromkeys(kind(p.path, p.target) for p in placements if not is_scale_param(p.path)))
    with ThreadPoolExecutor(max(1, min(len(kinds), os.cpu_count() or 1))) as pool:
        initializers = dict(zip(kinds, pool.map(lambda k: initializer(*k), kinds), strict=True))

    def make(path: tuple, target: jax.ShapeDtypeStruct) -> jax.Array:
        if is_scale_param(path):  # a KV-cache scale: 1.0, as without one
            next(counter)
            return jax.device_put(jnp.ones(target.shape, target.dtype), target.sharding)
        return initializers[kind(path, target)](keys[next(counter)])

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
    fp8_dot_min_tokens: int | None = 32,
    fp8_kernel_max_tokens: int | None = 1,
    fp8_kernel_compute: str | None = None,
    fp8_kernel_backend: str = "triton",
    decode_gemv_max_tokens: int | None = None,
    executable_cache: ExecutableCache | None = None,
) -> LoadedModel:
    """Reads config.json and the weights (or makes dummy ones) straight onto ``mesh``, quantizing the decoder's
    linears when ``quantization`` asks (or the checkpoint is stored in FP8). The FP8-weight kernels run on one CUDA
    device only (neither kernel call has a sharding rule; under tensor parallelism XLA's dot runs): the jax-triton
    one where jax-triton is installed, the Pallas one (``fp8_kernel_backend: pallas``) without it too.
    ``decode_gemv_max_tokens`` (``jllm.models.decode_matmuls``) is refused under tensor parallelism and with
    quantized weights, for the same reason and because its kernel multiplies the model's dtype. Dummy weights'
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
    if decode_gemv_max_tokens is not None and (mesh.size > 1 or quant is not None):
        why = f"tensor_parallel_size={mesh.size}" if mesh.size > 1 else f"quantized weights ({quant.name})"
        raise ValueError(
            f"decode_gemv_max_tokens={decode_gemv_max_tokens} runs on one device over unquantized weights, not with "
            f"{why}; leave it unset"
        )
    float_dtype = resolve_dtype(dtype, hf_config)
    if load_format == "auto":
        load_format = "orbax" if (model_dir / "params").is_dir() else "safetensors"
    kv_scales = _has_kv_scales(model_dir, hf_config, load_format)
    graphdef, state, args, kv_replicas = abstract_model(
        hf_config, float_dtype, mesh.size, quant, kv_scales, decode_gemv_max_tokens
    )
    if load_format == "dummy":
        init_dummy_params(state, mesh, seed, args, executable_cache)
    elif load_format == "safetensors":
        load_safetensors_params(state, model_dir, mesh, kv_replicas, args, hf_config)
    elif load_format == "orbax" and quant is not None:
        restore_quantized(state, model_dir, mesh, kv_replicas, hf_config, args)
    elif load_format == "orbax":
        state = restore_params(model_dir / "params", state, mesh, kv_replicas)
    else:
        raise ValueError(f"load_format {load_format!r} is not supported; choose auto, safetensors, dummy or orbax")
    return LoadedModel(nnx.merge(graphdef, state), args, hf_config, generation_config, model_dir, mesh, kv_replicas)


def _has_kv_scales(model_dir: Path, hf_config: dict[str, Any], load_format: str) -> bool:
    """Whether the model gets FP8 KV-cache scale parameters (``jllm.kv_scales``): a safetensors checkpoint that stores
    them, or dummy weights (at 1.0) of a config that declares them; an orbax copy has none (``save_model`` refuses
    them)."""
    if load_format == "safetensors":
        return stores_kv_scales(stored_names(model_dir))
    return load_format == "dummy" and declares_kv_scales(hf_config)


def save_model(loaded: LoadedModel, out_dir: str | Path) -> Path:
    """Writes ``loaded`` as a model directory that ``load_model`` (``load_format: auto``) restores from ``params/``."""
    if loaded.args.quant is not None:
        raise ValueError(
            f"save_model writes float models only; this one is quantized ({loaded.args.quant.name}): save it "
            "unquantized and pass quantization when loading the saved copy"
        )
    if loaded.args.kv_scales:
        raise ValueError(
            "save_model does not write a model's FP8 KV-cache scales (k_scale / v_scale, read from its checkpoint); "
            "serve the checkpoint itself"
        )
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SIDE_FILES:
        if (loaded.model_dir / name).is_file():
            shutil.copy2(loaded.model_dir / name, out_dir / name)
    save_params(nnx.state(loaded.model, nnx.Param), out_dir / "params", loaded.mesh, loaded.kv_replicas)
    return out_dir

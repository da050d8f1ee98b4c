"""Compiles jllm's step programs for an NVIDIA H100 or H200 on a machine without a GPU, and lists the kernels XLA
generates for them, per decoder layer: what a step launches, read without lending a GPU.

The CUDA 13 plugin of jax 0.11.2 compiles for a GPU it is only told about: ``jax.experimental.topologies`` gives a
compile-only device of the GPU a ``GpuTargetConfigProto`` describes (``scripts/gpu_specs/``), and a program lowered for
"cuda" with its arguments sharded on that device runs XLA:GPU's whole pipeline (fusion, the Triton / cuBLAS GEMM
choice, scheduling, PTX for sm_90a, ptxas) with no CUDA driver. The programs are jllm's own: the model of ``--config``
built abstractly (``loader.abstract_model``, every parameter a ``ShapeDtypeStruct`` with the loader's sharding), its
KV pool as ``build`` sizes and allocates it on the target's memory (``attention.resolve_pool``, the pool's heads padded
for the kernels), a real ``runner.ModelRunner`` over them, and each program the ``ProgramCall`` its warm-up compiles
(``warmup_plans`` -> ``put`` -> ``_program_keys`` -> ``_call``), traced by ``runner.trace``, lowered for "cuda" and
compiled with ``call.options`` (jllm's compile options: the command-buffer update mode, Triton GEMMs off above 16
rows). Each program is compiled once, one at a time, and timed, after one tiny program that pays the compiler's
start-up; the forwards of ``--summary-buckets`` are compiled again, untimed, with an XLA dump that gives each kernel's
launch (grid, block, shared memory, the compiled kernel after deduplication).

Patched at run time, nothing in the checkout:
  * ``jax.default_backend()`` as ``jllm.attention`` sees it answers "gpu": the backend choice and the pool's padding
    are a GPU's, and the Pallas kernels (attention's, and ``jllm.models.decode_matmuls``', which asks
    ``attention.kernels_interpreted``) are lowered for Triton instead of traced in interpret mode on this CPU;
  * tracing and lowering run under ``jax.default_device(<the compile-only GPU>)``, which Pallas' Triton lowering asks
    for the GPU's kind;
  * jax-triton compiles its kernels (the prefill attention, the FP8 GEMV) for the target's compute capability, which
    it would otherwise ask the CUDA driver for;
  * ``jax.device_put`` and ``parallel.device_zeros`` answer ``ShapeDtypeStruct``s while the pool is allocated, the
    runner built and its ``put`` packs the warm-up steps, so nothing reaches a device;
  * each ``_decoder_layer`` call is traced under ``jax.named_scope("layer<i>")``: op_name metadata only, so that
    ``scripts/hlo_kernels.py`` can group the kernels by layer.

What differs from a compile on a real GPU: no autotuning (XLA_FLAGS gets ``--xla_gpu_autotune_level=0`` before jllm
is imported, so jllm adds no level of its own): the GEMM tilings and split-K factors are XLA's defaults, where jllm's
level 1 times candidates on the GPU and may choose others. No CUB sort: XLA holds no deviceless CUB scratch sizes for
an H200, and for an H100 the CUB sort's compile fails without a GPU, so ``DEFAULT_XLA_FLAGS`` turn it off and the
samplers' sorts are XLA's own sort kernels, where a GPU's compile may take CUB's. jax-triton's PTX is assembled only
at run time on a GPU, so that step is not exercised. ``compiled.cost_analysis()`` is empty for such executables. The
pool's pages assume a GPU client's default memory fraction (``MEM_FRACTION``): they change the pool's shape only.
A GPU's own tuning can be replayed: ``scripts/gpu_specs/autotune_b1_h100.textproto`` holds an H100's autotuning
results for the batch-1 Llama-3-8B forward (dumped with ``--xla_gpu_dump_autotune_results_to``, 2026-12-06); loaded
with ``--xla_gpu_load_autotune_results_from`` (last example) the layer's GEMMs take that card's tilings (the same
split-K factors as XLA's defaults, other tile sizes). A program whose fingerprint differs falls back to the defaults.

Needs ``bash scripts/gpu_aot_setup.sh`` once (the plugin, ptxas and libdevice in ``.gpu_aot/site``). From the
repository root:

    .venv/bin/python scripts/compile_for_gpu.py                                   # Llama-3-8B on an H200
    .venv/bin/python scripts/compile_for_gpu.py --forward-buckets 1 --sampler-rows "" --layers 2 --out-dir /tmp/aot
    .venv/bin/python scripts/compile_for_gpu.py --config configs/llama3-8b-fp8-h200.yaml --target h100 \\
        --xla-flags=--xla_gpu_enable_triton_gemm=false
    .venv/bin/python scripts/compile_for_gpu.py --target h100 --forward-buckets 1 --sampler-rows "" --layers 3 \\
        --xla-flags=--xla_gpu_load_autotune_results_from=scripts/gpu_specs/autotune_b1_h100.textproto
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / ".gpu_aot" / "site"  # scripts/gpu_aot_setup.sh installs there
SPECS = {"h100": ROOT / "scripts/gpu_specs/h100_sxm.txtpb", "h200": ROOT / "scripts/gpu_specs/h200.txtpb"}
# Set before jllm.runner is imported (it adds autotuning level 1 to its compile options unless XLA_FLAGS sets a level):
# no GEMM autotuning (nothing to time candidates on), and XLA's own sort (for an H100 XLA holds CUB's scratch sizes
# and rewrites a sort to CUB's, whose compile then fails without a GPU: cudaErrorInvalidDevice).
DEFAULT_XLA_FLAGS = "--xla_gpu_autotune_level=0 --xla_gpu_deviceless_cub_mode=DEVICELESS_CUB_DISABLED"
os.environ["XLA_FLAGS"] = f"{DEFAULT_XLA_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()
sys.path[:0] = [str(SITE), str(ROOT), str(ROOT / "scripts")]

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")  # never a CUDA client: the GPU is the topology's compile-only device
import hlo_kernels  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from jllm import attention, kv_cache, parallel  # noqa: E402
from jllm import runner as runner_mod  # noqa: E402
from jllm.config import EngineConfig, load_config  # noqa: E402
from jllm.executable_cache import ProgramCall  # noqa: E402
from jllm.loader import LoadedModel, _has_kv_scales, _target, abstract_model, read_json, resolve_dtype  # noqa: E402
from jllm.model_source import resolve_model  # noqa: E402
from jllm.models import decoder  # noqa: E402
from jllm.quantization import resolve_scheme  # noqa: E402
from jllm.tokenizer import Tokenizer  # noqa: E402
from pallas_kernels import has_jax_triton  # noqa: E402

MEM_FRACTION = 0.75  # XLA_PYTHON_CLIENT_MEM_FRACTION's default: the device's bytes_limit a GPU client reports
NEEDED = ("jax_plugins/xla_cuda13", "nvidia/cu13/bin/ptxas", "nvidia/cu13/nvvm/libdevice", "jax_triton")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="h200", help="h100 | h200 | a GpuTargetConfigProto .txtpb (default h200)")
    p.add_argument("--config", default="configs/llama3-8b-h200.yaml", help="jllm engine config (model, buckets, pool)")
    p.add_argument("--layers", type=int, help="override the model's num_hidden_layers (fewer: a faster look)")
    p.add_argument("--forward-buckets", default="1,8,256,2048", help="token counts of the forward buckets to compile")
    p.add_argument("--sampler-rows", default="1,8", help="row counts whose sampler variants to compile ('': none)")
    p.add_argument("--prompt-logprobs", action="store_true", help="also each forward bucket's prompt-logprobs program")
    p.add_argument(
        "--attention-backend", default="auto", help="auto (jllm's on a GPU), pallas, triton-prefill, reference"
    )
    p.add_argument("--xla-flags", default="", help="more XLA flags, after DEFAULT_XLA_FLAGS and $XLA_FLAGS")
    p.add_argument("--summary-buckets", default="1", help="forward buckets whose kernels to list ('all', '': none)")
    p.add_argument("--detail-layers", help="layers listed kernel by kernel (default: 0 and the middle one)")
    p.add_argument("--no-launches", action="store_true", help="skip the summary buckets' second compile with a dump")
    p.add_argument("--out-dir", type=Path, help="each program's optimized HLO, summary.txt, times.json, kernel lists")
    return p.parse_args(argv)


def check_site() -> None:
    missing = [path for path in NEEDED if not (SITE / path).exists()]
    if missing:
        raise SystemExit(f"{SITE} lacks {', '.join(missing)}: run `bash scripts/gpu_aot_setup.sh` first")


# ---------------------------------------------------------------- run-time patches (see the module's docstring)


class _GpuJax(types.ModuleType):
    """``jax`` as jllm.attention sees it: on a GPU."""

    def __getattr__(self, name: str) -> Any:
        return getattr(jax, name)

    @staticmethod
    def default_backend() -> str:
        return "gpu"


def patch_jax_triton(capability: int) -> None:
    """jax-triton's kernel compile given the target's compute capability (else it asks the CUDA driver)."""
    from jax_triton import triton_lib

    original = triton_lib.get_or_create_triton_kernel

    @functools.wraps(original)
    def for_target(*args: Any, compute_capability: int | None = None, **kwargs: Any) -> Any:
        return original(*args, compute_capability=compute_capability or capability, **kwargs)

    triton_lib.get_or_create_triton_kernel = for_target


@contextlib.contextmanager
def layer_scopes() -> Iterator[None]:
    """Each decoder layer's call under ``jax.named_scope("layer<i>")``, i in call order, while a program traces."""
    original, count = decoder._decoder_layer, itertools.count()

    def scoped(*args: Any, **kwargs: Any) -> Any:
        with jax.named_scope(f"layer{next(count)}"):
            return original(*args, **kwargs)

    decoder._decoder_layer = scoped
    try:
        yield
    finally:
        decoder._decoder_layer = original


@contextlib.contextmanager
def abstract_arrays() -> Iterator[None]:
    """``jax.device_put`` and ``parallel.device_zeros`` answering ``ShapeDtypeStruct``s with the requested sharding."""
    put, zeros = jax.device_put, parallel._zeros_program

    def abstract_put(x: Any, device: Any = None, *args: Any, **kwargs: Any) -> Any:
        def one(v: Any) -> jax.ShapeDtypeStruct:
            v = v if isinstance(v, jax.ShapeDtypeStruct) else np.asarray(v)
            return jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=device)

        return jax.tree.map(one, x)

    jax.device_put = abstract_put
    parallel._zeros_program = lambda shape, dtype, sharding: (
        lambda: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    )
    try:
        yield
    finally:
        jax.device_put, parallel._zeros_program = put, zeros


# ---------------------------------------------------------------- the model, its pool and the runner, abstract


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # the spec's file name
    device: Any  # the topology's compile-only device
    memory_bytes: int  # device_memory_size
    capability: int  # 90 for sm_90

    @classmethod
    def load(cls, target: str) -> Target:
        path = SPECS.get(target.lower(), Path(target))
        if not path.is_file():
            raise SystemExit(f"--target {target!r}: neither h100, h200 nor a GpuTargetConfigProto file")
        text = path.read_text()
        (device,) = topologies.get_topology_desc(platform="cuda", target_config=text, topology="1x1x1").devices
        memory = int(re.search(r"device_memory_size:\s*(\d+)", text).group(1))
        block = re.search(r"cuda_compute_capability\s*\{([^}]*)\}", text).group(1)  # a zero minor is left out
        major, minor = (re.search(rf"{field}:\s*(\d+)", block) for field in ("major", "minor"))
        return cls(path.name, device, memory, 10 * int(major.group(1)) + (int(minor.group(1)) if minor else 0))


def abstract_loaded_model(config: EngineConfig, mesh: Any, layers: int | None) -> tuple[LoadedModel, int]:
    """The model as ``loader.load_model`` builds it on one CUDA GPU, every parameter a ``ShapeDtypeStruct`` with the
    loader's sharding; and its parameters' bytes."""
    m = config.model
    model_dir = resolve_model(m.model)
    hf_config = read_json(model_dir / "config.json")
    hf_config = hf_config if layers is None else dict(hf_config, num_hidden_layers=layers)
    kernel_runs = m.fp8_kernel_backend == "pallas" or has_jax_triton()  # load_model's choice on one GPU
    quant = resolve_scheme(m.quantization, hf_config, m.fp8_dot_min_tokens,
                           m.fp8_kernel_max_tokens if kernel_runs else None, m.fp8_kernel_compute,
                           m.fp8_kernel_backend)  # fmt: skip
    load_format = m.load_format
    if load_format == "auto":
        load_format = "orbax" if (model_dir / "params").is_dir() else "safetensors"
    kv_scales = _has_kv_scales(model_dir, hf_config, load_format)
    dtype = resolve_dtype(m.dtype, hf_config)
    graphdef, state, args, kv_replicas = abstract_model(hf_config, dtype, 1, quant, kv_scales, m.decode_gemv_max_tokens)
    for _, var in nnx.to_flat_state(state):
        var.set_value(_target(var, mesh))
    params_bytes = sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
    generation_config = read_json(model_dir / "generation_config.json", required=False)
    loaded = LoadedModel(nnx.merge(graphdef, state), args, hf_config, generation_config, model_dir, mesh, kv_replicas)
    return loaded, params_bytes


def abstract_pool(config: EngineConfig, loaded: LoadedModel, backend: str, target: Target, params_bytes: int) -> Any:
    """The attention backend, and the KV pool ``build`` allocates for it on the target (``ShapeDtypeStruct``s) and
    its pages."""
    args, cache = loaded.args, config.cache
    dtype = kv_cache.pool_dtype(cache.kv_cache_dtype, args.dtype)
    model_spec = kv_cache.KVCacheSpec.for_model(args, cache.page_size, dtype)
    backend, spec = attention.resolve_pool(backend, model_spec, alibi=args.alibi_slopes is not None)
    slots = kv_cache.num_state_slots(args, config.scheduler.max_num_seqs)
    budget = cache.kv_cache_memory_bytes or int(target.memory_bytes * MEM_FRACTION * cache.gpu_memory_utilization)
    budget -= spec.state_bytes(slots) + (0 if cache.kv_cache_memory_bytes else params_bytes)
    num_pages = cache.num_pages or kv_cache.num_pages_for_budget(spec, budget)
    sharding = parallel.kv_pool_sharding(loaded.mesh)
    with abstract_arrays():
        pool = kv_cache.allocate_kv_pool(spec, num_pages, sharding, num_state_slots=slots)
    return backend, pool, num_pages


def build_runner(args: argparse.Namespace, target: Target) -> tuple[runner_mod.ModelRunner, dict[str, Any]]:
    config = load_config(args.config)
    if config.parallel.tensor_parallel_size != 1:
        raise SystemExit(f"{args.config}: tensor_parallel_size {config.parallel.tensor_parallel_size}; this tool "
                         "compiles for one GPU")  # fmt: skip
    mesh = parallel.make_mesh(1, devices=[target.device])
    loaded, params_bytes = abstract_loaded_model(config, mesh, args.layers)
    backend, pool, num_pages = abstract_pool(config, loaded, args.attention_backend, target, params_bytes)
    sched, a = config.scheduler, loaded.args
    max_model_len = config.model.max_model_len or a.max_context
    with abstract_arrays():
        runner = runner_mod.ModelRunner(
            loaded, pool, page_size=config.cache.page_size, max_model_len=max_model_len,
            max_num_seqs=sched.max_num_seqs, max_num_batched_tokens=sched.max_num_batched_tokens,
            eos_token_ids=Tokenizer.from_pretrained(loaded.model_dir).eos_token_ids,
            max_stop_token_ids=config.limits.max_stop_token_ids, attention_backend=backend,
        )  # fmt: skip
    info = dict(
        config=args.config, device_kind=target.device.device_kind, layers=a.num_layers, hidden=a.hidden_size,
        heads=a.num_heads, kv_heads=a.num_kv_heads, dtype=jnp.dtype(a.dtype).name,
        quantization=None if a.quant is None else a.quant.name, params_gb=round(params_bytes / 1e9, 3),
        attention_backend=backend, jax_triton=has_jax_triton(), num_pages=num_pages,
        pool_layer_shape=list(jax.tree.leaves(pool)[0].shape), max_model_len=max_model_len,
        buckets=[tuple(b) for b in runner.buckets],
    )  # fmt: skip
    return runner, info


# ---------------------------------------------------------------- compiling


@dataclasses.dataclass
class Program:
    name: str
    bucket: tuple[int, ...]  # (tokens, sequences, sampler rows)
    call: ProgramCall
    hlo: str
    kernels: list[hlo_kernels.Kernel]
    seconds: dict[str, float]  # trace, lower, compile


def lower(call: ProgramCall, device: Any) -> tuple[jax.stages.Traced, jax.stages.Lowered, dict[str, float]]:
    with jax.default_device(device), layer_scopes():
        t0 = time.perf_counter()
        traced = runner_mod.trace(call)
        t1 = time.perf_counter()
        lowered = traced.lower(lowering_platforms=("cuda",))
    return traced, lowered, dict(trace=t1 - t0, lower=time.perf_counter() - t1)


def compile_program(name: str, bucket: Any, call: ProgramCall, device: Any) -> tuple[Program, jax.stages.Traced]:
    print(f"compiling {name} (options {call.options}) ...", file=sys.stderr, flush=True)
    traced, lowered, seconds = lower(call, device)
    t0 = time.perf_counter()
    hlo = lowered.compile(call.options).as_text()
    seconds["compile"] = time.perf_counter() - t0
    found = hlo_kernels.kernels(hlo_kernels.parse_hlo(hlo))
    print(f"  {seconds['compile']:.1f} s, {len(found)} kernels", file=sys.stderr, flush=True)
    return Program(name, tuple(bucket), call, hlo, found, seconds), traced


def prime_compiler(device: Any) -> float:
    """One tiny program compiled first, so that no step program's time carries the compiler's one-time start-up."""
    x = jax.ShapeDtypeStruct((128, 128), jnp.bfloat16, sharding=parallel.replicated(parallel.make_mesh(1, [device])))
    t0 = time.perf_counter()
    jax.jit(lambda a: jnp.tanh(a @ a).sum()).trace(x).lower(lowering_platforms=("cuda",)).compile()
    return time.perf_counter() - t0


def _numbers(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


class Warmup:
    """The programs jllm's warm-up compiles for some buckets (``warmup_plans``: every sampler variant and the prompt
    logprobs beside the forward), compiled one at a time for the device."""

    def __init__(self, runner: runner_mod.ModelRunner, device: Any, tokens: set[int]):
        self.runner, self.device = runner, device
        self.buckets = {b.num_tokens: b for b in runner.buckets}
        with abstract_arrays():
            self.plans = {t: runner.warmup_plans(self.buckets[t]) for t in tokens}
            self.steps = {t: [runner.put(p) for p in plans] for t, plans in self.plans.items()}
        self.outputs: dict[int, tuple[jax.ShapeDtypeStruct, ...]] = {}  # each forward's (hidden, rows)

    def forward(self, tokens: int, compile: bool = True) -> Program | None:
        """The forward compiled (or, with ``compile`` False, traced only: the samplers' input shapes)."""
        step, bucket = self.steps[tokens][0], self.buckets[tokens]
        call = self.runner._call(("forward", None, step.layout), step, None)
        if compile:
            program, traced = compile_program(f"forward_{tokens}x{bucket.num_seqs}", bucket, call, self.device)
        else:
            program, traced = None, lower(call, self.device)[0]
        replicated = parallel.replicated(self.runner.mesh)
        avals = jax.tree.leaves(traced.out_info)[:2]
        self.outputs[tokens] = tuple(jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=replicated) for o in avals)
        return program

    def samplers(self, tokens: int) -> list[Program]:
        """Each sampler variant of the bucket's plans once, named by its mode, top logprobs and penalty width."""
        rows, programs = self.buckets[tokens].sampler_rows, {}
        for plan, step in zip(self.plans[tokens], self.steps[tokens], strict=True):
            key = next(k for k in self.runner._program_keys(step) if k[0] == "sampler")
            if key not in programs:
                width = plan.inputs.sampling.output_ids.shape[1]  # the penalty lists'
                name = runner_mod._program_name(key) + (f"_pen{width}" if width else "") + f"_rows{rows}"
                call = self.runner._call(key, step, self.outputs[tokens])
                programs[key] = compile_program(name, self.buckets[tokens], call, self.device)[0]
        return list(programs.values())

    def prompt_logprobs(self, tokens: int) -> Program:
        step = next(s for s in self.steps[tokens] if s.variant[1] is not None)
        call = self.runner._call(("prompt_logprobs", None, step.layout), step, self.outputs[tokens])
        name = f"prompt_logprobs_{tokens}x{self.buckets[tokens].num_seqs}"
        return compile_program(name, self.buckets[tokens], call, self.device)[0]


def compile_all(runner: runner_mod.ModelRunner, args: argparse.Namespace, device: Any) -> list[Program]:
    """The forwards first (as jllm's warm-up submits them), then each row count's samplers (from the smallest bucket
    with those rows, as warm-up takes them), then the prompt logprobs."""
    forwards, rows = _numbers(args.forward_buckets), _numbers(args.sampler_rows)
    unknown = {*forwards} - {b.num_tokens for b in runner.buckets}, {*rows} - {b.sampler_rows for b in runner.buckets}
    if any(unknown):
        raise SystemExit(f"no bucket of {unknown[0] or ''} tokens {unknown[1] or ''} sampler rows; the buckets "
                         f"(tokens, sequences, sampler rows): {runner.buckets}")  # fmt: skip
    sampled = [min(b.num_tokens for b in runner.buckets if b.sampler_rows == r) for r in rows]
    warmup = Warmup(runner, device, {*forwards, *sampled})
    programs = [warmup.forward(t) for t in forwards]
    for t in sampled:
        if t not in warmup.outputs:
            warmup.forward(t, compile=False)
        programs += warmup.samplers(t)
    return programs + [warmup.prompt_logprobs(t) for t in forwards if args.prompt_logprobs]


def launches(program: Program, device: Any, out_dir: Path | None) -> tuple[dict[str, str], str] | None:
    """The program compiled again with an XLA dump: each kernel's launch from the runtime's thunk sequence."""
    with tempfile.TemporaryDirectory(prefix="compile_for_gpu_") as dump:
        options = dict(program.call.options, xla_dump_to=dump)
        module = hlo_kernels.parse_hlo(lower(program.call, device)[1].compile(options).as_text())
        found = hlo_kernels.read_launches(Path(dump), module.name)
        if found and out_dir:
            for f in Path(dump).glob(f"*.{module.name}.thunk_sequence_after_thunk_passes.txt"):
                shutil.copy(f, out_dir / f"{program.name}.thunk_sequence.txt")
    if hlo_kernels.kernels(module) != program.kernels:  # the texts differ in their stack frames only
        print(f"warning: {program.name}'s kernels differ in the compile with a dump: launches may be misattributed",
              file=sys.stderr)  # fmt: skip
    return found


# ---------------------------------------------------------------- the report


def program_table(programs: list[Program], primed: float) -> str:
    rows = [["program", "bucket (T,S,R)", "kernels", "trace s", "lower s", "compile s", "options"]]
    for p in programs:
        s = p.seconds
        rows.append([p.name, str(p.bucket), str(len(p.kernels)), f"{s['trace']:.2f}", f"{s['lower']:.2f}",
                     f"{s['compile']:.2f}", str(p.call.options)])  # fmt: skip
    total = sum(p.seconds["compile"] for p in programs)
    return (hlo_kernels.format_rows(rows, max_width=100) + f"\ntotal XLA compile time, one program at a time: "
            f"{total:.1f} s (after a tiny program's {primed:.2f} s, the compiler's start-up)")  # fmt: skip


def kernel_report(program: Program, found: tuple[dict[str, str], str] | None, detail: list[int]) -> str:
    """A forward's kernels: counts per layer and kind, then those outside the layers and of the ``detail`` layers."""
    launch, summary = found or (None, "none read (--no-launches, or no thunk sequence in the dump)")
    kinds = dict.fromkeys(k.kind for k in program.kernels)
    groups = ["pre", "outside", "post", *(f"layer{i}" for i in detail)]
    return "\n".join([
        f"\n==== {program.name}: {len(program.kernels)} kernels, in execution order ====",
        f"launches (XLA dump): {summary}",
        hlo_kernels.count_table(program.kernels),
        *(f"  {kind}: {hlo_kernels.KINDS[kind]}" for kind in kinds if kind in hlo_kernels.KINDS),
        f"\nkernels of {', '.join(groups)} (*: no op_name of its own, its consumer's layer; pre / outside / "
        "post: in no layer, before / amid / after the layers' kernels):",
        hlo_kernels.kernel_table(program.kernels, launch, set(groups)),
    ])  # fmt: skip


def write_kernels(program: Program, found: tuple[dict[str, str], str] | None, detail: list[int], out: Path) -> None:
    """Every kernel of the program, and the fused computations of those outside the layers and of ``detail``'s."""
    (out / f"{program.name}.kernels.txt").write_text(hlo_kernels.kernel_table(program.kernels, found and found[0]))
    module = hlo_kernels.parse_hlo(program.hlo)
    groups = {"pre", "outside", "post", *(f"layer{i}" for i in detail)}
    shown = [(i, k) for i, k in enumerate(program.kernels) if k.group in groups]
    text = [f"######## #{i} {k.label} {k.name} ({k.kind})\n{hlo_kernels.fused_text(program.hlo, module, k.name)}\n"
            for i, k in shown]  # fmt: skip
    (out / f"{program.name}.fused.txt").write_text("\n".join(text))


def write_outputs(out: Path, programs: list[Program], info: dict[str, Any], report: str) -> None:
    for p in programs:
        (out / f"{p.name}.hlo").write_text(p.hlo)
    (out / "summary.txt").write_text(report)
    rows = [dict(program=p.name, bucket=p.bucket, kernels=len(p.kernels), options=p.call.options, seconds=p.seconds,
                 layers=hlo_kernels.layer_counts(p.kernels)) for p in programs]  # fmt: skip
    (out / "times.json").write_text(json.dumps(dict(info=info, programs=rows), indent=1, default=str))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_site()
    os.environ["XLA_FLAGS"] = f"{os.environ['XLA_FLAGS']} {args.xla_flags}".strip()  # read when the plugin starts
    target = Target.load(args.target)
    attention.jax = _GpuJax("jax")
    patch_jax_triton(target.capability)
    print(f"XLA_FLAGS={os.environ['XLA_FLAGS']} target={target.name} ({target.device.device_kind}, "
          f"sm_{target.capability})", file=sys.stderr)  # fmt: skip
    runner, info = build_runner(args, target)
    primed = prime_compiler(target.device)
    programs = compile_all(runner, args, target.device)
    forwards = [p for p in programs if p.name.startswith("forward_")]
    summary = _numbers(args.summary_buckets) if args.summary_buckets != "all" else [p.bucket[0] for p in forwards]
    detail = _numbers(args.detail_layers) if args.detail_layers is not None else sorted({0, info["layers"] // 2})
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
    report = io.StringIO()
    print(f"jllm's programs for {info['device_kind']} ({target.name}), XLA_FLAGS={os.environ['XLA_FLAGS']}\n"
          f"{json.dumps(info)}\n\n{program_table(programs, primed)}\n\nforward kernels by layer ('N x K': N layers of "
          "K kernels):", file=report)  # fmt: skip
    for p in forwards:
        print(f"  {p.name:20s} {len(p.kernels):4d} kernels: {hlo_kernels.layer_counts(p.kernels)}", file=report)
    for p in (p for p in forwards if p.bucket[0] in summary):
        found = None if args.no_launches else launches(p, target.device, args.out_dir)
        print(kernel_report(p, found, detail), file=report)
        if args.out_dir:
            write_kernels(p, found, detail, args.out_dir)
    print(report.getvalue())
    if args.out_dir:
        write_outputs(args.out_dir, programs, info, report.getvalue())


if __name__ == "__main__":
    main()

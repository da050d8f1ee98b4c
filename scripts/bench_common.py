"""What the benchmark scripts share, so that each measures the same way: the machine line, device ceilings, random
prompts, the engine config and model a YAML names, the transformers baseline, greedy agreement and the roofline.

The transformers baseline runs in a child process of its own (``run_baseline``), which exits before any JAX work
here (``start_jllm``: the machine facts, the device ceilings, the engine): JAX reserves most of the device's memory
when it first touches it, and on an H200 jllm's batch-1 TPOT was ~25 % slower after transformers had run in the
same process (4.31 ms in a fresh process against 5.48; 2026-12-02), so the figures are what a user gets.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import gc
import importlib
import json
import math
import multiprocessing
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from machine_info import cpu_name, nvidia_smi

ROOT = Path(__file__).resolve().parents[1]
# A 128-id character tokenizer (tests/test_cli.py's save_char_tokenizer) that every benchmark model dir carries:
# the engine needs one, the benchmarks feed token ids, and ids past its vocabulary decode to nothing.
TOKENIZER_DIR = ROOT / "configs" / "models" / "llama3-8b"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

# Greedy generation of exactly ``lengths[i]`` new tokens for ``prompts[i]``; returns the new tokens.
Generate = Callable[[list[list[int]], list[int]], list[list[int]]]


# ---------------------------------------------------------------------------------------------------- machine


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "numpy", "transformers", "torch", "tokenizers", "triton", "gguf"):
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception:  # noqa: BLE001 - a missing package is a fact to record, not an error
            out[name] = "not installed"
    return out


def environment() -> dict[str, Any]:
    """Where the numbers came from. Touches JAX's devices: on a GPU, call it after transformers has run."""
    import jax

    dev = jax.devices()[0]
    smi = nvidia_smi()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "card": smi.splitlines()[0].split(",")[0].strip() if smi else dev.device_kind,
        "device_kind": dev.device_kind, "platform": dev.platform, "num_devices": len(jax.devices()),
        "nvidia_smi": smi, "cpu": cpu_name(), "host": platform.node(), "load_average": os.getloadavg(),
        "versions": versions(),
    }  # fmt: skip


def print_header(result: dict[str, Any], workload: str) -> None:
    """The lines above every benchmark's table: machine, model and config, workload, start-up, ceilings."""
    env, c, v = result["environment"], result["ceilings"], result["environment"]["versions"]
    print(
        f"\ncard: {env['card']} (jax device kind {env['device_kind']!r}, {env['num_devices']} device(s)); "
        f"CPU {env['cpu']}; jax {v['jax']}, torch {v['torch']}, transformers {v['transformers']}; {env['date']}; "
        f"load average {', '.join(f'{x:.2f}' for x in env['load_average'])}"
    )
    print(result["model"])
    print(f"{workload}; jllm start-up {result['jllm_startup_s']:.1f} s; {describe_ceilings(c)}")


# ---------------------------------------------------------------------------------------------------- ceilings


def describe_ceilings(c: dict[str, Any]) -> str:
    """The measured ceilings (which kernel and shape reached them) beside the card's published peaks."""
    spec = c.get("spec")
    peaks = f" (spec: {spec['copy_gbps']} GB/s, {spec['bfloat16_tflops']} TFLOP/s bf16)" if spec else ""
    fp8 = f", e4m3 matmul {c['matmul_fp8_tflops_dev0']} TFLOP/s" if "matmul_fp8_tflops_dev0" in c else ""
    return (
        f"ceilings: copy {c['copy_gbps_dev0']} GB/s ({c['copy_kernel_dev0']}), {c['matmul_dtype']} matmul "
        f"{c['matmul_tflops_dev0']} TFLOP/s ({c['matmul_shape_dev0']}){fp8}{peaks}"
    )


def random_block_tables(
    rng: np.random.Generator, num_pages: int, page_size: int, kv_lens: list[int], width: int, scattered: bool = True
) -> np.ndarray:
    """i32[S, width]: each sequence's pages, distinct and scattered at random over pages 1.. (page 0 is reserved),
    zero-padded; a step the table or the pool cannot hold is refused with the numbers. ``scattered=False`` hands
    out pages 1, 2, 3 ... in order instead, as a fresh engine's allocator does."""
    need = [-(-n // page_size) for n in kv_lens]
    if max(need, default=0) > width:
        raise ValueError(f"a context of {max(kv_lens)} tokens needs {max(need)} pages; the block table holds {width}")
    if sum(need) > num_pages - 1:
        raise ValueError(f"the step needs {sum(need)} pages; the pool has {num_pages - 1} besides the reserved one")
    pages = 1 + (rng.permutation(num_pages - 1) if scattered else np.arange(num_pages - 1))
    tables = np.zeros((len(kv_lens), width), np.int32)
    used = 0
    for s, n in enumerate(need):
        tables[s, :n] = pages[used : used + n]
        used += n
    return tables


def timed(fn: Callable[[], Any], iters: int) -> list[float]:
    """Seconds per call of ``fn`` (a JAX computation), after one untimed call that compiles it."""
    import jax

    jax.block_until_ready(fn())
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t)
    return out


# The card's published peaks, printed beside the measured ceilings (dense, no sparsity).
SPEC_SHEET = {
    "NVIDIA H200": {"copy_gbps": 4800, "bfloat16_tflops": 989},
    "NVIDIA H100 80GB HBM3": {"copy_gbps": 3350, "bfloat16_tflops": 989},
}


def device_ceilings(
    matmul_dtype: str = "bfloat16", num_devices: int = 1, small: bool | None = None, fp8: bool = False
) -> dict[str, Any]:
    """The two numbers a roofline divides by, measured as the best a device did, not one kernel's figure.

    Copy bandwidth of each device: the best of ``jnp.copy`` and a jitted ``x + 1`` over the same random bf16 array
    (read + write counted; on an H200 ``jnp.copy`` moved 4.22 TB/s where ``x + 1`` moved 3.33). Matmul rate of device
    0 in ``matmul_dtype``: the best of several square and rectangular products on random data after a warm-up. Both
    time calls queued back to back (a wait per call cost an H200 copy ~20 % in one run).
    ``small`` (default: on a CPU) shrinks the arrays from 4 GB and 8192-wide matrices to 16.8 MB and 512.
    ``fp8`` also measures e4m3 x e4m3 products into float32 (what ``quantization: fp8`` prefills run).
    """
    import jax

    small = jax.devices()[0].platform == "cpu" if small is None else small
    rows, cols = (256, 32768) if small else (32768, 61440)
    result: dict[str, Any] = {"copy_bytes": rows * cols * 2, "matmul_dtype": matmul_dtype}
    _best_matmul(jax.devices()[0], matmul_dtype, small)  # warm-up: an idle GPU starts at a low clock
    for i, dev in enumerate(jax.devices()[:num_devices]):
        best, how = _best_copy(dev, rows, cols, seed=i)
        result[f"copy_gbps_dev{i}"], result[f"copy_kernel_dev{i}"] = round(best / 1e9, 1), how
    best, how = _best_matmul(jax.devices()[0], matmul_dtype, small)
    result["matmul_tflops_dev0"], result["matmul_shape_dev0"] = round(best / 1e12, 3 if small else 1), how
    if fp8:
        best, how = _best_matmul(jax.devices()[0], "float8_e4m3fn", small)
        result["matmul_fp8_tflops_dev0"], result["matmul_fp8_shape_dev0"] = round(best / 1e12, 3 if small else 1), how
    result["spec"] = SPEC_SHEET.get(jax.devices()[0].device_kind)
    gc.collect()
    return result


def _best_copy(device: Any, rows: int, cols: int, seed: int) -> tuple[float, str]:
    """(bytes/s, which kernel) of the fastest whole-array copy of a random bf16 [rows, cols] array."""
    import jax
    import jax.numpy as jnp

    kernels = {"jnp.copy": jax.jit(jnp.copy), "x + 1": jax.jit(lambda a: a + 1)}
    with jax.default_device(device):
        x = jax.random.uniform(jax.random.key(seed), (rows, cols), jnp.bfloat16)
        rates = {name: 2 * x.nbytes / back_to_back(lambda f=f, x=x: f(x)) for name, f in kernels.items()}
        del x
    name = max(rates, key=rates.__getitem__)
    return rates[name], name


def _best_matmul(device: Any, dtype: str, small: bool) -> tuple[float, str]:
    """(FLOP/s, "m x k x n") of the fastest of a few products on random data, each timed after its compile."""
    import jax

    shapes = [(512, 512, 512)] if small else [(8192, 8192, 8192), (4096, 8192, 8192), (8192, 8192, 16384)]
    rates = {}
    with jax.default_device(device):
        # Into float32 where the operands are FP8 (as jllm.quantization.fp8_dot), else in their own dtype.
        out = "float32" if "float8" in dtype else None
        mm = jax.jit(lambda x, y: jax.lax.dot(x, y, preferred_element_type=out))
        for m, k, n in shapes:
            a = jax.random.normal(jax.random.key(7), (m, k)).astype(dtype)
            b = jax.random.normal(jax.random.key(8), (k, n)).astype(dtype)
            rates[f"{m}x{k}x{n}"] = 2 * m * k * n / back_to_back(lambda a=a, b=b: mm(a, b))
            del a, b
    name = max(rates, key=rates.__getitem__)
    return rates[name], name


def back_to_back(fn: Callable[[], Any], calls: int = 20, rounds: int = 3) -> float:
    """Best seconds per call over ``rounds`` runs of ``calls`` queued calls with one wait at the end: the device's
    own time, without a host round trip per call (one device runs its calls in order)."""
    import jax

    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


# ---------------------------------------------------------------------------------------------------- models


def copy_tokenizer(out_dir: Path, src_dir: Path = TOKENIZER_DIR) -> None:
    for name in TOKENIZER_FILES:
        shutil.copy(src_dir / name, out_dir / name)


def write_dummy_model(out_dir: Path, config: dict[str, Any]) -> Path:
    """config.json only (weights come from ``load_format="dummy"``), plus a tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    copy_tokenizer(out_dir)
    return out_dir


def random_prompts(rng: np.random.Generator, lengths: list[int], vocab: int) -> list[list[int]]:
    """Uniform token ids past the char tokenizer's special ids (0-2), one prompt per length."""
    return [rng.integers(3, vocab, size=n).tolist() for n in lengths]


@dataclass(frozen=True)
class BenchModel:
    """The engine config a benchmark YAML gives and the model it names, read without starting JAX."""

    config_path: Path
    engine: Any  # jllm.config.EngineConfig
    model_dir: Path
    hf_config: dict[str, Any]
    dtype: str  # the engine's dtype, "auto" resolved: "bfloat16", "float32" ...
    overrides: dict[str, Any] = field(default_factory=dict)  # engine keys over the YAML's (--set)

    @property
    def vocab(self) -> int:
        return self.hf_config["vocab_size"]

    @property
    def max_model_len(self) -> int:
        return self.engine.model.max_model_len or self.hf_config["max_position_embeddings"]

    def roofline(
        self, input_lens: list[int], output_lens: list[int], max_num_seqs: int, ceilings: dict[str, Any]
    ) -> dict[str, Any]:
        """``generation_roofline`` of this model and engine config."""
        return generation_roofline(
            self.shape, input_lens, output_lens,
            max_num_seqs=max_num_seqs, max_num_batched_tokens=self.engine.scheduler.max_num_batched_tokens,
            ceilings=ceilings, tensor_parallel_size=self.engine.parallel.tensor_parallel_size,
        )  # fmt: skip

    @property
    def shape(self) -> ModelShape:
        """What a step moves and computes, with the YAML's quantization and KV cache dtype."""
        e = self.engine
        return ModelShape.from_hf_config(self.hf_config, self.dtype, e.model.quantization, e.cache.kv_cache_dtype)

    def describe(self, same_weights: bool) -> str:
        e, c = self.engine, self.hf_config
        weights = (
            "transformers' random weights (--same-weights)" if same_weights else f"load_format {e.model.load_format}"
        )
        return (
            f"config {self.config_path}: model {self.model_dir} ({c['num_hidden_layers']} layers, hidden "
            f"{c['hidden_size']}, vocab {c['vocab_size']}), {self.dtype}, {weights}, max_model_len "
            f"{e.model.max_model_len}, max_num_seqs {e.scheduler.max_num_seqs}, max_num_batched_tokens "
            f"{e.scheduler.max_num_batched_tokens}, TP {e.parallel.tensor_parallel_size}, quantization "
            f"{e.model.quantization or 'none'}, KV cache {e.cache.kv_cache_dtype}"
            + "".join(f", --set {key}={value}" for key, value in self.overrides.items())
        )


def load_bench_model(config_path: Path, overrides: dict[str, Any] | None = None) -> BenchModel:
    """The YAML's engine config with ``overrides`` (engine keys) over it. A relative ``model:`` path resolves against
    the working directory, as everywhere in jllm."""
    from jllm.config import load_config
    from jllm.loader import resolve_dtype
    from jllm.model_source import resolve_model

    overrides = overrides or {}
    engine = load_config(config_path, **overrides)
    model_dir = resolve_model(engine.model.model)
    hf_config = json.loads((model_dir / "config.json").read_text())
    dtype = np.dtype(resolve_dtype(engine.model.dtype, hf_config)).name
    return BenchModel(Path(config_path), engine, model_dir, hf_config, dtype, overrides)


def start_jllm(bench: BenchModel, overrides: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """jllm's part starts here, after transformers' (see the module's docstring): the machine, the device ceilings,
    then ``LLM`` from the benchmark's YAML, its ``--set`` keys and ``overrides``. Returns it and those facts, start-up
    seconds (load + compiling every step bucket) included."""
    from jllm import LLM, distributed

    distributed.initialize(bench.engine.parallel)  # under jax.distributed, before the facts touch a device
    facts = {"environment": environment(), "ceilings": device_ceilings(bench.dtype, fp8=bench.shape.fp8_matmuls)}
    start = time.perf_counter()
    llm = LLM(config=bench.config_path, **{**bench.overrides, **overrides})
    facts["jllm_startup_s"] = time.perf_counter() - start
    print(f"jllm (start-up {facts['jllm_startup_s']:.1f} s):", flush=True)
    return llm, facts


def add_common_args(parser: argparse.ArgumentParser) -> None:
    default = Path("configs/llama3-8b-h200.yaml")
    parser.add_argument("--config", type=Path, default=default, help=f"engine YAML (default {default})")
    parser.add_argument("--seed", type=int, default=0, help="seeds the prompts and transformers' weights")
    parser.add_argument("--skip-hf", action="store_true", help="no transformers baseline")
    parser.add_argument("--same-weights", action="store_true",
                        help="jllm loads transformers' random weights (a checkpoint write: 16 GB for the 8B) instead "
                             "of the YAML's load_format, and their greedy tokens are compared")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an engine key over the YAML's (repeat): --set kv_cache_dtype=fp8")  # fmt: skip


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, BenchModel]:
    args = parser.parse_args(argv)
    if args.same_weights and args.skip_hf:
        parser.error("--same-weights needs the transformers baseline: drop --skip-hf")
    return args, load_bench_model(args.config, engine_overrides(parser, args.set))


def engine_overrides(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as engine keys, each value read as YAML (``null``, ``512``, ``fp8``)."""
    import yaml

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    return overrides


def write_json(path: Path | None, result: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=str))


def jllm_generator(llm: Any) -> Generate:
    """Greedy with ``ignore_eos``: EOS neither stops a sequence nor is banned, so every token is the argmax."""
    from jllm import SamplingParams

    def generate(prompts: list[list[int]], lengths: list[int]) -> list[list[int]]:
        params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in lengths]
        tokens = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
        assert [len(t) for t in tokens] == list(lengths), "a jllm request stopped early"
        return tokens

    return generate


# ---------------------------------------------------------------------------------------------------- transformers


def load_hf_model(source: Path | dict[str, Any], dtype: str, device: str = "cpu", seed: int = 0) -> Any:
    """A transformers causal LM in eval mode: a checkpoint directory, or random weights (seeded, made on
    ``device``) for a config.json's dict."""
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    if device == "cuda":
        # cuDNN's attention builds a plan per new sequence length: on an H100 that made generate 25-80 ms a step on
        # fresh lengths against 3-4 ms with the flash / memory-efficient kernels, which have no such cost.
        torch.backends.cuda.enable_cudnn_sdp(False)
    if isinstance(source, Path):
        model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype))
        return model.to(device).eval()
    torch.manual_seed(seed)
    config = transformers.AutoConfig.for_model(**source)
    with torch.device(device):
        return transformers.AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).eval()


def save_hf_model(model: Any, out_dir: Path) -> Path:
    """The model as safetensors plus the tokenizer, so jllm can load the very same weights."""
    model.save_pretrained(out_dir, safe_serialization=True)
    copy_tokenizer(out_dir)
    return out_dir


def run_baseline(
    args: argparse.Namespace, bench: BenchModel, tmp: Path, measure: Callable[[Generate], Any]
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """transformers' part of a benchmark, in a child process that exits before this one starts JAX: random weights
    of the benchmark's config (on CUDA in the engine's dtype, on the CPU in float32), ``measure(generate)`` on them
    (``measure`` must pickle: a module-level function or a ``functools.partial`` of one). Returns (what was measured
    and how; None under ``--skip-hf``) and the engine overrides that make jllm load the same weights under
    ``--same-weights`` (saved into ``tmp``)."""
    if args.skip_hf:
        return None, {}
    save_to = tmp / "hf" if args.same_weights else None
    spawn = multiprocessing.get_context("spawn")  # a fork would share this process's state; spawn starts clean
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        info = pool.submit(_baseline, bench.hf_config, bench.dtype, args.seed, save_to, measure).result()
    overrides = {"model": str(save_to), "load_format": "auto"} if save_to else {}
    return info, overrides


def _baseline(
    hf_config: dict[str, Any], dtype: str, seed: int, save_to: Path | None, measure: Callable[[Generate], Any]
) -> dict[str, Any]:
    """``run_baseline``'s child: build, optionally save, measure."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = dtype if device == "cuda" else "float32"
    model = load_hf_model(hf_config, dtype, device, seed=seed)
    if save_to is not None:
        save_hf_model(model, save_to)
    info = {"device": device, "dtype": dtype, "attn_implementation": model.config._attn_implementation,
            "process": "its own (a child that exits before jllm starts)"}  # fmt: skip
    print(f"transformers ({device}, {dtype}, attention {info['attn_implementation']}, own process):", flush=True)
    info["results"] = measure(hf_generator(model))
    return info


def hf_generate(model: Any, prompts: list[list[int]], new_tokens: int, **kwargs: Any) -> list[list[int]]:
    """transformers' greedy ``generate`` on one batch, left-padded with an attention mask; ``new_tokens`` for every
    prompt (the batch runs as long as its longest), ``kwargs`` go to ``generate``: with ``max_time`` it may stop
    sooner, and returns the tokens made until then."""
    import torch

    pad_id = model.config.pad_token_id
    if pad_id is None:
        eos = model.config.eos_token_id
        pad_id = (eos[0] if isinstance(eos, list) else eos) or 0
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=model.device)  # [B, width]
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)  # [B, width]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens, pad_token_id=pad_id,
            temperature=None, top_p=None, top_k=None, **kwargs,
        )  # fmt: skip
    made = out.shape[1] - width
    assert made == new_tokens or kwargs.get("max_time"), f"transformers stopped after {made} of {new_tokens}"
    return out[:, width:].tolist()  # .tolist() waits for the device


def hf_generator(model: Any) -> Generate:
    """Greedy to the last token as jllm's ``ignore_eos`` is: no EOS stops a sequence, and none is banned."""
    model.generation_config.eos_token_id = None

    def generate(prompts: list[list[int]], lengths: list[int], max_time: float | None = None) -> list[list[int]]:
        """``max_time``: seconds after which transformers stops the batch (each row then has what it made)."""
        extra = {} if max_time is None else {"max_time": max_time}
        return [t[:n] for t, n in zip(hf_generate(model, prompts, max(lengths), **extra), lengths, strict=True)]

    return generate


def agreement(jllm_tokens: list[list[int]], hf_tokens: list[list[int]]) -> dict[str, Any]:
    """Exact-match count, and the mean fraction of output tokens before the first difference."""
    exact = sum(a == b for a, b in zip(jllm_tokens, hf_tokens, strict=True))
    prefix = []
    for a, b in zip(jllm_tokens, hf_tokens, strict=True):
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        prefix.append(same / max(len(b), 1))
    return dict(exact=exact, prompts=len(hf_tokens), mean_common_prefix=float(np.mean(prefix)))


# ---------------------------------------------------------------------------------------------------- jllm profile


class PartTimer:
    """Accumulates the wall time and calls of named parts by wrapping methods (or module functions) in place;
    ``unwrap`` puts the originals back."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self._undo: list[tuple[Any, str, Any]] = []

    def wrap(self, obj: Any, attr: str, part: str, note: Callable[..., None] | None = None) -> None:
        """Times ``obj.attr`` as ``part``; ``note`` sees each call's arguments first."""
        fn = getattr(obj, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if note is not None:
                note(*args, **kwargs)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start
                self.calls[part] += 1

        self._undo.append((obj, attr, obj.__dict__.get(attr)))  # an instance's method is its class's: no own entry
        setattr(obj, attr, timed)

    def unwrap(self) -> None:
        for obj, attr, own in reversed(self._undo):
            if own is None:
                del obj.__dict__[attr]
            else:
                setattr(obj, attr, own)
        self._undo.clear()


@dataclass
class StepTimes:
    """Where jllm's wall time goes, accumulated by wrapping the engine's and its runner's public step methods during
    the timed run."""

    timer: PartTimer = field(default_factory=PartTimer)
    buckets: collections.Counter = field(default_factory=collections.Counter)

    def wrap(self, engine: Any) -> None:
        """Times ``engine.step``, ``runner.plan`` (the step's NumPy batch), ``runner.launch`` (its transfer and the
        programs' dispatch) and ``runner.collect`` (waiting for the device, unpacking the tokens), counting the
        buckets used."""
        runner = engine.runner
        self.timer.wrap(engine, "step", "step")
        self.timer.wrap(runner, "plan", "build")
        self.timer.wrap(runner, "launch", "launch", note=self._count_bucket)
        self.timer.wrap(runner, "collect", "collect")

    def _count_bucket(self, output: Any, plan: Any, before_sampling: Any = None) -> None:
        """``plan``: the launched ``jllm.step_inputs.StepPlan`` (``before_sampling``: a grammar step's callback, whose
        time, taking the previous step's tokens, counts in "launch")."""
        self.buckets[f"{plan.bucket.num_tokens}x{plan.bucket.num_seqs}"] += 1

    def unwrap(self) -> None:
        self.timer.unwrap()

    def summary(self) -> dict:
        s, steps = self.timer.seconds, self.timer.calls["step"]
        return dict(
            steps=steps, step_ms=1e3 * s["step"] / max(steps, 1), build_inputs_s=s["build"],
            dispatch_s=s["launch"], wait_s=s["collect"],
            engine_host_s=s["step"] - s["build"] - s["launch"] - s["collect"], buckets=dict(self.buckets),
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------------- roofline


@dataclass(frozen=True)
class ModelShape:
    """What generation must move and compute, from a Llama-family config.json (dense, GQA, gated MLP)."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    q_heads: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int  # embeddings, norms, LM head (and everything when nothing is quantized)
    linear_bytes: int | None = None  # the decoder linears' weights (1 with int8 / fp8); None: dtype_bytes
    kv_dtype_bytes: int | None = None  # the KV pool's element (1 with an fp8 cache); None: dtype_bytes
    fp8_matmuls: bool = False  # prefill steps multiply FP8 x FP8 (quantization fp8), at the FP8 matmul rate

    @classmethod
    def from_hf_config(
        cls, cfg: dict[str, Any], dtype: str, quantization: str | None = None, kv_cache_dtype: str = "auto"
    ) -> ModelShape:
        heads = cfg["num_attention_heads"]
        return cls(
            layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"], intermediate=cfg["intermediate_size"],
            vocab=cfg["vocab_size"], q_heads=heads, kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads, dtype_bytes=np.dtype(dtype).itemsize,
            linear_bytes=1 if quantization else None, kv_dtype_bytes=1 if kv_cache_dtype.startswith("fp8") else None,
            fp8_matmuls=quantization == "fp8",
        )  # fmt: skip

    @property
    def linear_params(self) -> int:
        """The decoder layers' linear weights (q, k, v, o; gate, up, down): what quantization shrinks."""
        attention = self.hidden * self.head_dim * 2 * (self.q_heads + self.kv_heads)  # q, o; k, v
        return self.layers * (attention + 3 * self.hidden * self.intermediate)

    @property
    def streamed_params(self) -> int:
        """Parameters every step reads: all but the input embedding, of which a step reads only its tokens' rows
        (the LM head counts once, tied or not). Each is also one multiply-add per token."""
        return self.linear_params + self.layers * 2 * self.hidden + self.hidden + self.vocab * self.hidden

    @property
    def streamed_bytes(self) -> int:
        """Bytes of ``streamed_params`` (per-channel scales of quantized weights left out: < 0.1 %)."""
        linear = self.dtype_bytes if self.linear_bytes is None else self.linear_bytes
        return self.linear_params * linear + (self.streamed_params - self.linear_params) * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        kv = self.dtype_bytes if self.kv_dtype_bytes is None else self.kv_dtype_bytes
        return 2 * self.layers * self.kv_heads * self.head_dim * kv

    @property
    def attention_flops_per_pair(self) -> int:
        """QK^T and PV for one (query token, context token) pair, all layers and heads."""
        return 4 * self.layers * self.q_heads * self.head_dim


def _rates(shape: ModelShape, ceilings: dict[str, Any], tensor_parallel_size: int) -> tuple[float, float, float]:
    """(bytes/s, FLOP/s, the linears' FLOP/s: FP8 x FP8 with fp8 matmuls) of ``tensor_parallel_size`` devices."""
    bw = ceilings["copy_gbps_dev0"] * 1e9 * tensor_parallel_size
    rate = ceilings["matmul_tflops_dev0"] * 1e12 * tensor_parallel_size
    fp8_rate = ceilings.get("matmul_fp8_tflops_dev0") if shape.fp8_matmuls else None
    return bw, rate, fp8_rate * 1e12 * tensor_parallel_size if fp8_rate else rate


def generation_roofline(
    shape: ModelShape,
    input_lens: list[int],
    output_lens: list[int],
    *,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    ceilings: dict[str, Any],
    tensor_parallel_size: int = 1,
) -> dict[str, Any]:
    """The fastest these prompts could be served: prefill and decode each take the longer of bytes / copy bandwidth
    and FLOPs / matmul rate; nothing else costs time (no launch, host or all-reduce time).

    Prefill reads the weights once per ``max_num_batched_tokens`` chunk and writes every prompt token's KV; its
    first token is the TTFT. Decode needs at least ``max(output) - 1`` steps, and at least ``sum(output - 1) /
    max_num_seqs``; each step reads the weights once, and every sequence reads its whole KV so far.
    """
    bw, rate, linear_rate = _rates(shape, ceilings, tensor_parallel_size)
    weights, kv, params = shape.streamed_bytes, shape.kv_bytes_per_token, shape.streamed_params
    prompt = sum(input_lens)
    prefill_bytes = math.ceil(prompt / max_num_batched_tokens) * weights + prompt * kv
    causal_pairs = sum(n * (n + 1) // 2 for n in input_lens)
    # Prefill's time at the FLOP ceiling: the linears at their rate (FP8 x FP8 with fp8), the rest at the model
    # dtype's; expressed as the FLOPs the model-dtype rate would take the same time for.
    prefill_flops = 2 * shape.linear_params * prompt * rate / linear_rate
    prefill_flops += 2 * (params - shape.linear_params) * prompt + shape.attention_flops_per_pair * causal_pairs
    decode_tokens = sum(o - 1 for o in output_lens)
    steps = max(max(output_lens) - 1, math.ceil(decode_tokens / max_num_seqs))
    context = sum((o - 1) * i + (o - 1) * o // 2 for i, o in zip(input_lens, output_lens, strict=True))
    decode_bytes = steps * weights + (context + decode_tokens) * kv
    decode_flops = 2 * params * decode_tokens + shape.attention_flops_per_pair * context
    prefill_s = max(prefill_bytes / bw, prefill_flops / rate)
    decode_s = max(decode_bytes / bw, decode_flops / rate)
    return {
        "ttft_ms": 1e3 * prefill_s,
        "tpot_ms": 1e3 * decode_s / steps if steps else None,
        "output_tokens_per_s": sum(output_lens) / (prefill_s + decode_s),
        "total_tokens_per_s": (prompt + sum(output_lens)) / (prefill_s + decode_s),
        "prefill_s": prefill_s, "decode_s": decode_s, "decode_steps": steps,
        "prefill_bound": "compute" if prefill_flops / rate > prefill_bytes / bw else "memory",
        "decode_bound": "compute" if decode_flops / rate > decode_bytes / bw else "memory",
        "streamed_weight_bytes": weights, "kv_bytes_per_token": kv,
    }  # fmt: skip


def serving_roofline(
    shape: ModelShape,
    concurrency: int,
    input_len: int,
    output_len: int,
    ceilings: dict[str, Any],
    tensor_parallel_size: int = 1,
) -> dict[str, Any]:
    """The least TPOT a server can hold with ``concurrency`` requests of ``input_len`` in / ``output_len`` out always
    in flight (a closed loop: ``bench_serving --max-concurrency``), and the output rate that gives.

    In steady state each step decodes one token of every request (each, on average, ``output_len / 2`` tokens into
    its output) and carries the prompt tokens of the requests that replace finished ones, ``concurrency * input_len /
    output_len`` of them on average, however the scheduler chunks them: however prefill is spread, a step cannot be
    lighter than that. The step reads the weights and the decodes' KV and writes the new tokens' KV (chunks reading
    their own prompt's earlier KV left out: under 1 % at 1024 / 128), computes the linears over all its tokens, the
    LM head over the sampled rows and attention over each token's context; it takes the longer of bytes / copy
    bandwidth and FLOPs / matmul rate, as ``generation_roofline``'s steps. TTFT's floor: one prompt prefilled alone.
    """
    bw, rate, linear_rate = _rates(shape, ceilings, tensor_parallel_size)
    linear_flops = 2 * shape.linear_params * rate / linear_rate  # a token's, at the model dtype's rate (as above)
    head_flops = 2 * shape.vocab * shape.hidden
    prefill_tokens = concurrency * input_len / output_len
    decode_context = concurrency * (input_len + output_len / 2)
    step_bytes = shape.streamed_bytes + shape.kv_bytes_per_token * (decode_context + prefill_tokens)
    step_flops = linear_flops * (concurrency + prefill_tokens) + head_flops * concurrency
    step_flops += shape.attention_flops_per_pair * (decode_context + prefill_tokens * input_len / 2)
    tpot_s = max(step_bytes / bw, step_flops / rate)
    prompt_flops = linear_flops * input_len + head_flops
    prompt_flops += shape.attention_flops_per_pair * input_len * (input_len + 1) / 2
    ttft_s = max((shape.streamed_bytes + shape.kv_bytes_per_token * input_len) / bw, prompt_flops / rate)
    return {
        "tpot_ms": 1e3 * tpot_s,
        "ttft_ms": 1e3 * ttft_s,
        "output_tokens_per_s": concurrency / tpot_s,
        "step_tokens": concurrency + prefill_tokens,
        "step_bound": "compute" if step_flops / rate > step_bytes / bw else "memory",
        "step_gb": step_bytes / 1e9,
        "step_tflop": step_flops / 1e12,
    }

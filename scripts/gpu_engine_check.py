"""The engine's first run on a GPU, in one process: greedy agreement of the attention backends, then speed.

1. A random-weight Llama (hidden 1024, 8 layers, 16 query / 4 KV heads of 64, vocab 32000) saved by transformers
   as bf16 safetensors, with the character-level tokenizer the CLI tests build (the engine loads a tokenizer).
   Greedy, 32 tokens, EOS ignored, 8 random token-id prompts of mixed lengths, run in float32 (matmuls at
   "highest" precision, so only attention differs): attention_backend "reference" against "pallas", and with two
   or more devices, pallas at tensor_parallel_size=2 against 1. Per prompt: identical or the first differing
   output position, with the reference's top-1/top-2 logprob gap there (a near-tie flips on rounding alone).
2. A Llama-3-8B-shaped model (config.json only, ``load_format="dummy"``, bf16): start-up time (load + compiling
   every step bucket), batch-1 time per output token ((generate 128 tokens - generate 1 token) / 127, prompt 128)
   and offline throughput of 64 prompts x 128 tokens -> 128 new tokens; at TP=1, and TP=2 where two devices are
   and the time budget allows. Beside them, same process: device copy bandwidth (jitted ``x + 1`` of a 4 GB bf16
   array, read + write counted) and a bf16 matmul rate, and the rooflines they give.

    PYTHONPATH=. JLLM_CACHE=/tmp/jc python scripts/gpu_engine_check.py      # on the GPU machine; JSON to $OUT
    XLA_FLAGS=--xla_force_host_platform_device_count=2 PYTHONPATH=. python scripts/gpu_engine_check.py --smoke
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts")]

SMALL_CONFIG = dict(
    vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
    num_key_value_heads=4, head_dim=64, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
    tie_word_embeddings=False,
)  # fmt: skip
LLAMA3_8B_CONFIG = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256, hidden_size=4096,
    intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
    rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192, torch_dtype="bfloat16",
    tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
)  # fmt: skip
# --smoke: the same code paths with shapes a CPU runs in seconds.
SMOKE_SMALL = {
    **SMALL_CONFIG, "vocab_size": 256, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512,
}  # fmt: skip
SMOKE_BIG = {
    **LLAMA3_8B_CONFIG, "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32, "max_position_embeddings": 512,
}  # fmt: skip
TOKENIZER_VOCAB = 32000  # the char tokenizer's ids; ids past it (the 8B's vocabulary) decode to nothing


# ---------------------------------------------------------------------------------------------------- environment


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "numpy", "transformers", "torch", "tokenizers", "triton", "gguf"):
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception:  # noqa: BLE001 - a missing package is a fact to record, not an error
            out[name] = "not installed"
    return out


def nvidia_smi() -> str | None:
    try:
        q = "name,driver_version,memory.total,clocks.max.sm"
        res = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)  # fmt: skip
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Report:
    """The results so far, rewritten to JSON after every phase so that a run cut off still leaves them."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict[str, Any] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data, indent=1, default=str))


def phase(report: Report, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Runs one phase; an exception is recorded with its traceback and the script goes on with the next."""
    print(f"\n=== {name} ({time.strftime('%H:%M:%S')})", flush=True)
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - every phase is attempted; the failure is the result
        tb = traceback.format_exc()
        print(tb, flush=True)
        result = {"error": f"{type(e).__name__}: {e}", "traceback": tb}
    result["phase_s"] = round(time.perf_counter() - start, 2)
    gc.collect()
    result["live_bytes_after_phase"] = live_bytes()
    report[name] = result
    print(json.dumps({k: v for k, v in result.items() if k != "traceback"}, default=str)[:3000], flush=True)
    return result


def live_bytes() -> int:
    return sum(x.nbytes for x in jax.live_arrays())


# ---------------------------------------------------------------------------------------------------- models


def save_tokenizer(out_dir: Path, vocab: int) -> None:
    from test_cli import save_char_tokenizer  # tests/test_cli.py: the CLI tests' character-level tokenizer

    save_char_tokenizer(out_dir, vocab)


def build_small_checkpoint(out_dir: Path, config: dict[str, Any]) -> Path:
    """Random transformers Llama, saved as bf16 safetensors, with a tokenizer."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).to(torch.bfloat16).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    save_tokenizer(out_dir, min(config["vocab_size"], TOKENIZER_VOCAB))
    return out_dir


def write_dummy_model(out_dir: Path, config: dict[str, Any]) -> Path:
    """config.json only (weights come from ``load_format="dummy"``), plus a tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    save_tokenizer(out_dir, min(config["vocab_size"], TOKENIZER_VOCAB))
    return out_dir


def random_prompts(rng: np.random.Generator, lengths: list[int], vocab: int) -> list[list[int]]:
    return [rng.integers(3, vocab, size=n).tolist() for n in lengths]


def start_engine(model_dir: Path, **keys: Any) -> tuple[Any, dict[str, Any]]:
    """``LLM(model_dir, **keys)``, timed as a whole and split into weight loading and bucket compilation."""
    from jllm import LLM, engine, runner

    times: dict[str, float] = {}
    load, warmup = engine.load_model, runner.ModelRunner.warmup

    def timed_load(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        out = load(*a, **kw)
        jax.block_until_ready(jax.tree.leaves(nnx_state(out.model)))
        times["load_s"] = time.perf_counter() - t
        return out

    def timed_warmup(self: Any, *a: Any, **kw: Any) -> None:
        t = time.perf_counter()
        warmup(self, *a, **kw)
        times["compile_s"] = time.perf_counter() - t

    engine.load_model, runner.ModelRunner.warmup = timed_load, timed_warmup
    try:
        start = time.perf_counter()
        llm = LLM(str(model_dir), **keys)
        times["startup_s"] = time.perf_counter() - start
    finally:
        engine.load_model, runner.ModelRunner.warmup = load, warmup
    eng = llm.engine
    info = {
        "keys": keys,
        **{k: round(v, 2) for k, v in times.items()},
        "buckets": len(eng.runner.buckets),
        "compilations": eng.runner.num_compilations,
        "num_pages": eng.block_manager.num_pages,
        "backend": eng.runner.attention_backend,
        "weight_bytes_per_device": weight_bytes(eng, per_device=True),
        "weight_bytes": weight_bytes(eng, per_device=False),
        "pool_copies_in_first_program": pool_copies(eng),
        "memory_dev0": {k: v for k, v in (jax.devices()[0].memory_stats() or {}).items() if k in MEM_KEYS},
    }
    print(f"engine up: {info}", flush=True)
    return llm, info


MEM_KEYS = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")


def pool_copies(eng: Any) -> int:
    """Copies of a whole KV-pool shard in the first compiled step program (the donated pool should be updated in
    place: any such copy costs a pass over the pool every step)."""
    kv = eng.runner.kv_caches[0]
    shard = kv.addressable_shards[0].data.shape
    pattern = "[" + ",".join(str(n) for n in shard) + "]"
    text = next(iter(eng.runner._compiled.values())).as_text()
    return sum(1 for line in text.splitlines() if " copy(" in line and pattern in line)


def nnx_state(model: Any) -> Any:
    from flax import nnx

    return nnx.state(model)


def weight_bytes(eng: Any, per_device: bool, skip_embedding: bool = False) -> int:
    """Parameter bytes (one device's shards, or the whole arrays); optionally without the input embedding, of which
    a decode step reads only its tokens' rows."""
    from flax import nnx

    total = 0
    for path, var in nnx.to_flat_state(nnx.state(eng.loaded.model)):
        if skip_embedding and "embed_tokens" in (str(p) for p in path):
            continue
        x = var.get_value()
        total += x.addressable_shards[0].data.nbytes if per_device else x.nbytes
    return total


def stop_engine(llm: Any) -> None:
    llm.engine.runner.kv_caches = None
    del llm
    gc.collect()


# ---------------------------------------------------------------------------------------------------- phase 1


def greedy(llm: Any, prompts: list[list[int]], max_tokens: int) -> list[dict[str, Any]]:
    """Greedy tokens and, per position, the gap between the top-1 and top-2 logprobs."""
    from jllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, logprobs=2)
    out = []
    for o in llm.generate(prompts, params, use_tqdm=False):
        c = o.outputs[0]
        gaps = []
        for entry in c.logprobs or []:
            top = sorted((lp.logprob for lp in entry.values() if lp.rank in (1, 2)), reverse=True)
            gaps.append(top[0] - top[1] if len(top) == 2 else None)
        out.append({"ids": list(c.token_ids), "gaps": gaps, "finish": c.finish_reason})
    return out


def compare(base: list[dict[str, Any]], other: list[dict[str, Any]]) -> dict[str, Any]:
    per_prompt = []
    for a, b in zip(base, other, strict=True):
        diff = next((i for i, (x, y) in enumerate(zip(a["ids"], b["ids"], strict=False)) if x != y), None)
        if diff is None and len(a["ids"]) != len(b["ids"]):
            diff = min(len(a["ids"]), len(b["ids"]))
        gap = a["gaps"][diff] if diff is not None and diff < len(a["gaps"]) else None
        per_prompt.append({"identical": diff is None, "first_diff": diff, "ref_top2_gap_at_diff": gap,
                           "len": len(b["ids"])})  # fmt: skip
    return {"identical": sum(p["identical"] for p in per_prompt), "prompts": len(per_prompt), "per_prompt": per_prompt}


def correctness(args: argparse.Namespace, model_dir: Path, report: Report) -> None:
    rng = np.random.default_rng(1)
    lengths = [3, 9, 16, 31, 64, 97, 150, 255] if not args.smoke else [5, 40]
    prompts = random_prompts(rng, lengths, SMALL_CONFIG["vocab_size"] if not args.smoke else SMOKE_SMALL["vocab_size"])
    keys = dict(dtype="float32", max_model_len=512, max_num_seqs=8, max_num_batched_tokens=64, num_pages=256)
    candidate = "reference" if args.smoke else "pallas"
    runs: dict[str, list[dict[str, Any]]] = {}

    def run(name: str, **extra: Any) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            with jax.default_matmul_precision("highest"):
                llm, info = start_engine(model_dir, **keys, **extra)
                try:
                    t = time.perf_counter()
                    runs[name] = greedy(llm, prompts, args.max_tokens)
                    info["generate_s"] = round(time.perf_counter() - t, 2)
                finally:
                    stop_engine(llm)
            info["tokens"] = [r["ids"] for r in runs[name]]
            return info

        return go

    phase(report, "small_f32_reference_tp1", run("ref", attention_backend="reference"))
    phase(report, f"small_f32_{candidate}_tp1", run("cand", attention_backend=candidate))
    if len(jax.devices()) >= 2:
        phase(
            report, f"small_f32_{candidate}_tp2", run("cand_tp2", attention_backend=candidate, tensor_parallel_size=2)
        )
    summary: dict[str, Any] = {"prompt_lengths": lengths, "max_tokens": args.max_tokens}
    if "ref" in runs and "cand" in runs:
        summary[f"{candidate}_vs_reference"] = compare(runs["ref"], runs["cand"])
    if "cand" in runs and "cand_tp2" in runs:
        summary[f"tp2_vs_tp1_{candidate}"] = compare(runs["cand"], runs["cand_tp2"])
    report["small_agreement"] = summary
    print(json.dumps(summary, default=str), flush=True)


# ---------------------------------------------------------------------------------------------------- phase 2


def timed(fn: Callable[[], Any], iters: int) -> list[float]:
    jax.block_until_ready(fn())
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t)
    return out


def device_ceilings(args: argparse.Namespace) -> dict[str, Any]:
    """Copy bandwidth of every device (read + write counted) and a bf16 matmul rate on device 0."""
    rows, cols = (32768, 61440) if not args.smoke else (256, 32768)  # 4.03 GB of bf16 (16.8 MB for --smoke)
    result: dict[str, Any] = {"copy_bytes": rows * cols * 2}
    for i, dev in enumerate(jax.devices()[: args.tp_max]):
        with jax.default_device(dev):
            x = jax.random.uniform(jax.random.key(i), (rows, cols), jnp.bfloat16)
            copy = jax.jit(lambda a: a + 1)
            ts = timed(lambda x=x, copy=copy: copy(x), 10)
            del x
        result[f"copy_gbps_dev{i}"] = round(2 * rows * cols * 2 / statistics.median(ts) / 1e9, 1)
    n = 8192 if not args.smoke else 256
    with jax.default_device(jax.devices()[0]):
        a = jax.random.normal(jax.random.key(7), (n, n), jnp.bfloat16)
        b = jax.random.normal(jax.random.key(8), (n, n), jnp.bfloat16)
        mm = jax.jit(lambda x, y: x @ y)
        ts = timed(lambda a=a, b=b: mm(a, b), 20)
        del a, b
    result["matmul_tflops_dev0"] = round(2 * n**3 / statistics.median(ts) / 1e12, 1)
    gc.collect()
    return result


def speed(args: argparse.Namespace, model_dir: Path, tp: int, batched_tokens: int, ceilings: dict[str, Any]) -> dict:
    from bench_offline import StepTimes

    from jllm import SamplingParams

    cfg = SMOKE_BIG if args.smoke else LLAMA3_8B_CONFIG
    prompt_len, new = (16, 16) if args.smoke else (128, 128)
    num_prompts = 8 if args.smoke else 64
    max_seqs = 8 if args.smoke else 64
    rng = np.random.default_rng(100 + tp)
    vocab = cfg["vocab_size"]
    before = live_bytes()
    llm, info = start_engine(
        model_dir, load_format="dummy", dtype="bfloat16", attention_backend="reference" if args.smoke else "pallas",
        max_model_len=256 if args.smoke else 2048, max_num_seqs=max_seqs, max_num_batched_tokens=batched_tokens,
        tensor_parallel_size=tp, gpu_memory_utilization=0.85,
    )  # fmt: skip
    info["live_bytes_before_start"] = before
    try:
        greedy_n = lambda n: SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)  # noqa: E731

        def gen(prompts: list[list[int]], n: int) -> float:
            t = time.perf_counter()
            outs = llm.generate(prompts, greedy_n(n), use_tqdm=False)
            wall = time.perf_counter() - t
            assert all(len(o.outputs[0].token_ids) == n for o in outs), "a request stopped early"
            return wall

        gen(random_prompts(rng, [prompt_len], vocab), 8)  # warm-up
        one, full = [], []
        for _ in range(args.repeats):
            one.append(gen(random_prompts(rng, [prompt_len], vocab), 1))
            full.append(gen(random_prompts(rng, [prompt_len], vocab), new))
        tpot = [(f - o) / (new - 1) for f, o in zip(full, one, strict=True)]
        info["batch1"] = {"prompt": prompt_len, "new_tokens": new, "gen1_s": one, "gen_full_s": full,
                          "tpot_ms": [round(1e3 * t, 3) for t in tpot],
                          "tpot_ms_median": round(1e3 * statistics.median(tpot), 3)}  # fmt: skip

        gen(random_prompts(rng, [prompt_len] * num_prompts, vocab), 2)  # warm-up of the batch shapes
        runs = []
        for _ in range(2):
            times = StepTimes()
            times.wrap(llm.engine)
            wall = gen(random_prompts(rng, [prompt_len] * num_prompts, vocab), new)
            for attr in ("step",):
                llm.engine.__dict__.pop(attr, None)
            for attr in ("execute", "_build_inputs"):
                llm.engine.runner.__dict__.pop(attr, None)
            runs.append({"wall_s": round(wall, 3), "tokens_per_s": round(num_prompts * new / wall, 1),
                         "profile": times.summary()})  # fmt: skip
        info["throughput"] = {"prompts": num_prompts, "prompt": prompt_len, "new_tokens": new, "runs": runs,
                              "tokens_per_s_best": max(r["tokens_per_s"] for r in runs)}  # fmt: skip

        # Rooflines from this process's own ceilings (device 0's copy bandwidth; TP's all-reduces not counted).
        bw = ceilings.get("copy_gbps_dev0", 0) * 1e9
        rate = ceilings.get("matmul_tflops_dev0", 0) * 1e12
        streamed = weight_bytes(llm.engine, per_device=True, skip_embedding=True)
        args_ = llm.engine.loaded.args
        kv_token = 2 * args_.num_layers * args_.num_kv_heads * args_.head_dim * 2 // tp  # bf16 K+V per device
        roof: dict[str, Any] = {"streamed_weight_bytes_per_device": streamed, "kv_bytes_per_token_per_device": kv_token}
        if bw and rate:
            roof["batch1_tpot_ms"] = round(1e3 * streamed / bw, 3)
            decode_s = sum(
                (streamed + num_prompts * (prompt_len + k) * kv_token) / bw for k in range(1, new)
            )  # 127 decode steps, each reads the weights once and every sequence's KV so far
            flops = 2 * (weight_bytes(llm.engine, per_device=False, skip_embedding=True) / 2) * num_prompts * prompt_len
            prefill_s = flops / tp / rate
            roof["throughput_tokens_per_s"] = round(num_prompts * new / (decode_s + prefill_s), 1)
            roof["throughput_parts_s"] = {"decode": round(decode_s, 4), "prefill": round(prefill_s, 4)}
        info["roofline"] = roof
        info["batch1"]["pct_of_roofline"] = (
            round(100 * roof["batch1_tpot_ms"] / info["batch1"]["tpot_ms_median"], 1)
            if "batch1_tpot_ms" in roof
            else None
        )
        info["throughput"]["pct_of_roofline"] = (
            round(100 * info["throughput"]["tokens_per_s_best"] / roof["throughput_tokens_per_s"], 1)
            if "throughput_tokens_per_s" in roof
            else None
        )
    finally:
        stop_engine(llm)
    return info


# ---------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models, reference backend, 2 prompts (CPU)")
    parser.add_argument("--max-tokens", type=int, default=32, help="greedy tokens per prompt in the agreement check")
    parser.add_argument("--repeats", type=int, default=3, help="batch-1 measurements (median reported)")
    parser.add_argument("--batched-tokens", type=int, default=2048, help="max_num_batched_tokens of the 8B runs")
    parser.add_argument(
        "--fallback-batched-tokens",
        type=int,
        default=1024,
        help="used for TP=2 when the TP=1 start-up says the default would not fit the budget",
    )
    parser.add_argument("--budget-s", type=float, default=480.0, help="skip the TP=2 8B run past this (whole script)")
    parser.add_argument("--tp-max", type=int, default=2, help="largest tensor_parallel_size tried")
    parser.add_argument("--skip", default="", help="comma list of phases to skip: small, big, tp2")
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                        help="folder for gpu_engine_check.json (default: $OUT when set)")  # fmt: skip
    args = parser.parse_args()
    t0 = time.perf_counter()
    skip = set(filter(None, args.skip.split(",")))

    dev = jax.devices()[0]
    report = Report(args.out / "gpu_engine_check.json" if args.out else None)
    report["environment"] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device_kind": dev.device_kind, "platform": dev.platform, "num_devices": len(jax.devices()),
        "devices": [str(d) for d in jax.devices()], "nvidia_smi": nvidia_smi(), "versions": versions(),
        "smoke": args.smoke, "host": platform.node(), "cpus": os.cpu_count(),
    }  # fmt: skip
    print(json.dumps(report.data["environment"], indent=1), flush=True)
    if args.smoke:
        args.batched_tokens, args.fallback_batched_tokens = min(args.batched_tokens, 64), 32

    with tempfile.TemporaryDirectory(prefix="gpu_engine_check_") as tmp:
        tmp_dir = Path(tmp)
        if "small" not in skip:
            config = SMOKE_SMALL if args.smoke else SMALL_CONFIG
            build = lambda: {"dir": str(build_small_checkpoint(tmp_dir / "small", config)), "config": config}  # noqa: E731
            built = phase(report, "build_small_checkpoint", build)
            if "error" not in built:
                correctness(args, tmp_dir / "small", report)

        if "big" not in skip:
            big_dir = write_dummy_model(tmp_dir / "llama3_8b", SMOKE_BIG if args.smoke else LLAMA3_8B_CONFIG)
            ceilings = phase(report, "device_ceilings", lambda: device_ceilings(args))
            tp1 = phase(report, "big_tp1", lambda: speed(args, big_dir, 1, args.batched_tokens, ceilings))
            if len(jax.devices()) >= 2 and args.tp_max >= 2 and "tp2" not in skip:
                # Predict TP=2's cost from TP=1's (compile time scales with the bucket count) and fit the budget.
                from jllm.buckets import step_buckets

                left = args.budget_s - (time.perf_counter() - t0)
                cost = tp1.get("phase_s", 0.0)
                compile_s = tp1.get("compile_s", cost)
                choice = None
                for tokens in (args.batched_tokens, args.fallback_batched_tokens):
                    share = len(step_buckets(tokens, 64)) / max(1, len(step_buckets(args.batched_tokens, 64)))
                    if 1.2 * (cost - compile_s) + 1.5 * compile_s * share < left:
                        choice = tokens
                        break
                note = {"seconds_left": round(left, 1), "tp1_phase_s": cost, "chosen_batched_tokens": choice}
                report["tp2_plan"] = note
                print(f"TP=2 plan: {note}", flush=True)
                if choice is not None:
                    phase(report, "big_tp2", lambda: speed(args, big_dir, 2, choice, ceilings))

    report["total_s"] = round(time.perf_counter() - t0, 1)
    print_summary(report.data)


def print_summary(data: dict[str, Any]) -> None:
    env = data["environment"]
    print("\n" + "=" * 100)
    print(f"{env['date']}  {env['device_kind']} x{env['num_devices']}  jax {env['versions']['jax']}  "
          f"total {data.get('total_s')} s")  # fmt: skip
    agree = data.get("small_agreement", {})
    for key in ("pallas_vs_reference", "reference_vs_reference", "tp2_vs_tp1_pallas", "tp2_vs_tp1_reference"):
        if key in agree:
            r = agree[key]
            diffs = [(p["first_diff"], p["ref_top2_gap_at_diff"]) for p in r["per_prompt"] if not p["identical"]]
            print(f"{key}: {r['identical']}/{r['prompts']} identical; (first diff, top-2 gap) of the rest: {diffs}")
    for name, r in data.items():
        if isinstance(r, dict) and "error" in r:
            print(f"{name}: FAILED {r['error']}")
    ceil = data.get("device_ceilings", {})
    print(f"ceilings: {ceil}")
    for name in ("big_tp1", "big_tp2"):
        r = data.get(name)
        if not r or "error" in r:
            continue
        b, t, roof = r.get("batch1", {}), r.get("throughput", {}), r.get("roofline", {})
        print(
            f"{name}: startup {r.get('startup_s')} s (load {r.get('load_s')}, compile {r.get('compile_s')} for "
            f"{r.get('buckets')} buckets, {r['keys']['max_num_batched_tokens']} tokens); pages {r.get('num_pages')}; "
            f"batch-1 {b.get('tpot_ms_median')} ms/token (roofline {roof.get('batch1_tpot_ms')}); "
            f"64x128 {t.get('tokens_per_s_best')} tok/s (roofline {roof.get('throughput_tokens_per_s')})"
        )


if __name__ == "__main__":
    main()

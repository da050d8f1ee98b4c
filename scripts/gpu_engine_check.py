"""The engine's first run on a GPU, in one process: greedy agreement of the attention backends, then speed.

1. A random-weight Llama (hidden 2048, 8 layers, 32 query / 8 KV heads of 64, vocab 32000) saved by transformers
   as bf16 safetensors, with the benchmarks' 128-id character-level tokenizer (the engine loads a tokenizer).
   Greedy, 32 tokens, EOS ignored, 8 random token-id prompts of mixed lengths, run in float32 (matmuls at
   "highest" precision, so only attention differs): attention_backend "reference" against "pallas", and with two
   or more devices, pallas at tensor_parallel_size=2 against 1. Per prompt: identical or the first differing
   output position, with the reference's top-1/top-2 logprob gap there (a near-tie flips on rounding alone).
2. A Llama-3-8B-shaped model (configs/models/llama3-8b, ``load_format="dummy"``, bf16): start-up (load + compiling
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
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from bench_common import (  # noqa: E402 - needs the path above
    ModelShape,
    StepTimes,
    device_ceilings,
    generation_roofline,
    jllm_generator,
    load_hf_model,
    random_prompts,
    save_hf_model,
    versions,
    write_dummy_model,
)
from bench_latency import measure_latency  # noqa: E402
from machine_info import nvidia_smi  # noqa: E402

SMALL_CONFIG = dict(
    vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=8, num_attention_heads=32,
    num_key_value_heads=8, head_dim=64, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
    tie_word_embeddings=False,
)  # fmt: skip
LLAMA3_8B_CONFIG = json.loads((ROOT / "configs" / "models" / "llama3-8b" / "config.json").read_text())
# --smoke: the same code paths with shapes a CPU runs in seconds.
SMOKE_SMALL = {
    **SMALL_CONFIG, "vocab_size": 256, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512,
}  # fmt: skip
SMOKE_BIG = {
    **LLAMA3_8B_CONFIG, "vocab_size": 512, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32, "max_position_embeddings": 512,
}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- report


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


def build_small_checkpoint(out_dir: Path, config: dict[str, Any]) -> Path:
    """Random transformers Llama, saved as bf16 safetensors, with a tokenizer."""
    return save_hf_model(load_hf_model({"model_type": "llama", **config}, "bfloat16"), out_dir)


def start_engine(model_dir: Path, **keys: Any) -> tuple[Any, dict[str, Any]]:
    """``LLM(model_dir, **keys)``, timed as a whole and split into weight loading and bucket compilation."""
    from jllm import LLM, build, runner

    times: dict[str, float] = {}
    load, warmup = build.load_model, runner.ModelRunner.warmup

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

    build.load_model, runner.ModelRunner.warmup = timed_load, timed_warmup
    try:
        start = time.perf_counter()
        llm = LLM(str(model_dir), **keys)
        times["startup_s"] = time.perf_counter() - start
    finally:
        build.load_model, runner.ModelRunner.warmup = load, warmup
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
    """Copies of a whole KV-pool shard in the first compiled forward program (the donated pool should be updated in
    place: any such copy costs a pass over the pool every step)."""
    kv = eng.runner.kv_caches[0]
    shard = kv.addressable_shards[0].data.shape
    pattern = "[" + ",".join(str(n) for n in shard) + "]"
    text = next(exe for name, _, exe in eng.runner.compiled_programs() if name == "forward").as_text()
    return sum(1 for line in text.splitlines() if " copy(" in line and pattern in line)


def nnx_state(model: Any) -> Any:
    from flax import nnx

    return nnx.state(model)


def weight_bytes(eng: Any, per_device: bool) -> int:
    """Parameter bytes: one device's shards, or the whole arrays."""
    from flax import nnx

    total = 0
    for _, var in nnx.to_flat_state(nnx.state(eng.runner.loaded.model)):
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
    candidate = "reference" if args.smoke else args.candidate
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


def speed(args: argparse.Namespace, model_dir: Path, tp: int, batched_tokens: int, ceilings: dict[str, Any]) -> dict:
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
        generate = jllm_generator(llm)
        batches = [random_prompts(rng, [prompt_len], vocab) for _ in range(1 + 2 * args.repeats)]
        lat = measure_latency(generate, batches, new)
        info["batch1"] = {"prompt": prompt_len, "new_tokens": new, "gen1_s": lat["gen1_s"],
                          "gen_full_s": lat["gen_full_s"], "tpot_ms": [round(t, 3) for t in lat["tpot_ms_all"]],
                          "tpot_ms_median": round(lat["tpot_ms"], 3)}  # fmt: skip

        generate(random_prompts(rng, [prompt_len] * num_prompts, vocab), [2] * num_prompts)  # warm-up: batch shapes
        runs = []
        for _ in range(2):
            times = StepTimes()
            times.wrap(llm.engine)
            t = time.perf_counter()
            generate(random_prompts(rng, [prompt_len] * num_prompts, vocab), [new] * num_prompts)
            wall = time.perf_counter() - t
            times.unwrap()
            runs.append({"wall_s": round(wall, 3), "tokens_per_s": round(num_prompts * new / wall, 1),
                         "profile": times.summary()})  # fmt: skip
        info["throughput"] = {"prompts": num_prompts, "prompt": prompt_len, "new_tokens": new, "runs": runs,
                              "tokens_per_s_best": max(r["tokens_per_s"] for r in runs)}  # fmt: skip

        # Rooflines from this process's own ceilings (device 0's copy bandwidth; TP's all-reduces not counted).
        shape = ModelShape.from_hf_config(llm.engine.runner.loaded.hf_config, "bfloat16")
        roof = {"streamed_weight_bytes_per_device": shape.streamed_params * shape.dtype_bytes // tp,
                "kv_bytes_per_token_per_device": shape.kv_bytes_per_token // tp}  # fmt: skip
        if ceilings.get("copy_gbps_dev0") and ceilings.get("matmul_tflops_dev0"):
            keys = dict(max_num_batched_tokens=batched_tokens, ceilings=ceilings, tensor_parallel_size=tp)
            one = generation_roofline(shape, [prompt_len], [new], max_num_seqs=1, **keys)
            many = generation_roofline(shape, [prompt_len] * num_prompts, [new] * num_prompts, max_num_seqs=max_seqs,
                                       **keys)  # fmt: skip
            roof["batch1_tpot_ms"] = round(one["tpot_ms"], 3)
            roof["throughput_tokens_per_s"] = round(many["output_tokens_per_s"], 1)
            roof["throughput_parts_s"] = {"decode": round(many["decode_s"], 4), "prefill": round(many["prefill_s"], 4)}
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
    parser.add_argument("--candidate", default="pallas", help="attention backend checked against the reference")
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
            ceilings = phase(
                report, "device_ceilings", lambda: device_ceilings(num_devices=args.tp_max, small=args.smoke)
            )
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

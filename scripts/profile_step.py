"""Where a decode step's time goes: host work against device work, and the device's time by kernel.

For each batch size, ``batch`` requests (random prompts of ``--prompt`` tokens, EOS ignored) are stepped until all of
them decode; then ``--steps`` engine steps are timed three ways:

1. the engine as it runs (``engine.step``), split by wrapping its parts: scheduling, the step's NumPy inputs, their
   transfer to the devices, dispatch, waiting for the results, and the rest (token bookkeeping, detokenizing);
2. the compiled step (forward and sampler programs) alone, called back to back on one decode step's device-resident
   inputs: the device's time per step with the host out of the way (dispatch is asynchronous, so the calls queue up);
3. a JAX profiler trace of a few engine steps: GPU kernel time per step, grouped by kernel name.

Step wall time minus device time is what overlapping the host with the device could win.

``--prefill-tokens N`` profiles mixed steps instead: before each timed or traced step a fresh N-token request (one
output token) joins, so every step runs the batch's decodes beside one N-token prefill, the shape a server's steps
take while prompts keep arriving (32 streams of 1024 in / 128 out average 256 prefill tokens a step). The scheduler's
step-size alignment is off here (``prefill_alignment_min_tokens`` 0 unless ``--set``), so the prefill is never cut.

``--dump-attention FILE.npz`` also records, after each batch size's profile, one more step's decode-attention
inputs (block tables, KV lengths, query starts, argument shapes, the kernel's keyword arguments and tiling;
scripts/attention_replay.py) for ``scripts/bench_kernels.py --replay FILE.npz``; with several batch sizes each file's
name gets ``_b<batch>``.

    PYTHONPATH=. python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy --dtype bfloat16
    PYTHONPATH=. python scripts/profile_step.py --smoke                                               # CPU check
    PYTHONPATH=. python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy --dtype bfloat16 \
        --batch-sizes 1,32 --max-num-batched-tokens 32 --steps 100 --dump-attention step.npz  # step_b{1,32}.npz
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts")]

from attention_replay import describe, record  # noqa: E402
from bench_common import PartTimer, engine_overrides, write_dummy_model  # noqa: E402

import jllm.runner  # noqa: E402
from jllm import LLM, SamplingParams  # noqa: E402
from jllm.buckets import pick_bucket  # noqa: E402
from jllm.runner import DeviceStep  # noqa: E402
from jllm.sampling import RequestOutputKind  # noqa: E402

SMOKE_MODEL = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
    bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, torch_dtype="float32",
)  # fmt: skip
PARTS = ("schedule", "host_inputs", "device_inputs", "dispatch", "wait_results", "other")


def start_decoding(llm: LLM, batch: int, prompt_len: int, rng: np.random.Generator) -> None:
    """Adds ``batch`` requests and steps until each has a token, so every later step is a pure decode."""
    eng = llm.engine
    vocab = min(eng.inputs.vocab_size, 32000)
    params = SamplingParams(
        temperature=0,
        ignore_eos=True,
        max_tokens=eng.max_model_len - prompt_len,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )  # as LLM.generate asks
    for i in range(batch):
        prompt = eng.inputs.process(rng.integers(3, vocab, size=prompt_len).tolist(), params)
        eng.add_request(f"prof-{batch}-{i}", prompt, params)
    while any(not s.seq.output_token_ids for r in eng.requests.values() for s in r.samples):
        eng.step()


def engine_seqs(batch: int, prefill_tokens: int) -> int:
    """``max_num_seqs`` for ``batch`` decodes and, with mixed steps, two prefill requests beside them: the step's
    fresh one and the last step's, which holds its slot until its pending token is appended (async scheduling).
    With ``batch`` alone the prefills would wait, unadmitted, and every step would be a pure decode."""
    return batch + (2 if prefill_tokens else 0)


class Stepper:
    """``engine.step``, each step first given a fresh ``prefill_tokens``-token request of one output token (none at
    0), so that every step is the batch's decodes plus one prefill of that size."""

    def __init__(self, llm: LLM, prefill_tokens: int, rng: np.random.Generator) -> None:
        self.engine, self.prefill_tokens, self.rng, self.added = llm.engine, prefill_tokens, rng, 0
        self.params = SamplingParams(
            temperature=0, ignore_eos=True, max_tokens=1, output_kind=RequestOutputKind.FINAL_ONLY
        )

    def __call__(self) -> None:
        if self.prefill_tokens:
            vocab = min(self.engine.inputs.vocab_size, 32000)
            ids = self.rng.integers(3, vocab, size=self.prefill_tokens).tolist()
            self.engine.add_request(f"prefill-{self.added}", self.engine.inputs.process(ids, self.params), self.params)
            self.added += 1
        self.engine.step()
        if self.engine.scheduler.num_waiting:
            raise RuntimeError(
                f"{self.engine.scheduler.num_waiting} prefill request(s) wait unadmitted: the steps are not the "
                "mixed steps asked for (max_num_seqs or the pool too small?)"
            )


def decode_batch(llm: LLM) -> dict[str, float]:
    """What the timed steps decoded: the running sequences, their mean context, and the preemptions so far (a pool
    too small for ``batch`` x context runs fewer sequences than asked, and the figures are for those)."""
    scheduler = llm.engine.scheduler
    contexts = [seq.num_tokens for seq in scheduler.running]
    return {
        "running": len(contexts),
        "mean_context": round(float(np.mean(contexts)), 1) if contexts else 0.0,
        "preemptions": scheduler.num_preemptions,
    }


def engine_steps(llm: LLM, step: Stepper, steps: int) -> dict[str, float]:
    """Per-step milliseconds of ``engine.step`` and of its parts."""
    eng, runner = llm.engine, llm.engine.runner
    timer = PartTimer()
    timer.wrap(eng.scheduler, "schedule", "schedule")
    timer.wrap(runner, "plan", "host_inputs")
    timer.wrap(runner, "put", "device_inputs")
    timer.wrap(runner, "_forward", "dispatch")  # launch() queues the forward, then the sampler
    timer.wrap(runner, "_sample", "dispatch")
    timer.wrap(jax, "device_get", "wait_results")
    try:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - start
    finally:
        timer.unwrap()
    out = {part: 1e3 * timer.seconds[part] / steps for part in PARTS[:-1]}
    out["other"] = 1e3 * wall / steps - sum(out.values())
    out["step"] = 1e3 * wall / steps
    return {k: round(v, 3) for k, v in out.items()}


def device_only(llm: LLM, step: Stepper, steps: int) -> dict[str, float]:
    """The compiled step on one step's device inputs: back to back (device time) and one at a time."""
    runner = llm.engine.runner
    captured: list[DeviceStep] = []
    timer = PartTimer()
    timer.wrap(runner, "_forward", "dispatch", note=captured.append)  # the step's inputs, as launch() put them
    try:
        step()
    finally:
        timer.unwrap()
    step = captured[-1]

    def call() -> Any:
        return runner.dispatch(step)[0]

    jax.block_until_ready(call())
    start = time.perf_counter()
    outs = [call() for _ in range(steps)]
    jax.block_until_ready(outs)
    back_to_back = (time.perf_counter() - start) / steps
    single, dispatch = [], []
    for _ in range(min(steps, 20)):
        start = time.perf_counter()
        out = call()
        dispatch.append(time.perf_counter() - start)
        jax.block_until_ready(out)
        single.append(time.perf_counter() - start)
    return {
        "device_ms": round(1e3 * back_to_back, 3),
        "call_and_sync_ms": round(1e3 * statistics.median(single), 3),
        "call_returns_ms": round(1e3 * statistics.median(dispatch), 3),  # host time to launch one step
    }


def kernel_profile(step: Stepper, steps: int, trace_dir: Path) -> dict[str, Any]:
    """GPU time per engine step by kernel name (top 15), from a profiler trace of ``steps`` steps."""
    from jax.profiler import ProfileData

    with jax.profiler.trace(str(trace_dir)):
        for _ in range(steps):
            step()
    files = sorted(glob.glob(str(trace_dir / "**" / "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not files:
        return {"error": "no trace written"}
    kernels: collections.Counter[str] = collections.Counter()
    launches: collections.Counter[str] = collections.Counter()
    host: collections.Counter[str] = collections.Counter()
    spans: list[tuple[int, int, str]] = []
    for plane in ProfileData.from_file(files[-1]).planes:
        for line in plane.lines:
            if plane.name.startswith("/device:GPU:0") and line.name.startswith("Stream"):
                for event in line.events:
                    kernels[event.name] += event.duration_ns
                    launches[event.name] += 1
                    spans.append((event.start_ns, event.end_ns, event.name))
            elif plane.name.startswith("/host:CPU") and line.name != "python":
                for event in line.events:
                    host[f"{line.name[:24]}: {event.name}"] += event.duration_ns
    per_step = lambda counter: {k[:100]: round(ns / 1e6 / steps, 4) for k, ns in counter.most_common(15)}  # noqa: E731
    out = {"host_threads_ms_per_step": per_step(host)}
    if kernels:
        out |= {"gpu_busy_ms_per_step": round(sum(kernels.values()) / 1e6 / steps, 3), "kernels": per_step(kernels)}
        out["kernel_kinds"] = kernel_kinds(kernels, launches, steps)
        out["all_kernels_ms_per_step"] = {k: round(ns / 1e6 / steps, 5) for k, ns in kernels.most_common()}
        out["idle_gaps"] = idle_gaps(spans, steps)
    return out


def idle_gaps(spans: list[tuple[int, int, str]], steps: int, top: int = 12) -> dict[str, Any]:
    """Where the GPU sits idle between kernels: the gaps in the union of every stream's kernels (start, end, name),
    each put down to the kernel that ran last before it and the one that starts it (names without their numbering,
    as ``kernel_kinds``), milliseconds and gaps per step for the ``top`` pairs. A step whose device time exceeds its
    kernels' (the H100's 32 + 992 mixed step, 2026-12-07: 2.6 ms) shows here which launches wait. The gaps between
    the profiled engine steps (the host's) count too: compare with a decode-only step's."""
    kind = lambda name: re.sub(r"([._]\d+)+$", "", name)[:60]  # noqa: E731
    time_ns: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    busy_end, last = None, ""
    for start, end, name in sorted(spans):
        if busy_end is not None and start > busy_end:
            pair = f"{kind(last)} -> {kind(name)}"
            time_ns[pair] += start - busy_end
            count[pair] += 1
        if busy_end is None or end >= busy_end:
            busy_end, last = end, name
    return {
        "idle_ms_per_step": round(sum(time_ns.values()) / 1e6 / steps, 3),
        "pairs": {
            p: {"ms": round(ns / 1e6 / steps, 4), "gaps": count[p] / steps} for p, ns in time_ns.most_common(top)
        },
    }


def kernel_kinds(
    kernels: collections.Counter[str], launches: collections.Counter[str], steps: int
) -> dict[str, dict[str, float]]:
    """Kernels grouped by name without their numbering (an unrolled step has one ``loop_add_fusion_N`` per layer):
    launches and milliseconds per step, so the many small fusions show as one line."""
    time_ns: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for name, ns in kernels.items():
        kind = re.sub(r"([._]\d+)+$", "", name)[:80]
        time_ns[kind] += ns
        count[kind] += launches[name]
    return {k: {"ms": round(ns / 1e6 / steps, 4), "launches": count[k] / steps} for k, ns in time_ns.most_common(25)}


def dump_attention(llm: LLM, path: Path, batch: int, per_batch: bool) -> None:
    """Records one engine step's decode-attention inputs to ``path`` (``<stem>_b<batch>.npz`` with ``per_batch``)."""
    path = path.with_name(f"{path.stem}_b{batch}{path.suffix}") if per_batch else path
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = record(llm)
    rec.save(path)
    print("\n".join([f"attention inputs of a batch-{batch} step -> {path}", *describe(rec)]), flush=True)


def finish_all(llm: LLM) -> None:
    for rid in list(llm.engine.requests):
        llm.engine.abort_request(rid)


def parse_args() -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (config.json + tokenizer)")
    parser.add_argument("--load-format", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-sizes", default="1,64", help="comma list of decode batch sizes")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per request")
    parser.add_argument("--prefill-tokens", type=int, default=0,
                        help="mixed steps: a fresh prompt of this many tokens beside every step's decodes")  # fmt: skip
    parser.add_argument("--steps", type=int, default=50, help="steps timed per measurement")
    parser.add_argument("--trace-steps", type=int, default=5, help="steps under the profiler (0: no trace)")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-num-batched-tokens", type=int, default=2048)
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs the model is split over")
    parser.add_argument("--smoke", action="store_true", help="a tiny random model on the CPU")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--compiler-options",
        type=json.loads,
        help="JSON object replacing jllm.runner.COMPILER_OPTIONS for this run, e.g. '{}' for XLA's "
        "defaults: how command-buffer settings were compared",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an engine key (repeat), e.g. quantization=fp8")  # fmt: skip
    parser.add_argument("--dump-hlo", type=Path, help="write the optimized HLO of each profiled step program here")
    parser.add_argument("--dump-attention", type=Path, metavar="FILE.npz",
                        help="record a decode step's attention inputs here, for bench_kernels.py --replay")  # fmt: skip
    args = parser.parse_args()
    batch = max(int(b) for b in args.batch_sizes.split(","))
    if args.prefill_tokens and batch + args.prefill_tokens > args.max_num_batched_tokens:
        parser.error(
            f"--prefill-tokens={args.prefill_tokens} with batch {batch} exceeds --max-num-batched-tokens="
            f"{args.max_num_batched_tokens}: the prefill would be cut into chunks"
        )
    return parser, args


def main() -> None:
    parser, args = parse_args()
    batches = [int(b) for b in args.batch_sizes.split(",")]
    if args.compiler_options is not None:
        jllm.runner.COMPILER_OPTIONS = args.compiler_options

    with tempfile.TemporaryDirectory(prefix="profile_step_") as tmp:
        model = args.model
        if args.smoke:
            model = str(write_dummy_model(Path(tmp) / "model", SMOKE_MODEL))
            args.load_format, args.max_model_len, args.max_num_batched_tokens = "dummy", 256, 64
            args.steps, args.trace_steps, args.prompt = min(args.steps, 5), min(args.trace_steps, 2), 16
        llm = LLM(
            model, load_format=args.load_format, dtype=args.dtype, max_model_len=args.max_model_len,
            max_num_seqs=engine_seqs(max(batches), args.prefill_tokens),
            max_num_batched_tokens=args.max_num_batched_tokens, gpu_memory_utilization=0.85,
            tensor_parallel_size=args.tensor_parallel_size,
            **{"prefill_alignment_min_tokens": 0, **engine_overrides(parser, args.set)},
        )  # fmt: skip
        dev = jax.devices()[0]
        report: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d"), "device": dev.device_kind, "jax": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "compiler_options": jllm.runner.COMPILER_OPTIONS,
            "model": model, "backend": llm.engine.runner.attention_backend, "prompt": args.prompt,
            "tensor_parallel_size": args.tensor_parallel_size, "prefill_tokens": args.prefill_tokens, "batches": {},
        }  # fmt: skip
        rng = np.random.default_rng(0)
        for batch in batches:
            start_decoding(llm, batch, args.prompt, rng)
            step = Stepper(llm, args.prefill_tokens, rng)
            engine_steps(llm, step, 3)  # warm
            row = {"engine_ms": engine_steps(llm, step, args.steps), **device_only(llm, step, args.steps)}
            row["host_gap_ms"] = round(row["engine_ms"]["step"] - row["device_ms"], 3)
            row.update(decode_batch(llm))
            trace = args.trace_steps and kernel_profile(step, args.trace_steps, Path(tmp) / f"trace{batch}")
            row["kernels"] = trace or {"skipped": "--trace-steps 0"}
            if args.dump_hlo:
                args.dump_hlo.mkdir(parents=True, exist_ok=True)
                runner = llm.engine.runner
                stepped = pick_bucket(runner.buckets, batch + args.prefill_tokens, batch + bool(args.prefill_tokens))
                for name, layout, exe in runner.compiled_programs():
                    tokens = layout.slots[0][1][0]  # the first leaf: input_ids [T], or a sampler's temperature [S]
                    if tokens in (batch, stepped.num_tokens):
                        (args.dump_hlo / f"{name}_t{tokens}.hlo.txt").write_text(exe.as_text())
            report["batches"][batch] = row
            if args.dump_attention:  # after the timings (it clears JAX's trace caches), at the traced steps' contexts
                dump_attention(llm, args.dump_attention, batch, len(batches) > 1)
            finish_all(llm)
            print(json.dumps({batch: row}, indent=1), flush=True)

    mixed = f"  + a {args.prefill_tokens}-token prefill a step" if args.prefill_tokens else ""
    print(f"\n{report['device']}  jax {report['jax']}  backend {report['backend']}  prompt {args.prompt}{mixed}")
    print(
        f"{'batch':>5} {'running':>7} {'context':>7} {'step ms':>8} {'device ms':>9} {'gap ms':>7}  "
        + " ".join(f"{p:>13}" for p in PARTS)
    )
    for batch, row in report["batches"].items():
        parts = " ".join(f"{row['engine_ms'][p]:>13.3f}" for p in PARTS)
        step, device, gap = row["engine_ms"]["step"], row["device_ms"], row["host_gap_ms"]
        running, context = row["running"], row["mean_context"]
        print(f"{batch:>5} {running:>7} {context:>7.0f} {step:>8.3f} {device:>9.3f} {gap:>7.3f}  {parts}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

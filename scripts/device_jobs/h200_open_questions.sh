# The measurements issues 19-21 still need on one H200, in the order they pay off; run by scripts/device_queue.sh
# (its header says how), each step bounded and logged under $QOUT. Results go to docs/benchmarks.md with the card,
# date and commit. Llama-3-8B shapes, dummy weights.
set -u
step() {  # step NAME SECONDS COMMAND...: one measurement, its log in $QOUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $(date +%T) $name"
    timeout -k 10 "$limit" "$@" > "$QOUT/$name.log" 2>&1
    echo "== $(date +%T) $name exit $?"
    tail -n 12 "$QOUT/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$QOUT/card.csv"
git log -1 --format='%H %s' > "$QOUT/commit.txt" 2>/dev/null
# Issue 20: the image ships no .pyc, so each process compiled JAX's bytecode (warm imports 3.6-5.9 s); jllm now keeps
# it under $JLLM_CACHE/pycache where Python may not write it beside the sources (jllm.bytecode_cache). Import times of
# fresh processes with that cache and without it (3.1-3.4 s against 0.96-1.0 s on the 2-core CPU host, 2026-12-05).
step import_times 120 bash -c 'env | grep ^PYTHON; python -c "import importlib.util as u, os; s = u.find_spec(\"jax\").origin; print(\"jax pyc beside source:\", os.path.exists(u.cache_from_source(s)))"
    for cache in 0 1 1 1; do JLLM_BYTECODE_CACHE=$cache python -c "import time; t = time.perf_counter(); import jllm.llm, sys; print(\"bytecode cache $cache:\", round(time.perf_counter() - t, 2), \"s\", sys.pycache_prefix)"; done'
BF16=configs/llama3-8b-h200.yaml
FP8=configs/llama3-8b-fp8-h200.yaml

# Issue 20: warm start-up with the executable cache's prefetch (programs loaded while the weights load): 8.38 s on an
# H200 before it (2026-12-05), 11.5 s on an H100 host whose import took 5.8 s; goal 8 s.
step startup 420 python scripts/profile_startup.py --config $BF16 --warm-runs 2 --json "$QOUT/startup.json"
# The recurrent layers' chunked prefill (gated DeltaNet's chunked delta rule, Mamba2's chunked SSD) against the token
# scan it replaces in prefill buckets: one layer of Qwen3-Next-80B-A3B and of Granite-4.0-H-Small, bf16, T = 512 and
# 2048 over 1 and 8 rows, and 1 prefill beside 63 decodes in the default 2048 x 64 bucket (a mixed step pays its short
# rows' chunk padding: is the chunked path still faster there?). CPU-checked only, float32: chunked within 8.6e-7 of
# the scan (2026-12-05).
step recurrent_prefill 300 python scripts/bench_recurrent.py --json "$QOUT/recurrent_prefill.json"
# Every kernel path against the float32 reference: 84 / 84 on an H200 on 2026-12-05, the jax-triton prefill kernel
# reading FP8 pools in bf16 among them ("auto" now gives FP8 pools that kernel too); CHECK_KERNELS=1 runs it again.
if [[ ${CHECK_KERNELS:-0} == 1 ]]; then
    step check_kernels 420 python scripts/check_kernels.py --json "$QOUT/check_kernels.json"
fi
# Issue 21: FP8 offline throughput, 128 in / 2048 out x 1000, with FP8 x FP8 from 32-token steps (8,854 output tok/s
# on an H100 with the old 512 threshold; NVIDIA's TensorRT-LLM table: 23,295 on an H200), then with an FP8 KV pool:
# at 256 rows the attention reads ~35 GB of bf16 K/V a step, the step's largest cost.
for kv in auto fp8; do
    step "fp8_tput_kv_$kv" 480 python scripts/bench_throughput.py --config $FP8 --skip-hf --dataset random \
        --input-len 128 --output-len 2048 --num-prompts 1000 --set kv_cache_dtype=$kv --json "$QOUT/fp8_tput_$kv.json"
done
# Issue 21: FP8 KV against the model-dtype pool at long context, batch 64 x 8k: the decode step alone (bench_latency's
# TPOT at this shape counts the first prompts' decodes inside the others' prefill steps).
for kv in auto fp8; do
    step "kv_$kv" 300 python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy \
        --dtype bfloat16 --batch-sizes 64 --prompt 8000 --max-model-len 8192 --max-num-batched-tokens 2048 --steps 20 \
        --set quantization=fp8 --set kv_cache_dtype=$kv --json "$QOUT/kv_$kv.json"
done
# Issue 20: serving 32 streams of 1024 in / 128 out means ~256 prefill tokens beside the 32 decodes in every step
# (2,399 output tok/s ~ 320 TFLOP/s of the 806 measured, 2026-12-05): where does such a mixed step's time go?
step mixed_step_bf16 300 python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy \
    --dtype bfloat16 --batch-sizes 32 --prompt 1024 --prefill-tokens 256 --steps 30 --json "$QOUT/mixed_step.json"
# Issue 21: the FP8 decode kernel's reach (its default token cap against none), batch 1 and 8 TPOT.
step fp8_latency 300 python scripts/bench_latency.py --config $FP8 --skip-hf --batch-sizes 1,8 --json "$QOUT/fp8_lat.json"
step fp8_latency_nocap 300 python scripts/bench_latency.py --config $FP8 --skip-hf --batch-sizes 1,8 \
    --set fp8_kernel_max_tokens=null --json "$QOUT/fp8_lat_nocap.json"
# Issue 21: why an FP8 step launches in ~1.5 ms where bf16 takes ~1.0 ms: XLA's command-buffer log, batch 1.
for quant in null fp8; do
    TF_CPP_VMODULE=command_buffer_thunk=3,command_buffer_cmd=3 step "cmdbuf_$quant" 300 python scripts/profile_step.py \
        --model configs/models/llama3-8b --load-format dummy --dtype bfloat16 --batch-sizes 1 --steps 50 \
        --set quantization=$quant --json "$QOUT/step_$quant.json"
done
# Issue 19: the engine's own attention calls replayed alone (what the 8B step's kernels see), batch 1 and 32.
step dump_attention 300 python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy \
    --dtype bfloat16 --batch-sizes 1,32 --max-num-batched-tokens 32 --steps 100 --dump-attention "$QOUT/step.npz"
for b in 1 32; do
    step "replay_b$b" 300 python scripts/bench_kernels.py --replay "$QOUT/step_b$b.npz" --out "$QOUT/replay_b$b"
done

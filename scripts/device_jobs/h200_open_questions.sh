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
BF16=configs/llama3-8b-h200.yaml
FP8=configs/llama3-8b-fp8-h200.yaml

# Issue 21: the Pallas decode kernel now widens an FP8 pool's tiles to float16 (was bfloat16: a second convert per
# element); every Pallas case against the float32 reference first, FP8 decodes among them.
step check_pallas 300 python scripts/check_kernels.py --kernel pallas --json "$QOUT/check_pallas.json"
# Issue 21: FP8 KV against the model-dtype pool at long context, batch 64 x 8k: the decode step alone (bench_latency's
# TPOT at this shape counts the first prompts' decodes inside the others' prefill steps). 2026-12-05 with the bf16
# widening: 14.46 ms a step with a bf16 pool (attention 10.28), 17.21 with the FP8 pool (attention 13.63).
for kv in fp8 auto; do
    step "kv_$kv" 300 python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy \
        --dtype bfloat16 --batch-sizes 64 --prompt 8000 --max-model-len 8192 --max-num-batched-tokens 2048 --steps 20 \
        --set quantization=fp8 --set kv_cache_dtype=$kv --json "$QOUT/kv_$kv.json"
done
# Issue 20: serving at 32 concurrent, 1024 in / 128 out (goal TTFT p50 100 ms, TPOT p50 8 ms). With the 2,048-token
# budget a step may carry several prompts' chunks (the long-prefill cap bounds each prompt's, not the step's): TPOT p50
# 12.45 ms uncapped, 10.69 with a 256 cap (2026-12-05). A smaller budget bounds every step: 32 decodes + ~480 prefill
# tokens is ~4.3 TFLOP, ~6-7 ms at the measured matmul rate. Each on a fresh server.
for budget in 512 1024; do
    python -m jllm serve --config $BF16 --port 8100 --max-num-batched-tokens $budget > "$QOUT/serve_b$budget.log" 2>&1 &
    server=$!
    for _ in $(seq 150); do curl -sf localhost:8100/ready > /dev/null && break; sleep 1; done
    step "serving_b$budget" 300 python scripts/bench_serving.py --base-url http://127.0.0.1:8100 --num-prompts 320 \
        --input-len 1024 --output-len 128 --max-concurrency 32 --json "$QOUT/serving_b$budget.json"
    kill "$server"; wait "$server"
done
# Issue 20: cold start-up (51.8 s against 30 on 2026-12-05: the main thread traced 3.5 s and lowered 16.9, which every
# compile waits on; compiles 222 thread-s for 12 forwards, 191 for 36 samplers): now with every forward lowered
# first; then the main thread under cProfile; then with GEMM autotuning off.
step startup_cold 240 python scripts/profile_startup.py --config $BF16 --warm-runs 0 --json "$QOUT/startup_cold.json"
step startup_profile 300 python scripts/profile_startup.py --config $BF16 --warm-runs 0 --main-thread-profile 60 \
    --json "$QOUT/startup_profile.json"
step startup_cold_noautotune 240 env XLA_FLAGS=--xla_gpu_autotune_level=0 python scripts/profile_startup.py \
    --config $BF16 --warm-runs 0 --json "$QOUT/startup_cold_noautotune.json"
# XLA's Triton GEMMs off (cuBLAS for every dot: no Triton GEMM tilings to autotune and compile); its TPOT beside it.
step startup_cold_notritongemm 240 env XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python scripts/profile_startup.py \
    --config $BF16 --warm-runs 0 --json "$QOUT/startup_cold_notritongemm.json"
# Issue 20: bf16 TPOT at batch 1 / 8 / 32 (goals 3.9 / 4.1 / 4.6 ms): 4.16 / 4.28 / 4.81 on 2026-12-05 02:50 UTC, then
# 4.41 / 4.54 / 4.97 at 12:00 on another machine (FP8 batch 1: 3.87 on 2026-12-04, 4.61): where did 0.25 ms go? The
# step programs alone at batch 1 (device time and kernels; 4.147 ms device on 2026-12-03, 45f891e), bf16 and FP8.
step bf16_latency 360 python scripts/bench_latency.py --config $BF16 --skip-hf --batch-sizes 1,8,32 \
    --json "$QOUT/bf16_lat.json"
for quant in null fp8; do
    step "step_b1_$quant" 300 python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy \
        --dtype bfloat16 --batch-sizes 1 --max-num-batched-tokens 32 --steps 100 --set quantization=$quant \
        --json "$QOUT/step_b1_$quant.json"
done
# The recurrent layers' chunked prefill against the token scan: a mixed step's decode rows now stepped once, not at
# each of its prefill's chunks (2026-12-05 before: 24.45 / 24.77 ms a layer against 3.18 / 3.13 for the prefill alone);
# Kimi Delta Attention's new chunked form (slower than its token scan on the 2-core CPU host, as Qwen3-Next's was).
step recurrent_prefill 300 python scripts/bench_recurrent.py --json "$QOUT/recurrent_prefill.json"
# Issue 21: FP8-weight TPOT at batch 1 / 8 (goal 2.5 ms at batch 1; 3.14 at best so far), the decode kernel's default
# token cap against none.
step fp8_latency 300 python scripts/bench_latency.py --config $FP8 --skip-hf --batch-sizes 1,8 --json "$QOUT/fp8_lat.json"
# Issue 21: FP8 offline throughput, 128 in / 2048 out x 1000, with an FP8 KV pool now read by the jax-triton prefill
# kernel ("auto" gives FP8 pools that kernel since 2026-12-05; 16,441 output tok/s with the Pallas kernel), then
# 128 / 128 x 3000 (NVIDIA's TensorRT-LLM table: 23,295 and 28,447 on an H200).
step fp8_tput_kv_fp8 480 python scripts/bench_throughput.py --config $FP8 --skip-hf --dataset random \
    --input-len 128 --output-len 2048 --num-prompts 1000 --set kv_cache_dtype=fp8 --json "$QOUT/fp8_tput_fp8.json"
step fp8_tput_128 300 python scripts/bench_throughput.py --config $FP8 --skip-hf --dataset random \
    --input-len 128 --output-len 128 --num-prompts 3000 --json "$QOUT/fp8_tput_128.json"
# XLA's LLVM module split over 8 threads; the TPOT cost of GEMM autotuning off.
step startup_cold_par8 240 env XLA_FLAGS=--xla_gpu_force_compilation_parallelism=8 python scripts/profile_startup.py \
    --config $BF16 --warm-runs 0 --json "$QOUT/startup_cold_par8.json"
step bf16_latency_noautotune 300 env XLA_FLAGS=--xla_gpu_autotune_level=0 python scripts/bench_latency.py \
    --config $BF16 --skip-hf --batch-sizes 1,32 --json "$QOUT/bf16_lat_noautotune.json"
step bf16_latency_notritongemm 300 env XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python scripts/bench_latency.py \
    --config $BF16 --skip-hf --batch-sizes 1,32 --json "$QOUT/bf16_lat_notritongemm.json"
step fp8_latency_nocap 300 python scripts/bench_latency.py --config $FP8 --skip-hf --batch-sizes 1,8 \
    --set fp8_kernel_max_tokens=null --json "$QOUT/fp8_lat_nocap.json"
# Issue 20 asks for the GPU's serving plots (docs/img has only the CPU's): throughput and TTFT / TPOT against
# concurrency and request rate, 1024 in / 128 out, on one server.
python -m jllm serve --config $BF16 --port 8100 > "$QOUT/serve_sweep.log" 2>&1 &
server=$!
for _ in $(seq 150); do curl -sf localhost:8100/ready > /dev/null && break; sleep 1; done
mkdir -p "$QOUT/img"
step sweep_serving 420 python scripts/sweep_serving.py --base-url http://127.0.0.1:8100 --concurrencies 1,8,32,64 \
    --request-rates 2,4,8,16 --num-prompts 64 --input-len 1024 --output-len 128 --title "Llama-3-8B shapes, one H200" \
    --out-dir "$QOUT/img" --json "$QOUT/sweep_serving.json"
kill "$server"; wait "$server"
# Issue 20: serving 32 streams of 1024 in / 128 out means ~256 prefill tokens beside the 32 decodes in every step
# (2,399 output tok/s ~ 320 TFLOP/s of the 806 measured, 2026-12-05): where does such a mixed step's time go?
step mixed_step_bf16 300 python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy \
    --dtype bfloat16 --batch-sizes 32 --prompt 1024 --prefill-tokens 256 --steps 30 --json "$QOUT/mixed_step.json"
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

# What one H100 can answer while no H200 is lent (2026-12-05: four refused H200 starts in 30 minutes): questions whose
# answer does not depend on the card's bandwidth. Every figure is compared with a baseline in the same call, never with
# the H200 tables. Run by scripts/device_queue.sh (carry [".whl", "baseline"]); `baseline/` is an untracked export of
# an earlier tree (`git archive COMMIT jllm pallas_kernels scripts | tar -x -C baseline`), whose commit it names.
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
BASE="env PYTHONPATH=$PWD/baseline:$PWD/baseline/scripts:/tmp/site"

# Issue 21: the Pallas decode kernel's float16 widening of FP8 tiles, every Pallas case against the float32 reference.
step check_pallas 300 python scripts/check_kernels.py --kernel pallas --json "$QOUT/check_pallas.json"
# Issue 20: cold start, this tree (every forward lowered first, samplers one variant at a time) against the baseline
# tree, alternating; then this tree's main thread under cProfile; then with GEMM autotuning off.
step startup_cold 240 python scripts/profile_startup.py --config $BF16 --warm-runs 0 --json "$QOUT/startup_cold.json"
step startup_cold_base 240 $BASE python baseline/scripts/profile_startup.py --config $BF16 --warm-runs 0 \
    --json "$QOUT/startup_cold_base.json"
step startup_profile 300 python scripts/profile_startup.py --config $BF16 --warm-runs 0 --main-thread-profile 60 \
    --json "$QOUT/startup_profile.json"
# Issue 20: serving at 32 concurrent, 1024 in / 128 out, the step budget 2048 (the config's) against 512 and 1024.
for budget in 2048 512 1024; do
    python -m jllm serve --config $BF16 --port 8100 --max-num-batched-tokens $budget > "$QOUT/serve_b$budget.log" 2>&1 &
    server=$!
    for _ in $(seq 150); do curl -sf localhost:8100/ready > /dev/null && break; sleep 1; done
    step "serving_b$budget" 300 python scripts/bench_serving.py --base-url http://127.0.0.1:8100 --num-prompts 320 \
        --input-len 1024 --output-len 128 --max-concurrency 32 --json "$QOUT/serving_b$budget.json"
    kill "$server"; wait "$server"
done
step startup_cold_noautotune 240 env XLA_FLAGS=--xla_gpu_autotune_level=0 python scripts/profile_startup.py \
    --config $BF16 --warm-runs 0 --json "$QOUT/startup_cold_noautotune.json"
# XLA's Triton GEMMs off (cuBLAS for every dot: no Triton GEMM tilings to autotune and compile); its TPOT beside it.
step startup_cold_notritongemm 240 env XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python scripts/profile_startup.py \
    --config $BF16 --warm-runs 0 --json "$QOUT/startup_cold_notritongemm.json"
step bf16_latency 360 python scripts/bench_latency.py --config $BF16 --skip-hf --batch-sizes 1,32 \
    --json "$QOUT/bf16_lat.json"
step bf16_latency_noautotune 300 env XLA_FLAGS=--xla_gpu_autotune_level=0 python scripts/bench_latency.py \
    --config $BF16 --skip-hf --batch-sizes 1,32 --json "$QOUT/bf16_lat_noautotune.json"
step bf16_latency_notritongemm 300 env XLA_FLAGS=--xla_gpu_enable_triton_gemm=false python scripts/bench_latency.py \
    --config $BF16 --skip-hf --batch-sizes 1,32 --json "$QOUT/bf16_lat_notritongemm.json"

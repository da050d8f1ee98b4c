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
export PYTHONPYCACHEPREFIX=/tmp/pyc  # the image ships no .pyc: imports compile once per fresh machine
BF16=configs/llama3-8b-h200.yaml
FP8=configs/llama3-8b-fp8-h200.yaml

# Every kernel path against the float32 reference, when CHECK_KERNELS=1: 74 / 74 on 2026-12-05 (sinks included), so
# run it again only after a kernel changes.
if [[ ${CHECK_KERNELS:-0} == 1 ]]; then
    step check_kernels 420 python scripts/check_kernels.py --json "$QOUT/check_kernels.json"
fi
# Issue 21: FP8 128 in / 2048 out ran below 8.2k output tok/s (2026-12-05), where 256 sequences at ~1.1k tokens
# should stream ~37 GB of K/V and 8 GB of weights a step (~11 ms, ~24k tok/s): where does such a step's time go?
# Suspect: below fp8_dot_min_tokens (512) the weights are widened to bf16 for XLA's dot, which at 256 rows may be
# materialised (16 GB written and read again) rather than fused; FP8 x FP8 for every step beat it at batch 32.
for run in "fp8 quantization=fp8" "fp8_dot quantization=fp8 --set fp8_dot_min_tokens=1" "bf16 quantization=null"; do
    name=${run%% *}
    step "long_decode_$name" 300 python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy \
        --dtype bfloat16 --batch-sizes 64,256 --prompt 1024 --max-model-len 2048 --steps 20 \
        --set ${run#* } --json "$QOUT/long_decode_$name.json"
done
# Issue 20: warm start-up after jinja2 left the import (8.38 s on 2026-12-05; goal 8 s).
step startup 420 python scripts/profile_startup.py --config $BF16 --warm-runs 2 --json "$QOUT/startup.json"
# Issue 21: FP8 offline throughput, 128 in / 2048 out x 1000 (NVIDIA's TensorRT-LLM table: 23,295 output tok/s).
step fp8_tput_128_2048 600 python scripts/bench_throughput.py --config $FP8 --skip-hf --dataset random \
    --input-len 128 --output-len 2048 --num-prompts 1000 --json "$QOUT/fp8_tput.json"
# Issue 21: FP8 KV cache at long context against the model-dtype pool, batch 64 x 8k.
for kv in auto fp8; do
    step "kv_$kv" 420 python scripts/bench_latency.py --config $FP8 --skip-hf --batch-sizes 64 --input-len 8000 \
        --output-len 128 --repeats 1 --set max_model_len=8192 --set kv_cache_dtype=$kv --json "$QOUT/kv_$kv.json"
done
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

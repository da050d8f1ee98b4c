# The twelfth session's follow-up on one GPU (2026-12-05), run by scripts/device_queue.sh: start-up with the
# executable-cache prefetch (issue 20: warm <= 8 s), FP8 128 in / 2048 out with FP8 x FP8 from 32-token steps (issue 21;
# 8,854 output tok/s on an H100 with the old 512 threshold), then the 256-row decode step with an FP8 KV pool.
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
export PYTHONPYCACHEPREFIX=/tmp/pyc
FP8=configs/llama3-8b-fp8-h200.yaml
step startup 150 python scripts/profile_startup.py --config configs/llama3-8b-h200.yaml --warm-runs 2 \
    --json "$QOUT/startup.json"
step fp8_tput_128_2048 300 python scripts/bench_throughput.py --config $FP8 --skip-hf --dataset random \
    --input-len 128 --output-len 2048 --num-prompts 1000 --json "$QOUT/fp8_tput.json"
step long_decode_fp8_kv 150 python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy \
    --dtype bfloat16 --batch-sizes 256 --prompt 1024 --max-model-len 2048 --steps 20 \
    --set quantization=fp8 --set kv_cache_dtype=fp8 --json "$QOUT/long_decode_fp8_kv.json"

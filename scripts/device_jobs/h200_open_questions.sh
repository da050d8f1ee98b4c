# The measurements issues 19-21 still need on one H200, in the order they pay off; run by scripts/device_queue.sh
# (its header says how), each step bounded and logged under $QOUT. Results go to docs/benchmarks.md with the card,
# date and commit. Llama-3-8B shapes, dummy weights. The reply's device may be an H100 under this kind: check
# card.csv, and compare only within one call.
set -u
# SKIP: names of steps (and of servers, serve_NAME) to leave out, e.g. what an earlier call on this kind of card
# already measured: SKIP="startup_cold bf16_latency serve_sweep sweep_serving" bash scripts/device_queue.sh start ...
# ONLY: the names to run, every other step and server left out (a short call's few measurements).
SKIP=" ${SKIP:-} "
ONLY=" ${ONLY:-} "
skipped() { [[ $SKIP == *" $1 "* || ( $ONLY != "  " && $ONLY != *" $1 "* ) ]] && echo "== skip $1"; }
step() {  # step NAME SECONDS COMMAND...: one measurement, its log in $QOUT/NAME.log
    local name=$1 limit=$2
    shift 2
    skipped "$name" && return
    echo "== $(date +%T) $name"
    timeout -k 10 "$limit" "$@" > "$QOUT/$name.log" 2>&1
    echo "== $(date +%T) $name exit $?"
    tail -n 12 "$QOUT/$name.log"
}
serve() {  # serve NAME ARGS...: a fresh `jllm serve` on port 8100 for the steps after it (`stop` ends it)
    local name=$1
    shift
    server= server_name=$name
    skipped "serve_$name" && return
    python -m jllm serve --config $BF16 --port 8100 --step-timeline-path "$QOUT/steps_$name.jsonl" "$@" \
        > "$QOUT/serve_$name.log" 2>&1 &
    server=$!
    for _ in $(seq 150); do curl -sf localhost:8100/ready > /dev/null && break; sleep 1; done
}
stop() {  # stops the server serve started (if it did), its steps summarized (jllm.step_timeline)
    [[ -n $server ]] && kill "$server" && wait "$server"
    [[ -n $server ]] && python scripts/summarize_step_timeline.py "$QOUT/steps_$server_name.jsonl" \
        > "$QOUT/steps_$server_name.md" 2>&1
}
baseline() {  # baseline NAME FILE SED: /tmp/ab_NAME, this tree with one edit (SED on FILE), for a same-call A/B
    rm -rf "/tmp/ab_$1" && mkdir -p "/tmp/ab_$1" && cp -r jllm pallas_kernels scripts configs "/tmp/ab_$1/" && \
        sed -i "$3" "/tmp/ab_$1/$2"
    diff -u "$2" "/tmp/ab_$1/$2" > "$QOUT/ab_$1.diff"
}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$QOUT/card.csv"
# SKIP_H100: what to leave out as well when the card that came is an H100 (a call for an H200 may get one)
grep -q H100 "$QOUT/card.csv" && SKIP="$SKIP ${SKIP_H100:-} "
git log -1 --format='%H %s' > "$QOUT/commit.txt" 2>/dev/null
BF16=configs/llama3-8b-h200.yaml
FP8=configs/llama3-8b-fp8-h200.yaml

# Twenty-eighth session: a decode layer's matmuls as Pallas kernels that own the norm before them and the SwiGLU or
# residual add after (pallas_kernels/decode_gemv.py), against XLA's GEMMs and the ~5 small fusions a layer around them
# (batch-1 bf16 step on the H200: GEMMs 3.69 of 4.17 ms, ~260 small fusions 0.41 ms). 32 attention-less layers.
# Twenty-ninth session, H100: tuned per shape the kernels matched XLA (5.119 against 5.127 ms) and those tilings are
# the default; in the engine TPOT 5.46 / 5.57 against 5.50 / 5.63 ms. On the H200: the sweep, then the engine.
step decode_gemv 330 python scripts/bench_decode_gemv.py --rows 1 --tune --tune-budget-s 40 --json "$QOUT/decode_gemv.json"
# The engine with it (decode_gemv_max_tokens: QKV and gate-up in the kernel, their norms and the SwiGLU folded in;
# compiled for an H200 without a GPU, a batch-1 layer launches 10 kernels against 14), the same step against XLA's.
for gemv in "off:" "on:--set decode_gemv_max_tokens=16"; do
    step "step_gemv_${gemv%%:*}" 300 python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy \
        --dtype bfloat16 --batch-sizes 1,8 --max-num-batched-tokens 32 --steps 100 --trace-steps 3 ${gemv#*:} \
        --json "$QOUT/step_gemv_${gemv%%:*}.json"
    step "bf16_latency_gemv_${gemv%%:*}" 300 python scripts/bench_latency.py --config $BF16 --skip-hf --batch-sizes 1,8 \
        ${gemv#*:} --json "$QOUT/bf16_lat_gemv_${gemv%%:*}.json"
done
# Twenty-seventh session: on one process a step's packed inputs stay NumPy arrays and the programs' dispatch moves
# them (a CPU batch-1 step's host time 0.848 -> 0.610 ms). FP8's batch-1 decode is host-bound (TPOT 3.73 ms against
# a 3.215 ms step, H200 2026-12-06): its TPOT and host phases against this tree moving them first (device_put of
# both, the way before), in the same call.
baseline put jllm/runner.py 's/        if jax.process_count() > 1:/        if True:/; s/buffers = tuple(jax.make_array_from_process_local_data(sharding, buffer) for buffer in buffers)/buffers = tuple(jax.device_put(list(buffers), sharding))/'
for tree in "now:" "put:env PYTHONPATH=/tmp/ab_put:/tmp/ab_put/scripts:/tmp/site"; do
    root=.
    [[ ${tree%%:*} == put ]] && root=/tmp/ab_put
    step "fp8_latency_${tree%%:*}" 300 ${tree#*:} python $root/scripts/bench_latency.py --config $FP8 --skip-hf \
        --batch-sizes 1,8 --json "$QOUT/fp8_lat_${tree%%:*}.json"
    step "step_b1_fp8_${tree%%:*}" 300 ${tree#*:} python $root/scripts/profile_step.py --model configs/models/llama3-8b \
        --load-format dummy --dtype bfloat16 --batch-sizes 1 --max-num-batched-tokens 32 --steps 100 \
        --set quantization=fp8 --json "$QOUT/step_b1_fp8_${tree%%:*}.json"
done
# The ways of moving a step's two input buffers side by side on this host (the runner's now: NumPy into the calls; the
# eighth session's H200 host: 189-268 us for two make_array_from_process_local_data calls).
step host_transfer 120 python scripts/bench_host_transfer.py --words 1024,4096,16384 --calls 2000 \
    --json "$QOUT/host_transfer.json"
# The FP8 step's dispatch (1.46 ms against bf16's 0.81; 323 arguments against 195): what an argument costs the host.
step dispatch_args 120 python scripts/bench_dispatch.py --args 1,64,195,323,512 --calls 2000 --json "$QOUT/dispatch.json"
# Issue 20: cold start-up (goal 30 s; H200 51.8 s on 2026-12-05 11:00; H100 52.7 s at 15:25 with autotuning, 41.8
# without). Since then: compiles with the pool's memory free (the H100's cold warm-up ran out of device memory in
# XLA's autotuner twice), samplers for 4 row counts instead of 9, every forward queued first, Triton's driver pinned
# to CUDA. H100 2026-12-05 18:05: 50.4 s, 45.6 sampled, 41.6 without autotuning; the main thread imported torch for
# 6.8 s inside jax-triton's compile (Triton 3.6's argument specializer), now refused it. Then sampled, then no autotuning.
step startup_cold 240 python scripts/profile_startup.py --config $BF16 --warm-runs 1 --json "$QOUT/startup_cold.json"
# Which threads hold the GIL during a cold start, doing what (py-spy samples only GIL holders with --gil). Compiled
# without a GPU on the 2-core CPU host (2026-12-07) the main thread traces and lowers every program in 8.5 s; cold
# H100 warm-ups took 11.4-12.9 s for it the same day (7.7 s on 2026-12-06). On the CPU the compile workers held the
# GIL in JAX's cache write (executable.serialize()).
step startup_gil 300 /tmp/site/bin/py-spy record --gil --threads --subprocesses --format raw -r 200 \
    -o "$QOUT/startup_gil.txt" -- python scripts/profile_startup.py --config $BF16 --warm-runs 0 \
    --json "$QOUT/startup_gil.json"
# Twenty-second session: XLA's Triton GEMMs only in programs of at most 16 matmul rows (jllm.runner.gemm_options;
# cuBLAS alone above, where it was as fast on an H100 and its start 7.6 s sooner). Against Triton GEMMs everywhere
# (the flag the runner leaves to XLA_FLAGS): the cold start, the TPOT (batch 32's bucket now cuBLAS) and a mixed step.
step startup_cold_triton_all 240 env XLA_FLAGS=--xla_gpu_enable_triton_gemm=true python scripts/profile_startup.py \
    --config $BF16 --warm-runs 0 --json "$QOUT/startup_cold_triton_all.json"
step bf16_latency 360 python scripts/bench_latency.py --config $BF16 --skip-hf --batch-sizes 1,8,32 \
    --json "$QOUT/bf16_lat.json"
# Twenty-fourth session: XLA's split-K at batch 1 writes f32 partials that a second kernel sums, so the residual add
# and the next norm cannot fuse with the GEMM; compiled for an H200 without a GPU, forcing split-K 1 takes a layer's
# kernels 14 -> 11 (the residual add joins the next norm's reduction). Is the GEMMs' streaming worth that? H100
# 2026-12-06: no (TPOT 5.82 / 7.25 ms at batch 1 / 8 against 5.57 / 5.63): XLA's split-K stays.
step bf16_latency_splitk1 300 env XLA_FLAGS=--xla_gpu_experimental_force_split_k=1 python scripts/bench_latency.py \
    --config $BF16 --skip-hf --batch-sizes 1,8 --json "$QOUT/bf16_lat_splitk1.json"
step bf16_latency_triton_all 360 env XLA_FLAGS=--xla_gpu_enable_triton_gemm=true python scripts/bench_latency.py \
    --config $BF16 --skip-hf --batch-sizes 1,8,32 --json "$QOUT/bf16_lat_triton_all.json"
for flags in ":" "_triton_all:--xla_gpu_enable_triton_gemm=true"; do
    step "mixed_step_224${flags%%:*}" 300 env XLA_FLAGS="${flags#*:}" python scripts/profile_step.py \
        --model configs/models/llama3-8b --load-format dummy --dtype bfloat16 --batch-sizes 32 --prompt 1024 \
        --prefill-tokens 224 --steps 30 --json "$QOUT/mixed_step_224${flags%%:*}.json" \
        --dump-hlo "$QOUT/hlo_mixed_224${flags%%:*}"
done
# Issue 20's batch-1 TPOT (3.9 ms; the step 4.174 ms on 2026-12-06, ~260 small fusions 0.41 ms beside the GEMMs'
# 3.69): the step's optimized HLO, to read which elementwise work XLA leaves outside the GEMM fusions.
# Its autotuning results too, for the deviceless GPU compiles on a CPU host (--xla_gpu_load_autotune_results_from).
step hlo_b1 300 env XLA_FLAGS=--xla_gpu_dump_autotune_results_to=$QOUT/autotune_b1.textproto python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy --dtype bfloat16 \
    --batch-sizes 1 --max-num-batched-tokens 32 --steps 30 --json "$QOUT/step_b1_hlo.json" --dump-hlo "$QOUT/hlo_b1"
# Issue 20's batch-1 step launches ~455 kernels in one CUDA graph, ~260 of them small fusions at ~1.6 us each, most of
# that latency. XLA 0.11.2 turns programmatic dependent launch on by default (compiled without a GPU, the dumped
# debug options list xla_gpu_enable_pdl only when set false): what does it buy, and do the graph's concurrent regions
# (independent kernels side by side: the attention's metadata, the KV write beside the queries' rotary) buy more?
for flags in "base:" "concurrent:--xla_gpu_graph_enable_concurrent_region=true" "nopdl:--xla_gpu_enable_pdl=false"; do
    step "b1_flags_${flags%%:*}" 240 env XLA_FLAGS="${flags#*:}" python scripts/profile_step.py \
        --model configs/models/llama3-8b --load-format dummy --dtype bfloat16 --batch-sizes 1 \
        --max-num-batched-tokens 32 --steps 100 --trace-steps 3 --json "$QOUT/b1_flags_${flags%%:*}.json"
done
# Twenty-sixth session: a one-token step writes its K/V with a dynamic-update-slice into reserved page 0 for padding
# (XLA's own form of the one-row scatter kept the old entry, which held the new row's rotary in a kernel of its own:
# 14 -> 13 kernels a batch-1 layer, compiled without a GPU). The step against the scatter, in the same call: the
# baseline is this tree with the one-token branch turned off.
baseline scatter pallas_kernels/reference.py 's/^    if k.shape\[0\] == 1:$/    if False:/'
step b1_write_scatter 240 env PYTHONPATH=/tmp/ab_scatter:/tmp/ab_scatter/scripts:/tmp/site python \
    /tmp/ab_scatter/scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy --dtype bfloat16 \
    --batch-sizes 1 --max-num-batched-tokens 32 --steps 100 --trace-steps 3 --json "$QOUT/b1_write_scatter.json"
# H200 2026-12-06: cold 41.6 s (goal 30), warm-up 29.1 s of it, whose critical path is the slowest compile (forward
# 1024 x 256: 23 s on one thread) while 16 threads share 40 programs. XLA can split one program's LLVM module over
# several threads (xla_gpu_force_compilation_parallelism): does the slowest compile shorten?
step startup_cold_parallel4 240 env XLA_FLAGS=--xla_gpu_force_compilation_parallelism=4 python \
    scripts/profile_startup.py --config $BF16 --warm-runs 0 --json "$QOUT/startup_cold_parallel4.json"
# jllm now compiles with XLA's autotuning at level 1 (timing only; jllm.runner.autotune_options): H100 2026-12-06, one
# call: cold 35.0 s at XLA's default level 4, 23.2 s at level 1. Level 4 again as the baseline, and its TPOT below:
# do level 1's choices keep the step's time? H100 2026-12-06: yes (5.55 / 5.70 / 6.33 ms against 5.56 / 5.77 / 6.51).
step startup_cold_autotune4 240 env XLA_FLAGS=--xla_gpu_autotune_level=4 python scripts/profile_startup.py \
    --config $BF16 --warm-runs 0 --json "$QOUT/startup_cold_autotune4.json"
# Issue 21, asked by the twenty-first session's H200 (2026-12-06): the FP8 pool's decode kernel read e4m3 at 2.06 TB/s
# at 64 x 8k where the bf16 pool's moved 4.26: its 128-key tiles are 16 KiB (sized by the queries' itemsize). Its
# tilings (256-key tiles among them) beside the bf16 pool's, one shape.
step tune_decode_fp8 280 python scripts/bench_kernels.py --tune --tune-only --tune-kinds decode,decode-fp8 \
    --tune-kernels pallas --tune-shapes 32x8192 --deadline-s 240 --out "$QOUT/tune_decode_fp8"
# Issue 19: decode at batch 1, 8k-32k context, within 2x of its KV bytes' time as the step runs it (H200 2026-12-03:
# 19.7 us in-step at 8k against 7.9, 44.5 at 32k against 31.5): every split count up to 64 (the default is 32 at 8k:
# 256 programs of two 128-key tiles each) and the tile grid. Then the decode table at page size 64 (the rest is 16).
step tune_decode_b1 300 python scripts/bench_kernels.py --tune --tune-only --tune-kinds decode --tune-kernels pallas \
    --tune-shapes 1x8192,1x32768 --deadline-s 270 --out "$QOUT/tune_decode_b1"
step kernels_page64 300 python scripts/bench_kernels.py --batches 1,8,32,128 --contexts 2048,8192,32768 --page-size 64 \
    --no-reference --no-stock --out "$QOUT/kernels_page64"
# FP8 batch-1 TPOT through generate was 3.73 ms against the step's 3.215 there; the FP8 config's max_model_len is 4096
# (profile_step's 2048): a 256-page table gives batch 1 32 KV splits against 16. The step at 4096.
step step_b1_fp8_len4096 300 python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy \
    --dtype bfloat16 --batch-sizes 1 --max-num-batched-tokens 32 --max-model-len 4096 --steps 100 \
    --set quantization=fp8 --json "$QOUT/step_b1_fp8_len4096.json"
# Issue 20: bf16 TPOT at batch 1 / 8 / 32 (goals 3.9 / 4.1 / 4.6 ms; 4.16 / 4.28 / 4.81 at best, 4.41 / 4.54 / 4.97 on
# 2026-12-05 12:00), batch 8 and 32 now sampling 8 and 64 rows.
step bf16_latency_autotune4 360 env XLA_FLAGS=--xla_gpu_autotune_level=4 python scripts/bench_latency.py \
    --config $BF16 --skip-hf --batch-sizes 1,8,32 --json "$QOUT/bf16_lat_autotune4.json"
# Issue 20's offline goals (>= 85 % of the roofline on honest ceilings; last measured on an H200 2026-12-02: ShareGPT-like
# 79 %, 128 / 1024 86 %): the three datasets and 128 / 128 x 3000, transformers left out (its figures are in the
# issue; a baseline at one batch size is the next call's).
for run in "sharegpt:" "1024_128:--dataset random --input-len 1024 --output-len 128" \
    "128_1024:--dataset random --input-len 128 --output-len 1024" \
    "128_128:--dataset random --input-len 128 --output-len 128 --num-prompts 3000"; do
    step "bf16_tput_${run%%:*}" 300 python scripts/bench_throughput.py --config $BF16 --skip-hf ${run#*:} \
        --json "$QOUT/bf16_tput_${run%%:*}.json"
done
# Issue 20's offline runs sit at 60-71 % of the roofline: where a 256-sequence decode step's time goes (GEMMs at the
# matmul rate against attention at the copy rate, one after the other, and the host's share), at the 128 / 1024 run's
# mean context (~640 tokens).
# H100 2026-12-07: attention 8.06 ms at the copy rate, cuBLAS GEMMs 6.60 ms at 72 % of the matmul rate. XLA's Triton
# GEMMs (autotuned; jllm keeps them to steps of at most 16 rows for start-up's sake) on the same step beside it.
for flags in ":" "_triton_all:--xla_gpu_enable_triton_gemm=true"; do
    step "step_b256${flags%%:*}" 300 env XLA_FLAGS="${flags#*:}" python scripts/profile_step.py \
        --model configs/models/llama3-8b --load-format dummy --dtype bfloat16 --batch-sizes 256 --prompt 640 --steps 30 \
        --trace-steps 3 --json "$QOUT/step_b256${flags%%:*}.json"
done
# Issue 20 asks max_num_seqs and max_num_batched_tokens chosen by measurement: at the defaults (256 / 2048) the H200
# ran 59.6-70.9 % of the roofline (2026-12-07). The two runs furthest below it, at more sequences and larger steps.
for limits in "s512_t4096:512:4096" "s512_t8192:512:8192" "s1024_t8192:1024:8192"; do
    IFS=: read -r name seqs tokens <<< "$limits"
    for run in "128_128:--dataset random --input-len 128 --output-len 128 --num-prompts 3000" \
        "128_1024:--dataset random --input-len 128 --output-len 1024"; do
        step "bf16_tput_${run%%:*}_$name" 300 python scripts/bench_throughput.py --config $BF16 --skip-hf ${run#*:} \
            --set max_num_seqs=$seqs --set max_num_batched_tokens=$tokens --json "$QOUT/bf16_tput_${run%%:*}_$name.json"
    done
done
# Issue 20: serving at 32 concurrent, 1024 in / 128 out (goal TTFT p50 100 ms, p99 250, TPOT p50 8 ms; H200 184 ms /
# 12.45 on 2026-12-05, ITL p90 56 ms): 32 decodes beside a 1,024-token prompt ran as a 2,048-token step. Now the
# scheduler ends such a step's prefill chunk on 1,024 (prefill_alignment_min_tokens, default 256); against it off, and
# with each prompt's chunks capped at 256 (288-token steps were padded to 512 before; now cut to 256: every step near
# the H200's compute / bandwidth ridge). A warm start each (the executable cache's key leaves these keys out).
# Each beside the steady-state serving roofline on bf16_latency's ceilings (bench_common.serving_roofline).
ROOF=()
[[ -e $QOUT/bf16_lat.json ]] && ROOF=(--roofline-config $BF16 --ceilings "$QOUT/bf16_lat.json")
for run in "align256:" "align0:--prefill-alignment-min-tokens 0" "cap256:--long-prefill-token-threshold 256"; do
    serve "${run%%:*}" ${run#*:}
    step "serving_${run%%:*}" 300 python scripts/bench_serving.py --base-url http://127.0.0.1:8100 --num-prompts 320 \
        --input-len 1024 --output-len 128 --max-concurrency 32 "${ROOF[@]}" --json "$QOUT/serving_${run%%:*}.json"
    stop
done
# Issue 20 asks for the GPU's serving plots: throughput and TTFT / TPOT against concurrency and request rate, 1024 in
# / 128 out, on one server. Until 2026-12-06 every point drew the same prompts (prefix-cache hits past the first
# point); now each point its own seed.
serve sweep
mkdir -p "$QOUT/img"
step sweep_serving 420 python scripts/sweep_serving.py --base-url http://127.0.0.1:8100 --concurrencies 1,8,32,64 \
    --request-rates 2,4,8,16 --num-prompts 64 --input-len 1024 --output-len 128 --title "Llama-3-8B shapes (dummy weights)" \
    --out-dir "$QOUT/img" --json "$QOUT/sweep_serving.json"
stop
# Every Pallas case against the float32 reference (49/49 on the H100 2026-12-05; wide heads and padded widths since).
step check_pallas 300 python scripts/check_kernels.py --kernel pallas --json "$QOUT/check_pallas.json"
# Issue 20's serving TPOT: what a step carrying a prefill chunk beside 32 decodes spends its time on (32 + 224, 32 + 480
# and 32 + 992 fill the 256, 512 and 1,024 buckets; the last is the serving run's step with a whole prompt: ITL p90
# 29.5 ms on the H200 2026-12-07, against 19 ms for its FLOPs at the matmul rate). Until 2026-12-05 18:30 profile_step ran no prefill here: max_num_seqs was the batch, so none was admitted.
# Issue 20's serving TPOT is about a 32-sequence decode step at ~1.1k context (ITL p50 6.05 ms on the H200
# 2026-12-07, its roofline 4.62 ms) plus the prompts' FLOPs: that step's kernels.
step step_b32 240 python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy --dtype bfloat16 \
    --batch-sizes 32 --prompt 1024 --steps 50 --trace-steps 3 --json "$QOUT/step_b32.json"
for prefill in 480 992; do
    step "mixed_step_$prefill" 300 python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy \
        --dtype bfloat16 --batch-sizes 32 --prompt 1024 --prefill-tokens $prefill --steps 30 \
        --json "$QOUT/mixed_step_$prefill.json"
done
# Since 2026-12-07 (thirty-third session) a step that runs the jax-triton kernel copies its KV lengths, block tables and
# query starts out of the packed inputs once (jllm.attention.with_kernel_buffers): read as slices, each layer's call
# was a dynamic-slice fusion outside the CUDA graph (compiled for an H200: 33 command buffers in a 1,024-token step,
# now 1). The 32 + 992 step as before it, in the same call.
baseline slices jllm/attention.py 's/^    if not runs_triton_prefill(meta, num_rows):$/    if True:/'
step mixed_step_992_slices 300 env PYTHONPATH=/tmp/ab_slices:/tmp/ab_slices/scripts:/tmp/site python \
    /tmp/ab_slices/scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy --dtype bfloat16 \
    --batch-sizes 32 --prompt 1024 --prefill-tokens 992 --steps 30 --json "$QOUT/mixed_step_992_slices.json"
# H100 2026-12-07: the 32 + 992 step's device time (27.19 ms) had 1.7 ms with no kernel running (busy 25.53); the
# decode-only step has none. Its one kernel the decode step lacks is the jax-triton prefill kernel, an FFI call that
# command buffers record by tracing it again whenever its buffers move (pallas_kernels/triton_call.py). The same step
# with custom calls left out of the command buffers (launched from the host between graph pieces instead).
step mixed_step_992_nocustom 300 env XLA_FLAGS=--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN \
    python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy --dtype bfloat16 \
    --batch-sizes 32 --prompt 1024 --prefill-tokens 992 --steps 30 --json "$QOUT/mixed_step_992_nocustom.json"
# H100 2026-12-06: the 32 + 224 step took 12.0 ms, 4.27 of it in the Triton prefill kernel (133 us a layer against ~50
# for its K/V bytes and FLOPs): a decode row fills 1 of a 64-row tile per query head. Packed GQA puts a KV head's 4
# query heads' rows in one tile (a quarter of the programs): the mixed tilings, packed against not. H100 2026-12-06:
# 136.7 -> 68.5 us at 32 + 480, so packing is now the default; the 32 + 224 step 12.0 -> 9.77 ms.
step tune_mixed 300 python scripts/bench_kernels.py --tune --tune-kinds mixed --tune-kernels triton --tune-only \
    --out "$QOUT/tune_mixed"
# Issue 21: FP8 KV against the model-dtype pool at long context, batch 64 x 8k, the decode step alone; FP8 tiles now
# widened to float16 (H100 2026-12-05: 0.279 ms of attention a sequence against bf16's 0.361; 42 and 34 sequences
# fit there).
for kv in fp8 auto; do
    step "kv_$kv" 300 python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy \
        --dtype bfloat16 --batch-sizes 64 --prompt 8000 --max-model-len 8192 --max-num-batched-tokens 2048 --steps 20 \
        --set quantization=fp8 --set kv_cache_dtype=$kv --json "$QOUT/kv_$kv.json"
done
step check_triton 300 python scripts/check_kernels.py --kernel triton-prefill --json "$QOUT/check_triton.json"
# Issue 19: the jax-triton prefill kernel's packed-GQA tiles against the float32 reference (new, never run on a GPU),
# then its tilings on chunks and on a serving step's shape (32 decodes at 1k beside a 480-token chunk): heads first
# against items first, and a KV head's query heads packed into one tile (pack_gqa: each K/V tile loaded once a group;
# off by default until this times it). Every triton case (items-first among them) later.
step check_packed 300 python scripts/check_kernels.py --kernel triton-prefill --match packed-gqa \
    --json "$QOUT/check_packed.json"
step tune_prefill 300 python scripts/bench_kernels.py --tune --tune-kinds prefill,mixed --tune-kernels triton --tune-only \
    --out "$QOUT/tune_prefill"
# Issue 21: FP8-weight TPOT at batch 1 / 8 (goal 2.5 ms at batch 1; 3.14 at best so far), the step programs alone at
# batch 1 (bf16 and FP8), then FP8 offline throughput: 128 in / 2048 out x 1000 with an FP8 KV pool, 128 / 128 x 3000
# (NVIDIA's TensorRT-LLM table: 23,295 and 28,447 on an H200).
step fp8_latency 300 python scripts/bench_latency.py --config $FP8 --skip-hf --batch-sizes 1,8 --json "$QOUT/fp8_lat.json"
# Issue 21: o_proj (4096 x 4096, 16.8 M weights) in the one-row FP8 kernel too, not XLA's dot since the H100's
# 3.74 against 3.83 ms batch-1 TPOT (2026-12-07, one call; 10.52 against 12.21 us a call). The 20 M threshold had come
# from the H200's 19.7 against 14.9 us on 2026-12-03, before the kernel read [N, K] weights: the old threshold here.
baseline oproj pallas_kernels/fp8_gemv_spec.py 's/^MIN_WEIGHT_ELEMENTS = {"fma": 16_000_000/MIN_WEIGHT_ELEMENTS = {"fma": 20_000_000/'
step fp8_latency_oproj 300 env PYTHONPATH=/tmp/ab_oproj:/tmp/ab_oproj/scripts:/tmp/site python \
    /tmp/ab_oproj/scripts/bench_latency.py --config $FP8 --skip-hf --batch-sizes 1,8 --json "$QOUT/fp8_lat_oproj.json"
for quant in null fp8; do
    step "step_b1_$quant" 300 python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy \
        --dtype bfloat16 --batch-sizes 1 --max-num-batched-tokens 32 --steps 100 --set quantization=$quant \
        --json "$QOUT/step_b1_$quant.json"
done
step fp8_tput_128 300 python scripts/bench_throughput.py --config $FP8 --skip-hf --dataset random \
    --input-len 128 --output-len 128 --num-prompts 3000 --json "$QOUT/fp8_tput_128.json"
step fp8_tput_kv_fp8 480 python scripts/bench_throughput.py --config $FP8 --skip-hf --dataset random \
    --input-len 128 --output-len 2048 --num-prompts 1000 --set kv_cache_dtype=fp8 --json "$QOUT/fp8_tput_fp8.json"
step fp8_latency_nocap 300 python scripts/bench_latency.py --config $FP8 --skip-hf --batch-sizes 1,8 \
    --set fp8_kernel_max_tokens=null --json "$QOUT/fp8_lat_nocap.json"
# The H100's TPOT fell from 5.58 / 5.72 / 6.35 (482c56a) to 6.31 / 6.26 / 6.64 (a2059d1, another machine): the same
# steps compiled on first use, with the pool in place (the warm-up now compiles with it freed), in the same call.
step bf16_latency_lazy 360 python scripts/bench_latency.py --config $BF16 --skip-hf --batch-sizes 1,8,32 \
    --set compile_at_start=false --json "$QOUT/bf16_lat_lazy.json"
# A 512-token budget (the H100's best TTFT, 102 ms p50, 2026-12-05; TPOT 13.7 then, its mixed steps ~2x their matmul
# time): now with the prefill grid heads first. Its programs are the 2,048 budget's first 10 (JAX's cache has them).
# And 4,096 (vLLM's default for its API server on large-memory GPUs is 8,192): a wave of arrivals prefilled in fewer,
# larger steps. H200 2026-12-07 at 2,048: TTFT p50 / p99 154.5 / 670.1 ms, TPOT p50 10.75 (after the first wave).
# H100 the same day, one call: 2,048 156.0 / 489.1 ms, 11.87; 512 82.3 / 117.5 ms, 11.82; 4,096 290.2 / 397.3, 11.87.
# H100 2026-12-07 (thirty-second session), one machine: 1,024 116 / 123 ms, 12.21; 384 67.5 / 120, 11.62; 256 198 /
# 201, 11.56: TPOT stays within 11.6-12.2 ms at every budget (each prompt token costs its FLOPs whatever step carries
# it), so `jllm serve` now defaults to 512 (jllm.serve_config) and the align256 server above runs it; 2,048 (the
# offline default) is the comparison. BUDGETS: the budgets to serve (default "2048 4096").
for budget in ${BUDGETS:-2048 4096}; do
    serve "b$budget" --max-num-batched-tokens $budget
    step "serving_b$budget" 300 python scripts/bench_serving.py --base-url http://127.0.0.1:8100 --num-prompts 320 \
        --input-len 1024 --output-len 128 --max-concurrency 32 "${ROOF[@]}" --json "$QOUT/serving_b$budget.json"
    stop
done
# Issue 20: the server's streamed TPOT within 3 % of the engine's at batch 32 (H200 2026-12-04: ITL 6.0 ms against
# bench_latency's 4.79; the server's per-token work and the engine's host work share one GIL). 32 streams of 128 /
# 128 on `jllm serve`'s defaults, beside bf16_latency's batch-32 TPOT in the same call, while py-spy samples which
# thread holds the GIL doing what (CPU, scripted 5 ms steps, 2026-12-07: the event loop ~40 us a token, the engine
# thread ~15, no stream slower than the step).
serve stream32
if [[ -n $server ]]; then
    (sleep 8; timeout 30 /tmp/site/bin/py-spy record --pid "$server" --duration 12 --rate 250 --gil --threads \
        --format raw -o "$QOUT/serving_stream32_gil.txt" > "$QOUT/spy_stream32.log" 2>&1) &
fi
step serving_stream32 240 python scripts/bench_serving.py --base-url http://127.0.0.1:8100 --num-prompts 640 \
    --input-len 128 --output-len 128 --max-concurrency 32 --json "$QOUT/serving_stream32.json"
stop
# Cold start again: its main thread sampled (was torch's import gone?), and with autotuning off.
step startup_profile 300 python scripts/profile_startup.py --config $BF16 --warm-runs 0 --main-thread-profile 60 \
    --json "$QOUT/startup_profile.json"
step startup_cold_noautotune 240 env XLA_FLAGS=--xla_gpu_autotune_level=0 python scripts/profile_startup.py \
    --config $BF16 --warm-runs 0 --json "$QOUT/startup_cold_noautotune.json"
# Autotuning is most of the cold compiles (394 against 148 thread-s without, H100): would autotuning results a fresh
# machine brought along (XLA's per-fusion autotune cache, filled by the first run) give the untuned start's time?
mkdir -p /tmp/autotune_cache
for run in fill reuse; do
    step "startup_autotune_cache_$run" 240 env XLA_FLAGS=--xla_gpu_per_fusion_autotune_cache_dir=/tmp/autotune_cache \
        python scripts/profile_startup.py --config $BF16 --warm-runs 0 --json "$QOUT/startup_autotune_cache_$run.json"
done
# H100 2026-12-06: no file was written, and the directory did not exist (XLA may not make it): now made first.
ls /tmp/autotune_cache | wc -l > "$QOUT/autotune_cache_files.txt"; du -sh /tmp/autotune_cache >> "$QOUT/autotune_cache_files.txt"
# What autotuning buys a decode step (H100 2026-12-05: TPOT 6.31 / 6.26 / 6.64 with it, 6.14 / 5.96 / 6.98 without).
step bf16_latency_noautotune 300 env XLA_FLAGS=--xla_gpu_autotune_level=0 python scripts/bench_latency.py \
    --config $BF16 --skip-hf --batch-sizes 1,8,32 --json "$QOUT/bf16_lat_noautotune.json"
# Issue 19: the engine's own attention calls replayed alone (what the 8B step's kernels see), batch 1 and 32.
step dump_attention 300 python scripts/profile_step.py --model configs/models/llama3-8b --load-format dummy \
    --dtype bfloat16 --batch-sizes 1,32 --max-num-batched-tokens 32 --steps 100 --dump-attention "$QOUT/step.npz"
for b in 1 32; do
    step "replay_b$b" 300 python scripts/bench_kernels.py --replay "$QOUT/step_b$b.npz" --out "$QOUT/replay_b$b"
done

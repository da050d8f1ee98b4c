#!/usr/bin/env bash
# A queue of GPU measurements that outlives one device call (600 s at most): the first call starts a job file in the
# background on the lent machine and waits; each later call, made at once (the machine is given back after 30 s
# idle), waits again. Every call copies the logs so far into $OUT (queue.tgz), so nothing is lost when the time runs
# out. The job runs in its own session (setsid): a call's end kills what it started in its own.
#
#     bash scripts/device_queue.sh start scripts/device_jobs/h200_open_questions.sh 540    # carry: [".whl"]
#     bash scripts/device_queue.sh wait 540
#
# The job file runs under bash with the wheels installed (scripts/device_wheels.sh), PYTHONPATH set and $QOUT, a folder
# for its results; each step should log under $QOUT and bound its own time (`timeout`).
set -uo pipefail
cd "$(dirname "$0")/.."
QUEUE=/tmp/device_queue
export QOUT=$QUEUE/out

copy_back() {
    # One archive: a call brings back only a few files (the attention dumps stay on the machine for the replays).
    [[ -n "${OUT:-}" ]] && tar czf "$OUT/queue.tgz" -C "$QUEUE" --exclude='*.npz' . 2>/dev/null
    tail -n 25 "$QUEUE/log"
}

wait_for_queue() {
    local deadline=$((SECONDS + $1))
    while [[ ! -e "$QUEUE/done" && $SECONDS -lt $deadline ]]; do
        sleep 5
    done
    [[ -e "$QUEUE/done" ]] && echo "queue finished: exit $(cat "$QUEUE/done")" || echo "queue still running"
    copy_back
}

case "${1:-}" in
start)
    job=$2
    [[ -e "$QUEUE/log" && ! -e "$QUEUE/done" ]] && { echo "a queue is already running"; wait_for_queue "${3:-540}"; exit; }
    rm -rf "$QUEUE" && mkdir -p "$QOUT"
    bash scripts/device_wheels.sh install || exit
    export PYTHONPATH=$PWD:$PWD/scripts:/tmp/site PYTHONUNBUFFERED=1
    setsid nohup bash -c 'bash "$1"; echo $? > "$2/done"' queue "$job" "$QUEUE" > "$QUEUE/log" 2>&1 &
    wait_for_queue "${3:-540}"
    ;;
wait)
    wait_for_queue "${2:-540}"
    ;;
*)
    echo "usage: $0 start JOB_FILE [SECONDS] | wait [SECONDS]" >&2
    exit 2
    ;;
esac

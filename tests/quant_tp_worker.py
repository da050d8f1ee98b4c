"""Quantized models at TP 2 against TP 1 on fake CPU devices, run by tests/test_quantization.py in a subprocess.

Usage: ``python tests/quant_tp_worker.py SPEC.json OUT.json``; SPEC holds ``model_dir`` (a tiny float checkpoint).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path[:0] = [str(Path(__file__).parents[1]), str(Path(__file__).parent)]  # this checkout's jllm, model helpers
from tp_worker import prefill_logits  # noqa: E402

from jllm.loader import load_model  # noqa: E402
from jllm.parallel import make_mesh  # noqa: E402

PROMPT = list(range(3, 40))
# int8, and fp8 with every step FP8 x FP8 (the per-token scales of row-split inputs need a cross-device max)
SCHEMES = {"int8": dict(quantization="int8"), "fp8 x fp8": dict(quantization="fp8", fp8_dot_min_tokens=1)}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    results = {}
    for name, keys in SCHEMES.items():
        logits = {}
        for tp in (1, 2):
            loaded = load_model(spec["model_dir"], mesh=make_mesh(tp), dtype="float32", **keys)
            logits[tp] = prefill_logits(loaded, PROMPT)
        scale = loaded.model.layers[0].self_attn.qkv_proj.scale.get_value()
        results[name] = {
            "max_abs_diff": float(np.abs(logits[2] - logits[1]).max()),
            "max_abs": float(np.abs(logits[1]).max()),
            "shardings": {"qkv_scale": str(scale.sharding.spec)},
        }
    Path(sys.argv[2]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()

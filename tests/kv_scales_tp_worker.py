"""A checkpoint's FP8 KV-cache scales at TP 2 against TP 1 on fake CPU devices, run by tests/test_kv_scales.py in a
subprocess.

Usage: ``python tests/kv_scales_tp_worker.py SPEC.json OUT.json``; SPEC holds ``model_dir`` (a tiny checkpoint with
KV scales) and ``ids``.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path[:0] = [str(Path(__file__).parents[1]), str(Path(__file__).parent)]  # this checkout's jllm, model helpers
from model_utils import jllm_logits  # noqa: E402

from jllm.loader import load_model  # noqa: E402
from jllm.parallel import make_mesh  # noqa: E402
from pallas_kernels.kv_quant import FP8_DTYPE  # noqa: E402


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    logits = {}
    for tp in (1, 2):
        loaded = load_model(spec["model_dir"], mesh=make_mesh(tp), dtype="float32")
        logits[tp] = jllm_logits(loaded, spec["ids"], pool_dtype=FP8_DTYPE)
    scale = loaded.model.layers[0].self_attn.k_scale.get_value()
    result = {
        "max_abs_diff": float(np.abs(logits[2] - logits[1]).max()),
        "max_abs": float(np.abs(logits[1]).max()),
        "k_scale_sharding": str(scale.sharding.spec),
        "k_scale_devices": len(scale.sharding.device_set),
    }
    Path(sys.argv[2]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()

"""Recurrent families' tensor parallelism on 8 fake CPU devices, run by tests/test_families_recurrent.py in a
subprocess (the fake devices must be configured before JAX starts).

For each model at its TP size: the float32 logits of one prompt prefilled in one step through pages and state pools
on the mesh (an .npy file, which the test compares with transformers'), and where the recurrent layers' parameters
and first state pool lie. No engine: its step programs run the same layers on the same shardings
(tests/test_hybrid_tp.py runs them for the other mixers), and each engine's compiles would cost the suite ~20 s.

Usage: ``python tests/recurrent_tp_worker.py SPEC.json OUT.json``; SPEC: ``{"models": {name: [model dir, TP size]},
"prompt": [ids], "out_dir": ...}``.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

sys.path[:0] = [str(Path(__file__).parents[1]), str(Path(__file__).parent)]  # this checkout's jllm, model helpers
from hybrid_tp_worker import RECURRENT, describe  # noqa: E402
from model_utils import jllm_logits  # noqa: E402

from jllm.kv_cache import KVCacheSpec, allocate_kv_pool  # noqa: E402
from jllm.loader import load_model  # noqa: E402
from jllm.parallel import kv_pool_sharding, make_mesh  # noqa: E402


def run(model_dir: str, tp: int, prompt: list[int], logits_file: Path) -> dict[str, Any]:
    loaded = load_model(model_dir, mesh=make_mesh(tp), dtype="float32")
    np.save(logits_file, jllm_logits(loaded, prompt))
    params = {
        "/".join(map(str, p)): describe(v.get_value())
        for p, v in nnx.to_flat_state(nnx.state(loaded.model))
        if RECURRENT in map(str, p)
    }
    spec = KVCacheSpec.for_model(loaded.args, 16, loaded.args.dtype)
    pool = allocate_kv_pool(spec, 2, kv_pool_sharding(loaded.mesh), num_state_slots=2)
    states = next(kv for kv in pool if isinstance(kv, tuple))  # the first recurrent layer's state pool
    return {"logits_file": str(logits_file), "params": params, "state_pool": [describe(x) for x in states]}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out_dir = Path(spec["out_dir"])
    models = {
        name: run(model_dir, tp, spec["prompt"], out_dir / f"{name}_tp{tp}.npy")
        for name, (model_dir, tp) in spec["models"].items()
    }
    Path(sys.argv[2]).write_text(json.dumps(models))


if __name__ == "__main__":
    main()

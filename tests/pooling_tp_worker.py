"""``LLM.encode`` at tensor parallel 2 on fake CPU devices, run by tests/test_pooling.py in a
subprocess (the device count must be set before JAX starts).

Usage: ``python tests/pooling_tp_worker.py SPEC.json OUT.json``; SPEC holds ``model``, ``engine_args``, ``prompts``
and ``layers``; the states go to ``states.npz`` beside OUT. With ``classify`` in SPEC, ``LLM.classify``'s logits
instead (tests/test_classify.py).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path[:0] = [str(Path(__file__).parents[1])]  # this checkout's jllm
from jllm import LLM  # noqa: E402


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    llm = LLM(spec["model"], tensor_parallel_size=2, **spec["engine_args"])
    if spec.get("classify"):
        logits = [out.outputs.probs for out in llm.classify(spec["prompts"], use_activation=False)]
        np.savez(Path(out_path).with_name("states.npz"), np.array(logits))
    else:
        outputs = llm.encode(spec["prompts"], layers=spec["layers"])
        np.savez(Path(out_path).with_name("states.npz"), *[out.outputs.data for out in outputs])
    qkv = llm.engine.runner.kv_caches[0]
    Path(out_path).write_text(
        json.dumps({"pool_devices": len(qkv.sharding.device_set), "mesh": llm.engine.runner.mesh.size})
    )


if __name__ == "__main__":
    main(*sys.argv[1:])

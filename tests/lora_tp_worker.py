"""LoRA under tensor parallelism on 8 fake CPU devices, run by tests/test_lora.py in a subprocess (``XLA_FLAGS`` must
be set before JAX starts).

Usage: ``python tests/lora_tp_worker.py SPEC.json OUT.json``; SPEC: the model, its adapters, the sequences and the
TP sizes. Each size's logits (a ragged step mixing no adapter and each adapter) go to ``logits_tp<N>.npz`` beside
OUT, with how each adapter array is split, and, where the spec has ``prompts``, an engine's greedy tokens at TP 2
(``engine_args``, ``prompts``: one prompt with no adapter, then one per adapter) in OUT.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path[:0] = [str(Path(__file__).parents[1]), str(Path(__file__).parent)]  # this checkout's jllm, model helpers
from lora_utils import lora_logits, lora_manager  # noqa: E402

from jllm import LLM, LoRARequest, SamplingParams  # noqa: E402
from jllm.loader import load_model  # noqa: E402
from jllm.parallel import make_mesh  # noqa: E402


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    adapters = [Path(a) for a in spec["adapters"]]
    found = {}
    for tp in spec["tp_sizes"]:
        loaded = load_model(spec["model"], mesh=make_mesh(tp), dtype="float32")
        manager = lora_manager(loaded, adapters)
        slots = [0, *(manager.slots.acquire(i) for i in range(1, len(adapters) + 1))]
        logits = lora_logits(loaded, manager, spec["sequences"], slots)
        np.savez(Path(out_path).with_name(f"logits_tp{tp}.npz"), *logits)
        layer = manager.weights[0]
        found[tp] = {
            "kv_replicas": loaded.kv_replicas,
            "devices": {name: len(getattr(layer, name).sharding.device_set) for name in ("qkv_b", "o_a", "down_b")},
            "split": {
                name: not getattr(layer, name).sharding.is_fully_replicated for name in ("qkv_b", "o_a", "down_b")
            },
        }
    if "prompts" not in spec:
        Path(out_path).write_text(json.dumps(found))
        return
    llm = LLM(spec["model"], tensor_parallel_size=2, **spec["engine_args"])
    loras = [None, *(LoRARequest(f"a{i}", i, str(a)) for i, a in enumerate(adapters, start=1))]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    outputs = llm.generate(spec["prompts"], params, use_tqdm=False, lora_request=loras)
    found["engine_tp2_tokens"] = [list(o.outputs[0].token_ids) for o in outputs]
    Path(out_path).write_text(json.dumps(found))


if __name__ == "__main__":
    main(*sys.argv[1:])

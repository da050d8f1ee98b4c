"""Llama-3-70B at tensor parallel 8, planned on 8 fake CPU devices; run by tests/test_tp8_plan.py in a subprocess.

``XLA_FLAGS`` must be set before JAX starts, so this cannot share the pytest process. Two parts:

- the plan: configs/llama3-70b-tp8.yaml's model built abstractly (``nnx.eval_shape``, no 141 GB), each parameter's
  and the KV pool's shard shape from ``jllm.parallel``'s shardings on an 8-device mesh, and the pool the engine's own
  sizing function (``kv_cache.num_pages_from_device_memory``) gives on 8 fake 80 GB GPUs;
- a scaled-down model of the same shape ratios through ``LLM`` with dummy weights: TP=8's greedy tokens against
  TP=1's.

Usage: ``python tests/tp8_plan_worker.py [--greedy-dir DIR] [--json OUT.json]``; prints the per-device table that
docs/tp8-plan.md quotes.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

sys.path[:0] = [str(Path(__file__).parents[1]), str(Path(__file__).parent)]  # this checkout's jllm, test helpers
from test_kv_cache import FakeDevice  # noqa: E402

from jllm import LLM, SamplingParams, kv_cache, loader, parallel  # noqa: E402
from jllm.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "llama3-70b-tp8.yaml"
TP = 8
GIB = 1 << 30
# What each fake GPU reports as ``bytes_limit``: the 80 GB card, and the same card under JAX's default
# allocator cap, XLA_PYTHON_CLIENT_MEM_FRACTION=0.75 (the H200 run in docs/benchmarks.md saw 112.6 GB of 143,771 MiB).
DEVICE_LIMITS = {"80 GiB": 80 * GIB, "60 GiB (JAX's default 0.75 of 80 GiB)": 60 * GIB}
# Stated headroom for the largest step's activations and XLA's workspace, per device (not measured: the 8-GPU run
# should read peak_bytes_in_use); ``activation_estimate`` below comes to ~0.2 GiB.
ACTIVATION_HEADROOM = 2 * GIB

# The scaled-down twin: 70B's ratios (64 q / 8 KV heads, head_dim x heads = hidden, MLP 3.5 x hidden, untied head).
SCALED = dict(hidden_size=512, head_dim=8, intermediate_size=1792, num_hidden_layers=4, vocab_size=1024)
# Small engine, as in tests/tp_worker.py but with 4 step buckets of up to 8 tokens; float32 so that only the order
# of the all-reduces' partial sums differs between TP sizes. Programs compiled on first use: greedy decoding needs the
# forwards and one sampler, not warm-up's set (tests/test_tensor_parallel.py inspects that).
ENGINE_ARGS = dict(
    dtype="float32", max_model_len=64, max_num_batched_tokens=8, max_num_seqs=4, num_pages=40, compile_at_start=False
)
PROMPTS = [[1, 5, 77, 300, 900, 12, 40], [1, 200, 300, 400], list(range(100, 140))]  # the last is prefilled in chunks
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


def parameter_plan(hf_config: dict[str, Any], dtype: Any) -> tuple[dict[str, dict[str, Any]], Any, int, Mesh]:
    """Every parameter's global and per-device shape and bytes at TP=8, without allocating it."""
    _, state, args, kv_replicas = loader.abstract_model(hf_config, dtype, TP)
    mesh = parallel.make_mesh(TP)
    params = {}
    for path, var in nnx.to_flat_state(state):
        abstract = var.get_value()
        sharding = parallel.param_sharding(mesh, var.axes)
        shard = sharding.shard_shape(abstract.shape)
        params["/".join(map(str, path))] = {
            "shape": list(abstract.shape),
            "shard_shape": list(shard),
            "spec": str(sharding.spec),
            "nbytes": math.prod(abstract.shape) * abstract.dtype.itemsize,
            "shard_nbytes": math.prod(shard) * abstract.dtype.itemsize,
        }
    return params, args, kv_replicas, mesh


def activation_estimate(args: Any, num_tokens: int, num_seqs: int) -> int:
    """Rough per-device bytes of one layer's live tensors in the largest step, plus the gathered logits rows."""
    item, hidden = np.dtype(args.dtype).itemsize, args.hidden_size
    per_token = {
        "residual, O and down partial sums": 3 * hidden * item,
        "RMSNorm in float32": hidden * 4,
        "QKV": args.num_kv_heads // TP * (args.num_heads // args.num_kv_heads + 2) * args.head_dim * item,
        "attention output": args.num_heads // TP * args.head_dim * item,
        "gate/up and their product": 3 * args.intermediate_size // TP * item,
    }
    return num_tokens * sum(per_token.values()) + num_seqs * args.vocab_size * 4  # float32 logits of each sequence


def pool_plan(spec: kv_cache.KVCacheSpec, mesh: Mesh, num_pages: int) -> dict[str, Any]:
    shape = spec.layer_shape(num_pages)  # [2, num_kv_heads, num_pages, page_size, head_dim]
    shard = parallel.kv_pool_sharding(mesh).shard_shape(shape)  # split on the KV-head axis
    itemsize = spec.dtype.itemsize
    return {
        "num_pages": num_pages,
        "tokens": (num_pages - 1) * spec.page_size,  # page 0 is reserved
        "layer_shape": list(shape),
        "layer_shard_shape": list(shard),
        "nbytes": spec.num_layers * math.prod(shape) * itemsize,
        "shard_nbytes": spec.num_layers * math.prod(shard) * itemsize,
    }


def plan() -> dict[str, Any]:
    config = load_config(CONFIG)
    model_dir = ROOT / config.model.model
    hf_config = loader.read_json(model_dir / "config.json")
    dtype = loader.resolve_dtype(config.model.dtype, hf_config)
    params, args, kv_replicas, mesh = parameter_plan(hf_config, dtype)
    weights = sum(p["shard_nbytes"] for p in params.values())  # what the engine reads as params_bytes per device
    page_size, max_model_len = config.cache.page_size, config.model.max_model_len
    max_num_seqs = config.scheduler.max_num_seqs
    spec = kv_cache.KVCacheSpec.for_model(args, page_size, args.dtype)
    full_length = 1 + max_num_seqs * math.ceil(max_model_len / page_size)  # every sequence at max_model_len
    utilization = config.cache.gpu_memory_utilization
    devices = {}
    for name, limit in DEVICE_LIMITS.items():
        gpus = [FakeDevice({"bytes_limit": limit, "bytes_in_use": 0}) for _ in range(TP)]
        num_pages = kv_cache.num_pages_from_device_memory(spec, utilization, weights, devices=gpus, kv_shards=TP)
        devices[name] = {"bytes_limit": limit, "usable": int(limit * utilization), **pool_plan(spec, mesh, num_pages)}
    return {
        "devices": jax.device_count(),
        "config": config.to_flat(),
        "kv_replicas": kv_replicas,
        "params": params,
        "param_count": sum(math.prod(p["shape"]) for p in params.values()),
        "weights_nbytes": sum(p["nbytes"] for p in params.values()),
        "weights_shard_nbytes": weights,
        "bytes_per_page": spec.bytes_per_page,
        "full_length_pool": pool_plan(spec, mesh, full_length),
        "engine_pool": devices,
        "activation_headroom": ACTIVATION_HEADROOM,
        "activation_estimate": activation_estimate(args, config.scheduler.max_num_batched_tokens, max_num_seqs),
    }


def scaled_model_dir(root: Path) -> Path:
    """config.json of 70B with the sizes of ``SCALED``, beside 70B's tokenizer files."""
    source = ROOT / load_config(CONFIG).model.model
    out = root / "llama3-70b-scaled"
    out.mkdir(parents=True, exist_ok=True)
    hf_config = loader.read_json(source / "config.json") | SCALED
    (out / "config.json").write_text(json.dumps(hf_config, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(source / name, out / name)
    return out


def greedy(root: Path) -> dict[str, Any]:
    """TP=1 and TP=8 of the scaled model with the same dummy seed: tokens, and whether the weights are identical."""
    model_dir = str(scaled_model_dir(root))
    runs, reference = {}, None
    for tp in (1, TP):
        llm = LLM(model_dir, tensor_parallel_size=tp, load_format="dummy", seed=0, **ENGINE_ARGS)
        state = nnx.to_flat_state(llm.engine.runner.state)
        values = {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in state}
        reference = values if reference is None else reference
        runs[str(tp)] = {
            "tokens": [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)],
            "weights_max_abs_diff": max(float(np.abs(values[k] - reference[k]).max()) for k in reference),
            "shard_shapes": {
                "/".join(map(str, p)): sorted({tuple(s.data.shape) for s in v.get_value().addressable_shards})
                for p, v in state
            },
        }
        del llm
    return runs


def table(found: dict[str, Any]) -> str:
    """The per-device table of docs/tp8-plan.md."""
    c = found["config"]
    gb = lambda n: f"{n / 1e9:.2f} GB ({n / GIB:.2f} GiB)"  # noqa: E731
    weights, full = found["weights_shard_nbytes"], found["full_length_pool"]
    utilization, max_model_len = c["gpu_memory_utilization"], c["max_model_len"]
    rows = [
        f"| bytes_limit per GPU | usable (x {utilization}) | weights | KV pool | pages | KV tokens | "
        f"sequences of {max_model_len} |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, pool in found["engine_pool"].items():
        rows.append(
            f"| {name} | {gb(pool['usable'])} | {gb(weights)} | {gb(pool['shard_nbytes'])} | {pool['num_pages']:,} | "
            f"{pool['tokens']:,} | {pool['tokens'] // max_model_len} |"
        )
    need = weights + full["shard_nbytes"] + found["activation_headroom"]
    return "\n".join(
        [
            f"parameters {found['param_count']:,}: {gb(found['weights_nbytes'])} in all, {gb(weights)} per device",
            f"KV page ({c['page_size']} tokens, all layers): {found['bytes_per_page']:,} bytes, "
            f"{found['bytes_per_page'] // TP:,} per device",
            f"max_num_seqs x max_model_len = {c['max_num_seqs']} x {max_model_len}: {full['num_pages']:,} pages, "
            f"{gb(full['shard_nbytes'])} per device; + weights + {gb(found['activation_headroom'])} headroom = "
            f"{gb(need)}",
            f"activation estimate (largest step): {gb(found['activation_estimate'])}",
            "",
            *rows,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--greedy-dir", type=Path, help="run the scaled-down TP=1 vs TP=8 check with models here")
    parser.add_argument("--json", type=Path, help="write the findings here")
    a = parser.parse_args()
    if a.greedy_dir:
        os.environ["JLLM_CACHE"] = str(a.greedy_dir / "jllm_cache")  # keeps the compilation cache out of $HOME
    found = {**plan(), "greedy": greedy(a.greedy_dir) if a.greedy_dir else None}
    if a.json:
        a.json.write_text(json.dumps(found))
    print(table(found))


if __name__ == "__main__":
    main()

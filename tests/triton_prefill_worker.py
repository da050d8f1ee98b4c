"""Runs the Triton prefill kernel in Triton's interpreter (torch CPU tensors) on the cases given as JSON on argv[1].

A subprocess of tests/test_triton_prefill.py: ``TRITON_INTERPRET`` must be set before Triton compiles anything, and
the rest of the suite must not see it. Prints one JSON line per case: its relative error against the float32
reference and the largest magnitude in the rows no sequence owns (must be 0).
"""

from __future__ import annotations

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from test_kernels import make_inputs  # noqa: E402

from pallas_kernels import ref_ragged_paged_attention  # noqa: E402
from pallas_kernels import triton_prefill as tp  # noqa: E402


def run(case: dict) -> dict:
    q, kv, kv_lens, tables, qsl = make_inputs(
        case["seed"], case["q_lens"], case["kv_lens"], page_size=case["page_size"], head_dim=case["head_dim"],
        group=case["group"], dtype=jnp.float32,
    )  # fmt: skip
    opts = dict(sm_scale=case["head_dim"] ** -0.5, soft_cap=case.get("soft_cap"), sliding_window=case.get("window"))
    sinks = jnp.asarray(np.random.default_rng(case["seed"]).normal(size=q.shape[1]) * 3.0, jnp.float32)
    has_sinks = case.get("sinks", False)
    ref = np.asarray(
        ref_ragged_paged_attention(q, kv, kv_lens, tables, qsl, sinks=sinks if has_sinks else None, **opts)
    )
    cfg = tp.PrefillConfig(block_m=case["block_m"], block_n=case["block_n"])
    item_seq, item_first = tp.work_items(qsl, q.shape[0], cfg)
    params = tp.kernel_params(
        q.shape,
        kv.shape,
        tables.shape[1],
        tables.shape[0],
        dot_precision="ieee",
        config=cfg,
        has_sinks=has_sinks,
        **opts,
    )
    out = torch.full(q.shape, float("nan"))  # poisoned: every row must be written (owned) or zeroed (padding)
    out[int(qsl[-1]) :] = 0.0  # what zeroed_outputs does for the padding rows under jax-triton
    args = [torch.from_numpy(np.asarray(a)) for a in (q, kv, tables, item_seq, item_first, qsl, kv_lens, sinks)]
    tp._prefill_kernel[(item_seq.shape[0], q.shape[1])](*args, out, **params)
    got = out.numpy()
    owned = int(qsl[-1])
    return {
        "case": case,
        "rel_err": float(np.linalg.norm(got[:owned] - ref[:owned]) / np.linalg.norm(ref[:owned])),
        "pad_max": float(np.abs(got[owned:]).max(initial=0.0)),
        "finite": bool(np.isfinite(got).all()),
    }


if __name__ == "__main__":
    for case in json.loads(sys.argv[1]):
        print(json.dumps(run(case)), flush=True)

"""Runs the Triton prefill kernel in Triton's interpreter (torch CPU tensors) on the cases given as JSON on argv[1].

A subprocess of tests/test_triton_prefill.py: ``TRITON_INTERPRET`` must be set before Triton compiles anything, and
the rest of the suite must not see it. A case launches ``_prefill_kernel`` itself, its owned rows poisoned with NaN;
an FP8-pool case (``kv_scales``: K's and V's) runs ``prefill_attention`` whole under jit instead, with
``tests/fake_jax_triton.py`` standing in for jax-triton, so that the scales' folding around the launch is checked
too. A ``padded`` case (a head of no power-of-two width: 80, 96, 192) runs ``jllm.attention.paged_attention`` whole
on backend "triton-prefill" over the pool zero-padded to the kernels' width, its step's K/V written, with the kernel's
default tiling. The reference reads the same pool (an FP8 one dequantized with the same scales; a padded case's the
model's unpadded one). Prints one JSON line per case:
its relative error against the float32 reference and the largest magnitude in the rows no sequence owns (must be 0).
"""

from __future__ import annotations

import functools
import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import fake_jax_triton  # noqa: E402

sys.modules["jax_triton"] = fake_jax_triton

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from test_kernels import make_inputs, step_rows  # noqa: E402

from jllm.attention import AttentionMetadata, kernel_head_dim, paged_attention  # noqa: E402
from pallas_kernels import ref_ragged_paged_attention  # noqa: E402
from pallas_kernels import triton_prefill as tp  # noqa: E402
from pallas_kernels.kv_quant import FP8_DTYPE, quantize  # noqa: E402


def run(case: dict) -> dict:
    q, kv, kv_lens, tables, qsl = make_inputs(
        case["seed"], case["q_lens"], case["kv_lens"], page_size=case["page_size"], head_dim=case["head_dim"],
        group=case["group"], dtype=jnp.float32,
    )  # fmt: skip
    opts = dict(sm_scale=case["head_dim"] ** -0.5, soft_cap=case.get("soft_cap"), sliding_window=case.get("window"))
    sinks = jnp.asarray(np.random.default_rng(case["seed"]).normal(size=q.shape[1]) * 3.0, jnp.float32)
    has_sinks = case.get("sinks", False)
    scales = {}
    if "kv_scales" in case:
        scales = dict(zip(("k_scale", "v_scale"), case["kv_scales"], strict=True))
        kv = jnp.stack([quantize(kv[half], FP8_DTYPE, s) for half, s in enumerate(scales.values())])
    ref = np.asarray(
        ref_ragged_paged_attention(q, kv, kv_lens, tables, qsl, sinks=sinks if has_sinks else None, **opts, **scales)
    )
    if case.get("padded"):
        got = padded_step(q, kv, kv_lens, tables, qsl, sinks if has_sinks else None, opts)
        return result(case, got, ref, int(qsl[-1]))
    cfg = tp.PrefillConfig(
        block_m=case["block_m"], block_n=case["block_n"], heads_first=case.get("heads_first", False),
        pack_gqa=case.get("pack_gqa", False),
    )  # fmt: skip
    if scales:
        attend = functools.partial(
            tp.prefill_attention, config=cfg, sinks=sinks if has_sinks else None, **opts, **scales
        )
        got = np.asarray(jax.jit(attend)(q, kv, kv_lens, tables, qsl))
    else:
        got = launch_kernel(q, kv, kv_lens, tables, qsl, sinks, has_sinks, cfg, opts)
    return result(case, got, ref, int(qsl[-1]))


def padded_step(
    q: jax.Array,
    kv: jax.Array,
    kv_lens: jax.Array,
    tables: jax.Array,
    qsl: jax.Array,
    sinks: jax.Array | None,
    opts: dict,
) -> np.ndarray:
    """The step through ``paged_attention`` on "triton-prefill" over ``kv`` zero-padded to the kernels' head width,
    each query row writing its own K/V (as ``kv`` holds them, so the pool read is ``kv`` padded)."""
    slots, k, v = step_rows(kv, kv_lens, tables, qsl, q.shape[0])
    pool = jnp.pad(kv, [(0, 0)] * 4 + [(0, kernel_head_dim(kv.shape[-1]) - kv.shape[-1])])
    meta = AttentionMetadata(slots, qsl, kv_lens, tables, backend="triton-prefill")
    attend = jax.jit(functools.partial(paged_attention, sinks=sinks, **opts))
    return np.asarray(attend(q, k, v, pool, meta)[0])


def result(case: dict, got: np.ndarray, ref: np.ndarray, owned: int) -> dict:
    return {
        "case": case,
        "rel_err": float(np.linalg.norm(got[:owned] - ref[:owned]) / np.linalg.norm(ref[:owned])),
        "pad_max": float(np.abs(got[owned:]).max(initial=0.0)),
        "finite": bool(np.isfinite(got).all()),
    }


def launch_kernel(
    q: jax.Array,
    kv: jax.Array,
    kv_lens: jax.Array,
    tables: jax.Array,
    qsl: jax.Array,
    sinks: jax.Array,
    has_sinks: bool,
    cfg: tp.PrefillConfig,
    opts: dict,
) -> np.ndarray:
    """``_prefill_kernel`` on the host arrays, every owned row poisoned first (each must be written)."""
    group = q.shape[1] // kv.shape[1]
    item_seq, item_first = tp.work_items(qsl, q.shape[0], tp.item_rows(cfg, group))
    params = tp.kernel_params(
        q.shape, kv.shape, tables.shape[1], tables.shape[0], dot_precision="ieee", config=cfg, has_sinks=has_sinks,
        **opts,
    )  # fmt: skip
    out = torch.full(q.shape, float("nan"))  # poisoned: every row must be written (owned) or zeroed (padding)
    out[int(qsl[-1]) :] = 0.0  # what zeroed_outputs does for the padding rows under jax-triton
    args = [torch.from_numpy(np.asarray(a)) for a in (q, kv, tables, item_seq, item_first, qsl, kv_lens, sinks)]
    tp._prefill_kernel[tp.grid(item_seq.shape[0], q.shape[1], group, cfg)](*args, out, **params)
    return out.numpy()


if __name__ == "__main__":
    for case in json.loads(sys.argv[1]):
        print(json.dumps(run(case)), flush=True)

"""Heads of no power-of-two width (Phi-3's 96, Phi-2's 80, MiMo-V2-Flash's 192) on the attention kernels.

The kernels tile a head's channels in one power-of-two block, so under them the pool's heads are zero-padded to the
next power of two (``jllm.attention.resolve_pool``) and ``paged_attention`` pads q, k and v and cuts the output
back. Checked here: the pool spec and the start-up line, ``paged_attention`` on the Pallas kernel (interpreted) over
a padded pool against the float32 reference over the model's unpadded pool on decode, prefill and mixed steps (the
written K/V the reference's, the padding channels still zero), and a tiny Llama with head_dim 80 served on the
Pallas kernel giving transformers' greedy tokens. The Triton prefill kernel's padded cases are
``tests/test_triton_prefill.py``'s.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest
from model_utils import hf_logits, jllm_logits, random_llama, relative_error
from test_families import (
    BASE,
    ENGINE_ARGS,
    LOGITS_RTOL,
    NEW_TOKENS,
    PROMPTS,
    FamilyDirs,
    hf_greedy,
    little_machine_code_optimization,  # noqa: F401 (the slow tests' fixture)
)
from test_kernels import MIXED, assert_matches, make_inputs, step_rows

from jllm.attention import AttentionMetadata, kernel_head_dim, paged_attention, resolve_pool
from jllm.config import EngineConfig
from jllm.kv_cache import KVCacheSpec, describe_padding
from jllm.llm import LLM
from jllm.loader import load_model
from jllm.memory_plan import plan_model
from jllm.parallel import make_mesh
from jllm.sampling import SamplingParams
from pallas_kernels.kv_quant import FP8_DTYPE, quantize


def test_kernel_widths_are_the_next_power_of_two_of_at_least_16() -> None:
    widths = {8: 16, 16: 16, 64: 64, 80: 128, 96: 128, 128: 128, 192: 256, 256: 256, 576: 1024}
    assert {hd: kernel_head_dim(hd) for hd in widths} == widths


def test_the_kernels_read_a_padded_pool_and_the_reference_the_models() -> None:
    """Per layer where layers differ (Gemma 4's ``layer_dims``, a KV-shared layer without pages); FP8 keeps its
    dtype; the start-up line names each padded width and the bytes it costs."""
    spec = KVCacheSpec(3, 2, 96, 16, FP8_DTYPE, layer_dims=((2, 96), None, (1, 192), (2, 80)))
    assert resolve_pool("reference", spec, alibi=False) == ("reference", spec)
    backend, pool = resolve_pool("pallas", spec, alibi=False)  # interpreted on the CPU, accepted as on a GPU
    assert backend == "pallas" and pool.dtype == FP8_DTYPE
    assert pool.pool_dims == ((2, 128), None, (1, 256), (2, 128))
    assert pool.bytes_per_page == 16 * 2 * (2 * 128 + 256 + 2 * 128)
    assert describe_padding(spec, pool) == (
        "head_dim 80 padded to 128, head_dim 96 padded to 128, head_dim 192 padded to 256 in the KV pool (the "
        "attention kernels' power-of-two width): +41% pool bytes a page"
    )
    uniform = KVCacheSpec(4, 8, 96, 16, jnp.bfloat16)
    _, padded = resolve_pool("pallas", uniform, alibi=False)
    assert padded.layer_shape(5) == (2, 8, 5, 16, 128)
    assert describe_padding(uniform, padded).endswith(": +33% pool bytes a page")
    assert describe_padding(padded, padded) is None
    with pytest.raises(ValueError, match="not head_dim 576"):
        resolve_pool("pallas", dataclasses.replace(uniform, head_dim=576), alibi=False)


class Step(NamedTuple):
    """A step over the model's pool through ``paged_attention``: the Pallas kernel over a padded copy of the pool
    against the float32 reference over the pool itself."""

    q_lens: list[int]
    kv_lens: list[int]
    head_dim: int
    group: int = 4
    dtype: Any = jnp.float32
    pad_rows: int = 2  # a decode step as the runner pads it: one row per sequence slot, so T <= S
    extra: dict[str, Any] = {}  # soft_cap / window / sinks; kv_scales makes the pool FP8


MIXED_Q, MIXED_KV = [q for q, _ in MIXED], [kv(16) for _, kv in MIXED]
STEPS = {
    "decode-d80-batch3": Step([1, 1, 1, 0], [40, 17, 64, 0], 80, pad_rows=1),
    "prefill-d96-chunk-over-prefix": Step([20], [37], 96, group=2),
    "mixed-d192-bf16": Step(MIXED_Q, MIXED_KV, 192, group=2, dtype=jnp.bfloat16),
    "mixed-d96-fp8": Step(MIXED_Q, MIXED_KV, 96, extra={"kv_scales": (0.6, 1.7)}),
    "mixed-d80-sinks-softcap-window": Step(MIXED_Q, MIXED_KV, 80, extra={"sinks": True, "soft_cap": 5.0, "window": 7}),
}


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("step", STEPS.values(), ids=STEPS)
def test_pallas_kernel_over_a_padded_pool_matches_the_reference_over_the_models(step: Step) -> None:
    """The softmax scale is the model's (``D**-0.5`` of the real width: one taken from the padded width would be
    13-22 % off). Tolerances as the kernel's own tests: 1e-5 (f32) and 1e-2 (bf16) of max |reference|; padding rows
    exactly 0. The written pool is the reference's in the model's channels and zero in the padding ones."""
    hd, extra = step.head_dim, step.extra
    q, pool, kv_lens, tables, qsl = make_inputs(
        hd, step.q_lens, step.kv_lens, page_size=16, head_dim=hd, group=step.group, dtype=step.dtype,
        pad_rows=step.pad_rows, q_scale=2.0,
    )  # fmt: skip
    slots, k, v = step_rows(pool, kv_lens, tables, qsl, q.shape[0])
    kw: dict[str, Any] = {
        "sm_scale": hd**-0.5,
        "soft_cap": extra.get("soft_cap"),
        "sliding_window": extra.get("window"),
    }
    if extra.get("sinks"):
        kw["sinks"] = jnp.asarray(np.random.default_rng(hd).normal(size=q.shape[1]) * 3.0, jnp.float32)
    if "kv_scales" in extra:  # the pool stores what the step's write stores: K / k_scale and V / v_scale in e4m3
        kw["k_scale"], kw["v_scale"] = extra["kv_scales"]
        pool = jnp.stack([quantize(pool[half], FP8_DTYPE, scale) for half, scale in enumerate(extra["kv_scales"])])
    ref_pool = pool if pool.dtype == FP8_DTYPE else pool.astype(jnp.float32)
    ref_meta = AttentionMetadata(slots, qsl, kv_lens, tables, backend="reference")
    f32 = (x.astype(jnp.float32) for x in (q, k, v))
    ref, ref_written = paged_attention(*f32, ref_pool, ref_meta, **kw)

    padded_pool = jnp.pad(pool, [(0, 0)] * 4 + [(0, kernel_head_dim(hd) - hd)])
    meta = AttentionMetadata(slots, qsl, kv_lens, tables, backend="pallas")
    out, written = paged_attention(q, k, v, padded_pool, meta, **kw)

    assert out.shape == q.shape and out.dtype == q.dtype
    assert_matches(np.asarray(out.astype(jnp.float32)), np.asarray(ref), step.dtype)
    bits = np.uint8 if pool.dtype == FP8_DTYPE else np.uint32  # the bytes each side stored (bf16 widened exactly)
    kept = written[..., :hd] if pool.dtype == FP8_DTYPE else written[..., :hd].astype(jnp.float32)
    np.testing.assert_array_equal(np.asarray(kept).view(bits), np.asarray(ref_written).view(bits))
    assert not np.asarray(written[..., hd:].astype(jnp.float32)).any(), "a padding channel of the pool was written"


@pytest.fixture(scope="module")
def llama_80(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with heads 80 wide (Phi-2's and Pythia's width): its kernel pool's are 128."""
    return random_llama(tmp_path_factory.mktemp("padded_heads"), default_model_dir, 4, 2, head_dim=80)


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
def test_a_head_dim_80_llama_on_the_pallas_kernel_gives_transformers_greedy_tokens(
    llama_80: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Served with ``attention_backend: pallas`` (interpreted on the CPU) over a pool padded to 128: a 40-token
    prompt prefilled in chunks beside two decodes, then decode steps, give transformers' greedy tokens, and the
    reference backend's over the unpadded pool; the long prompt again reads its cached pages (a prefix hit). The
    memory plan sizes the padded pool the engine allocates (the start-up line says what it costs)."""
    budget = 1 << 20
    engine_args = {k: v for k, v in ENGINE_ARGS.items() if k != "num_pages"} | {"kv_cache_memory_bytes": budget}
    with caplog.at_level(logging.INFO, logger="jllm.build"):
        llm = LLM(str(llama_80), attention_backend="pallas", **engine_args)
    assert "head_dim 80 padded to 128 in the KV pool" in caplog.text and "+60% pool bytes a page" in caplog.text
    pool = llm.engine.runner.kv_caches[0]
    assert pool.shape[-1] == 128
    config = EngineConfig().replace(model=str(llama_80), **engine_args)
    plans = {b: plan_model(config.replace(attention_backend=b), 1 << 34, "m") for b in ("pallas", "reference")}
    page_bytes = {backend: plan.pool_bytes // plan.num_pages for backend, plan in plans.items()}
    assert page_bytes["pallas"] * 80 == page_bytes["reference"] * 128
    assert plans["pallas"].num_pages == pool.shape[2] == budget // page_bytes["pallas"]
    greedy = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, greedy, use_tqdm=False)]
    assert got == hf_greedy(llama_80, PROMPTS, NEW_TOKENS)
    assert len({t for tokens in got for t in tokens}) > 3, "degenerate greedy output proves little"
    (again,) = llm.generate(PROMPTS[2:], greedy, use_tqdm=False)  # its first 32 tokens' K/V from the padded pages
    assert again.num_cached_tokens == 32 and again.outputs[0].token_ids == got[2]
    reference = LLM(str(llama_80), **engine_args)  # "auto" on the CPU: the reference, over the model's widths
    assert reference.engine.runner.kv_caches[0].shape[-1] == 80
    assert [o.outputs[0].token_ids for o in reference.generate(PROMPTS, greedy, use_tqdm=False)] == got


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
def test_mimo_v2_flash_values_padded_into_a_padded_pool_give_transformers_logits(
    default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """MiMo-V2-Flash's values (16 channels here) are padded to its keys' 24 in the fused QKV, and the pool's heads to
    32 for the kernel; the output is cut back to 24 by ``paged_attention``, then to the values' 16. Its sliding
    layers (a window shorter than the prompt) and per-layer sinks ride along. Within ``LOGITS_RTOL`` of
    transformers' float32 forward, as the reference is (tests/test_families.py)."""
    model_dir = FamilyDirs(tmp_path_factory.mktemp("mimo"), default_model_dir)["mimo_v2_flash"]
    ids = np.random.default_rng(7).integers(0, BASE["vocab_size"], 40).tolist()
    loaded = load_model(model_dir, mesh=make_mesh(1), dtype="float32")
    assert resolve_pool("pallas", KVCacheSpec.for_model(loaded.args, 16, np.float32), alibi=False)[1].head_dim == 32
    got = jllm_logits(loaded, ids, backend="pallas")
    assert relative_error(got, hf_logits(model_dir, ids)) < LOGITS_RTOL

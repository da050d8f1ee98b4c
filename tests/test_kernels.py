"""The Pallas ragged paged attention kernel, run in interpret mode, against the float32 reference.

Inputs are fresh random numbers on randomly permuted pages; mixed cases hold decodes, prefill chunks over a cached
prefix and an empty padding sequence, with KV lengths on and just past page (and KV block) boundaries; decode cases
are decode steps as the runner pads them. Shapes stay small: interpret mode runs every program of the grid one after
another on the CPU, so it cannot show a race between programs (an unmasked store past a program's own rows would pass
here): the Triton IR lowered for a GPU is checked for masks apart.
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jllm.attention import AttentionMetadata, paged_attention, resolve_backend
from pallas_kernels import KernelConfig, default_config, ragged_paged_attention, ref_ragged_paged_attention
from pallas_kernels.kv_quant import FP8_DTYPE, quantize

# (q_len, kv_len) per sequence, in units of page_size p: decode on a boundary and just past one, a prefill chunk
# over a cached prefix ending just past a boundary, a whole prompt ending on a boundary, an empty padding sequence.
MIXED = [(1, lambda p: 2 * p), (1, lambda p: p + 1), (5, lambda p: 2 * p + 1), (0, lambda p: 0), (9, lambda p: p)]


def make_inputs(
    seed: int,
    q_lens: list[int],
    kv_lens: list[int],
    *,
    page_size: int,
    head_dim: int,
    group: int,
    dtype: jnp.dtype,
    num_kv_heads: int = 2,
    pad_rows: int = 2,
    q_scale: float = 1.0,
) -> tuple[jax.Array, ...]:
    """(q, kv_pages, kv_lens, block_tables, query_start_loc) over a pool whose pages are randomly permuted."""
    rng = np.random.default_rng(seed)
    pages_needed = [-(-n // page_size) for n in kv_lens]
    pages_per_seq = max(pages_needed) + 1  # a spare column: every table ends in padded (page 0) entries
    num_pages = 1 + sum(pages_needed) + 2  # page 0, the sequences' pages, two never-used pages
    free = 1 + rng.permutation(num_pages - 1)
    block_tables = np.zeros((len(kv_lens), pages_per_seq), np.int32)
    for s, n in enumerate(pages_needed):
        block_tables[s, :n], free = free[:n], free[n:]
    pool = rng.standard_normal((2, num_kv_heads, num_pages, page_size, head_dim))  # [2, Hkv, P, page_size, D]
    q = q_scale * rng.standard_normal((sum(q_lens) + pad_rows, num_kv_heads * group, head_dim))  # [T, Hq, D]
    return (
        jnp.asarray(q, dtype),
        jnp.asarray(pool, dtype),
        jnp.asarray(kv_lens, jnp.int32),
        jnp.asarray(block_tables),
        jnp.asarray(np.concatenate([[0], np.cumsum(q_lens)]), jnp.int32),
    )


def step_rows(
    kv_pages: jax.Array,  # [2, Hkv, P, page_size, D]
    kv_lens: jax.Array,  # i32[S]
    block_tables: jax.Array,  # i32[S, pages_per_seq]
    query_start_loc: jax.Array,  # i32[S + 1]
    num_tokens: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(slot mapping i32[T], k [T, Hkv, D], v [T, Hkv, D]): each query row's own K/V as the pool holds them, so the
    step's write leaves the pool as it was; padding rows write zeros to page 0 (reserved)."""
    page_size = kv_pages.shape[3]
    slots = np.zeros(num_tokens, np.int32)
    qsl, lens, tables = (np.asarray(x) for x in (query_start_loc, kv_lens, block_tables))
    for s in range(len(lens)):
        q_len = qsl[s + 1] - qsl[s]
        pos = lens[s] - q_len + np.arange(q_len)
        slots[qsl[s] : qsl[s + 1]] = tables[s, pos // page_size] * page_size + pos % page_size
    flat = kv_pages.reshape(2, kv_pages.shape[1], -1, kv_pages.shape[-1])  # [2, Hkv, P * page_size, D]
    owned = (np.arange(num_tokens) < qsl[-1])[:, None, None]
    k, v = (jnp.where(owned, flat[half][:, slots].transpose(1, 0, 2), 0) for half in (0, 1))
    return jnp.asarray(slots), k, v


def mixed_inputs(seed: int, page_size: int, **kw: object) -> tuple[jax.Array, ...]:
    q_lens = [q_len for q_len, _ in MIXED]
    kv_lens = [kv_len(page_size) for _, kv_len in MIXED]
    return make_inputs(seed, q_lens, kv_lens, page_size=page_size, **kw)


def f32_reference(inputs: tuple[jax.Array, ...], **kw: object) -> np.ndarray:
    q, kv_pages, *rest = inputs
    return np.asarray(ref_ragged_paged_attention(q.astype(jnp.float32), kv_pages.astype(jnp.float32), *rest, **kw))


def run_kernel(inputs: tuple[jax.Array, ...], **kw: object) -> np.ndarray:
    """The kernel's output as f32, after poisoning the allocator with NaN so an unwritten element would show."""
    jnp.full((1 << 16,), jnp.nan).block_until_ready()
    out = ragged_paged_attention(*inputs, interpret=True, **kw)
    assert out.dtype == inputs[0].dtype and out.shape == inputs[0].shape
    return np.asarray(out.astype(jnp.float32))


def assert_matches(out: np.ndarray, ref: np.ndarray, dtype: jnp.dtype, *, padded: bool = True) -> None:
    assert np.isfinite(out).all(), "kernel output has non-finite values (unwritten or NaN)"
    tol = 1e-2 if dtype == jnp.bfloat16 else 1e-5
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert err <= tol, f"max error {err:.2e} relative to max |ref| exceeds {tol:.0e}"
    pad = np.abs(ref).reshape(len(ref), -1).max(axis=1) == 0  # rows no sequence owns
    assert pad.any() == padded and (out[pad] == 0).all(), "padding rows must be exactly zero"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("page_size", "head_dim", "group", "dtype"),
    [(16, 64, 1, jnp.float32), (32, 128, 4, jnp.bfloat16), (16, 128, 8, jnp.bfloat16), (32, 64, 4, jnp.float32)],
)
def test_mixed_prefill_and_decode_batch_matches_reference(page_size: int, head_dim: int, group: int, dtype) -> None:
    inputs = mixed_inputs(0, page_size, head_dim=head_dim, group=group, dtype=dtype)
    kw = {"sm_scale": head_dim**-0.5}
    assert_matches(run_kernel(inputs, **kw), f32_reference(inputs, **kw), dtype)


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        KernelConfig(q_block=1, kv_block=16, num_splits=1, num_warps=4, num_stages=2),  # prefill rows as decodes
        KernelConfig(q_block=1, kv_block=32, num_splits=3, num_warps=4, num_stages=2),  # uneven split-K
        KernelConfig(q_block=4, kv_block=16, num_splits=2, num_warps=4, num_stages=2),  # partial query blocks
        KernelConfig(q_block=16, kv_block=64, num_splits=1, num_warps=4, num_stages=2),  # one block per sequence
    ],
)
def test_every_tiling_matches_reference(config: KernelConfig) -> None:
    """KV blocks of one and several pages, KV splits that leave some programs without work, ragged query blocks."""
    inputs = mixed_inputs(1, 16, head_dim=64, group=4, dtype=jnp.float32, q_scale=3.0)  # peaky softmax
    kw = {"sm_scale": 0.125}
    assert_matches(run_kernel(inputs, config=config, **kw), f32_reference(inputs, **kw), jnp.float32)


class Decode(NamedTuple):
    """A decode step as the runner pads it: one row per sequence slot, an empty slot (KV length 0) a padding row."""

    kv_lens: list[int]
    num_kv_heads: int
    group: int
    splits: int | None  # None: the default tiling
    dtype: Any = jnp.float32
    head_dim: int = 64
    extra: dict[str, Any] = {}  # soft_cap / sliding_window; k_scale and v_scale make the pool FP8


# Windows of 16 rows from each program's first query head; with no empty slot the last row is a real decode, so the
# last programs' windows run past the array's end over rows that matter. "tiny": T * Hq < 16, every window does.
DECODES = {
    "llama3-8b-shape-batch1-default-split": Decode([150], 8, 4, None, jnp.bfloat16, 128),
    "g4-batch3-one-split-fp8": Decode([40, 16, 71], 4, 4, 1, extra={"k_scale": 0.6, "v_scale": 1.7}),
    "g4-batch5-padded-uneven-splits-softcap-window": Decode(
        [17, 64, 0, 90, 1], 4, 4, 3, extra={"soft_cap": 5.0, "sliding_window": 20}
    ),
    "g8-batch4-bf16": Decode([16, 50, 33, 2], 2, 8, 1, jnp.bfloat16),
    "g2-batch3-split": Decode([48, 17, 5], 4, 2, 2),
    "g3-batch3-split": Decode([31, 64, 9], 2, 3, 2),  # a group that is no power of two: the merge stores 16 rows
    "g1-tiny-batch3-split": Decode([20, 33, 7], 2, 1, 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", DECODES.values(), ids=DECODES)
def test_decode_step_matches_reference(case: Decode) -> None:
    """Decode programs read their query rows from q viewed as [T * Hq, D] and store their output rows into the
    output's [T * Hq, D] (the split-K merge too): no padded copies. An FP8 pool's reference is the dequantized pool,
    computed here apart from the kernel's path (K's scale folded into q, V's on the output). Tolerances: 1e-5 (f32)
    and 1e-2 (bf16) of max |reference|; padding rows exactly 0."""
    q_lens = [1 if n else 0 for n in case.kv_lens]
    inputs = make_inputs(
        sum(case.kv_lens), q_lens, case.kv_lens, page_size=16, head_dim=case.head_dim,
        group=case.group, dtype=case.dtype, num_kv_heads=case.num_kv_heads, pad_rows=q_lens.count(0), q_scale=2.0,
    )  # fmt: skip
    kw = {"sm_scale": case.head_dim**-0.5, **case.extra}
    ref_inputs, ref_kw = inputs, kw
    if "k_scale" in kw:
        q, pool, *meta = inputs
        scales = (kw["k_scale"], kw["v_scale"])
        stored = jnp.stack([quantize(pool[half], FP8_DTYPE, scales[half]) for half in (0, 1)])
        dequantized = np.asarray(stored.astype(jnp.float32)) * np.reshape(scales, (2, 1, 1, 1, 1))
        inputs, ref_inputs = (q, stored, *meta), (q, jnp.asarray(dequantized, jnp.float32), *meta)
        ref_kw = {"sm_scale": kw["sm_scale"]}
    config = None
    if case.splits is None:
        T, Hq, P = len(q_lens), case.num_kv_heads * case.group, inputs[3].shape[1]
        default = default_config(T, T, Hq, case.num_kv_heads, 16, P, case.head_dim, jnp.dtype(case.dtype).itemsize)
        assert default.q_block == 1 and default.num_splits > 1
    else:
        config = KernelConfig(q_block=1, kv_block=32, num_splits=case.splits, num_warps=4, num_stages=2)
    out = run_kernel(inputs, config=config, **kw)
    assert_matches(out, f32_reference(ref_inputs, **ref_kw), case.dtype, padded=0 in case.kv_lens)


def test_decode_kernel_lowers_to_triton_with_masked_rows_and_no_copies(h200_lowering: list[str]) -> None:
    """No GPU runs the suite, so the programs are lowered for one: the kernel and its split-K merge must lower to
    Triton IR; every load and store of the step's bf16 rows must be masked (a window runs past its program's rows, and
    past the array's end: interpret mode, one program after another, cannot show that); and around the kernels a decode
    step must move no bf16 query or output rows (no pad, no slice). Triton's own compile to PTX is not run."""
    spec = jax.ShapeDtypeStruct
    # (T, Hq, Hkv, splits): Llama-3-8B decodes at batch 32 (one split) and 1 (split-K), a group of 3, a tiny model.
    for num_tokens, num_q_heads, num_kv_heads, splits in ((32, 32, 8, 1), (1, 32, 8, 4), (5, 6, 2, 2), (1, 2, 1, 1)):
        h200_lowering.clear()
        config = KernelConfig(q_block=1, kv_block=64, num_splits=splits, num_warps=4, num_stages=3)
        step = jax.jit(functools.partial(ragged_paged_attention, sm_scale=0.1, config=config, k_scale=0.5, v_scale=2.0))
        text = (
            step.trace(
                spec((num_tokens, num_q_heads, 128), jnp.bfloat16),
                spec((2, num_kv_heads, 64, 16, 128), jnp.float8_e4m3fn),  # so every bf16 access is q's or o's
                *(spec(shape, jnp.int32) for shape in ((num_tokens,), (num_tokens, 8), (num_tokens + 1,))),
            )
            .lower(lowering_platforms=("cuda",))
            .as_text()
        )
        assert len(h200_lowering) == text.count("__gpu$xla.gpu.triton") == (1 if splits == 1 else 2)
        accesses = re.findall(r"tt\.(load|store) ([^:]*): tensor<\d+x128x!tt\.ptr<bf16>>", "".join(h200_lowering))
        assert {op for op, _ in accesses} == {"load", "store"}
        # Masked: `tt.load ptr, mask, other` and `tt.store ptr, value, mask`.
        assert all(operands.count(",") == 2 for _, operands in accesses), accesses
        copies = [line for line in text.splitlines() if re.search(r"stablehlo\.(pad|slice)\b.*xbf16>", line)]
        assert not copies, f"T={num_tokens}, Hq={num_q_heads}: {copies}"


def test_kernel_with_sinks_lowers_to_triton(h200_lowering: list[str]) -> None:
    """The sinks' load and the first split's start from them lower for an H200 in both layouts: a decode step with
    split-K (kernel and merge) and prefill tiles in one split (gpt-oss's 64 query / 8 KV heads, head_dim 64)."""
    spec = jax.ShapeDtypeStruct
    for num_tokens, num_seqs, config in (
        (4, 4, KernelConfig(q_block=1, kv_block=64, num_splits=4, num_warps=4, num_stages=3)),
        (256, 2, KernelConfig(q_block=16, kv_block=64, num_splits=1, num_warps=8, num_stages=2)),
    ):
        h200_lowering.clear()
        step = jax.jit(functools.partial(ragged_paged_attention, sm_scale=0.125, sliding_window=128, config=config))
        text = (
            step.trace(
                spec((num_tokens, 64, 64), jnp.bfloat16),
                spec((2, 8, 64, 16, 64), jnp.bfloat16),
                *(spec(shape, jnp.int32) for shape in ((num_seqs,), (num_seqs, 8), (num_seqs + 1,))),
                sinks=spec((64,), jnp.bfloat16),
            )
            .lower(lowering_platforms=("cuda",))
            .as_text()
        )
        assert len(h200_lowering) == text.count("__gpu$xla.gpu.triton") == (2 if config.num_splits > 1 else 1)


@pytest.mark.slow
@pytest.mark.parametrize(("soft_cap", "sliding_window"), [(5.0, None), (None, 7), (20.0, 16)])
def test_soft_cap_and_sliding_window_match_reference(soft_cap: float | None, sliding_window: int | None) -> None:
    inputs = mixed_inputs(3, 16, head_dim=64, group=4, dtype=jnp.float32, q_scale=2.0)
    kw = {"sm_scale": 0.125, "soft_cap": soft_cap, "sliding_window": sliding_window}
    config = KernelConfig(q_block=4, kv_block=16, num_splits=2, num_warps=4, num_stages=2)
    assert_matches(run_kernel(inputs, config=config, **kw), f32_reference(inputs, **kw), jnp.float32)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("q_lens", "config", "sliding_window"),
    [
        (None, KernelConfig(q_block=4, kv_block=16, num_splits=2, num_warps=4, num_stages=2), None),
        (None, KernelConfig(q_block=16, kv_block=32, num_splits=1, num_warps=4, num_stages=2), 7),
        ([1, 1, 0, 1], KernelConfig(q_block=1, kv_block=16, num_splits=3, num_warps=4, num_stages=2), 20),
    ],
    ids=["mixed-split2", "mixed-window7", "decode-split3-window20"],
)
def test_attention_sinks_match_reference(q_lens: list[int] | None, config: KernelConfig, sliding_window) -> None:
    """gpt-oss's sinks (a logit per query head in each row's softmax): the first KV split starts from them, so the
    split-K merge counts each once; in the prefill tiles and in the decode layout (group 4: a tile row's head)."""
    if q_lens is None:
        inputs = mixed_inputs(9, 16, head_dim=64, group=4, dtype=jnp.float32, q_scale=2.0)
    else:
        kv_lens = [40, 17, 0, 64]
        inputs = make_inputs(9, q_lens, kv_lens, page_size=16, head_dim=64, group=4, dtype=jnp.float32, pad_rows=1)
    sinks = jnp.asarray(np.random.default_rng(10).normal(size=8) * 3.0, jnp.float32)
    kw = {"sm_scale": 0.125, "sliding_window": sliding_window, "sinks": sinks}
    assert_matches(run_kernel(inputs, config=config, **kw), f32_reference(inputs, **kw), jnp.float32)


@pytest.mark.slow
def test_recycled_page_stale_contents_never_leak() -> None:
    """Every slot no sequence has written (page 0, the tails of last pages, free pages) is rewritten with huge values,
    as a page freed by one request and handed to another still holds the old one's K/V: the output must not move."""
    page_size = 16
    inputs = mixed_inputs(4, page_size, head_dim=64, group=4, dtype=jnp.float32)
    q, kv_pages, kv_lens, block_tables, qsl = inputs
    written = np.zeros(kv_pages.shape[2:4], bool)  # [num_pages, page_size]
    for table, kv_len in zip(np.asarray(block_tables), np.asarray(kv_lens), strict=True):
        for t in range(kv_len):
            written[table[t // page_size], t % page_size] = True
    stale = 1e4 * np.random.default_rng(5).standard_normal(kv_pages.shape)
    dirty = jnp.asarray(np.where(written[None, None, :, :, None], np.asarray(kv_pages), stale), jnp.float32)
    config = KernelConfig(q_block=2, kv_block=32, num_splits=2, num_warps=4, num_stages=2)
    for kw in ({}, {"config": config}):
        clean = run_kernel(inputs, sm_scale=0.125, **kw)
        np.testing.assert_array_equal(run_kernel((q, dirty, kv_lens, block_tables, qsl), sm_scale=0.125, **kw), clean)


def test_default_config_picks_decode_layout_and_split_kv_by_batch() -> None:
    big = default_config(128, 128, 32, 8, 16, 512, 128, 2)
    one = default_config(1, 1, 32, 8, 16, 512, 128, 2)
    assert big.q_block == one.q_block == 1
    assert big.num_splits == 1 and one.num_splits > 1 and one.kv_block % 16 == 0
    prefill = default_config(512, 1, 32, 8, 16, 512, 128, 2)
    assert prefill.q_block * 4 <= 128 and prefill.q_block > 1


def test_invalid_inputs_raise_clear_errors() -> None:
    inputs = mixed_inputs(6, 16, head_dim=64, group=2, dtype=jnp.float32)
    q, kv_pages, *rest = inputs
    with pytest.raises(ValueError, match=r"must be q's \(bfloat16\) or float8_e4m3fn"):
        ragged_paged_attention(q.astype(jnp.bfloat16), kv_pages, *rest, sm_scale=1.0, interpret=True)
    with pytest.raises(ValueError, match="head_dim=48"):
        ragged_paged_attention(q[..., :48], kv_pages[..., :48], *rest, sm_scale=1.0, interpret=True)
    with pytest.raises(ValueError, match="page_size=12"):
        ragged_paged_attention(q, kv_pages[:, :, :, :12], *rest, sm_scale=1.0, interpret=True)
    with pytest.raises(ValueError, match="multiple of page_size"):
        config = KernelConfig(q_block=1, kv_block=8, num_splits=1, num_warps=4, num_stages=2)
        ragged_paged_attention(*inputs, sm_scale=1.0, config=config, interpret=True)
    with pytest.raises(ValueError, match="num_q_heads=3"):
        ragged_paged_attention(q[:, :3], kv_pages, *rest, sm_scale=1.0, interpret=True)
    with pytest.raises(ValueError, match="power of two"):
        KernelConfig(q_block=1, kv_block=48, num_splits=1, num_warps=4, num_stages=2)
    with pytest.raises(ValueError, match="num_splits must be >= 1"):
        KernelConfig(q_block=1, kv_block=16, num_splits=0, num_warps=4, num_stages=2)


def test_a_latent_pool_or_a_head_wider_than_512_once_padded_takes_the_reference() -> None:
    """DeepSeek's latent pool (one row of kv_lora_rank 512 + rope 64 a token) has no V plane for the kernels, and a
    576-wide head would pad to 1024, past the widest the kernels were checked at: "auto" takes the reference for both
    and the kernels are refused by name. Heads of other widths take the kernels over a padded pool
    (``tests/test_padded_heads.py``)."""
    assert resolve_backend("auto", "gpu", head_dim=576) == "reference"
    assert resolve_backend("auto", "gpu", head_dim=64, latent=True) == "reference"
    for width in (128, 96, 80, (80, 512)):
        assert resolve_backend("auto", "gpu", head_dim=width) in ("pallas", "triton-prefill")
    for name in ("pallas", "triton-prefill"):
        with pytest.raises(
            ValueError, match=f"attention_backend='{name}' needs .* at most 512 wide .*, not head_dim 576"
        ):
            resolve_backend(name, "gpu", head_dim=576)
        with pytest.raises(ValueError, match=f"attention_backend='{name}' needs .*, not a latent pool"):
            resolve_backend(name, "gpu", head_dim=64, latent=True)
        assert resolve_backend(name, "gpu", head_dim=96) == name
    assert resolve_backend("reference", "gpu", head_dim=576, latent=True) == "reference"


def test_an_alibi_model_takes_the_reference_and_the_kernels_are_refused_by_name() -> None:
    """Only the reference adds ALiBi's position bias (Bloom, MPT): "auto" takes it on a GPU too, and the kernels are
    refused at start-up rather than attending without the bias."""
    assert resolve_backend("auto", "gpu", head_dim=128, alibi=True) == "reference"
    for name in ("pallas", "triton-prefill"):
        with pytest.raises(ValueError, match=f"attention_backend='{name}' does not add ALiBi.*'reference'"):
            resolve_backend(name, "gpu", head_dim=128, alibi=True)


def test_auto_backend_resolves_to_kernel_on_gpu_only() -> None:
    assert resolve_backend("auto", "gpu") == resolve_backend("auto", "cuda") in ("pallas", "triton-prefill")
    assert resolve_backend("auto", "cpu") == "reference"
    assert resolve_backend("pallas", "cpu") == "pallas"
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        resolve_backend("triton-prefill", "cpu")
    with pytest.raises(ValueError, match="'triton' is unknown"):
        resolve_backend("triton", "gpu")


@pytest.mark.slow
def test_pallas_backend_writes_kv_then_matches_reference_backend() -> None:
    q, kv_pages, kv_lens, block_tables, qsl = mixed_inputs(7, 16, head_dim=64, group=2, dtype=jnp.float32)
    rng = np.random.default_rng(8)
    k, v = (jnp.asarray(rng.standard_normal((q.shape[0], 2, 64)), jnp.float32) for _ in range(2))
    slots = jnp.arange(q.shape[0], dtype=jnp.int32) + 16  # somewhere in page 1; enough to compare two backends
    outs = []
    for backend in ("reference", "pallas"):
        meta = AttentionMetadata(slots, qsl, kv_lens, block_tables, backend=backend)
        outs.append(paged_attention(q, k, v, kv_pages, meta, sm_scale=0.125))
    np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(outs[1][1], outs[0][1])

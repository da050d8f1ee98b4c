"""The jax-triton prefill kernel: its host logic on the CPU, and the kernel itself in Triton's interpreter.

jax-triton launches compiled Triton only on a CUDA device, so CI checks the kernel's own code by running
``_prefill_kernel`` in Triton's interpreter on torch CPU tensors (``tests/triton_prefill_worker.py``, one subprocess
for all cases) against the float32 reference, on fresh random inputs over randomly permuted pages. FP8-pool cases run
``prefill_attention`` whole (``tests/fake_jax_triton.py`` standing in for jax-triton), scales included, against the
reference reading the same FP8 pool, so quantization error is not counted as the kernel's. Its numerics on the GPU,
in bf16, are ``scripts/check_kernels.py``'s.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import triton
from model_utils import run_worker

from pallas_kernels.kv_quant import FP8_DTYPE
from pallas_kernels.triton_prefill import (
    PrefillConfig,
    _prefill_kernel,
    check_shapes,
    default_prefill_config,
    for_head_dim,
    grid,
    item_rows,
    kernel_params,
    prefill_attention,
    tile_heads,
    work_items,
)

# Relative (Frobenius) error of the kernel's float32 output ("ieee" dots) against the reference; measured 1e-7 .. 1e-6
# (the FP8-pool cases 1.2e-7 and 2.0e-7, 2026-12-05).
RTOL = 1e-5


def case(seed: int, q_lens: list[int], context: list[int], **kw: object) -> dict:
    kv_lens = [q + c for q, c in zip(q_lens, context, strict=True)]
    base = dict(page_size=4, head_dim=16, group=2, block_m=16, block_n=16)
    return dict(base, seed=seed, q_lens=q_lens, kv_lens=kv_lens, **kw)


CASES = [
    # a chunk over a prefix, a decode, a fresh prompt, an empty padding sequence; tiles cut mid-chunk
    case(0, [37, 1, 20, 0], [5, 30, 0, 0]),
    # several 16-key blocks per page group (page 4, block_n 32), a chunk longer than two tiles, GQA group 4
    case(1, [70, 3], [41, 0], block_n=32, group=4),
    # page size 16 (one page a key block), tiles of 32 rows
    case(2, [50, 17], [13, 64], page_size=16, block_m=32, block_n=16),
    case(3, [37, 1, 20], [5, 30, 0], soft_cap=30.0),
    case(4, [37, 1, 20], [5, 30, 0], window=8),
    case(5, [45, 2], [30, 9], window=21, block_n=32, soft_cap=20.0),
    # gpt-oss's attention sinks (a logit per query head, N(0, 3)), with and without a window
    case(6, [37, 1, 20, 0], [5, 30, 0, 0], sinks=True),
    case(7, [45, 2], [30, 9], window=21, block_n=32, sinks=True),
    # an FP8 pool (K scale 0.6, V scale 1.7) through prefill_attention whole: chunks over a prefix, windowed with sinks
    # at page size 4, unwindowed (unmasked blocks too) with sinks at page size 16
    case(8, [37, 1, 20, 0], [5, 30, 0, 0], window=8, sinks=True, kv_scales=[0.6, 1.7]),
    case(9, [50, 17], [13, 64], page_size=16, block_m=32, sinks=True, kv_scales=[0.6, 1.7]),
    # the grid in (query heads, items) order: a GQA group of 4, a window, and an FP8 pool through the whole entry
    case(10, [70, 3, 0], [41, 0, 0], block_n=32, group=4, heads_first=True),
    case(11, [45, 2], [30, 9], window=21, block_n=32, sinks=True, heads_first=True),
    case(12, [50, 17], [13, 64], page_size=16, block_m=32, kv_scales=[0.6, 1.7], heads_first=True),
    # a KV head's query heads packed into one tile (pack_gqa): decodes beside chunks, a group of 4 over 16-row tiles
    # (4 queries each), a window with sinks and a soft cap (each tile row its own head's sink), an FP8 pool whole,
    # and the items-first grid
    case(13, [37, 1, 20, 0, 1], [5, 30, 0, 0, 70], pack_gqa=True, heads_first=True),
    case(14, [70, 3, 1], [41, 0, 9], block_n=32, group=4, pack_gqa=True, heads_first=True),
    case(15, [45, 2, 1], [30, 9, 40], window=21, block_n=32, sinks=True, soft_cap=20.0, pack_gqa=True),
    case(16, [50, 17, 1], [13, 64, 33], page_size=16, block_m=32, group=4, kv_scales=[0.6, 1.7], pack_gqa=True),
]
# Heads of no power-of-two width (Phi-2's 80, Phi-3's 96, MiMo-V2-Flash's 192) through ``paged_attention`` whole,
# over a pool padded to 128 / 256 with the default tiling: chunks over a prefix beside a decode, a window with sinks
CASES += [
    dict(seed=17, q_lens=[37, 1, 0], kv_lens=[42, 31, 0], page_size=16, head_dim=80, group=2, padded=True),
    dict(seed=18, q_lens=[20, 1], kv_lens=[20, 40], page_size=16, head_dim=96, group=4, padded=True),
    dict(
        seed=19,
        q_lens=[25, 1],
        kv_lens=[45, 9],
        page_size=16,
        head_dim=192,
        group=2,
        padded=True,
        window=21,
        sinks=True,
    ),
]


@pytest.fixture(scope="module")
def interpreted() -> list[dict]:
    return run_worker("triton_prefill_worker.py", CASES)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(CASES)))
def test_interpreted_kernel_matches_reference(interpreted: list[dict], index: int) -> None:
    result = interpreted[index]
    assert result["case"] == CASES[index]
    assert result["finite"], "a row was neither written nor zeroed (NaN poison left)"
    assert result["rel_err"] < RTOL, result
    assert result["pad_max"] == 0.0


@pytest.mark.parametrize("block_m", [16, 64])
def test_work_items_cover_every_query_row_once(block_m: int) -> None:
    rng = np.random.default_rng(block_m)
    q_lens = [int(n) for n in rng.integers(0, 3 * block_m, size=7)]
    qsl = jnp.asarray(np.concatenate([[0], np.cumsum(q_lens)]), jnp.int32)
    num_tokens = sum(q_lens) + 5
    seq, first = (np.asarray(a) for a in work_items(qsl, num_tokens, block_m))
    covered = []
    for s, f in zip(seq, first, strict=True):
        if s < len(q_lens):
            assert f % block_m == 0 and 0 <= f < q_lens[s]
            covered += [(int(s), int(f) + i) for i in range(min(block_m, q_lens[s] - f))]
    assert sorted(covered) == [(s, i) for s in range(len(q_lens)) for i in range(q_lens[s])]
    assert len(seq) >= sum(-(-n // block_m) for n in q_lens)  # the static grid holds every real item


def test_packed_tiles_hold_the_group_and_cover_fewer_rows() -> None:
    packed = PrefillConfig(block_m=64, pack_gqa=True)
    assert (tile_heads(packed, 4), item_rows(packed, 4)) == (4, 16)
    assert grid(10, 32, 4, packed) == (8, 10)  # heads first: one program per KV head
    assert grid(10, 32, 4, PrefillConfig(block_m=64, heads_first=False)) == (10, 32)
    assert item_rows(PrefillConfig(block_m=64), 4) == 64
    with pytest.raises(ValueError, match="block_m=16 must be a multiple of the GQA group \\(32\\)"):
        item_rows(PrefillConfig(block_m=16, pack_gqa=True), 32)


def test_default_config_follows_the_bucket_token_count() -> None:
    assert default_prefill_config(2048, 1).block_m == default_prefill_config(2048, 256).block_m == 128
    assert default_prefill_config(512, 1).block_m == default_prefill_config(512, 256).block_m == 64
    assert default_prefill_config(32, 32).block_m == 16


def test_default_config_packs_the_gqa_group_where_it_divides_the_rows() -> None:
    """Decode rows beside a chunk fill a tile's rows for each of a KV head's query heads, not one row in 64."""
    assert default_prefill_config(256, 33, group=4).pack_gqa
    assert item_rows(default_prefill_config(2048, 1, group=8), 8) == 16
    assert not default_prefill_config(256, 33).pack_gqa  # MHA: one query head a KV head
    assert not default_prefill_config(256, 33, group=7).pack_gqa  # 64 rows do not split into 7 heads
    assert not default_prefill_config(32, 32, group=32).pack_gqa  # 16-row tiles hold at most 16 heads


def test_wider_heads_take_tiles_of_the_same_footprint() -> None:
    """A 512-wide head (Gemma 4's full layers) in a 2048-token step: 32 x 32 tiles, the accumulator and K/V tiles of
    128-wide heads' 128 x 128 (which spill registers at 512, ptxas says); 256-wide heads half the rows; never under
    Triton's 16 rows; the warps and stages as for 128."""
    wide = default_prefill_config(2048, 1, head_dim=512)
    assert (wide.block_m, wide.block_n, wide.num_warps) == (32, 32, 8)
    assert wide.block_m * 512 == 128 * 128 and wide.block_n * 512 == 128 * 128
    assert (default_prefill_config(2048, 1, head_dim=256).block_m, default_prefill_config(512, 1, 256).block_n) == (
        64,
        32,
    )
    assert default_prefill_config(32, 32, head_dim=512).block_m == 16
    assert default_prefill_config(2048, 1, head_dim=64) == default_prefill_config(2048, 1)


def test_bad_shapes_and_tilings_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="power of two"):
        PrefillConfig(block_m=48)
    q = jnp.zeros((4, 2, 24), jnp.float32)
    with pytest.raises(ValueError, match="head_dim=24"):
        check_shapes(q, jnp.zeros((2, 1, 3, 4, 24), jnp.float32))
    with pytest.raises(ValueError, match="dtype"):
        check_shapes(q, jnp.zeros((2, 1, 3, 4, 24), jnp.bfloat16))
    q, pool = jnp.zeros((4, 2, 16), jnp.float32), jnp.zeros((2, 1, 3, 4, 16), jnp.float32)
    check_shapes(q, pool.astype(FP8_DTYPE))  # an FP8 pool is read whatever q's dtype
    meta = (jnp.asarray([4], jnp.int32), jnp.asarray([[1]], jnp.int32), jnp.asarray([0, 4], jnp.int32))
    with pytest.raises(ValueError, match="KV scales apply to an FP8"):  # refused before jax-triton is needed
        prefill_attention(q, pool, *meta, sm_scale=1.0, k_scale=0.5)


def hopper_ptx(cfg: PrefillConfig, kv_type: str, has_sinks: bool = False, head_dim: int = 128) -> str:
    """``hopper_kernel``'s PTX."""
    return hopper_kernel(cfg, kv_type, has_sinks, head_dim).asm["ptx"]


def hopper_kernel(
    cfg: PrefillConfig, kv_type: str, has_sinks: bool = False, head_dim: int = 128, group: int = 4
) -> triton.compiler.CompiledKernel:
    """The kernel of a bf16 2048-token chunk over an 8-KV-head pool (``kv_type``: Triton's name of its dtype)
    compiled for an H100/H200 (sm_90, Triton's own ptxas) with jax-triton's argument types (16-byte aligned
    pointers)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = kernel_params(
        (2048, 8 * group, head_dim), (2, 8, 1024, 16, head_dim), 512, 4, sm_scale=head_dim**-0.5, soft_cap=None,
        sliding_window=None, dot_precision="tf32", config=cfg, has_sinks=has_sinks,
    )  # fmt: skip
    pointers = ("*bf16", kv_type, "*i32", "*i32", "*i32", "*i32", "*i32", "*fp32", "*bf16")
    names = _prefill_kernel.arg_names[: len(pointers)]
    signature = {**dict(zip(names, pointers, strict=True)), **dict.fromkeys(params, "constexpr")}
    aligned = {(i,): [["tt.divisibility", 16]] for i in range(len(pointers))}
    source = ASTSource(fn=_prefill_kernel, signature=signature, constexprs=params, attrs=aligned)
    options = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def ptxas_spills(ptx: str) -> list[int]:
    """The spill stores and loads (bytes a thread) Triton's ptxas reports for ``ptx`` built for sm_90a."""
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.ptx").write_text(ptx)
        args = [str(ptxas), "-arch=sm_90a", "-v", "k.ptx", "-o", "k.cubin"]
        report = subprocess.run(args, cwd=tmp, capture_output=True, text=True, check=True)
    return [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report.stdout + report.stderr)]


@pytest.mark.slow  # two compiles for sm_90 (~5 s)
@pytest.mark.parametrize("head_dim", [256, 512])
def test_wide_heads_default_tiles_keep_the_accumulator_in_registers_on_hopper(head_dim: int) -> None:
    """The default tiles of a 2048-token step at Gemma's head widths compile for sm_90 without spilling (the
    128-wide heads' 128 x 128 tiles spilled 1,080 bytes a thread at 256 and 6,408 at 512)."""
    ptx = hopper_ptx(default_prefill_config(2048, 4, head_dim), "*bf16", head_dim=head_dim)
    spills = ptxas_spills(ptx)
    assert spills and not any(spills), spills


# Shared memory one block may take on an H100 / H200 (227 KiB): a launch asking more fails.
HOPPER_SHARED_BYTES = 232448


@pytest.mark.slow  # five compiles for sm_90 each (~10 s)
@pytest.mark.parametrize("head_dim,group", [(256, 2), (512, 8)])
def test_wide_heads_tiles_fit_hopper_shared_memory(head_dim: int, group: int) -> None:
    """The default tiles of short, medium and long steps, and check_kernels' fixed ones fitted by ``for_head_dim``,
    ask no more shared memory than a Hopper block has. Triton's compile here reports what the GPU then asks (H100,
    2026-12-06: unfitted 128 x 128 tiles at D=512 655,360 bytes here and there, a failed launch)."""
    configs = [default_prefill_config(n, 4, head_dim) for n in (32, 256, 2048)] + [
        for_head_dim(PrefillConfig(block_m=128, block_n=128, num_warps=8, num_stages=2, heads_first=False), head_dim),
        for_head_dim(PrefillConfig(block_m=64, block_n=64, num_warps=4, num_stages=3, pack_gqa=True), head_dim),
    ]
    for cfg in configs:
        shared = hopper_kernel(cfg, "*bf16", head_dim=head_dim, group=group).metadata.shared
        assert 0 < shared <= HOPPER_SHARED_BYTES, (cfg, shared)


def bf16_mmas(ptx: str) -> set[str]:
    return set(re.findall(r"\b(wgmma\.mma_async\.[\w.]+|mma\.sync\.[\w.]+)", ptx))


@pytest.mark.slow  # one compile for sm_90 (~2-4 s)
def test_fp8_pool_kernel_compiles_for_hopper_widening_e4m3_into_bf16_dots() -> None:
    """No GPU runs the suite, so the FP8-pool kernel (``*fp8e4nv``: float8_e4m3fn) is compiled for Hopper: its e4m3
    tiles must still be copied asynchronously (the pipelined loads, half the bytes of bf16's), widened in registers,
    and both dots stay bf16 wgmma."""
    ptx = hopper_ptx(default_prefill_config(2048, 4), "*fp8e4nv")
    mmas = bf16_mmas(ptx)
    assert mmas and all(mma.endswith(".f32.bf16.bf16") for mma in mmas), mmas
    assert re.search(r"cvt\.rn\.f16x2\.e4m3x2", ptx)  # e4m3 -> f16, two at a time (exact), then on to bf16
    assert re.search(r"cp\.async\.(?:ca|cg)", ptx)


@pytest.mark.slow  # one compile for sm_90 (~2-4 s)
def test_packed_gqa_kernel_compiles_for_hopper_with_bf16_dots() -> None:
    """The packed tile (a KV head's 4 query heads over 32 rows, each row its head's sink) compiles for Hopper with
    pipelined loads and bf16 tensor-core dots, as the unpacked one does."""
    cfg = dataclasses.replace(default_prefill_config(2048, 4), pack_gqa=True)
    ptx = hopper_ptx(cfg, "*bf16", has_sinks=True)
    mmas = bf16_mmas(ptx)
    assert mmas and all(mma.endswith(".f32.bf16.bf16") for mma in mmas), mmas
    assert re.search(r"cp\.async\.(?:ca|cg)", ptx)


@pytest.mark.parametrize(("backend", "rows", "copied"), [("triton-prefill", 64, True), ("triton-prefill", 8, False),
                                                         ("pallas", 64, False)])  # fmt: skip
def test_steps_running_the_kernel_read_the_metadata_from_buffers_of_their_own(
    backend: str, rows: int, copied: bool
) -> None:
    """A step that runs the jax-triton kernel (more query rows than sequences) takes its KV lengths, block tables and
    query starts through an optimization barrier, once: XLA then gives them buffers, so no layer's custom call reads a
    slice of the packed step inputs (a dynamic-slice fusion, outside the CUDA graph: compiled for an H200, a
    1,024-token Llama-3-8B step went from 33 command buffers to 1). Decode steps and the Pallas backend keep them."""
    import jax

    from jllm.attention import AttentionMetadata, with_kernel_buffers

    meta = AttentionMetadata(
        slot_mapping=jnp.zeros(rows, jnp.int32), query_start_loc=jnp.arange(9, dtype=jnp.int32),
        kv_lens=jnp.ones(8, jnp.int32), block_tables=jnp.zeros((8, 4), jnp.int32), backend=backend,
    )  # fmt: skip
    jaxpr = jax.make_jaxpr(lambda m: with_kernel_buffers(m, rows))(meta)
    barriers = [e for e in jaxpr.eqns if e.primitive.name == "optimization_barrier"]
    assert len(barriers) == copied
    out = with_kernel_buffers(meta, rows)
    for name in ("kv_lens", "block_tables", "query_start_loc", "slot_mapping"):
        np.testing.assert_array_equal(getattr(out, name), getattr(meta, name))

"""Correctness sweep of the paged attention kernels against the float32 reference, on the GPU: the Pallas ragged
kernel on every case, and the jax-triton prefill kernel (``triton-prefill``) on every case with prefill rows.

Cases cover decode batches of 1 to 256 over contexts of 1 to 32k tokens, page sizes 16/32/64, head_dim 64/128 (and
256/512, and 80/96/192: heads of no power-of-two width, run as the engine runs them, q and the pool zero-padded to
the next power of two and the output cut back, against the reference over the unpadded pool), GQA 1/4/8, KV lengths
on and just past page boundaries, prefill chunks with and without a cached prefix, mixed prefill+decode batches,
empty padding sequences, soft-cap and sliding window, attention sinks (gpt-oss), bf16 and f32 queries, FP8
(float8_e4m3fn) pools with K/V scales, read by the reference as they are (so quantization error is not the
kernel's). Before each kernel call the allocator is filled with NaN (an unwritten output element would show); leak
cases then rewrite every slot no sequence has written with huge values (+-448 in an FP8 pool) and require a
bit-identical output.

    python scripts/check_kernels.py                 # GPU, full sweep; logs to $OUT when set
    python scripts/check_kernels.py --quick --interpret   # CPU dry run of the script on small cases
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jllm.attention import kernel_head_dim, pad_heads
from pallas_kernels import KernelConfig, default_config, ragged_paged_attention, ref_ragged_paged_attention
from pallas_kernels.kv_quant import FP8_DTYPE, is_fp8, quantize
from pallas_kernels.triton_prefill import PrefillConfig, default_prefill_config, for_head_dim, prefill_attention

# A tiling no default picks: ragged query blocks, several pages per KV block, split-K.
ODD_TILING = KernelConfig(q_block=8, kv_block=64, num_splits=2, num_warps=4, num_stages=2)
ODD_PREFILL_TILING = PrefillConfig(block_m=64, block_n=32, num_warps=4, num_stages=2)
ITEMS_FIRST_PREFILL = PrefillConfig(block_m=128, block_n=128, num_warps=8, num_stages=2, heads_first=False)
PACKED_PREFILL = PrefillConfig(block_m=64, block_n=64, num_warps=4, num_stages=3, pack_gqa=True)
FP8_SCALES = (0.6, 1.7)  # K's and V's: neither 1.0, so that a scale dropped or swapped shows


@dataclasses.dataclass
class Case:
    name: str
    q_lens: list[int]
    kv_lens: list[int]
    page_size: int = 16
    head_dim: int = 128
    group: int = 4
    num_kv_heads: int = 8
    dtype: str = "bfloat16"
    pad_rows: int = 3
    soft_cap: float | None = None
    sliding_window: int | None = None
    sinks: bool = False  # a random logit per query head in each row's softmax (gpt-oss's attention sinks)
    kv_scales: tuple[float, float] | None = None  # an FP8 pool: K and V stored as x / scale in float8_e4m3fn
    leak: bool = False  # also rewrite unwritten slots with garbage and require the same output
    config: KernelConfig | PrefillConfig | None = None  # None: the default tiling for the shape
    kernel: str = "pallas"  # or "triton-prefill"


def decode(name: str, kv_lens: list[int], **kw: object) -> Case:
    """A decode step shaped as the runner pads it: one row per sequence slot, so the decode layout (q_block=1) runs."""
    q_lens = [1 if n else 0 for n in kv_lens]
    return Case(name, q_lens, kv_lens, pad_rows=len(q_lens) - sum(q_lens), **kw)


def boundary_lengths(rng: np.random.Generator, n: int, max_len: int, page_size: int) -> list[int]:
    """Random lengths, a third of them moved exactly onto a page boundary and a third just past one."""
    lens = rng.integers(1, max_len + 1, n)
    on = lens[: n // 3] // page_size * page_size
    lens[: n // 3] = np.maximum(on, page_size)
    lens[n // 3 : 2 * n // 3] = lens[n // 3 : 2 * n // 3] // page_size * page_size + 1
    return [int(x) for x in lens]


def cases(quick: bool) -> list[Case]:
    rng = np.random.default_rng(0)
    mixed_q = [1, 1, 1, 37, 0, 128, 1]
    out: list[Case] = []
    for ps in (16, 32, 64):
        for head_dim in (64, 128):
            for group in (1, 4, 8):
                if quick and (ps, head_dim) != (16, 64):
                    continue
                kv = [ps, ps + 1, 3 * ps, 5 * ps + 1 + 37, 0, 128, 2000 if not quick else 100]
                name = f"mixed ps={ps} D={head_dim} G={group}"
                out.append(Case(name, mixed_q, kv, page_size=ps, head_dim=head_dim, group=group, num_kv_heads=4))
    out += [
        decode("decode b1 ctx1", [1]),
        decode("decode b1 ctx=16 (on page)", [16]),
        decode("decode b1 ctx=17 (past page)", [17], dtype="float32", head_dim=64),
        decode("decode b7 boundaries", [1, 15, 16, 17, 2048, 4095, 4097][: 5 if quick else 7]),
        Case("mixed f32 D=64 G=4", mixed_q, [16, 17, 48, 118, 0, 128, 300], head_dim=64, dtype="float32"),
        Case("mixed softcap+window", mixed_q, [16, 17, 48, 118, 0, 128, 300], soft_cap=30.0, sliding_window=64),
        Case(
            "mixed sinks+window D=64",
            mixed_q,
            [16, 17, 48, 118, 0, 128, 300],
            head_dim=64,
            sinks=True,
            sliding_window=128,
        ),
        decode("decode b5 sinks D=64", [1, 16, 17, 300, 0], head_dim=64, group=8, sinks=True),
        Case("mixed leak", mixed_q, [16, 17, 48, 118, 0, 128, 300], leak=True),
        Case("mixed q8/kv64/s2 leak", mixed_q, [16, 17, 48, 118, 0, 128, 300], leak=True, config=ODD_TILING),
        decode("decode b5 fp8", [1, 16, 17, 300, 0], kv_scales=FP8_SCALES),
        Case("mixed fp8 leak", mixed_q, [16, 17, 48, 118, 0, 128, 300], kv_scales=FP8_SCALES, leak=True),
        Case(
            "mixed fp8 sinks+window f32 D=64 ps=32",
            mixed_q,
            [32, 33, 96, 118, 0, 128, 300],
            page_size=32,
            head_dim=64,
            dtype="float32",
            sinks=True,
            sliding_window=128,
            kv_scales=FP8_SCALES,
        ),
        # heads of no power-of-two width, padded: Phi-2's 80 (multi-head attention)
        Case("mixed D=80 G=1 leak", mixed_q, [16, 17, 48, 118, 0, 128, 300], head_dim=80, group=1, leak=True),
    ]
    if quick:
        return out + triton_cases(out)
    out += [
        decode("decode b1 ctx=32768", [32768]),
        decode("decode b1 ctx=32768 window=4096", [32768], sliding_window=4096),
        decode("decode b1 ctx=4096 (on page) ps=64", [4096], page_size=64),
        decode("decode b64 ctx<=2k", boundary_lengths(rng, 64, 2048, 16), leak=True),
        decode("decode b64 ctx<=2k q8/kv64/s2", boundary_lengths(rng, 64, 2048, 16), config=ODD_TILING),
        decode("decode b256 ctx<=1k +6 pad", boundary_lengths(rng, 250, 1024, 16) + [0] * 6),
        decode("decode b128 ctx<=8k ps=32 G=8", boundary_lengths(rng, 128, 8192, 32), page_size=32, group=8),
        decode("decode b32 ctx<=16k f32 D=128", boundary_lengths(rng, 32, 16384, 16), dtype="float32"),
        Case("prefill 512 fresh", [512], [512]),
        Case("prefill 512 over 8k prefix", [512], [8192 + 512]),
        Case("prefill 2048 over 4k prefix", [2048], [4096 + 2048], page_size=32),
        Case("prefill 2048 fresh G=1 D=64", [2048], [2048], group=1, head_dim=64),
        # wide heads: Gemma 2 / 3's 256 (soft-capped, windowed), Gemma 4's full layers' 512 (2 KV heads of 16 queries)
        Case(
            "prefill 1024 fresh D=256 G=2 softcap+window",
            [1024],
            [1024],
            head_dim=256,
            group=2,
            soft_cap=50.0,
            sliding_window=512,
        ),
        Case("mixed D=256 G=2", mixed_q, [16, 17, 48, 118, 0, 128, 300], head_dim=256, group=2),
        decode("decode b8 ctx<=4k D=256 G=2", boundary_lengths(rng, 8, 4096, 16), head_dim=256, group=2),
        Case("prefill 1024 fresh D=512 G=8", [1024], [1024], head_dim=512, group=8, num_kv_heads=2),
        Case("mixed D=512 G=8", mixed_q, [16, 17, 48, 118, 0, 128, 300], head_dim=512, group=8, num_kv_heads=2),
        decode(
            "decode b8 ctx<=4k D=512 G=8", boundary_lengths(rng, 8, 4096, 16), head_dim=512, group=8, num_kv_heads=2
        ),
        Case("mixed 31 decodes + 512 chunk", [1] * 31 + [512], boundary_lengths(rng, 31, 4096, 16) + [1024]),
        Case("mixed b128: 120 decodes + 8 chunks", [1] * 120 + [64] * 8, boundary_lengths(rng, 128, 3000, 16)),
        Case(
            "mixed softcap+window G=8 ps=64",
            [1] * 6 + [300],
            [70, 64, 65, 900, 1, 4096, 1500],
            page_size=64,
            group=8,
            soft_cap=50.0,
            sliding_window=512,
        ),
        Case("prefill 2048 over 4k prefix fp8", [2048], [4096 + 2048], kv_scales=FP8_SCALES),
        Case(
            "prefill 512 over 8k prefix fp8 window=1024", [512], [8192 + 512], sliding_window=1024, kv_scales=FP8_SCALES
        ),
        decode("decode b64 ctx<=2k fp8", boundary_lengths(rng, 64, 2048, 16), kv_scales=FP8_SCALES),
        # heads of no power-of-two width over pools padded to 128 / 256: Phi-3-mini's 96 and Phi-2's 80 (multi-head
        # attention), MiMo-V2-Flash's 192 (8 query heads a KV head, windowed layers with sinks)
        decode("decode b32 ctx<=4k D=96 G=1", boundary_lengths(rng, 32, 4096, 16), head_dim=96, group=1),
        Case("prefill 1024 fresh D=96 G=1", [1024], [1024], head_dim=96, group=1),
        Case(
            "prefill 512 over 4k prefix D=80 G=1 fp8", [512], [4096 + 512], head_dim=80, group=1, kv_scales=FP8_SCALES
        ),
        Case(
            "mixed D=192 G=8 sinks+window",
            mixed_q,
            [16, 17, 48, 118, 0, 128, 300],
            head_dim=192,
            group=8,
            num_kv_heads=4,
            sinks=True,
            sliding_window=128,
        ),
        decode(
            "decode b8 ctx<=4k D=192 G=8", boundary_lengths(rng, 8, 4096, 16), head_dim=192, group=8, num_kv_heads=4
        ),
    ]
    return out + triton_cases(out)


def triton_cases(pallas_cases: list[Case]) -> list[Case]:
    """The jax-triton prefill kernel on every case with prefill rows (jax-triton installed), plus an odd tiling,
    the grid in items-first order (heads first is the default) and, on every case, a KV head's query heads packed
    into one tile."""
    try:
        import jax_triton  # noqa: F401
    except ImportError:
        return []
    out = []
    for case in pallas_cases:
        if max(case.q_lens) > 1:
            out.append(dataclasses.replace(case, name=f"triton {case.name}", kernel="triton-prefill", config=None))
    mixed = [c for c in out if c.name.startswith("triton mixed leak")]
    out += [dataclasses.replace(c, name=f"{c.name} m64/n32", config=ODD_PREFILL_TILING) for c in mixed]
    prefills = [c for c in out if c.name.startswith("triton prefill") and c.config is None]
    out += [dataclasses.replace(c, name=f"{c.name} items-first", config=wide(ITEMS_FIRST_PREFILL, c)) for c in prefills]
    plain = [c for c in out if c.config is None]
    out += [dataclasses.replace(c, name=f"{c.name} packed-gqa", config=wide(PACKED_PREFILL, c)) for c in plain]
    return out


def wide(config: PrefillConfig, case: Case) -> PrefillConfig:
    """A fixed tiling of the checks fitted to the case's head width once padded, as the engine fits its own
    (``for_head_dim``): 128 x 128 tiles at D=512 ask 640 KiB of shared memory, a failed launch (H100, 2026-12-06)."""
    return for_head_dim(config, kernel_head_dim(case.head_dim))


def build(case: Case, seed: int) -> tuple[jax.Array, ...]:
    """(q, kv_pages, kv_lens, block_tables, query_start_loc): random values on device, pages randomly permuted."""
    rng = np.random.default_rng(seed)
    ps = case.page_size
    kv_lens = case.kv_lens
    needed = [-(-n // ps) for n in kv_lens]
    num_pages = 1 + sum(needed) + 3
    free = 1 + rng.permutation(num_pages - 1)
    tables = np.zeros((len(kv_lens), max(needed) + 1), np.int32)
    for s, n in enumerate(needed):
        tables[s, :n], free = free[:n], free[n:]
    dtype = jnp.dtype(case.dtype)
    kq, kp = jax.random.split(jax.random.key(seed))
    num_tokens = sum(case.q_lens) + case.pad_rows
    q = jax.random.normal(kq, (num_tokens, case.num_kv_heads * case.group, case.head_dim), dtype)
    pool = jax.random.normal(kp, (2, case.num_kv_heads, num_pages, ps, case.head_dim), dtype)
    if case.kv_scales:
        pool = jnp.stack([quantize(pool[half], FP8_DTYPE, scale) for half, scale in enumerate(case.kv_scales)])
    qsl = np.concatenate([[0], np.cumsum(case.q_lens)]).astype(np.int32)
    return q, pool, jnp.asarray(kv_lens, jnp.int32), jnp.asarray(tables), jnp.asarray(qsl)


def padded_heads(inputs: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """q and the pool zero-padded to the kernels' head width (``jllm.attention.kernel_head_dim``), as the engine's
    ``paged_attention`` pads them for heads of no power-of-two width; unchanged for a power of two."""
    q, pool, *rest = inputs
    width = kernel_head_dim(q.shape[-1])
    q, pool = pad_heads(q, width), pad_heads(pool, width)
    return (q, pool, *rest)


def with_stale_slots(inputs: tuple[jax.Array, ...], seed: int) -> tuple[jax.Array, ...]:
    """The same step over a pool whose never-written slots (page 0, page tails, free pages) hold huge values."""
    q, pool, kv_lens, tables, qsl = inputs
    num_pages, ps = pool.shape[2:4]
    written = np.zeros(num_pages * ps, bool)
    for table, n in zip(np.asarray(tables), np.asarray(kv_lens), strict=True):
        t = np.arange(n)
        written[table[t // ps] * ps + t % ps] = True
    mask = jnp.asarray(written.reshape(1, 1, num_pages, ps, 1))
    stale = quantize(1e3 * jax.random.normal(jax.random.key(seed), pool.shape, jnp.float32), pool.dtype)  # e4m3: +-448
    return q, jnp.where(mask, pool, stale), kv_lens, tables, qsl


def poison(num_bytes: int) -> None:
    """Leave NaN in freed device memory, where the next output buffers are likely to be placed."""
    jnp.full((max(num_bytes, 4) // 4,), jnp.nan, jnp.float32).block_until_ready()


def run_case(case: Case, seed: int, interpret: bool) -> dict[str, object]:
    inputs = build(case, seed)
    q = inputs[0]
    kw = {"sm_scale": case.head_dim**-0.5, "soft_cap": case.soft_cap, "sliding_window": case.sliding_window}
    if case.sinks:
        kw["sinks"] = 3.0 * jax.random.normal(jax.random.key(seed + 2), (q.shape[1],), jnp.float32)
    if case.kv_scales:
        kw["k_scale"], kw["v_scale"] = case.kv_scales
    if case.kernel == "triton-prefill":
        kernel = jax.jit(lambda *a: prefill_attention(*a, config=case.config, **kw))
    else:
        kernel = jax.jit(lambda *a: ragged_paged_attention(*a, config=case.config, interpret=interpret, **kw))
    reference = jax.jit(lambda q, pool, *rest: ref_ragged_paged_attention(q, pool, *rest, **kw))
    start = time.perf_counter()
    poison(4 * q.size * 4)
    # the kernel over padded heads, its output cut back; the reference over the model's
    out = np.asarray(kernel(*padded_heads(inputs))[..., : case.head_dim].astype(jnp.float32))
    pool = inputs[1] if is_fp8(inputs[1].dtype) else inputs[1].astype(jnp.float32)  # the reference dequantizes FP8
    ref = np.asarray(reference(q.astype(jnp.float32), pool, *inputs[2:]))
    err = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))
    tol = 1e-2 if case.dtype == "bfloat16" else 1e-4
    pad = np.arange(len(ref)) >= sum(case.q_lens)
    problems = []
    if not np.isfinite(out).all():
        problems.append(f"{int((~np.isfinite(out)).sum())} non-finite elements")
    if err > tol:
        problems.append(f"error {err:.2e} > {tol:.0e}")
    if (out[pad] != 0).any():
        problems.append("padding rows not zero")
    if case.leak:
        poison(4 * q.size * 4)
        stale_inputs = padded_heads(with_stale_slots(inputs, seed + 1))
        stale_out = np.asarray(kernel(*stale_inputs)[..., : case.head_dim].astype(jnp.float32))
        if not np.array_equal(stale_out, out):
            problems.append(f"stale slots leak (max change {np.abs(stale_out - out).max():.2e})")
    return {"case": case.name, **case_facts(case, inputs), "rel_err": err, "ok": not problems, "problems": problems,
            "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip


def case_facts(case: Case, inputs: tuple[jax.Array, ...]) -> dict[str, object]:
    """The case's shape and the tiling that ran (the default for the shape unless the case names one)."""
    q, tables = inputs[0], inputs[3]
    width = kernel_head_dim(case.head_dim)  # the padded pool's
    if case.kernel == "triton-prefill":
        group = q.shape[1] // case.num_kv_heads
        cfg = case.config or default_prefill_config(q.shape[0], len(case.q_lens), width, group)
    else:
        cfg = case.config or default_config(
            q.shape[0], len(case.q_lens), q.shape[1], case.num_kv_heads, case.page_size, tables.shape[1], width,
            q.dtype.itemsize,
        )  # fmt: skip
    return {
        "kernel": case.kernel,
        "tokens": int(q.shape[0]),
        "seqs": len(case.q_lens),
        "max_kv_len": max(case.kv_lens),
        "dtype": case.dtype,
        "kv_dtype": str(inputs[1].dtype),
        "config": dataclasses.asdict(cfg),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small subset (for a CPU dry run)")
    parser.add_argument("--interpret", action="store_true", help="run the kernel in Pallas interpret mode")
    parser.add_argument("--kernel", choices=("pallas", "triton-prefill"), help="check only this kernel's cases")
    parser.add_argument("--match", default="", help="check only the cases whose name contains this, e.g. packed-gqa")
    parser.add_argument("--json", type=Path, help="results file (default: $OUT/check_kernels.json when $OUT is set)")
    args = parser.parse_args()
    out_dir = os.environ.get("OUT")
    json_path = args.json or (Path(out_dir) / "check_kernels.json" if out_dir else None)

    header = f"{jax.devices()[0].device_kind} | jax {jax.__version__} | {datetime.date.today()} | check_kernels"
    print(header, flush=True)
    results = []
    for i, case in enumerate(cases(args.quick)):
        if (args.kernel and case.kernel != args.kernel) or args.match not in case.name:
            continue
        try:
            row = run_case(case, seed=i, interpret=args.interpret)
        except Exception as e:  # one broken case (e.g. a compile error) must not hide the others' results
            row = {"case": case.name, "ok": False, "problems": [f"{type(e).__name__}: {str(e)[:500]}"]}
        results.append(row)
        if json_path:  # rewritten after every case, so a run cut short still leaves what it checked
            json_path.write_text(json.dumps({"header": header, "results": results}, indent=1))
        detail = ""
        if "rel_err" in row:
            c = row["config"]
            if row["kernel"] == "triton-prefill":
                tiling = f"m{c['block_m']}/n{c['block_n']}/w{c['num_warps']}/st{c['num_stages']}"
            else:
                tiling = f"q{c['q_block']}/kv{c['kv_block']}/s{c['num_splits']}/w{c['num_warps']}"
            detail = f"err={row['rel_err']:.1e} {tiling} {row['seconds']}s"
        print(f"{'ok  ' if row['ok'] else 'FAIL'} {case.name:38s} {detail} {'; '.join(row['problems'])}", flush=True)
    failed = [r["case"] for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)}/{len(results)} cases passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

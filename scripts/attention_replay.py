"""One engine decode step's attention inputs, recorded from a running engine and changed one thing at a time.

Why: on an H200 the decode kernel took 27.8 us a call inside the Llama-3-8B engine's batch-32 step and 15.0-15.7 us
in ``bench_kernels.py``'s synthetic 32 x 256 (docs/benchmarks.md, "The open question"). ``record`` saves what the
kernel call receives in the engine, besides the pool's contents; ``bench_kernels.py --replay`` times it as recorded
and with one difference from the synthetic inputs at a time (``variants``).

Where the values come from: the step's packed input buffer as it was sent to the device (the ``DeviceStep`` that
``ModelRunner._forward`` took), unpacked by ``step_inputs.unpack_inputs``, the function the jitted forward unpacks it
with; the model passes ``inputs.attn``'s arrays to the kernel untouched (``jllm.attention.paged_attention``). The
static side (argument shapes and dtypes as the kernel sees them, per device under tensor parallelism, and its keyword
arguments) comes from tracing that forward with the attention functions watched. ``tests/test_attention_replay.py``
checks the recorded arrays against the values the kernel received at run time.

    python scripts/profile_step.py ... --batch-sizes 32 --dump-attention step.npz    # record (see profile_step.py)
    python scripts/bench_kernels.py --replay step.npz                                # time it
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from bench_common import PartTimer, random_block_tables

ARRAYS = ("kv_lens", "block_tables", "query_start_loc", "slot_mapping", "positions")
# The names under which jllm.attention calls the attention; under "triton-prefill" a step with more query rows than
# sequences also takes pallas_kernels.triton_prefill.prefill_attention (imported inside the call, so watched there).
WATCHED = ("ragged_paged_attention", "ref_ragged_paged_attention")


@dataclasses.dataclass(frozen=True)
class RecordedStep:
    kv_lens: np.ndarray  # i32[S]: KV length of each of the bucket's sequences (0 for padding)
    block_tables: np.ndarray  # i32[S, pages_per_seq]: page ids, padding 0 (width from max_model_len)
    query_start_loc: np.ndarray  # i32[S + 1]
    slot_mapping: np.ndarray  # i32[T]: where the step wrote its new K/V (before the kernel ran)
    positions: np.ndarray  # i32[T]
    info: dict[str, Any]  # the static side: see ``record``

    @property
    def call(self) -> dict[str, Any]:
        """The first traced kernel call: argument shapes / dtypes and keyword arguments."""
        return self.info["calls"][0]

    @property
    def num_seqs(self) -> int:
        """Sequences the step really ran (the bucket's padding ones have length 0)."""
        return int(np.count_nonzero(self.kv_lens))

    @property
    def page_size(self) -> int:
        return self.call["kv_pages"][0][3]

    @property
    def num_pages(self) -> int:
        return self.call["kv_pages"][0][2]

    def save(self, path: Path) -> None:
        arrays = {name: getattr(self, name) for name in ARRAYS}
        np.savez(path, **arrays, info=np.array(json.dumps(self.info)))

    @classmethod
    def load(cls, path: Path) -> RecordedStep:
        with np.load(path) as f:
            return cls(**{name: f[name] for name in ARRAYS}, info=json.loads(str(f["info"])))


def record(llm: Any) -> RecordedStep:
    """Runs one engine step of ``llm`` (a ``jllm.LLM`` in steady decode) and records its attention inputs."""
    from jllm.step_inputs import unpack_inputs

    runner = llm.engine.runner
    captured: list[Any] = []
    timer = PartTimer()
    timer.wrap(runner, "_forward", "forward", note=captured.append)  # the DeviceStep, as launch() put it
    try:
        llm.engine.step()
    finally:
        timer.unwrap()
    step = captured[-1]
    inputs = unpack_inputs(step.layout, step.buffer)  # as the forward does, from the buffer on the device
    attn = inputs.attn
    arrays = {name: np.asarray(getattr(attn, name)) for name in ARRAYS[:-1]} | {"positions": inputs.positions}
    calls = traced_calls(runner, step)
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "model": str(llm.config.model.model),
        "backend": runner.attention_backend,
        "kernel": calls[0]["kernel"],
        "tensor_parallel_size": runner.mesh.size,
        "num_layers": len(runner.kv_caches),
        "pool_shape": list(runner.kv_caches[0].shape),  # the whole pool; calls[i]["kv_pages"] is one device's
        "pool_dtype": str(runner.kv_caches[0].dtype),
        "max_model_len": llm.engine.max_model_len,
        "pages_per_seq": runner.pages_per_seq,
        "bucket": [len(arrays["slot_mapping"]), len(arrays["kv_lens"])],  # (tokens, sequences)
        "calls": calls,
        # The Pallas kernel's tiling on these shapes (what it picks with no config, as the engine calls it).
        "kernel_config": kernel_config(calls[0]),
    }
    return RecordedStep(**{k: np.asarray(v) for k, v in arrays.items()}, info=info)


def traced_calls(runner: Any, step: Any) -> list[dict[str, Any]]:
    """Traces the step's forward with the attention functions watched: one entry per distinct call (the layers of a
    kind share one trace), with every argument's shape and dtype and the keyword arguments, as the kernel gets
    them (inside ``shard_map`` under tensor parallelism: one device's heads)."""
    import jllm.attention as attention
    from jllm.runner import trace

    calls: list[dict[str, Any]] = []
    modules = {name: attention for name in WATCHED}
    if runner.attention_backend == "triton-prefill":
        import pallas_kernels.triton_prefill as triton_prefill

        modules["prefill_attention"] = triton_prefill
    originals = {name: getattr(module, name) for name, module in modules.items()}

    def watch(name: str, fn: Any) -> Any:
        def watched(*args: Any, **kwargs: Any) -> Any:
            names = ("q", "kv_pages", "kv_lens", "block_tables", "query_start_loc")
            call = {n: [list(a.shape), str(a.dtype)] for n, a in zip(names, args, strict=True)}
            # numbers as they are; a traced one (a checkpoint's FP8 KV scale) by its shape and dtype
            kw = {
                k: v if v is None or isinstance(v, int | float) else [list(v.shape), str(v.dtype)]
                for k, v in kwargs.items()
            }
            calls.append({"kernel": name, **call, "kwargs": kw})
            return fn(*args, **kwargs)

        return watched

    try:
        for name, fn in originals.items():
            setattr(modules[name], name, watch(name, fn))
        jax.clear_caches()  # else the layers' nested jit serves its cached trace and never calls the watched names
        trace(runner._call(("forward", None, step.layout), step, None))
    finally:
        for name, fn in originals.items():
            setattr(modules[name], name, fn)
        jax.clear_caches()  # drop the traces made with the watchers
    if not calls:
        raise RuntimeError(f"tracing the step's forward called none of {list(modules)}")
    distinct = []
    for call in calls:
        if call not in distinct:
            distinct.append(call)
    return distinct


def kernel_config(call: dict[str, Any]) -> dict[str, int]:
    """The Pallas kernel's default tiling for a traced call's shapes (what it picks when no config is given)."""
    from pallas_kernels import default_config

    (tokens, q_heads, head_dim), q_dtype = call["q"]
    _, kv_heads, _, page_size, _ = call["kv_pages"][0]
    seqs, width = call["block_tables"][0]
    itemsize = jax.numpy.dtype(q_dtype).itemsize
    return dataclasses.asdict(default_config(tokens, seqs, q_heads, kv_heads, page_size, width, head_dim, itemsize))


def describe(rec: RecordedStep) -> list[str]:
    """What the recorded step's metadata looks like, beside what bench_kernels' synthetic step would be."""
    info, real, page = rec.info, rec.num_seqs, rec.page_size
    lens = rec.kv_lens[:real]
    used = -(-lens // page)
    runs = [row[:n] for row, n in zip(rec.block_tables, used, strict=False)]
    adjacent = sum(int((np.diff(r) == 1).sum()) for r in runs)
    pairs = sum(max(len(r) - 1, 0) for r in runs)
    tokens, seqs = info["bucket"]
    notes = []
    if tokens > seqs:
        notes.append(
            f"  note: {tokens} query rows for {seqs} sequences (the bucket's): the Pallas kernel picks q_block "
            f"{info['kernel_config']['q_block']} (prefill tiles, not the decode layout), and backend 'triton-prefill' "
            "sends the step to the jax-triton prefill kernel; a decode step has T == S only when max_num_seqs is "
            "at least the bucket's token count"
        )
    if info["kernel"] != "ragged_paged_attention":
        notes.append(f"  note: the engine called {info['kernel']}; --replay times the Pallas kernel on its inputs")
    return [
        f"recorded {info['date']} on {info['device']} (jax {info['jax']}): {info['model']}, backend {info['backend']} "
        f"-> {info['kernel']}, {info['num_layers']} layers, TP {info['tensor_parallel_size']}",
        f"  bucket {tokens} tokens x {seqs} sequences, {real} real; kv_lens min {lens.min()} mean {lens.mean():.1f} "
        f"max {lens.max()}; q {rec.call['q'][0]} {rec.call['q'][1]}",
        f"  block table {list(rec.block_tables.shape)} (pages_per_seq from max_model_len {info['max_model_len']}); "
        f"pages used per sequence {used.min()}-{used.max()} (the synthetic step's table is {used.max()} wide)",
        f"  pool {rec.call['kv_pages'][0]} {rec.call['kv_pages'][1]} per layer and device; "
        f"in each sequence's pages, {adjacent} of {pairs} next pages are the next page id (all, were they in order)",
        f"  kwargs {rec.call['kwargs']}; kernel config on these shapes {info['kernel_config']}",
        *notes,
    ]


@dataclasses.dataclass(frozen=True)
class Variant:
    """The recorded step, or it with one thing changed toward bench_kernels' synthetic step."""

    name: str
    kv_lens: np.ndarray  # i32[S]
    block_tables: np.ndarray  # i32[S, W]
    query_start_loc: np.ndarray  # i32[S + 1]
    num_tokens: int  # query rows T
    one_pool: bool = False  # every call over one pool and the same pages, not one pool per layer as in the engine


def variants(rec: RecordedStep, rng: np.random.Generator) -> list[Variant]:
    """As recorded, then one change each: the table trimmed to the pages used, the bucket's padding sequences
    dropped, pages renumbered in order, every length the mean, one pool for every call."""
    lens, tables, qsl, page, real = rec.kv_lens, rec.block_tables, rec.query_start_loc, rec.page_size, rec.num_seqs
    tokens = len(rec.slot_mapping)
    used = -(-lens // page)
    out = [Variant("as recorded", lens, tables, qsl, tokens)]
    if used.max() < tables.shape[1]:
        name = f"block table trimmed to the pages used ({tables.shape[1]} -> {used.max()} wide)"
        out.append(Variant(name, lens, tables[:, : used.max()], qsl, tokens))
    if real < len(lens):
        name = f"bucket's padding sequences dropped ({len(lens)} -> {real})"
        out.append(Variant(name, lens[:real], tables[:real], qsl[: real + 1], int(qsl[real])))
    in_order = random_block_tables(rng, rec.num_pages, page, lens.tolist(), tables.shape[1], scattered=False)
    out.append(Variant("pages renumbered 1, 2, 3 ... in order", lens, in_order, qsl, tokens))
    mean = round(float(lens[:real].mean()))
    if (lens[:real] != mean).any():
        equal = np.where(lens > 0, mean, 0).astype(np.int32)
        out.append(Variant(f"kv_lens all {mean} (the mean)", equal, extended(rec, equal, rng), qsl, tokens))
    out.append(Variant("one pool for every call (one per layer recorded)", lens, tables, qsl, tokens, one_pool=True))
    return out


def extended(rec: RecordedStep, kv_lens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The recorded tables with pages added (unused ones, at random) where ``kv_lens`` reach past a row's pages."""
    tables = rec.block_tables.copy()
    free = rng.permutation(np.setdiff1d(np.arange(1, rec.num_pages), tables))
    for row, need in zip(tables, -(-kv_lens // rec.page_size), strict=True):
        have = int(np.count_nonzero(row))
        if need > have:
            row[have:need], free = free[: need - have], free[need - have :]
    return tables

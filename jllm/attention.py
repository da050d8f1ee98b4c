"""The one attention call every model makes: write the step's K/V into the paged pool, then attend over it.

The runner fills ``AttentionMetadata`` once per step; the backend (reference jnp path or a GPU kernel) is chosen at
trace time from its static ``backend`` field, so models never know which path runs. Under tensor parallelism both
paths run per device under ``shard_map`` over the static ``mesh`` field, each device attending with its own query and
KV heads: the Pallas kernel is opaque to XLA, and the reference's page gather would otherwise make XLA all-gather
the pool.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from jllm.parallel import TP_AXIS
from pallas_kernels import has_jax_triton, ragged_paged_attention, ref_ragged_paged_attention, write_kv
from pallas_kernels.kv_quant import Scale
from pallas_kernels.sparse_reference import ref_index_topk, ref_sparse_latent_attention

if TYPE_CHECKING:
    from jllm.kv_cache import KVCacheSpec

# "reference": pure jnp for every step (any platform). "pallas": the Pallas ragged kernel for every step.
# "triton-prefill": steps with prefill rows run the jax-triton FlashAttention kernel, decode-only steps the Pallas one.
BACKENDS = ("reference", "pallas", "triton-prefill")
# JAX platform names on which the kernels compile; elsewhere Pallas can only run interpreted, jax-triton not at all.
_KERNEL_PLATFORMS = ("gpu", "cuda")
# The widest pool head the kernels take (after padding): Gemma 4's full layers' 512, the widest scripts/check_kernels.py
# checks on a GPU; a wider head takes the reference.
KERNEL_MAX_HEAD_DIM = 512


def kernels_interpreted() -> bool:
    """Whether a Pallas kernel called here runs in Pallas' interpreter: off a GPU (CI's CPU), correct but slow."""
    return jax.default_backend() not in _KERNEL_PLATFORMS


def kernel_head_dim(head_dim: int) -> int:
    """The pool head width the kernels read for a model's heads of ``head_dim``: the next power of two, at least 16.
    Both kernels tile a head's channels in one power-of-two block (Triton's dot needs M, N, K >= 16), so a head of
    another width (Phi-3's 96, Phi-2's 80, MiMo-V2-Flash's 192) is zero-padded to it in the pool and in q
    (``paged_attention``): a zero channel adds nothing to ``q . k`` and makes a zero output channel."""
    return max(16, 1 << (head_dim - 1).bit_length())


def resolve_backend(
    name: str,
    platform: str,
    head_dim: int | tuple[int, ...] | None = None,
    *,
    latent: bool = False,
    alibi: bool = False,
    sparse: bool = False,
) -> str:
    """The backend a configured name means on a JAX platform (``jax.default_backend()``) for a model's KV pool head
    width and layout, and whether the model's attention adds ALiBi's position bias.

    "auto" takes the kernels where they compile (NVIDIA GPUs: "triton-prefill" when jax-triton is installed, else
    "pallas") and the reference everywhere else. Every backend reads a pool in the model's dtype or FP8 (the kernels
    widen e4m3 tiles as they load them; ``scripts/check_kernels.py`` passed both on an FP8 pool in bf16 on an H200,
    2026-12-05), so "auto" picks the same kernel whatever the pool's dtype. Both kernels tile a head's channels in one
    power-of-two block: a head of another width (Phi-3's 96, Phi-2's and Pythia's 80) is read from a pool zero-padded to
    the next power of two (``kernel_head_dim``, ``resolve_pool``): more pool bytes (+33 % at 96, +60 % at 80), but the
    kernels instead of the reference's page gathers, far slower on a GPU (the padded widths are not yet timed on one). A
    head padded past ``KERNEL_MAX_HEAD_DIM`` and a ``latent`` pool (DeepSeek's, one row of 512 + 64 a token, no V plane)
    take the reference, and the kernels are refused for them. Only the reference adds ALiBi's bias (Bloom, MPT,
    Falcon-RW) and attends over an indexer's selected tokens alone (``sparse``: DeepSeek Sparse Attention, DeepSeek-V3.2
    and GLM-5): such a model takes it, and the kernels are refused for it. ``head_dim``: the model's, or a tuple of
    every layer's where they differ (Gemma 4's); one backend reads them all.
    """
    widths = head_dim if isinstance(head_dim, tuple) else (head_dim,)
    kernel_width = all(hd is None or kernel_head_dim(hd) <= KERNEL_MAX_HEAD_DIM for hd in widths)
    if name == "auto":
        if platform not in _KERNEL_PLATFORMS or not kernel_width or latent or alibi or sparse:
            return "reference"
        return "triton-prefill" if has_jax_triton() else "pallas"
    if name not in BACKENDS:
        raise ValueError(f"attention backend {name!r} is unknown; choose 'auto' or one of {BACKENDS}")
    if name != "reference" and (latent or not kernel_width):
        pool = "a latent pool (DeepSeek's latent attention)" if latent else f"head_dim {head_dim}"
        raise ValueError(
            f"attention_backend={name!r} needs K and V pools of heads at most {KERNEL_MAX_HEAD_DIM} wide once padded "
            f"to a power of two, not {pool}; use attention_backend 'auto' or 'reference'"
        )
    if name != "reference" and alibi:
        raise ValueError(
            f"attention_backend={name!r} does not add ALiBi's position bias, which this model's attention needs "
            "(Bloom, MPT, Falcon with alibi); use attention_backend 'auto' or 'reference'"
        )
    if name != "reference" and sparse:
        raise ValueError(
            f"attention_backend={name!r} does not restrict the attention to the indexer's selected tokens, which this "
            "model's attention needs (DeepSeek Sparse Attention: DeepSeek-V3.2, GLM-5); use attention_backend "
            "'auto' or 'reference'"
        )
    if name == "triton-prefill" and platform not in _KERNEL_PLATFORMS:
        raise ValueError(f"attention backend 'triton-prefill' needs a CUDA GPU (jax-triton), not {platform!r}")
    return name


def resolve_pool(name: str, model: KVCacheSpec, *, alibi: bool) -> tuple[str, KVCacheSpec]:
    """The backend a configured name means on this platform for a model's pool (``KVCacheSpec.for_model``), and the
    pool that backend reads: the model's for the reference (no padding's bytes on a CPU), every head zero-padded to
    ``kernel_head_dim`` for the kernels. What ``jllm.build`` sizes and allocates and ``jllm.memory_plan`` plans."""
    backend = resolve_backend(
        name,
        jax.default_backend(),
        model.head_dims if len(model.head_dims) > 1 else model.head_dim,
        latent=model.latent,
        alibi=alibi,
        sparse=model.index_head_dim > 0,
    )
    return backend, model if backend == "reference" else model.with_head_dims(kernel_head_dim)


def describe_backend(backend: str) -> str:
    """Which attention code each kind of step runs, for the start-up log."""
    kernel = "Pallas ragged kernel"
    decode = {"reference": "reference (jnp)", "pallas": kernel, "triton-prefill": kernel}
    prefill = dict(decode, **{"triton-prefill": "jax-triton FlashAttention kernel"})
    return f"attention '{backend}': decode steps -> {decode[backend]}, steps with prefill rows -> {prefill[backend]}"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMetadata:
    slot_mapping: jax.Array  # [T] int32: pool slot of each new token (padding -> reserved page 0)
    query_start_loc: jax.Array  # [S + 1] int32: sequence s owns query rows [qsl[s], qsl[s+1])
    kv_lens: jax.Array  # [S] int32: KV length of each sequence after this step (0 for padding)
    block_tables: jax.Array  # [S, pages_per_seq] int32: page ids (padding -> 0)
    # [S] int32: each row's recurrent state slot (hybrid models' recurrent layers, ``jllm.models.recurrent_state``;
    # padding -> reserved slot 0); None where nothing reads it (a scratch pool's program)
    state_slots: jax.Array | None = None
    backend: str = dataclasses.field(default="reference", metadata={"static": True})
    mesh: Mesh | None = dataclasses.field(default=None, metadata={"static": True})  # the TP mesh; None = one device


def paged_attention(
    q: jax.Array,  # [T, num_q_heads, head_dim]
    k: jax.Array | None,  # [T, num_kv_heads, head_dim]; None: nothing written (another layer's pages, read as they are)
    v: jax.Array | None,  # [T, num_kv_heads, head_dim]; None for a latent pool
    kv_pages: jax.Array,  # [planes, num_kv_heads, num_pages, page_size, head_dim], planes 2 (K, V) or 1 (latent)
    meta: AttentionMetadata,
    *,
    sm_scale: float,
    soft_cap: float | None = None,
    sliding_window: int | None = None,
    sinks: jax.Array | None = None,  # [num_q_heads]
    value_dim: int | None = None,
    alibi_slopes: jax.Array | None = None,  # [num_q_heads]
    k_scale: Scale = 1.0,
    v_scale: Scale = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Returns (attention output ``[T, num_q_heads, value_dim or head_dim]``, the updated pool).

    A pool whose heads are wider than the model's (``kv_pages``' last axis: the kernels' power-of-two width,
    ``resolve_pool``) gets q, k and v zero-padded to it here, the one place that pads, and the output cut back to q's
    width; ``sm_scale`` is the caller's, of the model's real width, so the padding changes no score.

    Backend "pallas" off a GPU runs the kernel in interpret mode: correct but slow, for tests only. A step has
    prefill rows when it has more query rows than sequences (static shapes: a decode bucket has T <= S). ``sinks``:
    gpt-oss's per-head logits that join each row's softmax denominator (every backend takes them; under tensor
    parallelism they split with the query heads). A latent pool (``value_dim``, ``v`` None: multi-head latent
    attention) stores ``k`` once; its values are each row's first ``value_dim`` channels, read by the reference alone.
    ``alibi_slopes``: ALiBi's per-head slopes of the position bias, split like the sinks; the reference alone adds
    it (``resolve_backend`` picks it for such models). ``k_scale`` / ``v_scale``: an FP8 pool's per-layer scales
    (``pallas_kernels.kv_quant``), on the write and on whichever backend reads; replicated under tensor parallelism.
    """
    if alibi_slopes is not None and meta.backend != "reference":
        raise ValueError(
            f"attention backend {meta.backend!r} does not add ALiBi's position bias; ALiBi models need 'reference'"
        )
    scales = {"k_scale": k_scale, "v_scale": v_scale}
    model_width = q.shape[-1]
    padded = kv_pages.shape[-1] != model_width  # a latent pool's q is as wide as its row
    if padded:
        q, k, v = (None if x is None else pad_heads(x, kv_pages.shape[-1]) for x in (q, k, v))
    if k is not None:  # a layer reading another layer's K/V (Gemma 4's KV-shared layers) writes none
        kv_pages = write_kv(kv_pages, k, v, meta.slot_mapping, **scales)
    if value_dim is not None and meta.backend != "reference":
        raise ValueError(f"a latent KV pool is read by the 'reference' attention backend only, not {meta.backend!r}")
    if meta.backend == "reference":
        latent = {} if value_dim is None else {"value_dim": value_dim}  # the call's keywords as a kernel's otherwise
        attend = functools.partial(
            ref_ragged_paged_attention,
            sm_scale=sm_scale,
            soft_cap=soft_cap,
            sliding_window=sliding_window,
            **latent,
            **scales,
        )
    elif runs_triton_prefill(meta, q.shape[0]):
        from pallas_kernels.triton_prefill import prefill_attention

        attend = functools.partial(
            prefill_attention, sm_scale=sm_scale, soft_cap=soft_cap, sliding_window=sliding_window, **scales
        )
    elif meta.backend in ("pallas", "triton-prefill"):
        interpret = kernels_interpreted()
        attend = functools.partial(
            ragged_paged_attention,
            sm_scale=sm_scale,
            soft_cap=soft_cap,
            sliding_window=sliding_window,
            interpret=interpret,
            **scales,
        )
    else:
        raise ValueError(f"attention backend {meta.backend!r} is not available (available: {BACKENDS})")
    inputs = [q, kv_pages, meta.kv_lens, meta.block_tables, meta.query_start_loc]
    per_head = {name: x for name, x in (("sinks", sinks), ("alibi_slopes", alibi_slopes)) if x is not None}
    if per_head:  # positional inputs, so that shard_map splits them
        inputs.extend(per_head.values())
        attend = _per_head_positional(attend, tuple(per_head))
    if meta.mesh is not None and meta.mesh.size > 1:
        heads = PartitionSpec(None, TP_AXIS)  # q [T, Hq, D] and the pool [2, Hkv, ...] split by heads
        in_specs = (heads, heads, PartitionSpec(), PartitionSpec(), PartitionSpec())
        attend = jax.shard_map(
            attend,
            mesh=meta.mesh,
            in_specs=(*in_specs, *[PartitionSpec(TP_AXIS)] * len(per_head)),
            out_specs=heads,
            check_vma=False,  # neither the kernel's out_shape nor the reference's loop carry names varying axes
        )
    out = attend(*inputs)
    return (out[..., :model_width] if padded else out), kv_pages


def runs_triton_prefill(meta: AttentionMetadata, num_rows: int) -> bool:
    """Whether a step of ``num_rows`` query rows runs the jax-triton prefill kernel: under "triton-prefill", a step
    with more rows than sequences (static shapes: a decode bucket has T <= S)."""
    return meta.backend == "triton-prefill" and num_rows > meta.block_tables.shape[0]


def with_kernel_buffers(meta: AttentionMetadata, num_rows: int) -> AttentionMetadata:
    """``meta`` with the arrays the jax-triton prefill kernel reads in buffers of their own, once a step, where a step
    of ``num_rows`` query rows runs it. Unpacked from the step's one input buffer (``jllm.step_inputs``) they are
    slices of it, which XLA hands a custom call through a dynamic-slice fusion, a thunk no CUDA graph holds: each
    layer's call cut the step's graph (a 512-token Llama-3-8B step compiled for an H200: a command buffer per layer,
    the kernels between launched from the host). The Pallas kernels read the slices inside the graph."""
    if not runs_triton_prefill(meta, num_rows):
        return meta
    kv_lens, block_tables, query_start_loc = jax.lax.optimization_barrier(
        (meta.kv_lens, meta.block_tables, meta.query_start_loc)
    )
    return dataclasses.replace(meta, kv_lens=kv_lens, block_tables=block_tables, query_start_loc=query_start_loc)


def pad_heads(x: jax.Array, width: int) -> jax.Array:
    """``x [..., channels]`` with zero channels appended up to ``width``, a pool head's (``paged_attention``'s, and
    scripts/check_kernels.py's, which runs the kernels as the engine does)."""
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, width - x.shape[-1])])


def _per_head_positional(attend: Callable[..., jax.Array], names: tuple[str, ...]) -> Callable[..., jax.Array]:
    """``attend`` taking its per-query-head keywords (``names``: the sinks, ALiBi's slopes, each ``[Hq]``) as
    positional arguments after its five."""

    def call(
        q: jax.Array, kv_pages: jax.Array, kv_lens: jax.Array, tables: jax.Array, qsl: jax.Array, *per_head: jax.Array
    ) -> jax.Array:
        return attend(q, kv_pages, kv_lens, tables, qsl, **dict(zip(names, per_head, strict=True)))

    return call


def index_topk(
    index_q: jax.Array,  # [T, index_heads, index_head_dim]
    index_k: jax.Array,  # [T, num_kv_heads, index_head_dim]: the token's one key, a copy per KV head
    weights: jax.Array,  # f32[T, index_heads]
    index_pages: jax.Array,  # [1, num_kv_heads, num_pages, page_size, index_head_dim]
    meta: AttentionMetadata,
    *,
    topk: int,
    sm_scale: float,
) -> tuple[jax.Array, jax.Array]:
    """DeepSeek Sparse Attention's selection: writes the step's indexer keys into their pool (the latent pool's
    slots), then returns each query row's ``topk`` best key columns ``i32[T, K]`` (-1 past its keys;
    ``pallas_kernels.sparse_reference.ref_index_topk``) and the pool. Under tensor parallelism every device selects
    from its own copy of the keys with the replicated queries, so the selection comes out replicated."""
    _check_reference(meta, "DeepSeek Sparse Attention's indexer")
    index_pages = write_kv(index_pages, index_k, None, meta.slot_mapping)
    select = functools.partial(ref_index_topk, topk=topk, sm_scale=sm_scale)
    inputs = (index_q, weights, index_pages, meta.kv_lens, meta.block_tables, meta.query_start_loc)
    if meta.mesh is not None and meta.mesh.size > 1:
        replicated = PartitionSpec()
        select = jax.shard_map(
            select,
            mesh=meta.mesh,
            in_specs=(replicated, replicated, PartitionSpec(None, TP_AXIS), replicated, replicated, replicated),
            out_specs=replicated,
            check_vma=False,  # every device computes the same selection
        )
    return select(*inputs), index_pages


def sparse_latent_attention(
    q: jax.Array,  # [T, num_q_heads, latent_dim]
    kv: jax.Array,  # [T, num_kv_heads, latent_dim]
    kv_pages: jax.Array,  # [1, num_kv_heads, num_pages, page_size, latent_dim], a latent pool
    selected: jax.Array,  # i32[T, K], ``index_topk``'s
    meta: AttentionMetadata,
    *,
    sm_scale: float,
    value_dim: int,
) -> tuple[jax.Array, jax.Array]:
    """Latent attention over the ``selected`` tokens alone (DeepSeek Sparse Attention): writes the step's latent
    rows, then attends (``ref_sparse_latent_attention``); returns (``[T, num_q_heads, value_dim]``, the pool). Under
    tensor parallelism the query heads and the pool's copies split, the selection is replicated."""
    _check_reference(meta, "DeepSeek Sparse Attention")
    kv_pages = write_kv(kv_pages, kv, None, meta.slot_mapping)
    attend = functools.partial(ref_sparse_latent_attention, sm_scale=sm_scale, value_dim=value_dim)
    inputs = (q, kv_pages, selected, meta.block_tables, meta.query_start_loc)
    if meta.mesh is not None and meta.mesh.size > 1:
        heads, replicated = PartitionSpec(None, TP_AXIS), PartitionSpec()
        attend = jax.shard_map(
            attend,
            mesh=meta.mesh,
            in_specs=(heads, heads, replicated, replicated, replicated),
            out_specs=heads,
            check_vma=False,  # the reference's loop carry names no varying axes
        )
    return attend(*inputs), kv_pages


def _check_reference(meta: AttentionMetadata, what: str) -> None:
    if meta.backend != "reference":
        raise ValueError(f"{what} runs on the 'reference' attention backend only, not {meta.backend!r}")

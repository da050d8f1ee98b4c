"""The paged KV pool: its shape, dtype and size (see docs/architecture.md, "The KV pool").

One array per layer, ``[2, num_kv_heads, num_pages, page_size, head_dim]`` (K at 0, V at 1); a model's heads and
width are ``KVCacheSpec.for_model``'s, each head zero-padded to a power-of-two width where the GPU kernels read the
pool (``KVCacheSpec.with_head_dims``, ``jllm.attention.resolve_pool``). DeepSeek's latent attention keeps a *latent*
pool, ``[1, num_kv_heads, ...]``: one head of its latent's width written once per token, its values the row's first
channels (vLLM's MLA cache), so a budget holds twice the pages a K/V pair of those rows would. DeepSeek Sparse
Attention (DeepSeek-V3.2, GLM-5) keeps its indexer's key per token too, in a pool of its own laid out as a latent
pool ``[1, num_kv_heads, ..., index_head_dim]`` on the same pages: such a layer's entry is the pair ``(latent pool,
indexer key pool)``, and a page's bytes count both (``KVCacheSpec.index_head_dim``); GLM-5's layers without an
indexer (they reuse another's selection) keep the latent pool alone (``KVCacheSpec.unindexed``). A hybrid model's
recurrent layers (gated DeltaNet, Mamba2, Mamba) keep a state pool in their place instead (``KVCacheSpec.states``,
``jllm.models.recurrent_state``): a fixed state per state slot, one slot per running sequence, whose bytes are taken
from the budget before the pages are sized (Zamba2's hybrid layers keep pages beside theirs: ``(pages, state
pool)``); an attention-free model (Mamba, FalconMamba, pure Mamba2) has state pools alone, and pages that store
nothing (``attention_free_pages``). Gemma 4's layers differ in their KV heads and head width
(``KVCacheSpec.layer_dims``: each layer's pool its own shape), and its KV-shared layers keep no pages (they read an
earlier layer's; their entry is an empty tuple). The pool is allocated once, zero-filled and donated to every step.
Which request owns which page is the block manager's business; this module only decides how many pages fit and
creates them where the sharding says, without staging a host copy.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from jllm.models.recurrent_state import StateSpec, state_bytes
from jllm.parallel import device_zeros
from pallas_kernels.kv_quant import FP8_DTYPE

# Page 0 is reserved for padding, so a usable pool needs at least one more.
MIN_NUM_PAGES = 2
CPU_KV_CACHE_BYTES = 1 << 30  # a CPU has no free-memory reading to size the pool from: its default budget
# The cache config's kv_cache_dtype (vLLM's names) to the pool's dtype; "auto" is the model's.
_KV_CACHE_DTYPES = {"fp8": FP8_DTYPE, "fp8_e4m3": FP8_DTYPE}


def pool_dtype(kv_cache_dtype: str, model_dtype: DTypeLike) -> jnp.dtype:
    """The pool's dtype for a ``kv_cache_dtype`` key: the model's for "auto", float8_e4m3fn for "fp8" / "fp8_e4m3"
    (one byte an element, so a memory budget holds twice the pages of bf16; written and read by
    ``pallas_kernels.kv_quant``)."""
    if kv_cache_dtype == "auto":
        return jnp.dtype(model_dtype)
    if kv_cache_dtype not in _KV_CACHE_DTYPES:
        raise ValueError(
            f"kv_cache_dtype={kv_cache_dtype!r} is not supported; choose auto, {', '.join(_KV_CACHE_DTYPES)}"
        )
    return _KV_CACHE_DTYPES[kv_cache_dtype]


@dataclass(frozen=True)
class KVCacheSpec:
    """What one page holds, across all layers; enough to size and allocate the pool."""

    num_layers: int  # layers with pages: a hybrid model's attention layers alone (none: an attention-free model)
    num_kv_heads: int  # as the model holds them: with KV heads replicated for tensor parallelism, the copies count
    head_dim: int
    page_size: int  # tokens per page
    dtype: DTypeLike = jnp.bfloat16  # the model's, or float8_e4m3fn (``pool_dtype``)
    # one row a token, no V plane: latent attention's values are its keys' first channels, DeepSeek-V4's its K=V head
    latent: bool = False
    # > 0: each layer also keeps DeepSeek Sparse Attention's indexer key (this wide) per token, in a pool of its own
    index_head_dim: int = 0
    # per model layer, a recurrent layer's state (None: an attention layer, with pages); () where every layer attends
    states: tuple[StateSpec | None, ...] = ()
    # per model layer, its pages' (num_kv_heads, head_dim), None where it has none of its own (a recurrent layer's
    # state, or a layer reading another's K/V: Gemma 4's KV-shared layers); () where every layer with pages has
    # (num_kv_heads, head_dim)
    layer_dims: tuple[tuple[int, int] | None, ...] = ()
    # the recurrent layers that keep pages too, their entry ``(pages, state pool)``: Zamba2's hybrid layers, whose
    # shared attention block runs before the mixer (counted in ``num_layers``)
    with_pages: tuple[int, ...] = ()
    # with ``index_head_dim``, the layers that keep no indexer keys, their entry the latent pool alone: GLM-5's layers
    # that reuse another layer's selection (``LayerSpec.reuses_selection``)
    unindexed: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "page_size"):
            value = getattr(self, name)
            least = 0 if name == "num_layers" and self.states else 1  # an attention-free model's state pools alone
            if not isinstance(value, int) or value < least:
                raise ValueError(f"KVCacheSpec.{name} must be an int of at least {least}, got {value!r}")
        dtype = jnp.dtype(self.dtype)
        if self.index_head_dim < 0 or (self.index_head_dim and not self.latent):
            raise ValueError(
                f"KVCacheSpec.index_head_dim={self.index_head_dim} must be 0, or > 0 beside a latent pool (DeepSeek "
                "Sparse Attention's indexer keys)"
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"KVCacheSpec.dtype must be a floating dtype (e.g. bfloat16), got {dtype}")
        object.__setattr__(self, "dtype", dtype)  # normalise "bfloat16" / jnp.bfloat16 to one np.dtype
        paged = sum(d is not None for d in self.layer_dims)
        if self.layer_dims and paged != self.num_layers:
            raise ValueError(f"KVCacheSpec.layer_dims names {paged} layers with pages, num_layers={self.num_layers}")
        paged_layers = {i for i, d in enumerate(self.pool_dims) if d is not None}
        if self.unindexed and (not self.index_head_dim or not set(self.unindexed) <= paged_layers):
            raise ValueError(
                f"KVCacheSpec.unindexed={self.unindexed} must name layers with pages, beside an index_head_dim > 0"
            )

    @classmethod
    def for_model(cls, args: Any, page_size: int, dtype: DTypeLike) -> KVCacheSpec:
        """The pool a model's ``ModelArgs`` needs: its KV heads (copies included), each ``kv_pool_head_dim`` wide;
        latent for multi-head latent attention (``args.mla``), with its indexer's keys where it is sparse
        (``args.mla.indexer``), and for DeepSeek-V4's one K=V head (``args.v4_attention``); a hybrid model's recurrent
        layers' states."""
        latent = args.mla is not None or args.v4_attention is not None
        indexer = None if args.mla is None else args.mla.indexer
        states = tuple(args.state_spec(spec) for spec in args.layers)
        # a layer's pages (None: a recurrent layer, or one reading another layer's: Gemma 4's KV-shared layers)
        dims = tuple(args.pool_dims(spec) if args.has_pages(spec) else None for spec in args.layers)
        paged = [d for d in dims if d is not None]
        with_pages = tuple(i for i, (s, d) in enumerate(zip(states, dims, strict=True)) if s is not None and d)
        # every layer with pages of the model's heads and width, each attention layer with pages of its own: the
        # states and ``with_pages`` say which layers have pages, no layer_dims needed
        uniform = all(d == (args.num_kv_heads, args.kv_pool_head_dim) for d in paged) and len(paged) == sum(
            s is None for s in states
        ) + len(with_pages)
        states = states if any(s is not None for s in states) else ()
        heads, width = args.num_kv_heads, args.kv_pool_head_dim
        index_head_dim = 0 if indexer is None else indexer.head_dim
        layer_dims = () if uniform else dims
        unindexed = tuple(i for i, spec in enumerate(args.layers) if spec.reuses_selection)
        return cls(
            len(paged),
            heads,
            width,
            page_size,
            dtype,
            latent,
            index_head_dim,
            states,
            layer_dims,
            with_pages,
            unindexed,
        )

    def with_head_dims(self, width: Callable[[int], int]) -> KVCacheSpec:
        """This pool with each layer's heads ``width(head_dim)`` wide: the kernels' zero-padded widths
        (``jllm.attention.resolve_pool``)."""
        dims = tuple(None if d is None else (d[0], width(d[1])) for d in self.layer_dims)
        return dataclasses.replace(self, head_dim=width(self.head_dim), layer_dims=dims)

    @property
    def layer_states(self) -> tuple[StateSpec | None, ...]:
        """Per model layer, its recurrent state (None for a layer without one)."""
        return self.states or (None,) * len(self.pool_dims)

    @property
    def pool_dims(self) -> tuple[tuple[int, int] | None, ...]:
        """Per model layer, its pages' (num_kv_heads, head_dim); None where it has none of its own."""
        if self.layer_dims:
            return self.layer_dims
        if self.states:
            dims = (self.num_kv_heads, self.head_dim)
            return tuple(dims if s is None or i in self.with_pages else None for i, s in enumerate(self.states))
        return ((self.num_kv_heads, self.head_dim),) * self.num_layers

    @property
    def head_dims(self) -> tuple[int, ...]:
        """Every width of a pool head, widest last (a backend must read them all)."""
        return tuple(sorted({d[1] for d in self.pool_dims if d is not None}))

    def describe_layers(self) -> str:
        """The layers with pages and their heads, for messages: "4 layers x 2 KV heads x head_dim 64"."""
        if not self.layer_dims:
            return f"{self.num_layers} layers x {self.num_kv_heads} KV heads x head_dim {self.head_dim}"
        kinds = sorted({d for d in self.layer_dims if d is not None})
        return f"{self.num_layers} layers of (KV heads, head_dim) among {kinds}"

    def state_bytes(self, num_state_slots: int, shards: int = 1) -> int:
        """Bytes the recurrent layers' state pools take with ``num_state_slots`` slots (0 without any); with
        ``shards``, on each of that many tensor-parallel devices (the pools split by heads)."""
        return state_bytes(self.states, num_state_slots, shards)

    @property
    def planes(self) -> int:
        """Rows stored per token and head: K and V, or the latent's one."""
        return 1 if self.latent else 2

    def layer_shape(self, num_pages: int, dims: tuple[int, int] | None = None) -> tuple[int, int, int, int, int]:
        """One layer's pool shape: ``[planes, num_kv_heads, num_pages, page_size, head_dim]`` (planes: 2, or 1
        latent); ``dims``: that layer's (num_kv_heads, head_dim) where the layers differ (``pool_dims``)."""
        kv_heads, head_dim = dims or (self.num_kv_heads, self.head_dim)
        return (self.planes, kv_heads, num_pages, self.page_size, head_dim)

    def index_shape(self, num_pages: int) -> tuple[int, int, int, int, int]:
        """One layer's indexer key pool: ``[1, num_kv_heads, num_pages, page_size, index_head_dim]`` (a latent
        pool's layout, so the latent pool's writes, sharding and page maths serve it)."""
        return (1, self.num_kv_heads, num_pages, self.page_size, self.index_head_dim)

    def indexed(self, layer: int) -> bool:
        """The layer keeps DeepSeek Sparse Attention's indexer keys beside its pages."""
        return self.index_head_dim > 0 and layer not in self.unindexed

    @property
    def bytes_per_page(self) -> int:
        """Bytes one page costs across all layers, K and V together (the latent row once), the indexer's keys
        too."""
        row = sum(
            kv * (self.planes * hd + self.index_head_dim * self.indexed(i))
            for i, d in enumerate(self.pool_dims)
            if d is not None
            for kv, hd in [d]
        )
        return self.page_size * row * jnp.dtype(self.dtype).itemsize


def describe_padding(model: KVCacheSpec, pool: KVCacheSpec) -> str | None:
    """The start-up line on a pool whose heads are wider than the model's (``with_head_dims``) and what the padding
    costs; None where no head is padded."""
    pairs = zip(model.pool_dims, pool.pool_dims, strict=True)
    widths = sorted({(m[1], p[1]) for m, p in pairs if m is not None and m[1] != p[1]})
    if not widths:
        return None
    padded = ", ".join(f"head_dim {m} padded to {p}" for m, p in widths)
    cost = pool.bytes_per_page / model.bytes_per_page - 1
    return f"{padded} in the KV pool (the attention kernels' power-of-two width): +{cost:.0%} pool bytes a page"


def num_state_slots(args: Any, max_num_seqs: int) -> int:
    """A hybrid model's recurrent state slots: one per running sequence, and slot 0 for padding rows; 0 for a model
    that only attends."""
    return max_num_seqs + 1 if args.is_hybrid else 0


def attention_free_pages(budget_bytes: int, max_num_seqs: int, max_model_len: int, page_size: int) -> int:
    """An attention-free model's pages (Mamba: no layer keeps a token, ``KVCacheSpec.num_layers`` 0). They cost no
    memory and only count tokens for the scheduler and block tables, so there are as many as let every running
    sequence reach ``max_model_len``, and page 0. ``budget_bytes``: what the budget leaves after the weights and the
    state pools, refused if negative."""
    if budget_bytes < 0:
        raise ValueError(
            f"the recurrent state pools of max_num_seqs={max_num_seqs} sequences need {-int(budget_bytes):,} bytes "
            "more than the memory budget leaves; lower max_num_seqs or raise gpu_memory_utilization / "
            "kv_cache_memory_bytes"
        )
    return 1 + max_num_seqs * -(-max_model_len // page_size)


def num_pages_for_budget(spec: KVCacheSpec, budget_bytes: int) -> int:
    """How many whole pages fit in ``budget_bytes`` (the CPU's way to size the pool: an explicit byte budget)."""
    num_pages = int(budget_bytes) // spec.bytes_per_page
    if num_pages < MIN_NUM_PAGES:
        rows = "one latent row" if spec.latent else "K/V"
        rows += f" + an indexer key of {spec.index_head_dim}" if spec.index_head_dim else ""
        raise ValueError(
            f"a KV budget of {int(budget_bytes):,} bytes holds {max(num_pages, 0)} pages of {spec.bytes_per_page:,} "
            f"bytes ({spec.describe_layers()} x {spec.page_size} tokens x {rows} in {jnp.dtype(spec.dtype).name}); "
            f"at least {MIN_NUM_PAGES} are needed "
            f"(page 0 is reserved): raise the budget to >= {MIN_NUM_PAGES * spec.bytes_per_page:,} bytes "
            "or lower page_size"
        )
    return num_pages


def check_pool_holds(num_pages: int, page_size: int, max_model_len: int) -> None:
    """A pool must hold one sequence of ``max_model_len`` tokens (page 0 is reserved)."""
    if (num_pages - 1) * page_size < max_model_len:
        raise ValueError(
            f"the KV pool of {num_pages} pages x {page_size} tokens cannot hold one sequence of max_model_len="
            f"{max_model_len} tokens; raise num_pages / kv_cache_memory_bytes or lower max_model_len"
        )


def num_pages_from_device_memory(
    spec: KVCacheSpec,
    gpu_memory_utilization: float,
    params_bytes: int,
    *,
    devices: Sequence[jax.Device] | None = None,
    kv_shards: int = 1,
) -> int:
    """Size the pool from free accelerator memory, as vLLM's ``gpu_memory_utilization`` does.

    Each device may use ``gpu_memory_utilization`` of its memory in all; what is already in use, or the weights'
    ``params_bytes`` on that device if they are not loaded yet (the larger of the two), is taken off first. The rest
    of that fraction goes to KV pages; the remaining ``1 - gpu_memory_utilization`` is headroom for activations and
    XLA's workspace. ``kv_shards`` is how many devices split the pool's head axis (tensor parallelism), so each device
    holds ``1 / kv_shards`` of every page. The tightest of ``devices`` (default: all local devices) decides.
    """
    if kv_shards < 1:
        raise ValueError(f"kv_shards must be >= 1, got {kv_shards}")
    budget = device_budget(gpu_memory_utilization, params_bytes, devices)
    if budget * kv_shards < MIN_NUM_PAGES * spec.bytes_per_page:
        raise ValueError(
            f"no room for the KV pool: gpu_memory_utilization={gpu_memory_utilization} leaves {budget:,} bytes per "
            f"device after {int(params_bytes):,} bytes of weights, below {MIN_NUM_PAGES} pages of "
            f"{spec.bytes_per_page // kv_shards:,} bytes each; raise gpu_memory_utilization, shard over more devices "
            "or use a smaller model"
        )
    return num_pages_for_budget(spec, budget * kv_shards)


def device_budget(gpu_memory_utilization: float, params_bytes: int, devices: Sequence[jax.Device] | None = None) -> int:
    """What each device may give the pool (the tightest of ``devices``, default all local ones): its
    ``gpu_memory_utilization`` share of its memory, less what is in use or ``params_bytes``, whichever is larger
    (may be negative)."""
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    devices = list(devices) if devices is not None else jax.local_devices()
    budgets = []
    for device in devices:
        stats = device.memory_stats()
        if not stats or "bytes_limit" not in stats:
            raise RuntimeError(
                f"{device} ({device.platform}) reports no memory stats, so the KV pool cannot be sized from free "
                "memory; give it an explicit number of pages or a KV byte budget instead"
            )
        usable = int(stats["bytes_limit"] * gpu_memory_utilization)
        in_use = max(int(stats.get("bytes_in_use", 0)), int(params_bytes))
        budgets.append(usable - in_use)
    return min(budgets)


def allocate_kv_pool(
    spec: KVCacheSpec, num_pages: int, sharding: jax.sharding.Sharding | None = None, num_state_slots: int = 0
) -> list[Any]:
    """One zero-filled array per layer, created on the devices ``sharding`` names (default device when None); with
    DeepSeek Sparse Attention's indexer keys the pair (latent pool, indexer key pool); a recurrent layer's state pool
    instead, ``num_state_slots`` slots of it, split over the same mesh by its heads (``StateSpec.axes``); both,
    ``(pages, state pool)``, for a layer that keeps pages too (``with_pages``); a layer of ``unindexed`` its latent
    pool alone.

    Zeros are made on the devices (``parallel.device_zeros``), so no full-size host copy ever exists.
    """
    if num_pages < MIN_NUM_PAGES:
        raise ValueError(f"num_pages={num_pages} is too small: page 0 is reserved, so at least {MIN_NUM_PAGES}")
    if spec.states and num_state_slots < 2:
        raise ValueError(f"num_state_slots={num_state_slots} is too small: slot 0 is reserved, so at least 2")
    mesh = sharding.mesh if isinstance(sharding, jax.sharding.NamedSharding) else None

    def pages(layer: int, dims: tuple[int, int]) -> Any:  # an attention layer's entry
        kv = device_zeros(spec.layer_shape(num_pages, dims), spec.dtype, sharding)
        if not spec.indexed(layer):
            return kv
        return kv, device_zeros(spec.index_shape(num_pages), spec.dtype, sharding)  # and its indexer keys

    pool: list[Any] = []
    try:
        for i, (state, dims) in enumerate(zip(spec.layer_states, spec.pool_dims, strict=True)):
            if state is not None:  # a recurrent layer's state pool, and its pages where it keeps some (Zamba2's)
                states = state.zeros(num_state_slots, mesh)
                pool.append(states if dims is None else (pages(i, dims), states))
            elif dims is None:  # a layer reading another layer's pages (Gemma 4's KV-shared layers): none of its own
                pool.append(())
            else:  # [planes, num_kv_heads, num_pages, page_size, head_dim] (and the indexer's keys)
                pool.append(pages(i, dims))
        jax.block_until_ready(pool)  # dispatch is asynchronous: a failed allocation shows here, not in a later step
    except jax.errors.JaxRuntimeError as e:  # a num_pages or memory budget past the device's memory
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        gigabytes = (num_pages * spec.bytes_per_page + spec.state_bytes(num_state_slots)) / 1e9
        raise ValueError(
            f"a KV pool of {num_pages} pages ({gigabytes:.3g} GB) does not fit in the device's memory: lower "
            f"num_pages, kv_cache_memory_bytes or gpu_memory_utilization ({str(e).splitlines()[0]})"
        ) from e
    return pool

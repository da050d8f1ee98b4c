"""The paged KV pool: its shape, dtype and size (see docs/architecture.md, "The KV pool").

One array per layer, ``[2, num_kv_heads, num_pages, page_size, head_dim]`` (K at 0, V at 1); a model's heads and
width are ``KVCacheSpec.for_model``'s. DeepSeek's latent attention keeps a *latent* pool, ``[1, num_kv_heads, ...]``:
one head of its latent's width written once per token, its values the row's first channels (vLLM's MLA cache), so a
budget holds twice the pages a K/V pair of those rows would. A hybrid model's recurrent layers (gated DeltaNet,
Mamba2, Mamba) keep a state pool in their place instead (``KVCacheSpec.states``, ``jllm.models.recurrent_state``): a
fixed state per state slot, one slot per running sequence, whose bytes are taken from the budget before the pages are
sized (Zamba2's hybrid layers keep pages beside theirs: ``(pages, state pool)``); an attention-free model (Mamba,
FalconMamba, pure Mamba2) has state pools alone, and pages that store nothing
(``attention_free_pages``). The pool is allocated once, zero-filled and donated to every step. Which request owns
which page is the block manager's business; this module only decides how many pages fit and creates them where the
sharding says, without staging a host copy.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    latent: bool = False  # one row a token, no V plane: latent attention's values are its keys' first channels
    # per model layer, a recurrent layer's state (None: an attention layer, with pages); () where every layer attends
    states: tuple[StateSpec | None, ...] = ()
    # the recurrent layers that keep pages too, their entry ``(pages, state pool)``: Zamba2's hybrid layers, whose
    # shared attention block runs before the mixer (counted in ``num_layers``)
    with_pages: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "page_size"):
            value = getattr(self, name)
            least = 0 if name == "num_layers" and self.states else 1  # an attention-free model's state pools alone
            if not isinstance(value, int) or value < least:
                raise ValueError(f"KVCacheSpec.{name} must be an int of at least {least}, got {value!r}")
        dtype = jnp.dtype(self.dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"KVCacheSpec.dtype must be a floating dtype (e.g. bfloat16), got {dtype}")
        object.__setattr__(self, "dtype", dtype)  # normalise "bfloat16" / jnp.bfloat16 to one np.dtype

    @classmethod
    def for_model(cls, args: Any, page_size: int, dtype: DTypeLike) -> KVCacheSpec:
        """The pool a model's ``ModelArgs`` needs: its KV heads (copies included), each ``kv_pool_head_dim`` wide;
        latent for multi-head latent attention (``args.mla``); a hybrid model's recurrent layers' states."""
        latent = args.mla is not None
        states = tuple(args.state_spec(spec) for spec in args.layers)
        states = states if any(s is not None for s in states) else ()
        num_layers = sum(map(args.has_pages, args.layers))
        with_pages = tuple(i for i, s in enumerate(states) if s is not None and args.has_pages(args.layers[i]))
        return cls(num_layers, args.num_kv_heads, args.kv_pool_head_dim, page_size, dtype, latent, states, with_pages)

    @property
    def layer_states(self) -> tuple[StateSpec | None, ...]:
        """Per model layer, its recurrent state (None for a layer with pages)."""
        return self.states or (None,) * self.num_layers

    def state_bytes(self, num_state_slots: int, shards: int = 1) -> int:
        """Bytes the recurrent layers' state pools take with ``num_state_slots`` slots (0 without any); with
        ``shards``, on each of that many tensor-parallel devices (the pools split by heads)."""
        return state_bytes(self.states, num_state_slots, shards)

    @property
    def planes(self) -> int:
        """Rows stored per token and head: K and V, or the latent's one."""
        return 1 if self.latent else 2

    def layer_shape(self, num_pages: int) -> tuple[int, int, int, int, int]:
        """One layer's pool shape: ``[planes, num_kv_heads, num_pages, page_size, head_dim]`` (planes: 2, or 1
        latent)."""
        return (self.planes, self.num_kv_heads, num_pages, self.page_size, self.head_dim)

    @property
    def bytes_per_page(self) -> int:
        """Bytes one page costs across all layers, K and V together (the latent row once)."""
        itemsize = jnp.dtype(self.dtype).itemsize
        return self.num_layers * self.planes * self.num_kv_heads * self.page_size * self.head_dim * itemsize


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
        raise ValueError(
            f"a KV budget of {int(budget_bytes):,} bytes holds {max(num_pages, 0)} pages of {spec.bytes_per_page:,} "
            f"bytes ({spec.num_layers} layers x {spec.num_kv_heads} KV heads x {spec.page_size} tokens x "
            f"head_dim {spec.head_dim} x {rows} in {jnp.dtype(spec.dtype).name}); at least {MIN_NUM_PAGES} are needed "
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
    """One zero-filled array per layer, created on the devices ``sharding`` names (default device when None); a
    recurrent layer's state pool instead, ``num_state_slots`` slots of it, split over the same mesh by its heads
    (``StateSpec.axes``); both, ``(pages, state pool)``, for a layer that keeps pages too (``with_pages``).

    Zeros are made on the devices (``parallel.device_zeros``), so no full-size host copy ever exists.
    """
    if num_pages < MIN_NUM_PAGES:
        raise ValueError(f"num_pages={num_pages} is too small: page 0 is reserved, so at least {MIN_NUM_PAGES}")
    if spec.states and num_state_slots < 2:
        raise ValueError(f"num_state_slots={num_state_slots} is too small: slot 0 is reserved, so at least 2")
    shape = spec.layer_shape(num_pages)  # [planes, num_kv_heads, num_pages, page_size, head_dim]
    mesh = sharding.mesh if isinstance(sharding, jax.sharding.NamedSharding) else None

    def layer_pool(i: int, state: StateSpec | None) -> Any:
        if state is None:
            return device_zeros(shape, spec.dtype, sharding)
        pool = state.zeros(num_state_slots, mesh)
        return (device_zeros(shape, spec.dtype, sharding), pool) if i in spec.with_pages else pool

    return [layer_pool(i, state) for i, state in enumerate(spec.layer_states)]

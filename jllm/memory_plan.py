"""Memory planning for the served models, before anything is loaded: each model's weights and KV pool in bytes, and
whether they all fit on the device.

The weights' size comes from the model's structure (``loader.abstract_model``: shapes and dtypes, no memory, so a
quantized model counts its int8 / e4m3 kernels and float32 scales); the
pool's from its page count, given (``num_pages``, ``kv_cache_memory_bytes``) or taken from the model's share of the
device (``gpu_memory_utilization`` x the device's memory, less the weights). The device is the first accelerator's
``bytes_limit``, or on a CPU ``host_memory_budget_bytes`` (default: the host's physical memory, and a 1 GiB pool per
model unless sized otherwise, as a single-model CPU engine always had). A hybrid model's recurrent state pools
(``max_num_seqs + 1`` slots) count in its pool bytes and come out of its share before the pages. Models with tensor
parallelism over ``k`` devices count ``1/k`` of their bytes on each, and every model shares the first device, so that
one decides.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax
import numpy as np

from jllm import kv_cache
from jllm.attention import resolve_pool
from jllm.config import EngineConfig, ServerConfig
from jllm.loader import abstract_model, read_json, resolve_dtype
from jllm.lora.peft_files import slots_bytes
from jllm.model_source import resolve_model
from jllm.quantization import resolve_scheme


class MemoryPlanError(ValueError):
    """The models do not fit: the message names the bytes needed and the bytes available."""

    def __init__(self, message: str, needed: int, available: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available


@dataclass(frozen=True)
class ModelMemory:
    """One model's planned bytes on each device it uses."""

    weights_bytes: int
    pool_bytes: int
    num_pages: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.pool_bytes


def device_capacity(server: ServerConfig) -> int:
    """Bytes every served model together may use on one device."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return server.host_memory_budget_bytes or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
        raise RuntimeError(f"{device} reports no memory limit, so the served models cannot be planned against it")
    return int(stats["bytes_limit"])


def plan_model(config: EngineConfig, capacity: int, name: str) -> ModelMemory:
    """The model's weights and pool per device; raises naming the key to change when its share holds no pool, or
    a pool too small for one sequence of ``max_model_len``."""
    hf_config = read_json(resolve_model(config.model.model) / "config.json")
    tp = config.parallel.tensor_parallel_size
    quant = resolve_scheme(config.model.quantization, hf_config, config.model.fp8_dot_min_tokens)
    _, state, args, _ = abstract_model(hf_config, resolve_dtype(config.model.dtype, hf_config), tp, quant)
    weights = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state)) // tp
    if config.lora.enable_lora:  # the adapters' slots, counted whole on every device (some are split, most small)
        weights += slots_bytes(args, config.lora.max_loras, config.lora.max_lora_rank)
    cache = config.cache
    dtype = kv_cache.pool_dtype(cache.kv_cache_dtype, args.dtype)
    model_spec = kv_cache.KVCacheSpec.for_model(args, cache.page_size, dtype)
    # the pool the engine will allocate: its heads padded where a kernel reads them (as ``build`` resolves it)
    _, spec = resolve_pool(config.model.attention_backend, model_spec, alibi=args.alibi_slopes is not None)
    # a hybrid model's recurrent state pools, one slot per running sequence and one for padding, before the pages
    slots = kv_cache.num_state_slots(args, config.scheduler.max_num_seqs)
    states, device_states = spec.state_bytes(slots), spec.state_bytes(slots, shards=tp)  # the pools split by heads
    max_model_len = config.model.max_model_len or args.max_context
    if cache.num_pages is not None:
        num_pages = cache.num_pages
    elif not spec.num_layers:  # an attention-free model: its pages store nothing, once its state pools fit
        if cache.kv_cache_memory_bytes is not None:
            budget = cache.kv_cache_memory_bytes - states
        elif jax.devices()[0].platform == "cpu" and config.server.host_memory_budget_bytes is None:
            budget = kv_cache.CPU_KV_CACHE_BYTES - states
        else:
            budget = int(cache.gpu_memory_utilization * capacity) - device_states - weights
        seqs = config.scheduler.max_num_seqs
        num_pages = kv_cache.attention_free_pages(budget, seqs, max_model_len, cache.page_size)
    elif cache.kv_cache_memory_bytes is not None:
        num_pages = kv_cache.num_pages_for_budget(spec, cache.kv_cache_memory_bytes - states)
    elif jax.devices()[0].platform == "cpu" and config.server.host_memory_budget_bytes is None:
        num_pages = kv_cache.num_pages_for_budget(spec, kv_cache.CPU_KV_CACHE_BYTES - states)
    else:
        share = int(cache.gpu_memory_utilization * capacity) - device_states
        if (share - weights) * tp < kv_cache.MIN_NUM_PAGES * spec.bytes_per_page:
            raise MemoryPlanError(
                f"model {name!r}: gpu_memory_utilization={cache.gpu_memory_utilization} of {capacity:,} bytes is "
                f"{share:,} bytes, which its {weights:,} bytes of weights leave no KV pool in; raise its "
                "gpu_memory_utilization or give num_pages",
                needed=weights + kv_cache.MIN_NUM_PAGES * spec.bytes_per_page // tp,
                available=share,
            )
        num_pages = kv_cache.num_pages_for_budget(spec, (share - weights) * tp)
    kv_cache.check_pool_holds(num_pages, cache.page_size, max_model_len)
    return ModelMemory(weights, num_pages * spec.bytes_per_page // tp + device_states, num_pages)


def check_fits(plans: dict[str, ModelMemory], capacity: int, in_use: int = 0) -> None:
    """Raises unless ``plans`` fit in what ``in_use`` bytes (models already served) leave of ``capacity``."""
    needed = sum(p.total_bytes for p in plans.values())
    free = capacity - in_use
    if needed > free:
        each = ", ".join(f"{name}: {p.weights_bytes:,} + {p.pool_bytes:,}" for name, p in plans.items())
        raise MemoryPlanError(
            f"the models need {needed:,} bytes (weights + KV pool: {each}) but {free:,} of the device's "
            f"{capacity:,} bytes are free; lower their gpu_memory_utilization / num_pages or serve fewer models",
            needed=needed,
            available=free,
        )

"""Start-up, in one place: from an ``EngineConfig`` to a worker (every process) or an engine (the lead).

The start-up path: join the process group, turn on the compilation cache, find the model, load it onto the mesh,
size and allocate the KV pool, compile the step buckets (``build_worker``); then, on the process that takes
requests, the block manager, scheduler and input door around that worker's runner (``build_engine``). A follower
under ``jax.distributed`` builds only the worker and runs the lead's step plans on it.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jllm import distributed, kv_cache, parallel
from jllm.attention import describe_backend, resolve_pool
from jllm.block_manager import BlockManager
from jllm.buckets import StepBucket
from jllm.classify import ClassifierHead
from jllm.config import ENGINE_SECTIONS, ConfigError, EngineConfig, ServerConfig, chat_template_text
from jllm.engine import LLMEngine
from jllm.executable_cache import Prefetch, open_cache, start_prefetch
from jllm.inputs import InputProcessor
from jllm.kv_scales import describe_scales
from jllm.loader import LoadedModel, load_model, read_json
from jllm.lora.manager import LoRAManager
from jllm.lora.request import LoRARequest
from jllm.memory_plan import ModelMemory, device_capacity, plan_model
from jllm.model_source import cache_dir, resolve_model
from jllm.models.model_args import ModelArgs
from jllm.models.registry import build_args
from jllm.runner import ModelRunner, compile_threads
from jllm.sampling import generation_defaults
from jllm.scheduler import Scheduler
from jllm.serve_config import ModelEntry
from jllm.state_slots import StateSlots
from jllm.step_timeline import StepTimeline
from jllm.timing import log_phase, timed
from jllm.tokenizer import Tokenizer
from jllm.weight_swap import check_side_files

logger = logging.getLogger(__name__)


@dataclass
class Worker:
    """What every process holds: the model on the mesh, its tokenizer, and the runner over the KV pool."""

    loaded: LoadedModel
    tokenizer: Tokenizer
    runner: ModelRunner
    num_pages: int
    max_model_len: int
    publisher: distributed.PlanPublisher | None  # the lead's, under jax.distributed: followers run its plans


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache under the jllm cache, unless the user already pointed it elsewhere:
    a restart with the same model and shapes then loads its step programs instead of compiling them. Every program,
    however quick its compile: JAX skips those under a second by default, which left 26 of the default model's 60
    compiles (samplers, small buckets, weight initializers) to run again at every warm start (CPU, 2026-12-03)."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def build_worker(config: EngineConfig, *, show_progress: bool = True) -> Worker:
    """Loads the model, allocates the KV pool and compiles the step programs; the same on every process. Each phase
    logs its time at INFO (``jllm.timing``). The tokenizer loads on a thread while the weights do: through
    transformers it took 4-6 s on an H200 host (2026-12-04), as long as Llama-3-8B's dummy weights; a tokenizer.json
    is now read without transformers (``jllm.tokenizer_files``), whose import waits for the first chat prompt. The
    step programs the last start of this engine used are loaded from the executable cache on threads meanwhile
    (``jllm.executable_cache.Prefetch``)."""
    with timed() as ready:
        distributed.initialize(config.parallel)  # before anything touches a device
        publisher = distributed.claim_engine()
        enable_compilation_cache()
        with timed() as elapsed:
            model_dir = resolve_model(config.model.model)
        log_phase(logger, "model found", elapsed.seconds, str(model_dir))
        with (
            ThreadPoolExecutor(1, thread_name_prefix="jllm-tokenizer") as pool,
            ThreadPoolExecutor(compile_threads(), thread_name_prefix="jllm-prefetch") as loads,
        ):
            tokenizer = pool.submit(_load_tokenizer, model_dir, chat_template_text(config.model.chat_template))
            prefetch = start_prefetch(config.scheduler.executable_cache, _prefetch_settings(config, model_dir), loads)
            loaded = load_weights(config, model_dir)
            worker = _worker(config, loaded, tokenizer.result(), publisher, prefetch, show_progress=show_progress)
    log_phase(logger, "worker ready", ready.seconds)
    return worker


def reload_weights(engine: LLMEngine, config: EngineConfig, model: str | None) -> EngineConfig:
    """Another checkpoint of the running model (``model``: a directory, GGUF file or alias; None the default)
    swapped into ``engine`` (``jllm.weight_swap``); returns ``config`` naming it. Nothing changes where it is
    refused: requests running, another model or tokenizer (``WeightsMismatch``). Single-process engines only."""
    if jax.process_count() > 1:
        raise NotImplementedError("swapping weights needs a single-process engine (no jax.distributed)")
    engine.check_weights_swappable()
    model_dir = resolve_model(model)
    check_side_files(engine.runner.loaded.model_dir, model_dir)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, model=model))
    new = load_weights(config, model_dir)
    try:
        engine.swap_weights(new)
    except BaseException:
        for array in jax.tree.leaves(nnx.state(new.model)):
            array.delete()
        raise
    return config


def _load_tokenizer(model_dir: Path, chat_template: str | None) -> Tokenizer:
    """The model's tokenizer, rendering chats with ``chat_template`` where one is given."""
    with timed() as elapsed:
        tokenizer = Tokenizer.from_pretrained(model_dir)
        if chat_template is not None:
            tokenizer.use_chat_template(chat_template)
    log_phase(logger, "tokenizer loaded", elapsed.seconds)
    return tokenizer


def load_weights(config: EngineConfig, model_dir: Path) -> LoadedModel:
    """The weights; dummy ones' initializers through the executable cache, whose key for them needs no engine
    setting (each is described whole by its shape, dtype, sharding and kind)."""
    m = config.model
    is_hybrid = build_args(read_json(model_dir / "config.json"), jnp.float32)[1].is_hybrid
    _check_hybrid(config, is_hybrid)
    _check_speculative(config, is_hybrid)
    with timed() as elapsed:
        initializers = open_cache(config.scheduler.executable_cache, dict) if m.load_format == "dummy" else None
        loaded = load_model(
            model_dir,
            mesh=parallel.make_mesh(config.parallel.tensor_parallel_size),
            dtype=m.dtype,
            load_format=m.load_format,
            seed=m.seed,
            quantization=m.quantization,
            fp8_dot_min_tokens=m.fp8_dot_min_tokens,
            fp8_kernel_max_tokens=m.fp8_kernel_max_tokens,
            fp8_kernel_compute=m.fp8_kernel_compute,
            fp8_kernel_backend=m.fp8_kernel_backend,
            decode_gemv_max_tokens=m.decode_gemv_max_tokens,
            executable_cache=initializers,
        )
    gigabytes = sum(x.nbytes for x in jax.tree.leaves(loaded.model)) / 1e9
    log_phase(logger, "weights loaded", elapsed.seconds, f"{gigabytes:.3g} GB, {m.load_format}")
    return loaded


def _worker(
    config: EngineConfig,
    loaded: LoadedModel,
    tokenizer: Tokenizer,
    publisher: distributed.PlanPublisher | None,
    prefetch: Prefetch | None,
    *,
    show_progress: bool,
) -> Worker:
    """The KV pool and the runner over it, warmed up."""
    args = loaded.args
    max_model_len = config.model.max_model_len or args.max_context
    if max_model_len > args.max_position_embeddings:
        raise ValueError(
            f"max_model_len={max_model_len} exceeds the model's max_position_embeddings={args.max_position_embeddings}"
        )
    if max_model_len > args.max_context:
        raise ValueError(
            f"max_model_len={max_model_len} exceeds {args.context_limit}; set max_model_len <= {args.max_context}"
        )
    page_size = config.cache.page_size
    unheld = _what_an_fp8_pool_cannot_hold(args)
    if unheld and config.cache.kv_cache_dtype != "auto":
        raise ValueError(
            f"kv_cache_dtype={config.cache.kv_cache_dtype!r} is not supported for {unheld}, which e4m3 with the keys' "
            "scale would round or clip; leave kv_cache_dtype auto"
        )
    dtype = kv_cache.pool_dtype(config.cache.kv_cache_dtype, args.dtype)
    model_spec = kv_cache.KVCacheSpec.for_model(args, page_size, dtype)
    # before any sizing: the kernels read a pool whose heads are padded to their width
    backend, spec = resolve_pool(config.model.attention_backend, model_spec, alibi=args.alibi_slopes is not None)
    lora = _lora_manager(config, loaded, publisher)  # before the pool: sized from what the adapters' slots leave
    sched = config.scheduler
    num_slots = kv_cache.num_state_slots(args, sched.max_num_seqs)
    num_pages = _num_pages(config, spec, loaded, lora, num_slots, max_model_len)
    kv_cache.check_pool_holds(num_pages, page_size, max_model_len)
    with timed() as elapsed:
        sharding = parallel.kv_pool_sharding(loaded.mesh)
        pool = kv_cache.allocate_kv_pool(spec, num_pages, sharding=sharding, num_state_slots=num_slots)
    gigabytes = (num_pages * spec.bytes_per_page + spec.state_bytes(num_slots)) / 1e9
    pages = f"{num_pages} pages of {page_size} tokens in {spec.dtype.name}, {gigabytes:.3g} GB"
    if num_slots:
        pages += f" with {num_slots} recurrent state slots"
    log_phase(logger, "KV pool allocated", elapsed.seconds, pages)
    logger.info(describe_backend(backend))
    padding = kv_cache.describe_padding(model_spec, spec)
    if padding:
        logger.info(padding)
    if args.kv_scales:
        logger.info(describe_scales(dtype))
    executable_cache = open_cache(sched.executable_cache, lambda: _cache_settings(config, loaded), prefetch)
    runner = ModelRunner(
        loaded,
        pool,
        page_size=page_size,
        max_model_len=max_model_len,
        max_num_seqs=sched.max_num_seqs,
        max_num_batched_tokens=sched.max_num_batched_tokens,
        eos_token_ids=tokenizer.eos_token_ids,
        max_stop_token_ids=config.limits.max_stop_token_ids,
        attention_backend=backend,
        executable_cache=executable_cache,
        lora=lora,
        num_speculative_tokens=0 if sched.ngram is None else sched.ngram.num_speculative_tokens,
    )
    if sched.compile_at_start and args.num_labels is None:  # a classifier never runs the step programs
        with timed() as elapsed:
            report = runner.warmup(show_progress=show_progress)
        report.log(logger, elapsed.seconds)
        if executable_cache is not None:
            executable_cache.write_manifest()
    return Worker(loaded, tokenizer, runner, num_pages, max_model_len, publisher)


def _what_an_fp8_pool_cannot_hold(args: ModelArgs) -> str | None:
    """What a model keeps in its pool rows beside K/V that an FP8 pool would round or clip, or None."""
    if args.dynamic_mask_window:
        return "Doge: its pool keeps each key's dynamic-mask bias beside the key"
    if any(spec.compress is not None for spec in args.layers):
        return "DeepSeek-V4's compressed layers: their pool rows keep each token's compressor projections"
    return None


def _check_hybrid(config: EngineConfig, is_hybrid: bool) -> None:
    """What a hybrid model (recurrent layers with a per-sequence state) is not served with yet, refused by name
    before its weights are read."""
    if not is_hybrid:
        return
    if config.lora.enable_lora:
        raise ConfigError(
            "enable_lora is not supported for hybrid models with recurrent layers (Qwen3-Next, Qwen3.5, the Mamba2 "
            "hybrids, Mamba, Jamba): no adapter targets their recurrent mixers; leave enable_lora off",
            key="enable_lora",
        )


def _check_speculative(config: EngineConfig, is_hybrid: bool) -> None:
    """What speculative decoding is not served with, refused by name before the weights are read: a recurrent
    layer's state cannot roll back a rejected draft, and the rest is unverified (a published plan, sharded logits,
    adapters' slots)."""
    if config.scheduler.ngram is None:
        return
    refused = {
        "enable_lora": config.lora.enable_lora,
        "tensor_parallel_size": config.parallel.tensor_parallel_size > 1,
        "distributed_coordinator": config.parallel.distributed_coordinator is not None,
    }
    for key, used in refused.items():
        if used:
            raise ConfigError(
                f"speculative_config is not supported with {key}={config.to_flat()[key]!r}: speculative decoding runs "
                "on one process and one device, without LoRA; leave one of them out",
                key="speculative_config",
            )
    if is_hybrid:
        raise ConfigError(
            "speculative_config is not supported for hybrid models with recurrent layers: their per-sequence state "
            "cannot roll back a rejected draft; speculative decoding serves attention-only models",
            key="speculative_config",
        )


def _lora_manager(
    config: EngineConfig, loaded: LoadedModel, publisher: distributed.PlanPublisher | None
) -> LoRAManager | None:
    """The adapters' slots and device arrays with ``enable_lora`` (its ``lora_modules`` read and checked now)."""
    lora = config.lora
    if not lora.enable_lora:
        return None
    if config.parallel.distributed_coordinator is not None:
        raise ConfigError(
            "enable_lora is not supported with distributed_coordinator (a published step plan carries no adapter "
            "loads); run LoRA on one process",
            key="enable_lora",
        )
    manager = LoRAManager(
        loaded.args,
        loaded.hf_config,
        loaded.mesh,
        max_loras=lora.max_loras,
        max_lora_rank=lora.max_lora_rank,
        kv_replicas=loaded.kv_replicas,
    )
    for lora_int_id, (name, path) in enumerate(lora.modules.items(), start=1):
        manager.add(LoRARequest(name, lora_int_id, path))
    return manager


# Scheduler keys that steer which tokens a step takes, never a program's shapes: a server started with another value
# of them loads the same stored programs.
_SCHEDULING_POLICY_KEYS = frozenset(
    {"long_prefill_token_threshold", "prefill_alignment_min_tokens", "scheduling_policy"}
)


def _engine_settings(config: EngineConfig) -> dict[str, object]:
    """Every engine key but the server's and the scheduling policy's: what the compiled programs can depend on."""
    return {k: v for k, v in config.to_flat(*ENGINE_SECTIONS).items() if k not in _SCHEDULING_POLICY_KEYS}


def _cache_settings(config: EngineConfig, loaded: LoadedModel) -> dict[str, object]:
    """What the executable cache's key takes from the engine: its settings and the model's config."""
    engine = _engine_settings(config)
    return {"engine": engine, "hf_config": loaded.hf_config, "args": loaded.args, "kv_replicas": loaded.kv_replicas}


def _prefetch_settings(config: EngineConfig, model_dir: Path) -> dict[str, object]:
    """What names the manifest of programs to load before the model is read: its settings and the model's folder."""
    return {"engine": _engine_settings(config), "model": str(model_dir)}


def _aligned_step_sizes(buckets: list[StepBucket], min_tokens: int) -> list[int]:
    """The step sizes the scheduler ends prefill chunks on: buckets from ``min_tokens`` up (none when 0). Smaller
    steps stream the weights in the time their matmuls take, so padding them costs nothing."""
    return [b.num_tokens for b in buckets if b.num_tokens >= min_tokens] if min_tokens else []


def build_engine(config: EngineConfig, *, show_progress: bool = True) -> LLMEngine:
    """The lead's engine: a worker, plus the scheduler over its pages and the input door for its limits."""
    given_folder = _given_generation_config(config.model.generation_config)  # a bad folder fails before loading
    worker = build_worker(config, show_progress=show_progress)
    sched = config.scheduler
    num_slots = kv_cache.num_state_slots(worker.loaded.args, sched.max_num_seqs)
    prefix_caching = config.cache.enable_prefix_caching and not num_slots
    if num_slots and config.cache.enable_prefix_caching:
        logger.info("prefix caching is off for this hybrid model: a cached page holds no recurrent layer's state")
    scheduler = Scheduler(
        BlockManager(worker.num_pages, config.cache.page_size, prefix_caching),
        max_num_seqs=sched.max_num_seqs,
        max_num_batched_tokens=sched.max_num_batched_tokens,
        max_model_len=worker.max_model_len,
        eos_token_ids=worker.tokenizer.eos_token_ids,
        long_prefill_token_threshold=sched.long_prefill_token_threshold,
        long_rope_from=worker.loaded.args.long_rope_from,
        step_sizes=_aligned_step_sizes(worker.runner.buckets, sched.prefill_alignment_min_tokens),
        lora_slots=None if worker.runner.lora is None else worker.runner.lora.slots,
        state_slots=StateSlots(num_slots) if num_slots else None,
        speculative=sched.ngram,
        policy=sched.scheduling_policy,
    )
    inputs = InputProcessor(
        worker.tokenizer,
        vocab_size=worker.loaded.args.vocab_size,
        max_model_len=worker.max_model_len,
        limits=config.limits,
        speculative=sched.ngram is not None,
        default_template_kwargs=config.model.default_chat_template_kwargs,
    )
    engine = LLMEngine(
        scheduler,
        worker.runner,
        inputs,
        async_scheduling=sched.async_scheduling,
        seed=config.model.seed,
        publish=None if worker.publisher is None else worker.publisher.publish,
        sampling_defaults=_sampling_defaults(config.model.generation_config, given_folder, worker.loaded),
        lora=worker.runner.lora,
        classifier=ClassifierHead.of(worker.loaded),
        timeline=None if sched.step_timeline_path is None else StepTimeline(sched.step_timeline_path),
    )
    if sched.compile_at_start and engine.classifier is not None:
        _warm_up_pooling(engine, worker.runner, show_progress)
    with timed() as elapsed:
        freeze_heap()
    log_phase(logger, "heap frozen", elapsed.seconds, f"{gc.get_freeze_count():,} objects")
    return engine


def freeze_heap() -> None:
    """Takes every object alive once a start is done (imported modules, the model, traced and compiled programs:
    ~300,000 for a tiny model on the CPU) out of the cyclic collector's scans, as vLLM does after its start. Each of
    Python's full collections scanned them all: on this CPU host, a 165 ms pause every ~300 steps of 256 decodes
    (0.55 ms a step, and a stall of one step in a stream; 2026-12-07). An unload thaws the heap first
    (``jllm.server.registry``), so that the unloaded engine's cycles can still be collected."""
    gc.collect()
    gc.freeze()


def collect_unfrozen() -> None:
    """A full collection that reaches the objects ``freeze_heap`` froze too (an unloaded engine's cycles: threads,
    closures), the survivors frozen again."""
    gc.unfreeze()
    freeze_heap()


def _warm_up_pooling(engine: LLMEngine, runner: ModelRunner, show_progress: bool) -> None:
    """A classifier's programs (the encoder's buckets; it runs no step program) compiled or loaded now, so its first
    request waits on no compiler. A decoder's are left to their first use, each loaded from the executable cache where
    an earlier run stored it: for Llama-3-8B at 8,192 tokens they are 14 forward programs, which would cost a cold
    start their compiles and a warm start their loads (the step programs' took 2.7 s for 60 on an H100) and their
    executables' memory, for routes most generative deployments never call."""
    with timed() as elapsed:
        report = engine.encoder.warmup(show_progress=show_progress)
    report.log(logger, elapsed.seconds)
    if runner.executable_cache is not None:
        runner.executable_cache.write_manifest()


def _given_generation_config(setting: str) -> dict[str, Any] | None:
    """The ``generation_config`` a folder setting names, read; None for "auto" and "vllm"."""
    if setting in ("auto", "vllm"):
        return None
    path = Path(setting).expanduser() / "generation_config.json"
    if not path.is_file():
        raise ConfigError(
            f"generation_config={setting!r}: no {path}; give 'auto', 'vllm' or a folder holding one",
            key="generation_config",
        )
    return read_json(path)


def _sampling_defaults(setting: str, given: dict[str, Any] | None, loaded: LoadedModel) -> dict[str, Any]:
    """Requests' default sampling fields under the ``generation_config`` setting, logged as vLLM warns of them."""
    if setting == "vllm":
        return {}
    defaults = generation_defaults(loaded.generation_config if given is None else given)
    if defaults:
        logger.info(
            "default sampling from the model's generation_config.json: %s (generation_config: vllm for none)",
            ", ".join(f"{key}={value}" for key, value in defaults.items()),
        )
    return defaults


@dataclass(frozen=True)
class ModelBuilder:
    """A server's models: planned against the device's ``capacity_bytes`` before anything loads, then built with
    the planned pool (under ``jax.distributed`` the pool is sized as ``build_worker`` sizes it on every process)."""

    capacity_bytes: int

    @classmethod
    def for_server(cls, server: ServerConfig) -> ModelBuilder:
        return cls(device_capacity(server))

    def plan(self, entry: ModelEntry) -> ModelMemory:
        return plan_model(entry.config, self.capacity_bytes, entry.name)

    def build(self, entry: ModelEntry, memory: ModelMemory) -> LLMEngine:
        """The served engine; its chat template's renderer (transformers) starts loading on a thread, so the first
        chat request does not import transformers on the event loop."""
        config = entry.config
        if config.parallel.distributed_coordinator is None:
            config = config.replace(num_pages=memory.num_pages)
        engine = build_engine(config)
        engine.inputs.tokenizer.load_chat_renderer_in_background()
        return engine


def _num_pages(
    config: EngineConfig,
    spec: kv_cache.KVCacheSpec,
    loaded: LoadedModel,
    lora: LoRAManager | None,
    num_slots: int,
    max_model_len: int,
) -> int:
    """The pool's pages: given, or what the budget leaves after the recurrent state pools' ``num_slots`` slots (an
    attention-free model's: enough for every sequence, once the state pools fit, ``attention_free_pages``)."""
    cache = config.cache
    if cache.num_pages is not None:
        return cache.num_pages
    seqs = config.scheduler.max_num_seqs
    if cache.kv_cache_memory_bytes is not None or jax.devices()[0].platform == "cpu":
        budget = (cache.kv_cache_memory_bytes or kv_cache.CPU_KV_CACHE_BYTES) - spec.state_bytes(num_slots)
        if not spec.num_layers:
            return kv_cache.attention_free_pages(budget, seqs, max_model_len, spec.page_size)
        return kv_cache.num_pages_for_budget(spec, budget)
    leaves = jax.tree.leaves((loaded.model, None if lora is None else lora.weights))
    params_bytes = sum(x.addressable_shards[0].data.nbytes for x in leaves)  # per device, and the state pools':
    params_bytes += spec.state_bytes(num_slots, shards=loaded.mesh.size)
    devices = loaded.mesh.local_devices  # only this process's devices report their memory
    if not spec.num_layers:
        budget = kv_cache.device_budget(cache.gpu_memory_utilization, params_bytes, devices)
        return kv_cache.attention_free_pages(budget, seqs, max_model_len, spec.page_size)
    num_pages = kv_cache.num_pages_from_device_memory(
        spec, cache.gpu_memory_utilization, params_bytes, devices=devices, kv_shards=loaded.mesh.size
    )
    return distributed.min_over_processes(num_pages)  # one pool: every process allocates the same pages

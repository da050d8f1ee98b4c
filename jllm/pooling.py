"""Hidden states and pooled embeddings: the engine's own model and weights run over whole prompts, no KV pool kept.

``Encoder`` packs prompts into the runner's shape buckets (``jllm.buckets``, up to the context length), runs one
jit-compiled forward per (bucket, layers) that returns the asked hidden states, and gathers them to the host. The
attention still goes through the paged call every model makes, over a scratch pool born and dropped inside the
program: the engine's pool and its step programs are never touched, so nothing they compiled is compiled again.
Each program goes through the runner's executable cache as the step programs do; ``warmup`` compiles (or loads)
every bucket's final-state program at once, which a classifier's start runs (``jllm.build``): a classifier has no
other program, so its first request would otherwise wait on the compiler, and every stream of the model behind it.

Layer indices are transformers' ``output_hidden_states``: 0 is the embeddings' output, ``i`` the output of layer
``i`` (1-based), ``num_layers`` the last layer's output after the final norm; negative ones count from that end
(-1 is the normed final state, the one embeddings pool).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from collections.abc import Sequence as Seq
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple, get_args

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jllm import parallel
from jllm.attention import AttentionMetadata
from jllm.buckets import StepBucket, pick_bucket, step_buckets
from jllm.config import Pooling
from jllm.errors import InputError
from jllm.executable_cache import ProgramCall
from jllm.models.rope import long_rope_positions
from jllm.runner import ModelRunner, compile_threads
from jllm.timing import WarmupReport
from pallas_kernels import PADDING_SLOT

POOLING: tuple[str, ...] = get_args(Pooling)
KIND = "pooling"  # these programs' kind in a warm-up report
ProgramKey = tuple[StepBucket, tuple[int, ...]]  # (bucket, resolved layers)


class EncodeBatch(NamedTuple):
    """Prompts packed back to back in one bucket, each on its own contiguous pages of the scratch pool."""

    input_ids: np.ndarray  # [T] int32, padding 0
    positions: np.ndarray  # [T] int32
    attn: AttentionMetadata  # NumPy leaves: slot mapping [T], query starts [S+1], KV lengths [S], block tables [S, P]


def resolve_layers(layers: Seq[int], num_layers: int) -> tuple[int, ...]:
    """Asked indices (negative from the end) as 0..num_layers; a bad one is an InputError naming ``layers``."""
    try:
        asked = None if isinstance(layers, str) else list(layers)
    except TypeError:  # an int, or vLLM's pooling_params in encode's second place
        asked = None
    if not asked:
        raise InputError(
            f"layers must be a non-empty list of layer indices (LLM.encode's second argument), got {layers!r:.100}",
            param="layers",
        )
    resolved = []
    for layer in asked:
        is_int = isinstance(layer, int | np.integer) and not isinstance(layer, bool)
        if not is_int or not -num_layers - 1 <= layer <= num_layers:
            raise InputError(
                f"layers: {layer!r} is not a hidden-state index of this {num_layers}-layer model: use 0..{num_layers} "
                f"(0 = embeddings, {num_layers} = final normed) or -{num_layers + 1}..-1",
                param="layers",
            )
        resolved.append(int(layer) % (num_layers + 1))
    return tuple(resolved)


def scratch_pages(bucket: StepBucket, page_size: int) -> int:
    """Pages any batch of ``bucket`` fits in: reserved page 0, then each prompt's, at most one part-filled each."""
    return 1 + -(-bucket.num_tokens // page_size) + bucket.num_seqs


def encode_batch(
    prompts: Seq[Seq[int]], bucket: StepBucket, page_size: int, long_rope_from: int | None = None
) -> EncodeBatch:
    """Host inputs for ``prompts`` (at most the bucket's tokens and sequences) padded to ``bucket``; a longrope
    model's (``long_rope_from``) positions marked where its long factors turn them, as a step's are."""
    t, s = bucket.num_tokens, bucket.num_seqs
    pages_per_seq = -(-t // page_size)
    lengths = np.array([len(p) for p in prompts], np.int32)
    query_start_loc = np.zeros(s + 1, np.int32)
    query_start_loc[1 : len(prompts) + 1] = np.cumsum(lengths)
    query_start_loc[len(prompts) + 1 :] = query_start_loc[len(prompts)]
    kv_lens = np.zeros(s, np.int32)
    kv_lens[: len(prompts)] = lengths
    num_pages = -(-lengths // page_size)
    first_page = 1 + np.cumsum(num_pages) - num_pages
    page = np.arange(pages_per_seq, dtype=np.int32)
    block_tables = np.zeros((s, pages_per_seq), np.int32)
    block_tables[: len(prompts)] = np.where(page < num_pages[:, None], first_page[:, None] + page, 0)
    total = int(lengths.sum())
    row = np.repeat(np.arange(len(prompts)), lengths)
    positions = np.zeros(t, np.int32)
    positions[:total] = np.arange(total, dtype=np.int32) - query_start_loc[row]
    slot_mapping = np.full(t, PADDING_SLOT, np.int32)  # padding writes nowhere
    slot_mapping[:total] = block_tables[row, positions[:total] // page_size] * page_size + positions[:total] % page_size
    if long_rope_from is not None:
        positions[:total] = long_rope_positions(positions[:total], lengths[row] > long_rope_from)
    input_ids = np.zeros(t, np.int32)
    input_ids[:total] = [token for p in prompts for token in p]
    attn = AttentionMetadata(slot_mapping, query_start_loc, kv_lens, block_tables)
    return EncodeBatch(input_ids, positions, attn)


def hidden_states_program(
    graphdef: nnx.GraphDef,
    kv_sharding: jax.sharding.NamedSharding,
    # each layer's pools: [planes, num_kv_heads, num_pages, page_size, head_dim], and DeepSeek Sparse Attention's
    # indexer key pool [1, num_kv_heads, num_pages, page_size, index_head_dim] where the model has one; None: the
    # layer reads another layer's pages (Gemma 4's KV-shared layers)
    pool_shapes: tuple[tuple[tuple[int, ...], ...] | None, ...],
    pool_dtype: jnp.dtype,
    layers: tuple[int, ...],
    backend: str,
    state: nnx.State,
    input_ids: jax.Array,
    positions: jax.Array,
    attn: tuple[jax.Array, ...],  # slot mapping [T], query starts [S+1], KV lengths [S], block tables [S, P]
) -> jax.Array:
    """The asked hidden states ``[len(layers), T, hidden]``, replicated (so one fetch gathers them). The attention
    metadata is made in here: its mesh, a static of the pytree, would make the arguments' tree unpicklable for the
    executable cache."""
    model = nnx.merge(graphdef, state)
    meta = AttentionMetadata(*attn, backend=backend, mesh=kv_sharding.mesh)

    def layer_pool(shapes: tuple[tuple[int, ...], ...]) -> jax.Array | tuple[jax.Array, ...]:
        pools = tuple(jax.lax.with_sharding_constraint(jnp.zeros(s, pool_dtype), kv_sharding) for s in shapes)
        return pools[0] if len(pools) == 1 else pools

    pool = [() if shapes is None else layer_pool(shapes) for shapes in pool_shapes]
    states = model.hidden_states(input_ids, positions, pool, meta)
    picked = jnp.stack([states[i] for i in layers])
    return jax.lax.with_sharding_constraint(picked, parallel.replicated(kv_sharding.mesh))


class Encoder:
    """Runs prompts' forward passes on a runner's model and weights; results come back as host arrays.

    Not thread-safe: call it where the engine's steps run (the offline API, or the server's engine thread).
    """

    def __init__(self, runner: ModelRunner, max_model_len: int) -> None:
        if jax.process_count() > 1:  # the followers run only published step plans
            raise NotImplementedError("hidden states and embeddings need a single-process engine (no jax.distributed)")
        if runner.loaded.args.is_hybrid:
            raise InputError(
                "hidden states and embeddings are not supported for hybrid models with recurrent layers (Qwen3-Next, "
                "Qwen3.5, the Mamba2 hybrids): the encoder's scratch pool holds no recurrent state; use generation"
            )
        args = runner.loaded.args
        if args.altup_streams or args.hyper_streams:
            hyper = "DeepSeek-V4" if args.hyper_sinkhorn else "Qwen4-Exp"
            family, streams = ("Gemma 3n", "AltUp's") if args.altup_streams else (hyper, "hyper")
            raise InputError(
                f"hidden states and embeddings are not supported for {family}: its layers' states are {streams} "
                "streams, not one hidden state; use generation"
            )
        if any(spec.moe_shortcut for spec in runner.loaded.args.layers):
            raise InputError(
                "hidden states and embeddings are not supported for LongCat-Flash: jllm runs each of its layers as "
                "two, so transformers' layer indices name none of them; use generation"
            )
        if runner.loaded.args.loop is not None:
            raise InputError(
                "hidden states and embeddings are not supported for looped models (Dory, HRM-Text): jllm runs each "
                "run of a stored layer as a layer of its own, so transformers' layer indices name none of them; use "
                "generation"
            )
        self.runner = runner
        self.num_layers = runner.loaded.args.num_layers
        largest = runner.buckets[-1]
        max_num_seqs = max(b.num_seqs for b in runner.buckets)
        # A prompt may fill the context, beyond the step's token budget (prefill is chunked, this pass is not).
        self.buckets = step_buckets(max(largest.num_tokens, max_model_len), max_num_seqs)
        self._programs: dict[ProgramKey, jax.stages.Compiled] = {}

    @property
    def num_compilations(self) -> int:
        """Programs compiled (or loaded from the executable cache) so far: one per (bucket, layers) run or warmed up."""
        return len(self._programs)

    def warmup(self, show_progress: bool = True) -> WarmupReport:
        """Every bucket's program of the final normed states (what ``embed`` and a classifier's head read) compiled
        now, or loaded from the executable cache, so no request of that kind waits on the compiler. As the runner's
        warm-up: traced and lowered here, compiled (or loaded) on worker threads."""
        runner, layers = self.runner, (self.num_layers,)
        report = WarmupReport(threads=compile_threads())
        pending: dict[StepBucket, tuple[Future[jax.stages.Compiled | None], ProgramCall, str | None, str]] = {}
        with report.counting_cache_hits(), ThreadPoolExecutor(report.threads) as pool:
            for bucket in self.buckets:
                call = self._call(encode_batch([], bucket, runner.page_size), bucket, layers)
                name = _program_name(bucket)
                cache_key, entry = runner.cache_entry(call)
                if entry is not None:
                    future = pool.submit(runner.load, entry, KIND, report)
                else:
                    lowered = runner.lower(call, KIND, report)[1]
                    future = pool.submit(runner.compile, lowered, call.options, KIND, cache_key, report, name)
                pending[bucket] = (future, call, cache_key, name)
            progress = tqdm(pending.items(), desc="compiling pooling programs", disable=not show_progress)
            for bucket, (future, call, cache_key, name) in progress:
                compiled = future.result()
                if compiled is None:  # a cached entry that did not load (logged): compiled as before
                    compiled = runner.compile(
                        runner.lower(call, KIND, report)[1], call.options, KIND, cache_key, report, name
                    )
                self._programs[(bucket, layers)] = compiled
        return report

    def hidden_states(
        self, prompts: Seq[Seq[int]], layers: tuple[int, ...], progress: Callable[..., tqdm] | None = None
    ) -> list[np.ndarray]:
        """Per prompt, its hidden states at ``layers`` (resolved, 0..num_layers): ``[len(layers), T_i, hidden]``.
        ``progress`` makes the bar over the batches, as vLLM calls its ``use_tqdm`` (None: no bar)."""
        results: list[np.ndarray] = []
        batches = self._batches(prompts)
        with (progress or functools.partial(tqdm, disable=True))(total=len(batches), desc="encoding batches") as bar:
            for batch in batches:
                states = self._run(batch, layers)  # [len(layers), T, hidden]
                starts = np.cumsum([0] + [len(p) for p in batch])
                results += [states[:, a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]
                bar.update(1)
        return results

    def embed(
        self, prompts: Seq[Seq[int]], how: Pooling, normalize: bool, progress: Callable[..., tqdm] | None = None
    ) -> list[np.ndarray]:
        """One float32 vector per prompt, pooled from its final normed states (``pool``)."""
        if how not in POOLING:
            raise InputError(f"pooling={how!r} is unknown; choose one of {', '.join(POOLING)}", param="pooling")
        final = self.hidden_states(prompts, (self.num_layers,), progress)
        return [pool(states[0], how, normalize) for states in final]

    def _batches(self, prompts: Seq[Seq[int]]) -> list[list[Seq[int]]]:
        """Consecutive prompts packed while the largest bucket holds them."""
        largest = self.buckets[-1]
        batches: list[list[Seq[int]]] = []
        tokens = 0
        for prompt in prompts:
            if not batches or tokens + len(prompt) > largest.num_tokens or len(batches[-1]) == largest.num_seqs:
                batches.append([])
                tokens = 0
            batches[-1].append(prompt)
            tokens += len(prompt)
        return batches

    def _run(self, prompts: list[Seq[int]], layers: tuple[int, ...]) -> np.ndarray:
        bucket = pick_bucket(self.buckets, sum(len(p) for p in prompts), len(prompts))
        batch = encode_batch(prompts, bucket, self.runner.page_size, self.runner.loaded.args.long_rope_from)
        call = self._call(batch, bucket, layers)
        key = (bucket, layers)
        if key not in self._programs:  # not warmed up: loaded or compiled here, while the caller waits
            self._programs[key] = self.runner.load_or_compile(call, KIND, _program_name(bucket), WarmupReport())
        return np.asarray(jax.device_get(self._programs[key](*call.args)))

    def _call(self, batch: EncodeBatch, bucket: StepBucket, layers: tuple[int, ...]) -> ProgramCall:
        """The program of ``bucket`` and ``layers`` on ``batch``, its inputs put on the devices."""
        runner = self.runner
        pages = scratch_pages(bucket, runner.page_size)
        # each engine layer's pools (its K/V or latent pool, an indexer's keys), or none (Gemma 4's KV-shared layers)
        layer_pools = [jax.tree.leaves(kv) for kv in runner.kv_caches]
        shapes = tuple(tuple((*x.shape[:2], pages, *x.shape[3:]) for x in pools) or None for pools in layer_pools)
        dtype = next(pools[0].dtype for pools in layer_pools if pools)
        statics = (runner.graphdef, runner.kv_sharding, shapes, dtype, layers, runner.attention_backend)
        a = batch.attn
        inputs = (batch.input_ids, batch.positions, (a.slot_mapping, a.query_start_loc, a.kv_lens, a.block_tables))
        inputs = jax.device_put(inputs, parallel.replicated(runner.mesh))
        fn = functools.partial(hidden_states_program, *statics)
        return ProgramCall(
            fn, runner.state_def, (), (runner.params, *inputs), runner.compiler_options(bucket.num_tokens)
        )


def _program_name(bucket: StepBucket) -> str:
    """How a warm-up report names the program of ``bucket``."""
    return f"{KIND} {bucket.num_tokens}x{bucket.num_seqs}"


def pool(states: np.ndarray, how: Pooling, normalize: bool) -> np.ndarray:
    """One prompt's final hidden states ``[T, hidden]`` to one vector (float32): its last token's, or the mean over
    its tokens; unit L2 norm with ``normalize``."""
    states = states.astype(np.float32)
    vector = states[-1] if how == "last" else states.mean(axis=0)
    return vector / np.linalg.norm(vector) if normalize else vector

"""The only place Python state becomes device arrays: one ragged batch per step, padded to a shape bucket.

A step is a pure function of (params, kv pool, StepInputs) compiled once per bucket, with the pool donated so the
K/V writes happen in place, and sampling inside the same program so only a few integers per row come back.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence as Seq

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jllm import sampler
from jllm.attention import AttentionMetadata
from jllm.buckets import StepBucket, pick_bucket, step_buckets
from jllm.loader import LoadedModel
from jllm.sampler import SamplerOutput, SamplingMetadata
from jllm.sequence import SchedulerOutput, Sequence

logger = logging.getLogger(__name__)

MIN_BANNED_WIDTH = 8  # the common min_tokens ban (EOS + a few stop ids) fits the base variant


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StepInputs:
    input_ids: jax.Array  # [T] int32: the step's new tokens, all sequences flattened, padding 0
    positions: jax.Array  # [T] int32: each token's position in its sequence
    attn: AttentionMetadata  # slot mapping, query starts [S+1], KV lengths [S], block tables [S, P]
    logits_indices: jax.Array  # [S] int32: row of each sequence's last new token (0 for padding)
    sampling: SamplingMetadata  # per-row sampling settings [S, ...]


@dataclasses.dataclass
class SampledToken:
    token_id: int
    logprob: float
    top_ids: list[int]
    top_logprobs: list[float]


def _step(
    graphdef: nnx.GraphDef,
    num_top_logprobs: int,
    state: nnx.State,
    kv_caches: list[jax.Array],
    inputs: StepInputs,
) -> tuple[SamplerOutput, list[jax.Array]]:
    model = nnx.merge(graphdef, state)
    hidden, kv_caches = model(inputs.input_ids, inputs.positions, kv_caches, inputs.attn)  # [T, hidden]
    logits = model.compute_logits(hidden[inputs.logits_indices])  # [S, vocab] f32
    return sampler.sample(logits, inputs.sampling, num_top_logprobs=num_top_logprobs), kv_caches


class ModelRunner:
    def __init__(
        self,
        loaded: LoadedModel,
        kv_caches: list[jax.Array],
        *,
        page_size: int,
        max_model_len: int,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        eos_token_ids: set[int],
        attention_backend: str = "reference",
    ):
        self.graphdef, self.state = nnx.split(loaded.model)
        self.kv_caches = kv_caches
        self.page_size = page_size
        self.pages_per_seq = -(-max_model_len // page_size)
        self.buckets = step_buckets(max_num_batched_tokens, max_num_seqs)
        self.eos_token_ids = eos_token_ids
        self.attention_backend = attention_backend
        self._steps: dict[int, jax.stages.Wrapped] = {}  # num_top_logprobs -> jitted step

    def _jitted(self, num_top_logprobs: int) -> jax.stages.Wrapped:
        if num_top_logprobs not in self._steps:
            fn = functools.partial(_step, self.graphdef, num_top_logprobs)
            self._steps[num_top_logprobs] = jax.jit(fn, donate_argnums=(1,))
        return self._steps[num_top_logprobs]

    @property
    def num_compilations(self) -> int:
        """Programs compiled so far (one per bucket and sampler variant actually used)."""
        return sum(step._cache_size() for step in self._steps.values())

    def warmup(self, show_progress: bool = True) -> None:
        """Compiles every bucket's base variant now, so no request waits on the compiler."""
        for bucket in tqdm(self.buckets, desc="compiling step buckets", disable=not show_progress):
            self._run(self._build_inputs([], bucket, with_penalties=False, penalty_width=0, banned=MIN_BANNED_WIDTH), 0)

    def execute(self, output: SchedulerOutput) -> list[SampledToken | None]:
        """Runs one step; entry i is the token sampled for ``output.scheduled[i]`` (None mid-prefill)."""
        scheduled = output.scheduled
        seqs = [s.seq for s in scheduled]
        bucket = pick_bucket(self.buckets, output.num_batched_tokens, len(scheduled))
        with_penalties = sampler.needs_penalties(seqs)
        inputs = self._build_inputs(
            output.scheduled,
            bucket,
            with_penalties=with_penalties,
            penalty_width=sampler.penalty_width(seqs) if with_penalties else 0,
            banned=max(MIN_BANNED_WIDTH, sampler.banned_width(seqs, self.eos_token_ids)),
        )
        k = sampler.num_top_logprobs(seqs)
        result = jax.device_get(self._run(inputs, k))
        tokens: list[SampledToken | None] = []
        for i, sched in enumerate(scheduled):
            if not sched.samples_token:
                tokens.append(None)
                continue
            n = sched.seq.sampling_params.logprobs or 0
            tokens.append(
                SampledToken(
                    token_id=int(result.token_ids[i]),
                    logprob=float(result.logprobs[i]),
                    top_ids=result.top_ids[i, :n].tolist(),
                    top_logprobs=result.top_logprobs[i, :n].tolist(),
                )
            )
        return tokens

    def _run(self, inputs: StepInputs, num_top_logprobs: int) -> SamplerOutput:
        out, self.kv_caches = self._jitted(num_top_logprobs)(self.state, self.kv_caches, inputs)
        return out

    def _build_inputs(
        self, scheduled: Seq, bucket: StepBucket, *, with_penalties: bool, penalty_width: int, banned: int
    ) -> StepInputs:
        """Flattens the scheduled sequences into one padded ragged batch (NumPy, then one transfer)."""
        t, s, p = bucket.num_tokens, bucket.num_seqs, self.pages_per_seq
        input_ids = np.zeros(t, np.int32)
        positions = np.zeros(t, np.int32)
        slot_mapping = np.arange(t, dtype=np.int32) % self.page_size  # padding writes land in reserved page 0
        query_start_loc = np.zeros(s + 1, np.int32)
        kv_lens = np.zeros(s, np.int32)
        block_tables = np.zeros((s, p), np.int32)
        logits_indices = np.zeros(s, np.int32)
        offset = 0
        for i, sched in enumerate(scheduled):
            seq: Sequence = sched.seq
            start, n = sched.start, sched.num_new_tokens
            pos = np.arange(start, start + n, dtype=np.int32)
            table = np.asarray(seq.block_table, np.int32)
            input_ids[offset : offset + n] = seq.token_ids[start : start + n]
            positions[offset : offset + n] = pos
            slot_mapping[offset : offset + n] = table[pos // self.page_size] * self.page_size + pos % self.page_size
            block_tables[i, : len(table)] = table
            kv_lens[i] = start + n
            offset += n
            query_start_loc[i + 1] = offset
            logits_indices[i] = offset - 1
        query_start_loc[len(scheduled) + 1 :] = offset
        sampling = sampler.build_sampling_metadata(
            [sched.seq for sched in scheduled],
            s,
            with_penalties=with_penalties,
            penalty_width=penalty_width,
            max_banned=banned,
            eos_token_ids=self.eos_token_ids,
        )
        attn = AttentionMetadata(
            slot_mapping=slot_mapping,
            query_start_loc=query_start_loc,
            kv_lens=kv_lens,
            block_tables=block_tables,
            backend=self.attention_backend,
        )
        return jax.tree.map(jnp.asarray, StepInputs(input_ids, positions, attn, logits_indices, sampling))

"""Helpers for model tests: tiny random HF checkpoints and a one-sequence forward through the paged pool."""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jllm.attention import AttentionMetadata, resolve_pool
from jllm.kv_cache import KVCacheSpec, allocate_kv_pool
from jllm.loader import LoadedModel
from jllm.parallel import kv_pool_sharding
from jllm.runner import ModelRunner
from jllm.sampler import SHORT_PENALTY_WIDTH

# The shape of every tiny random checkpoint the tests build: small enough for the CPU, GQA with 4 query / 2 KV heads.
TINY_CONFIG = dict(
    vocab_size=160,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def save_tiny_checkpoint(
    model_cls_name: str,
    config_kwargs: dict,
    out_dir: Path,
    seed: int = 0,
    config_cls_name: str | None = None,
    perturb_constants: bool = False,
    prepare: Callable[[Any], None] | None = None,
) -> Path:
    """Builds a random-weight transformers model and saves it as sharded safetensors with an index.

    ``config_cls_name`` where it is not the model's name with ``Config`` (``Gemma3TextConfig``);
    ``perturb_constants`` adds noise to every one-dimensional parameter (norms' weights and biases, linear biases) and
    every norm's weight (Cohere's per-head q/k norms' are ``[heads, head_dim]``) and ERNIE's, DeepSeek-V3's and
    LFM2-MoE's router correction biases and stacked experts' biases (gpt-oss's ``[experts, out]``), Gemma 4's layer
    scalars, DeepSeek-V4's hash-routing table (random experts), and any parameter
    that is all zeros (AFMoE's router), which transformers initialises to constants (so a ``1 + w`` norm read as
    ``w``, or a bias not read at all, would otherwise go unnoticed). ``prepare``: run on the model (under
    ``no_grad``) before it is saved, for weights a family's initialisation leaves too small to tell tokens apart."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config_cls = getattr(transformers, config_cls_name or model_cls_name.replace("ForCausalLM", "Config"))
    model = getattr(transformers, model_cls_name)(config_cls(**config_kwargs)).eval()
    if perturb_constants:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim == 1 or name.endswith(("norm.weight", "_bias")) or not p.any():
                    p.add_(0.3 * torch.randn_like(p))
            for name, b in model.named_buffers():  # DeepSeek-V3's, LFM2-MoE's choice biases, Gemma 4's scalars
                if name.endswith(("e_score_correction_bias", "expert_bias", "layer_scalar")):
                    b.add_(0.3 * torch.randn_like(b))
                if name.endswith("tid2eid"):  # DeepSeek-V4's hash routing: zeros would send every token to expert 0
                    b.copy_(torch.randint(0, model.config.n_routed_experts, b.shape))
    if prepare is not None:
        with torch.no_grad():
            prepare(model)
    model.save_pretrained(out_dir, max_shard_size="100KB", safe_serialization=True)
    return out_dir


def random_llama(root: Path, tokenizer_dir: Path, num_heads: int, num_kv_heads: int, **overrides: int) -> Path:
    """A 2-layer random Llama with head_dim 16 and the default model's tokenizer (so ``LLM`` can serve it).

    A wide initializer keeps greedy decoding off a single repeated token, so token equality means something.
    ``overrides``: config keys, e.g. sizes a tensor-parallel size must divide.
    """
    config = {
        **TINY_CONFIG,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": 16,
        "intermediate_size": 64,
        "vocab_size": 49152,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": True,
        "initializer_range": 0.3,
        **overrides,
    }
    out = save_tiny_checkpoint("LlamaForCausalLM", config, root / f"llama_{num_heads}q_{num_kv_heads}kv")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    return out


def hf_model(model_dir: Path) -> Any:
    """transformers' float32 PyTorch model of ``model_dir``, of the class its config's ``architectures`` names (no
    auto class maps ``mistral3`` to a causal LM)."""
    import torch
    import transformers

    arch = json.loads((model_dir / "config.json").read_text())["architectures"][0]
    return getattr(transformers, arch).from_pretrained(model_dir, dtype=torch.float32).eval()


def hf_logits(model_dir: Path, token_ids: list[int]) -> np.ndarray:
    """transformers' float32 PyTorch logits ``[T, vocab]`` for one sequence."""
    import torch

    model = hf_model(model_dir)
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].numpy()


def jllm_logits(
    loaded: LoadedModel, token_ids: list[int], page_size: int = 16, pool_dtype: Any = None, backend: str = "reference"
) -> np.ndarray:
    """jllm's logits ``[T, vocab]`` for one sequence prefilled in one step through the paged pool (in the model's
    dtype, or ``pool_dtype``: an FP8 pool), on the attention ``backend`` ("pallas": interpreted, over the pool it
    reads, heads padded to the kernels' width)."""
    return jllm_batch_logits(loaded, [token_ids], page_size, pool_dtype, backend)[0]


def jllm_batch_logits(
    loaded: LoadedModel,
    sequences: list[list[int]],
    page_size: int = 16,
    pool_dtype: Any = None,
    backend: str = "reference",
) -> list[np.ndarray]:
    """jllm's logits ``[T_s, vocab]`` of each sequence, all prefilled in one ragged step (one compile)."""
    args = loaded.args
    pages = [-(-len(seq) // page_size) for seq in sequences]
    first = np.cumsum([2, *pages])  # skip page 0 (reserved) and page 1 (unused)
    block_tables = np.zeros((len(sequences), max(pages)), np.int32)
    slots = []
    for s, seq in enumerate(sequences):
        block_tables[s, : pages[s]] = np.arange(first[s], first[s] + pages[s])
        positions = np.arange(len(seq))
        slots.append(block_tables[s, positions // page_size] * page_size + positions % page_size)
    model_spec = KVCacheSpec.for_model(args, page_size, pool_dtype or args.dtype)
    _, spec = resolve_pool(backend, model_spec, alibi=args.alibi_slopes is not None)
    # a hybrid model's recurrent layers: sequence s in state slot s + 1; on the model's mesh (tensor parallelism)
    slots_needed = len(sequences) + 1 if spec.states else 0
    pool = allocate_kv_pool(spec, int(first[-1]), kv_pool_sharding(loaded.mesh), num_state_slots=slots_needed)
    meta = AttentionMetadata(
        slot_mapping=jnp.asarray(np.concatenate(slots), jnp.int32),
        query_start_loc=jnp.asarray(np.cumsum([0, *map(len, sequences)]), jnp.int32),
        kv_lens=jnp.asarray([len(seq) for seq in sequences], jnp.int32),
        block_tables=jnp.asarray(block_tables),
        state_slots=jnp.arange(1, len(sequences) + 1, dtype=jnp.int32),
        backend=backend,
    )
    ids = jnp.asarray(np.concatenate(sequences), jnp.int32)
    positions = jnp.asarray(np.concatenate([np.arange(len(seq)) for seq in sequences]), jnp.int32)

    graphdef, state = nnx.split(loaded.model)

    @jax.jit
    def forward(state, ids, pos, pool, meta):
        # the weights are an argument: closed over, XLA got them as constants and took minutes to compile the
        # default model (CPU, 2026-12-03: 192 s against 11 s)
        model = nnx.merge(graphdef, state)
        hidden, _ = model(ids, pos, pool, meta)
        return model.compute_logits(hidden)

    logits = np.asarray(forward(state, ids, positions, pool, meta))
    return np.split(logits, np.cumsum([len(seq) for seq in sequences])[:-1])


def jllm_chunked_logits(loaded: LoadedModel, token_ids: list[int], chunk: int, page_size: int = 16) -> np.ndarray:
    """jllm's logits ``[T, vocab]`` for one sequence prefilled ``chunk`` tokens a step, the pool (pages and a hybrid
    model's state slot 1) kept between steps: each chunk continues from what the ones before it left. Every step is
    ``chunk`` tokens (the last padded past its row's end, to page 0), so one program runs them all."""
    args = loaded.args
    pages = -(-len(token_ids) // page_size)
    table = np.arange(1, pages + 1, dtype=np.int32)  # page 0 reserved (padding tokens write there)
    spec = KVCacheSpec.for_model(args, page_size, args.dtype)
    pool = allocate_kv_pool(spec, pages + 1, num_state_slots=2 if spec.states else 0)
    graphdef, state = nnx.split(loaded.model)

    @jax.jit
    def forward(state, ids, pos, pool, meta):
        model = nnx.merge(graphdef, state)
        hidden, pool = model(ids, pos, pool, meta)
        return model.compute_logits(hidden), pool

    out = []
    for start in range(0, len(token_ids), chunk):
        n = min(chunk, len(token_ids) - start)
        pos = np.minimum(np.arange(start, start + chunk), start + n - 1)  # padding tokens repeat the last position
        slots = np.where(np.arange(chunk) < n, table[pos // page_size] * page_size + pos % page_size, 0)
        meta = AttentionMetadata(
            slot_mapping=jnp.asarray(slots, jnp.int32),
            query_start_loc=jnp.asarray([0, n], jnp.int32),
            kv_lens=jnp.asarray([start + n], jnp.int32),
            block_tables=jnp.asarray(table[None]),
            state_slots=jnp.asarray([1], jnp.int32),
        )
        ids = np.zeros(chunk, np.int32)
        ids[:n] = token_ids[start : start + n]
        logits, pool = forward(state, jnp.asarray(ids), jnp.asarray(pos, jnp.int32), pool, meta)
        out.append(np.asarray(logits)[:n])
    return np.concatenate(out)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """Frobenius-norm error of ``a`` relative to the reference ``b``."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# Greedy decoding follows the larger of two logits however close they are; float32 orders a near-tie either way
# (Zamba2's tiny checkpoint: transformers' top two 6e-4 apart of ~5 at its 23rd token, jllm ranked them the other way).
# A divergence is accepted where transformers' own gap between its token and jllm's is at most this fraction of its
# largest logit; what follows a divergence is not compared (the sequences differ from there).
NEAR_TIE = 2e-4


def assert_greedy_equal(
    model_dir: Path, prompts: list[list[int]], got: list[list[int]], expected: list[list[int]]
) -> None:
    """``got`` (jllm's greedy tokens per prompt) equals transformers' ``expected``, up to a first divergence at a
    near-tie of transformers' logits (``NEAR_TIE``)."""
    assert len(got) == len(expected)
    for prompt, ours, theirs in zip(prompts, got, expected, strict=True):
        assert len(ours) == len(theirs), (ours, theirs)
        at = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), None)
        if at is None:
            continue
        logits = hf_logits(model_dir, prompt + theirs[:at])[-1]
        gap = float(logits[theirs[at]] - logits[ours[at]])
        bound = NEAR_TIE * float(np.abs(logits).max())
        assert gap <= bound, f"token {at}: jllm {ours}, transformers {theirs} (logit gap {gap:.3g} > {bound:.3g})"


def run_tp_worker(spec: dict[str, Any], tmp: Path, timeout: float, worker: str = "tp_worker.py") -> dict[str, Any]:
    """tests/tp_worker.py (or another ``worker`` script beside it) on ``spec`` in a subprocess (the fake CPU devices
    must be set before JAX starts). The worker compiles with JAX's ``jax_disable_most_optimizations``, as
    test_families' logits rows (its little_machine_code_optimization): LLVM's passes at level 0 on the tiny models'
    machine code, each program compiled once for a few steps; the HLO (its SPMD partitioning and collectives)
    optimized as before (``JAX_DISABLE_MOST_OPTIMIZATIONS=0`` in the environment turns it off)."""
    (tmp / "spec.json").write_text(json.dumps(spec))
    worker = Path(__file__).with_name(worker)
    proc = subprocess.run(
        [sys.executable, str(worker), str(tmp / "spec.json"), str(tmp / "out.json")],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"JAX_DISABLE_MOST_OPTIMIZATIONS": "1", **os.environ},
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads((tmp / "out.json").read_text())


class Records(logging.Handler):
    """Keeps every log record it is given (from INFO up), for tests that read start-up's figures."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run_worker(worker: str, cases: list[dict[str, Any]], **env_vars: str) -> list[dict[str, Any]]:
    """A ``worker`` script beside this file run on ``cases`` (JSON on argv[1], one JSON line per case back) in a
    subprocess, for settings that must hold before Triton or JAX start and that the rest of the suite must not see:
    ``TRITON_INTERPRET`` (Triton kernels in Triton's interpreter), ``JAX_ENABLE_COMPILATION_CACHE``."""
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tests), str(tests.parent)]), JAX_PLATFORMS="cpu")
    env.update(env_vars)
    proc = subprocess.run(
        [sys.executable, str(tests / worker), json.dumps(cases)], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def save_char_tokenizer(out_dir: Path, vocab_size: int) -> None:
    """A character-level tokenizer whose ids fill exactly ``vocab_size``, with a chat template."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]  # Llama's ids: bos 1, eos 2, as the tiny config's generation_config says
    chars = ["\n", *(chr(c) for c in range(32, 127))]
    chars += [chr(0xA1 + i) for i in range(vocab_size - len(specials) - len(chars))]
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(specials + chars)}, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    tok.save_pretrained(out_dir)


def assert_only_warmup_programs(runner: ModelRunner) -> None:
    """The runner compiled what warm-up does and nothing since: per bucket a forward and the prompt logprobs, per row
    count of the sampler (``StepBucket.sampler_rows``) the two base samplers and the general one at two penalty
    widths (one where the context fits 128 ids). With speculative decoding (penalties and prompt logprobs refused)
    the general sampler at the short width alone, and no prompt logprobs."""
    rows = len({bucket.sampler_rows for bucket in runner.buckets})
    speculative = runner.num_speculative_tokens > 0
    widths = 1 if speculative else len({SHORT_PENALTY_WIDTH, runner.long_penalty_width})
    names = collections.Counter(name for name, _, _ in runner.compiled_programs())
    expected = {
        "forward": len(runner.buckets),
        "sampler_0_greedy": rows,
        "sampler_0_random": rows,
        "sampler_20_truncated": widths * rows,
    }
    assert names == expected | ({} if speculative else {"prompt_logprobs": len(runner.buckets)}), names


@functools.partial(jax.jit, static_argnums=0)
def _mixer_forward(
    graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, pool: tuple, meta: AttentionMetadata
) -> tuple:
    return nnx.merge(graphdef, state)(x, None, None, pool, meta)


def mixer_step(
    mixer: nnx.Module, pool: tuple, rows: list[tuple[np.ndarray, int, int]], num_tokens: int, num_rows: int
) -> tuple[list[np.ndarray], tuple]:
    """One step of a recurrent mixer (Mamba's, Mamba2's) over ``rows`` (each: its new tokens' inputs ``[n, hidden]``,
    its tokens computed before, its state slot), packed into ``num_tokens`` tokens and ``num_rows`` rows (the rest
    padding). Returns each row's outputs and the updated state pool."""
    x = np.zeros((num_tokens, rows[0][0].shape[-1]), np.float32)
    qsl, kv_lens, slots = [0], [], []
    for inputs, before, slot in rows:
        x[qsl[-1] : qsl[-1] + len(inputs)] = inputs
        qsl.append(qsl[-1] + len(inputs))
        kv_lens.append(before + len(inputs))
        slots.append(slot)
    pad = num_rows - len(rows)
    meta = AttentionMetadata(
        slot_mapping=jnp.zeros(num_tokens, jnp.int32),
        query_start_loc=jnp.asarray(qsl + [qsl[-1]] * pad, jnp.int32),
        kv_lens=jnp.asarray(kv_lens + [0] * pad, jnp.int32),
        block_tables=jnp.zeros((num_rows, 1), jnp.int32),
        state_slots=jnp.asarray(slots + [0] * pad, jnp.int32),
    )
    y, pool = _mixer_forward(*nnx.split(mixer), jnp.asarray(x), pool, meta)
    y = np.asarray(y)
    return [y[qsl[i] : qsl[i + 1]] for i in range(len(rows))], pool

"""The recurrent families without a Mamba mixer against transformers: RWKV (v4), RecurrentGemma (Griffin) and xLSTM,
tiny random-weight checkpoints built from a config (norms and biases random too).

For each: float32 logits of a 70-token prompt within ``LOGITS_RTOL`` of transformers' PyTorch forward, prefilled 32
tokens a step (each chunk continuing from the recurrent state and pages the last left), and whole at TP 2; greedy
``LLM.generate`` of a batch of three prompts (the longest prefilled in chunks beside the others' decodes) identical to
transformers' ``generate``; at TP 2 on fake CPU devices (tests/recurrent_tp_worker.py, one subprocess for both) the
recurrent layers' parameters and state pools split where they should be. Each compile costs the suite seconds: the
whole prompt at TP 1 runs the same program as at TP 2 but for the shardings, so it is left out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_utils import (
    hf_logits,
    jllm_chunked_logits,
    relative_error,
    run_tp_worker,
    save_tiny_checkpoint,
)
from test_families import (
    ENGINE_ARGS,
    NEW_TOKENS,
    PROMPTS,
    WINDOW,
    hf_greedy,
    little_machine_code_optimization,  # noqa: F401 (the greedy rows' fixture)
)

from jllm import LLM, SamplingParams
from jllm.loader import abstract_model, load_model
from jllm.models.recurrent_state import linear_scan
from jllm.parallel import make_mesh
from jllm.quantization import QuantScheme

# Relative (Frobenius) error of float32 logits, measured 2.7e-7 (RecurrentGemma) and 4.2e-7 (RWKV) on the 70-token
# prompt, whole or in chunks of 32, at TP 1 or 2 (CPU, 2026-12-06)
LOGITS_RTOL = 1e-5
PROMPT = np.random.default_rng(7).integers(0, 49152, 70).tolist()
TOKENS = dict(vocab_size=49152, bos_token_id=1, eos_token_id=2, pad_token_id=0)
# name -> (architecture, config): RWKV's two blocks with rescale_every 1, so the second block's outputs are halved and
# both blocks' residuals halved after them; RecurrentGemma's recurrent and attention layers, multi-query attention
# in a window shorter than the prompts, half of each 12-wide head rotated, an LRU wider than the hidden size, and a
# hidden size whose sqrt a bfloat16 rounds (6.9375 for 6.93); xLSTM's two mLSTM blocks of 4 heads (q and k 16 wide, v
# 32), gates soft-capped at 3 so the cap bends them, transformers' prefill in chunks of 16 (its chunkwise sums)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "rwkv": (
        "RwkvForCausalLM",
        dict(TOKENS, hidden_size=64, num_hidden_layers=2, intermediate_size=96, rescale_every=1),
    ),
    "recurrent_gemma": (
        "RecurrentGemmaForCausalLM",
        dict(
            TOKENS,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            intermediate_size=96,
            lru_width=64,
            block_types=["recurrent", "attention"],
            attention_window_size=WINDOW,
            w_init_variance_scale=1.0,
        ),
    ),
    "xlstm": (
        "xLSTMForCausalLM",
        dict(TOKENS, hidden_size=128, num_hidden_layers=2, num_heads=4, chunk_size=16, gate_soft_cap=3.0),
    ),
}
# each mixer's modules split over TP 2 (True) or replicated: RWKV's time mixing by channel, its channel mixing's
# projections by width but its receptance, its mixes and ln2 whole; RecurrentGemma's by LRU head, the conv's weight
# whole
SPLIT = {
    "rwkv": dict(attention=True, ln2=False, feed_forward=True),
    "recurrent_gemma": dict(linear_x=True, linear_y=True, conv_1d=False, rg_lru=True, linear_out=True),
    "xlstm": dict.fromkeys(("q", "k", "v", "ogate_preact", "igate_preact", "fgate_preact", "multihead_norm"), True)
    | dict(out_proj=True),
}
# which arrays of the first recurrent layer's state pool are split (on the axis after the slot's): RWKV's two token
# shifts whole, its WKV triple by channel; RecurrentGemma's conv window and LRU state by head
POOL_SPLIT = {"rwkv": [None, 1, 1, 1, None], "recurrent_gemma": [1, 1], "xlstm": [1, 1, 1]}


def widen_rwkv_embeddings(model: Any) -> None:
    """RWKV's initial embeddings are ~1e-4: ``pre_ln`` would see its eps, not the token, and every position would
    read alike (a trained model's are not so)."""
    model.rwkv.embeddings.weight.mul_(1e4)


PREPARE = {"rwkv": widen_rwkv_embeddings}


@pytest.fixture(scope="module")
def model_dirs(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recurrent_families")
    dirs = {}
    for seed, (name, (arch, config)) in enumerate(MODELS.items()):
        out = save_tiny_checkpoint(
            arch, config, root / name, seed=seed, perturb_constants=True, prepare=PREPARE.get(name)
        )
        for file in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(default_model_dir / file, out / file)
        dirs[name] = out
    return dirs


@pytest.fixture(scope="module")
def hf_prompt_logits(model_dirs) -> dict[str, np.ndarray]:
    """transformers' logits of ``PROMPT`` per model, for the TP 1 and TP 2 checks."""
    return {name: hf_logits(d, PROMPT) for name, d in model_dirs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_logits_prefilled_in_chunks_match_transformers(model_dirs, hf_prompt_logits, name):
    """The prompt 32 tokens a step: the first chunk from a fresh state, the others continuing from the state and
    pages the last left (the whole prompt in one step: the TP 2 row's)."""
    expected = hf_prompt_logits[name]
    got = jllm_chunked_logits(load_model(model_dirs[name], mesh=make_mesh(1), dtype="float32"), PROMPT, chunk=32)
    assert relative_error(got, expected) < LOGITS_RTOL
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("name", MODELS)
def test_greedy_batch_equals_transformers_generate(model_dirs, name):
    llm = LLM(str(model_dirs[name]), **ENGINE_ARGS)
    greedy = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, greedy, use_tqdm=False)]
    assert got == hf_greedy(model_dirs[name], PROMPTS, NEW_TOKENS)
    assert len({t for tokens in got for t in tokens}) > 3, "degenerate greedy output proves little"


@pytest.fixture(scope="module")
def tp_runs(model_dirs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("recurrent_tp")
    spec = {"models": {name: [str(d), 2] for name, d in model_dirs.items()}, "prompt": PROMPT, "out_dir": str(tmp)}
    return run_tp_worker(spec, tmp, timeout=600, worker="recurrent_tp_worker.py")


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_tp_2_logits_match_transformers_with_the_recurrent_layers_split(tp_runs, hf_prompt_logits, name):
    run = tp_runs[name]
    assert relative_error(np.load(run["logits_file"]), hf_prompt_logits[name]) < LOGITS_RTOL
    split = {}
    for path, p in run["params"].items():
        module = path.split("/mixer/")[1].split("/")[0]
        split[module] = split.get(module, False) or p["split_axis"] is not None
        if p["split_axis"] is not None:  # each device holds half of the split axis
            axis = p["split_axis"]
            assert {s[axis] for s in p["device_shapes"]} == {p["shape"][axis] // 2}, f"{path}: {p}"
    assert split == SPLIT[name]
    assert [x["split_axis"] for x in run["state_pool"]] == POOL_SPLIT[name]


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("rwkv", dict(layer_norm_epsilon=1e-6), "RWKV layer_norm_epsilon=1e-06 is not supported"),
        ("rwkv", dict(attention_hidden_size=32), "RWKV attention_hidden_size=32 is not supported"),
        ("recurrent_gemma", dict(block_types=["recurrent", "mlp"]), r"RecurrentGemma block_types=.*'mlp'.* supported"),
        ("recurrent_gemma", dict(block_types=["recurrent"]), "RecurrentGemma with no attention layer"),
        ("recurrent_gemma", dict(lru_width=66), "RecurrentGemma lru_width=66 must divide into num_attention_heads=4"),
        ("xlstm", dict(weight_mode="fused"), "xLSTM weight_mode='fused' is not supported"),
        ("xlstm", dict(use_bias=True), "xLSTM use_bias=True is not supported"),
        ("xlstm", dict(qk_dim_factor=0.25), r"xLSTM hidden_size=128 x qk_dim_factor=0.25 = 32 is not supported"),
    ],
)
def test_unsupported_option_is_refused_at_load_naming_it(tmp_path, name, change, message):
    arch, config = MODELS[name]
    (tmp_path / "config.json").write_text(json.dumps({**config, **change, "architectures": [arch]}))
    with pytest.raises(ValueError, match=message):
        load_model(tmp_path, mesh=make_mesh(1), load_format="dummy")


def test_rwkv_rescale_every_halves_block_outputs_and_residuals_as_transformers_eval_mode():
    """rescale_every 2 over 5 blocks: block i's outputs divided by 2 ** (i // 2) (transformers divides its output
    weights so), the residual halved after blocks 1 and 3; 0 or less: no rescaling. (Without it the tiny model's
    logits are 3.6e-5 off transformers', against 4.2e-7 with it.)"""
    from jllm.models.families.rwkv import rwkv

    config = {**MODELS["rwkv"][1], "num_hidden_layers": 5, "rescale_every": 2}
    layers = rwkv(config, jnp.float32).layers
    assert [spec.block_scale for spec in layers] == [1.0, 1.0, 0.5, 0.5, 0.25]
    assert [spec.output_scale for spec in layers] == [1.0, 0.5, 1.0, 0.5, 1.0]
    layers = rwkv({**config, "rescale_every": 0}, jnp.float32).layers
    assert {(spec.block_scale, spec.output_scale) for spec in layers} == {(1.0, 1.0)}


def test_tp_size_rwkv_channels_do_not_divide_is_refused_naming_them():
    """RWKV has no attention: TP 2 splits its 66 channels though its placeholder head would not split, TP 4 is
    refused naming them (RecurrentGemma's LRU heads are its attention heads, which the attention's check names)."""
    arch, config = MODELS["rwkv"]
    config = {**config, "hidden_size": 66, "architectures": [arch]}
    abstract_model(config, np.float32, tensor_parallel_size=2)
    refused = r"RWKV time mixing's channels \(attention_hidden_size\) of 66"
    with pytest.raises(ValueError, match=f"tensor_parallel_size=4 does not divide the model's {refused}"):
        abstract_model(config, np.float32, tensor_parallel_size=4)


def test_quantization_is_refused_naming_the_family():
    for name, family in (("rwkv", "RWKV"), ("recurrent_gemma", "RecurrentGemma"), ("xlstm", "xLSTM")):
        arch, config = MODELS[name]
        config = {**config, "architectures": [arch]}
        with pytest.raises(ValueError, match=f"quantization='int8' is not supported for {family}"):
            abstract_model(config, np.float32, quant=QuantScheme("int8"))


def test_linear_scan_steps_each_row_from_its_state_and_keeps_a_row_without_tokens() -> None:
    """Three rows (4 tokens, none, 5) and a padding token, in blocks of 4 tokens that rows cross: each row's
    recurrence from its own state, the empty row's state unchanged."""
    from jllm.attention import AttentionMetadata

    rng = np.random.default_rng(0)
    decay, inputs = rng.uniform(0, 1, (10, 4)).astype(np.float32), rng.normal(size=(10, 4)).astype(np.float32)
    state = rng.normal(size=(3, 4)).astype(np.float32)
    qsl = [0, 4, 4, 9]
    meta = AttentionMetadata(
        slot_mapping=jnp.zeros(10, jnp.int32),
        query_start_loc=jnp.asarray(qsl, jnp.int32),
        kv_lens=jnp.asarray([4, 0, 5], jnp.int32),
        block_tables=jnp.zeros((3, 1), jnp.int32),
    )
    h, last = jax.jit(linear_scan)(*map(jnp.asarray, (decay, inputs, state)), meta)
    expected, final = np.zeros_like(inputs), state.copy()
    for s in range(3):
        for t in range(qsl[s], qsl[s + 1]):
            final[s] = decay[t] * final[s] + inputs[t]
            expected[t] = final[s]
    np.testing.assert_allclose(np.asarray(h)[:9], expected[:9], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(last), final, rtol=1e-6)


@pytest.mark.slow
def test_chunked_mlstm_equals_its_token_steps_across_chunks_from_any_state() -> None:
    """Two rows (100 tokens, crossing a chunk boundary, and 30) from random states with stabilizers far apart, gates
    wide enough that the stabilizer switches between the state's and a token's: the chunked form's outputs and new
    states are the token-by-token recurrence's."""
    from jllm.attention import AttentionMetadata
    from jllm.models.mlstm import chunked_mlstm, mlstm_step
    from jllm.models.recurrent_state import scan_rows

    rng = np.random.default_rng(0)
    heads, dk, dv, lens = 2, 4, 8, [100, 30]
    t = sum(lens)
    q, k = (jnp.asarray(rng.normal(size=(t, heads, dk)), jnp.float32) for _ in range(2))
    v = jnp.asarray(rng.normal(size=(t, heads, dv)), jnp.float32)
    i, f = (jnp.asarray(rng.uniform(-10, 10, (t, heads)), jnp.float32) for _ in range(2))
    state = (
        jnp.asarray(rng.normal(size=(2, heads, dk, dv)), jnp.float32),
        jnp.asarray(rng.normal(size=(2, heads, dk)), jnp.float32),
        jnp.asarray([[5.0, -3.0], [0.0, 12.0]], jnp.float32),
    )
    meta = AttentionMetadata(
        slot_mapping=jnp.zeros(t, jnp.int32),
        query_start_loc=jnp.asarray([0, lens[0], t], jnp.int32),
        kv_lens=jnp.asarray([lens[0] + 7, lens[1] + 3], jnp.int32),
        block_tables=jnp.zeros((2, 1), jnp.int32),
    )
    out_like = jax.ShapeDtypeStruct((heads, dv), jnp.float32)

    def steps(*args: Any) -> Any:
        return scan_rows(lambda s, x: mlstm_step(s, x, 1e-6), args[5], args[:5], out_like, meta)

    expected, expected_state = jax.jit(steps)(q, k, v, i, f, state)
    got, got_state = jax.jit(lambda *a: chunked_mlstm(*a, meta, 1e-6))(q, k, v, i, f, state)
    assert relative_error(np.asarray(got), np.asarray(expected)) < 1e-5
    for a, b in zip(got_state, expected_state, strict=True):
        assert relative_error(np.asarray(a), np.asarray(b)) < 1e-5

"""The newer text families of transformers 5.25 (LaraMini, HRM-Text, Dory, Doge, Ergo, Kolibri-1.1, Hy4) against
transformers: tiny random-weight checkpoints built from a config, as ``tests/test_families.py`` checks every other
family (its rows are seeded by their place, so these live here): float32 logits within the stated tolerance of
transformers' forward, a greedy batch through the engine equal to transformers' ``generate``, and what each family
brings of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_utils import hf_logits, jllm_logits, relative_error, run_tp_worker
from test_families import (
    BASE,
    BATCH_NEW_TOKENS,
    DELTANET_KEYS,
    ENGINE_ARGS,
    GREEDY_BATCH,
    HYBRID_LOGITS_RTOL,
    LOGITS_RTOL,
    PROMPTS,
    TP_NEW_TOKENS,
    FamilyDirs,
    hf_greedy,
    little_machine_code_optimization,  # noqa: F401 (the logits and greedy rows' fixture)
)

from jllm import LLM
from jllm.loader import load_model
from jllm.parallel import make_mesh

# LaraMini: a DeltaNet, a sliding (rotary) and a full (no position) layer; a mixture of 4 experts (top 2) beside an
# ungated shared expert in every layer
LARA_MINI_KEYS = dict(
    DELTANET_KEYS,
    num_hidden_layers=3,
    layer_types=["linear_attention", "sliding_attention", "full_attention"],
    sliding_window=16,
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=48,
)

DORY_KEYS = dict(num_hidden_layers=4, n_input_layers=1, n_output_layers=1, n_recurrent_loops=2, sliding_window=16)

# Ergo: a dense first layer, then two mixture layers of 4 experts (top 2) beside a shared expert; every second layer
# global (no positions, its scores scaled), the others sliding
ERGO_KEYS = dict(
    num_hidden_layers=3,
    num_dense_blocks=1,
    first_dense_intermediate_size=80,
    moe_intermediate_size=32,
    shared_intermediate_size=48,
    num_experts=4,
    num_experts_per_tok=2,
    sliding_window=16,
    global_attention_every_n_layers=2,
    global_attention_scale=1.3,
)

# Kolibri-1.1: a sliding dense layer, an indexed mixture layer with K/V of its own, a sliding mixture layer and an
# indexed one reading the first's K/V; a budget (64 + 8 + 2) past the 70-token prompt, so every key is kept
KOLIBRI1_1_KEYS = dict(
    num_hidden_layers=4,
    layer_types=["sliding_attention", "indexed_attention"] * 2,
    kv_source_layers=[0, 1, 2, 1],
    index_layers=[1],
    mlp_only_layers=[0],
    mlp_only_intermediate_size=80,
    num_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=48,
    sliding_window=16,
    index_topk=64,
    index_num_local_tokens=8,
    index_num_sink_tokens=2,
    index_num_heads=2,
)

# Hy4: a dense layer and two mixture layers (4 experts, top 2, clamped at 2) on latent attention with sinks and an
# output gate, two hyper-connection streams; an index_topk (80) past the 70-token prompt, so every key is kept
HYV4_KEYS = dict(
    num_hidden_layers=3,
    head_dim=None,
    q_lora_rank=32,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    index_topk=80,
    index_head_dim=16,
    index_n_heads=2,
    hc_mult=2,
    swiglu_limit=2.0,
    learnable_sink_init=0.5,
)

# name -> (architecture, config class (None: the architecture's), config.json keys besides BASE, logits tolerance)
FAMILIES: dict[str, tuple[str, str | None, dict[str, Any], float]] = {
    "lara_mini": ("LaraMiniForCausalLM", None, LARA_MINI_KEYS, HYBRID_LOGITS_RTOL),
    # two layers a stack, 2 H cycles of 2 L cycles: 12 invocations, each with pages of its own; a narrower initializer
    # than BASE's, as 12 invocations of 0.3's amplify float32's rounding (transformers' float32 logits 9.6e-4 from its
    # float64's there, jllm's 9.4e-4; 1.0e-6 from transformers' float32 at 0.15)
    "hrm_text": ("HrmTextForCausalLM", None, dict(H_cycles=2, L_cycles=2, initializer_range=0.15), LOGITS_RTOL),
    # four layers (sliding, sliding, sliding, full): one input layer, two recurrent ones looped twice, one output
    # layer (6 invocations); transformers' to_dict saves them as the released layout of attention and mlp blocks
    "dory": ("DoryForCausalLM", None, DORY_KEYS, LOGITS_RTOL),
    # a sliding window shorter than the prompts; keep_window_size 2048 past them (jllm serves up to it)
    "doge": ("DogeForCausalLM", None, dict(sliding_window=16), LOGITS_RTOL),
    "ergo": ("ErgoForCausalLM", None, ERGO_KEYS, LOGITS_RTOL),
    # its indexed layers' K/V rounded to NVFP4 (unrounded, the logits are 6.8e-2 off)
    "kolibri1_1": ("Kolibri1_1ForCausalLM", "Kolibri1_1Config", KOLIBRI1_1_KEYS, LOGITS_RTOL),
    "hy_v4": ("HYV4ForCausalLM", "HYV4Config", HYV4_KEYS, LOGITS_RTOL),
}
# A prompt prefilled in chunks: the greedy rows' 40-token prompt, 16 tokens a step beside the others' decodes (Doge's
# key biases and Dory's per-loop pages read by later chunks); LaraMini's state across steps is Qwen3.5's mixer's
# (tests/test_hybrid.py), its 70-token prompt prefilled 32 tokens a step 5.7e-6 from transformers by hand (2026-12-06).
# families whose engine runs nothing another family's greedy row does not, each's greedy batch equal to transformers'
# by hand (2026-12-06): LaraMini's layers are Qwen3.5's mixer (tests/test_hybrid.py's greedy batch) and Qwen3's
# attention (59 s a row on a loaded 2-core machine); HRM-Text's invocations keep their pages as Dory's do (its greedy
# row runs the looped engine); Ergo's layers keep plain pages, what is new in them is in their logits row
LOGITS_ONLY = {"lara_mini", "hrm_text", "ergo"}
# Tensor parallelism where a family brings something new to shard: Doge's key bias (its pool heads one channel
# wider, split with the KV heads; dt_proj reading every head's values). Dory's unit norms over all heads (reduced
# across devices, as OLMo 2's q/k norms) and Ergo's per-expert output norms beside experts split by their MLP columns
# matched transformers' tokens and logits at TP 2 by hand (2026-12-06, ~13 s of CPU a family); LaraMini's DeltaNet
# at TP 2 and 4 is tests/test_hybrid_tp.py's.
TP_SIZES = {"doge": [2]}


@pytest.fixture(scope="module")
def family_dirs(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FamilyDirs:
    rows = {name: (arch, config_cls, keys, []) for name, (arch, config_cls, keys, _) in FAMILIES.items()}
    return FamilyDirs(tmp_path_factory.mktemp("fresh_families"), default_model_dir, rows)


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_match_transformers(family_dirs, name):
    model_dir = family_dirs[name]
    ids = np.random.default_rng(7).integers(0, 49152, 70).tolist()
    expected = hf_logits(model_dir, ids)
    loaded = load_model(model_dir, mesh=make_mesh(1), dtype="float32")
    got = jllm_logits(loaded, ids, page_size=16)
    assert relative_error(got, expected) < FAMILIES[name][3]
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))


@pytest.mark.slow
@pytest.mark.usefixtures("little_machine_code_optimization")
@pytest.mark.parametrize("name", [name for name in FAMILIES if name not in LOGITS_ONLY])
def test_greedy_batch_equals_transformers_generate(family_dirs, name):
    llm = LLM(str(family_dirs[name]), **ENGINE_ARGS)
    got = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY_BATCH, use_tqdm=False)]
    assert got == hf_greedy(family_dirs[name], PROMPTS, BATCH_NEW_TOKENS)
    assert len({t for tokens in got for t in tokens}) > 3, "degenerate greedy output proves little"


def test_hrm_text_runs_each_stack_layer_in_every_cycle_with_pages_of_its_own_and_refuses_hidden_states():
    """HRM-Text's 2 H cycles of 2 L cycles over stacks of 2 layers are 12 invocations (12 layers' pages), each running
    the first invocation's module of its stored layer (the L stack's at 0 and 1, the H stack's at 4 and 5), read under
    those names: the weights exist once (what the loader reads and the memory plan counts); hidden states are
    refused, transformers' layer indices naming none of the invocations."""
    from types import SimpleNamespace

    from flax import nnx

    from jllm.errors import InputError
    from jllm.loader import abstract_model
    from jllm.pooling import Encoder

    config = {**BASE, "architectures": ["HrmTextForCausalLM"], "H_cycles": 2, "L_cycles": 2}
    _, state, args, _ = abstract_model(config, np.float32, 1, None)
    assert len(args.layers) == args.num_layers == 12
    assert [args.loop.owner(u) for u in range(12)] == [0, 1, 0, 1, 4, 5] * 2
    assert {path[1] for path, _ in nnx.to_flat_state(state) if path[0] == "layers"} == {0, 1, 4, 5}
    assert ("model.H_module.layers.1.", "model.layers.5.") in args.weights.aliases
    with pytest.raises(InputError, match="not supported for looped models"):
        Encoder(SimpleNamespace(loaded=SimpleNamespace(args=args)), max_model_len=64)


@pytest.mark.parametrize(
    "arch, change, message",
    [
        ("HrmTextForCausalLM", {"attention_bias": True}, "HRM-Text attention_bias=True is not supported"),
        ("HrmTextForCausalLM", {"mlp_bias": True}, "HRM-Text mlp_bias=True is not supported"),
        (
            "DoryForCausalLM",
            {**DORY_KEYS, "tie_word_embeddings": True},
            "Dory tie_word_embeddings=True is not supported",
        ),
        ("DogeForCausalLM", {"is_moe": True}, "Doge is_moe=True is not supported"),
        ("LaraMiniForCausalLM", {"hidden_act": "gelu"}, "LaraMini hidden_act='gelu' is not supported"),
        (
            "Kolibri1_1ForCausalLM",
            {"layer_types": ["sliding_attention", "full_attention"]},
            "Kolibri-1.1 layer_types=.* is not supported",
        ),
    ],
)
def test_unsupported_option_is_refused_at_load_naming_it(arch, change, message):
    from jllm.models.registry import build_args

    with pytest.raises(ValueError, match=message):
        build_args({**BASE, "architectures": [arch], **change}, np.float32)


@pytest.mark.slow  # transformers builds the checkpoint
def test_dory_hub_layout_reads_the_same_tensors_as_transformers_saved_one(family_dirs, tmp_path):
    """The hub keeps each Dory layer as two blocks (``layers.{2i}.mixer.`` attention with ``attn_alpha``,
    ``layers.{2i+1}.mixer.`` MLP with ``mlp_alpha``); read through the aliases, every tensor lands on the name the
    saved layout's does, with the same values."""
    import contextlib
    import json
    import re
    import shutil

    from safetensors.numpy import save_file

    from jllm.models.registry import build_args
    from jllm.safetensors_index import SafetensorsIndex

    saved = family_dirs["dory"]
    blocks = {
        "self_attn": (0, "mixer."),
        "mlp": (1, "mixer."),
        "lambda_1": (0, "attn_alpha"),
        "lambda_2": (1, "mlp_alpha"),
    }

    def hub_name(name: str) -> str:
        match = re.match(r"backbone\.layers\.(\d+)\.(self_attn\.|mlp\.|lambda_1|lambda_2)(.*)", name)
        if match is None:
            return name
        k, block, rest = int(match[1]), match[2].rstrip("."), match[3]
        odd, stored = blocks[block]
        return f"backbone.layers.{2 * k + odd}.{stored}{rest}"

    weights = build_args(json.loads((saved / "config.json").read_text()), np.float32)[1].weights
    with contextlib.ExitStack() as stack:
        ours = SafetensorsIndex(saved, stack, weights)
        stored = {s.name: s.handle.get_tensor(s.name) for s in ours.tensors.values()}
        save_file({hub_name(name): np.asarray(value) for name, value in stored.items()}, tmp_path / "model.safetensors")
        shutil.copy(saved / "config.json", tmp_path / "config.json")
        hub = SafetensorsIndex(tmp_path, stack, weights)
        assert sorted(hub.tensors) == sorted(ours.tensors)
        for name, kept in ours.tensors.items():
            np.testing.assert_array_equal(
                hub.tensors[name].handle.get_tensor(hub.tensors[name].name), stored[kept.name]
            )


def test_dory_reads_the_released_layout_and_refuses_last_loop_caches():
    """A released config lists attention and mlp blocks in turn, every count doubled: read as transformers pairs them
    (4 layers: one input, two recurrent looped twice, one output: 6 invocations, the output layer's first run at 5).
    ``recurrent_kv_cache_mode`` "last_loop" is refused naming the key."""
    from jllm.models.registry import build_args

    released = dict(
        BASE,
        architectures=["DoryForCausalLM"],
        num_hidden_layers=8,
        n_input_layers=2,
        n_output_layers=2,
        n_recurrent_loops=2,
        layer_types=["sliding_attention", "mlp"] * 3 + ["full_attention", "mlp"],
    )
    args = build_args(released, np.float32)[1]
    assert len(args.layers) == 6 and [args.loop.owner(u) for u in range(6)] == [0, 1, 2, 1, 2, 5]
    assert [spec.sliding_window for spec in args.layers] == [1024] * 5 + [None]  # DoryConfig's window
    assert ("backbone.layers.3.", "model.layers.5.") in args.weights.aliases
    with pytest.raises(ValueError, match="recurrent_kv_cache_mode='last_loop' is not supported"):
        build_args({**released, "recurrent_kv_cache_mode": "last_loop"}, np.float32)


def test_doge_context_is_its_keep_window_and_its_pool_keeps_each_keys_bias():
    """Doge keeps the ``keep_window_size`` keys of largest bias for a query that sees more: jllm serves up to the
    window (every key kept, the mask the bias alone), and the error ``build`` raises for a longer ``max_model_len``
    names it. Each pool head is one channel wider than the heads: the key's bias beside it."""
    from jllm.kv_cache import KVCacheSpec
    from jllm.models.registry import build_args

    args = build_args({**BASE, "architectures": ["DogeForCausalLM"], "keep_window_size": 48}, np.float32)[1]
    assert args.max_context == 48
    assert args.context_limit.startswith("the model's keep_window_size=48: jllm keeps no top keep_window_size keys")
    assert KVCacheSpec.for_model(args, 16, np.float32).head_dim == BASE["head_dim"] + 1


def test_kolibri1_1_context_is_its_indexed_budget_and_its_layers_read_as_transformers_builds_them():
    """Kolibri-1.1's indexed layers keep every key a query sees up to ``index_topk + index_num_local_tokens +
    index_num_sink_tokens``: jllm serves up to that budget, and ``build``'s error past it names the keys. Those layers
    have no rotary and round their K/V to NVFP4; a layer whose ``kv_source_layers`` entry names another has no K/V of
    its own; ``mlp_only_layers`` run a dense MLP of ``mlp_only_intermediate_size``."""
    from jllm.models.registry import build_args

    args = build_args({**BASE, **KOLIBRI1_1_KEYS, "architectures": ["Kolibri1_1ForCausalLM"]}, np.float32)[1]
    assert args.max_context == 74
    assert args.context_limit.startswith("the model's index_topk + index_num_local_tokens + index_num_sink_tokens=74")
    assert [(spec.rope is None, spec.kv_nvfp4, spec.kv_source) for spec in args.layers] == [
        (False, False, None),
        (True, True, None),
        (False, False, None),
        (True, True, 1),
    ]
    assert [spec.dense_mlp_size for spec in args.layers] == [80, None, None, None]


def test_hy_v4_context_is_its_index_topk_and_longer_is_refused_naming_it():
    """Hy4's DeepSeek Sparse Attention keeps each query's ``index_topk`` best keys: jllm serves up to that budget,
    where every key is kept (its indexers never read), and ``build``'s error past it names the key."""
    from jllm.models.registry import build_args

    args = build_args({**BASE, **HYV4_KEYS, "architectures": ["HYV4ForCausalLM"]}, np.float32)[1]
    assert args.max_context == 80 and args.weights.skipped[0][0] == r"\.self_attn\.indexer\."
    assert args.context_limit.startswith("the model's index_topk=80: jllm has no Hy4 DeepSeek Sparse Attention")


@pytest.fixture(scope="module")
def tp_found(family_dirs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """tests/tp_worker.py's greedy runs and prefill logits of ``TP_SIZES``' families on 8 fake CPU devices, in one
    subprocess (JAX starts once)."""
    tmp = tmp_path_factory.mktemp("fresh_families_tp")
    families = {name: [str(family_dirs[name]), sizes] for name, sizes in TP_SIZES.items()}
    return run_tp_worker({"families": families, "cache_dir": str(tmp / "jllm_cache")}, tmp, timeout=900)["generate"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TP_SIZES))
def test_tensor_parallel_matches_transformers(tp_found, family_dirs, name):
    runs = tp_found[name]
    expected_tokens = hf_greedy(family_dirs[name], PROMPTS, TP_NEW_TOKENS)
    expected_logits = hf_logits(family_dirs[name], PROMPTS[2])
    for tp in map(str, TP_SIZES[name]):
        assert runs[tp]["tokens"] == expected_tokens, f"{name} at TP={tp}"
        assert relative_error(np.load(runs[tp]["logits_file"]), expected_logits) < FAMILIES[name][3], f"TP={tp}"


@pytest.mark.parametrize(
    "arch, keys, family",
    [("DogeForCausalLM", {}, "Doge"), ("DoryForCausalLM", DORY_KEYS, "Dory"), ("HrmTextForCausalLM", {}, "HRM-Text")],
)
def test_quantization_is_refused_by_name(arch, keys, family):
    from jllm.loader import abstract_model
    from jllm.quantization import QuantScheme

    config = {**BASE, **keys, "architectures": [arch]}
    with pytest.raises(ValueError, match=f"quantization='int8' is not supported for {family}"):
        abstract_model(config, np.float32, 1, QuantScheme("int8"))


@pytest.mark.slow  # transformers builds the checkpoint
def test_doge_refuses_an_fp8_pool_naming_the_key(family_dirs):
    with pytest.raises(ValueError, match="kv_cache_dtype='fp8' is not supported for Doge"):
        LLM(str(family_dirs["doge"]), **{**ENGINE_ARGS, "kv_cache_dtype": "fp8"})

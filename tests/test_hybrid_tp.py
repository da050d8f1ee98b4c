"""Tensor parallelism for hybrid models' recurrent layers, one tiny model per mixer kind (gated DeltaNet: Qwen3-Next;
Mamba2: Bamba; LFM2's short conv; MiniMax's lightning attention; Mamba: Jamba) on 8 fake CPU devices: at TP 2 and 4
(LFM2, MiniMax, Jamba: 2) the float32 logits of an 80-token
prefill (across the chunked algorithms' chunk boundaries) equal TP 1's, the engine's greedy tokens are TP 1's, and the
recurrent layers' parameters and state pools are split by heads. One subprocess runs those checks
(tests/hybrid_tp_worker.py); a fused projection's grouped read and the refusal of a TP size the recurrent heads do
not divide are checked here."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_utils import TINY_CONFIG, run_tp_worker, save_tiny_checkpoint
from test_families import MAMBA2_KEYS

from jllm.loader import abstract_model

BASE = dict(TINY_CONFIG, vocab_size=49152, head_dim=16, initializer_range=0.3, bos_token_id=1, eos_token_id=2)
# name -> (architecture, config overrides); each splits 4 ways: 4 DeltaNet key heads (8 value heads), 8 Mamba2 heads
# in 2 groups (B and C replicated), LFM2's 64 conv channels, MiniMax's 4 lightning heads; the attention's 2 KV heads
# replicated at TP 4
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen3_next": (
        "Qwen3NextForCausalLM",
        dict(
            layer_types=["linear_attention", "full_attention"],
            linear_num_key_heads=4,
            linear_num_value_heads=8,
            linear_key_head_dim=8,
            linear_value_head_dim=8,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
        ),
    ),
    "bamba": (
        "BambaForCausalLM",
        dict(attn_layer_indices=[1], mamba_proj_bias=True, **MAMBA2_KEYS),
    ),
    "lfm2": ("Lfm2ForCausalLM", dict(layer_types=["conv", "full_attention"], conv_L_cache=3, conv_bias=True)),
    "minimax": (
        "MiniMaxForCausalLM",
        dict(layer_types=["linear_attention", "full_attention"], num_local_experts=4, num_experts_per_tok=2),
    ),
    # Jamba: a Mamba (v1) mixer of 128 channels and a dense MLP, then attention and a mixture of 4 experts
    "jamba": (
        "JambaForCausalLM",
        dict(
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            num_experts=4,
            num_experts_per_tok=2,
            mamba_d_state=8,
            mamba_proj_bias=True,
        ),
    ),
}
# TP 4 where it takes a path TP 2 does not: the attention's KV heads replicated, Mamba2's 2 groups fewer than devices
SIZES = {"qwen3_next": [2, 4], "bamba": [2, 4], "lfm2": [2], "minimax": [2], "jamba": [2]}
# each mixer's modules: split by heads (True) or replicated (the conv's tiny weight, Mamba2's B and C, the per-head
# norm's weight, MiniMax's norm's over all heads: its sum of squares all-reduced)
SPLIT = {
    "qwen3_next": dict(in_proj_qkvz=True, in_proj_ba=True, conv1d=False, A_log=True, dt_bias=True, norm=False)
    | dict(out_proj=True),
    "bamba": dict(in_proj=True, bc_proj=False, conv1d=False, A_log=True, D=True, dt_bias=True, gated_norm=True)
    | dict(out_proj=True),
    "lfm2": dict(in_proj=True, conv=False, out_proj=True),
    "minimax": dict(qkv=True, output_gate=True, norm=False, out_proj=True),
    # Mamba (v1): x_proj row-parallel, dt_proj column-parallel; the norms of x_proj's replicated output replicated
    "jamba": dict(in_proj=True, conv1d=False, x_proj=True, dt_proj=True, A_log=True, D=True, out_proj=True)
    | dict(dt_layernorm=False, b_layernorm=False, c_layernorm=False),
}
# float32, relative (norm of the difference over the norm): only the order of the sums across devices differs (the
# attention's and out_proj's all-reduces, the Mamba2 gated norm's groups spanning devices). Measured at most 4.0e-6
# (Qwen3-Next at TP 4, its largest single logit 3.5e-4 off where TP 1's is 5.4e-4 off transformers': the MoE's and the
# chunked delta rule's float32 noise; CPU, 2026-12-05)
LOGITS_RTOL = 2e-5


def test_fused_projection_is_read_grouped_by_head_one_run_of_columns_per_part(tmp_path):
    """Qwen3.5's ``in_proj_qkv`` (every q head, every k head, every v head) read as ``[hidden, key heads, q + k +
    v]``: a device's slice of key heads is its heads' columns of each part, three reads of the stored tensor."""
    from contextlib import ExitStack

    from safetensors.numpy import save_file

    from jllm.models.gated_deltanet import DeltaNetSpec
    from jllm.models.model_args import WeightMap
    from jllm.safetensors_index import SafetensorsIndex

    spec = DeltaNetSpec(num_k_heads=4, num_v_heads=8, head_k_dim=2, head_v_dim=3, conv_kernel=4, fused_qkvz=False)
    stored = spec.conv_parts()  # q: 4 x 2 columns, k: 4 x 2, v: 4 x (2 x 3)
    weight = np.arange(spec.conv_dim * 5, dtype=np.float32).reshape(spec.conv_dim, 5)  # torch's [out, in]
    save_file({"model.layers.0.linear_attn.in_proj_qkv.weight": weight}, tmp_path / "model.safetensors")
    path = ("layers", 0, "linear_attn", "in_proj_qkv", "kernel")
    reads = []
    with ExitStack() as stack:
        index = SafetensorsIndex(tmp_path, stack, WeightMap())
        slice_reader = index.slice_reader

        def counted(*args):
            read = slice_reader(*args)
            return lambda where: reads.append(where) or read(where)

        index.slice_reader = counted
        read = index.param_reader(path, (5, 4, stored.width), np.float32, 1, stored)
        got = read((slice(None), slice(2, 4), slice(None)))  # the second of 2 devices: key heads 2 and 3
    q, k, v = np.split(weight.T, [8, 16], axis=1)
    expected = [
        np.concatenate([q[:, 2 * h : 2 * h + 2], k[:, 2 * h : 2 * h + 2], v[:, 6 * h : 6 * h + 6]], 1) for h in (2, 3)
    ]
    np.testing.assert_array_equal(got, np.stack(expected, axis=1))
    assert len(reads) == 3


@pytest.mark.parametrize(
    "name, change, refused",
    [
        (
            "qwen3_next",
            dict(linear_num_key_heads=2, linear_num_value_heads=4),
            r"gated DeltaNet key heads \(linear_num_key_heads\) of 2",
        ),
        ("bamba", dict(mamba_n_heads=2, mamba_d_head=64, mamba_n_groups=1), r"Mamba2 heads \(mamba_n_heads; .*\) of 2"),
    ],
)
def test_tp_size_the_recurrent_heads_do_not_divide_is_refused_naming_them(name, change, refused):
    """TP 4 fits the attention (4 heads, 2 KV heads replicated) but not 2 recurrent heads."""
    arch, overrides = MODELS[name]
    config = {**BASE, **overrides, **change, "architectures": [arch]}
    abstract_model(config, np.float32, tensor_parallel_size=2)
    with pytest.raises(ValueError, match=f"tensor_parallel_size=4 does not divide the model's {refused}"):
        abstract_model(config, np.float32, tensor_parallel_size=4)


def test_attention_free_model_splits_by_its_mixer_channels_not_its_placeholder_head():
    """Mamba has no attention: TP 2 splits its 66 channels though its one placeholder head would not split; TP 4
    is refused naming the channels, and no KV head is copied."""
    config = dict(
        architectures=["MambaForCausalLM"], vocab_size=49152, hidden_size=64, intermediate_size=66, num_hidden_layers=2
    )
    _, _, args, kv_replicas = abstract_model(config, np.float32, tensor_parallel_size=2)
    assert (args.num_kv_heads, kv_replicas) == (1, 1)
    with pytest.raises(ValueError, match=r"tensor_parallel_size=4 does not divide the model's Mamba channels .* of 66"):
        abstract_model(config, np.float32, tensor_parallel_size=4)


@pytest.fixture(scope="module")
def found(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("hybrid_tp")
    models = {}
    for name, (arch, overrides) in MODELS.items():
        out = save_tiny_checkpoint(arch, dict(BASE, **overrides), tmp / name)
        for file in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(default_model_dir / file, out / file)
        models[name] = [str(out), SIZES[name]]
    spec = {"models": models, "cache_dir": str(tmp / "jllm_cache")}
    results = run_tp_worker(spec, tmp, timeout=900, worker="hybrid_tp_worker.py")
    assert results["devices"] == 8
    return results["models"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_tp_2_and_4_give_tp1_logits_and_greedy_tokens(found, name):
    runs = found[name]
    for tp in map(str, SIZES[name]):
        assert runs[tp]["logits_relative_error"] < LOGITS_RTOL, f"{name} TP={tp}: {runs[tp]['logits_relative_error']}"
        assert runs[tp]["tokens"] == runs["1"]["tokens"], f"{name} TP={tp}"
    assert len({t for tokens in runs["1"]["tokens"] for t in tokens}) > 3, "degenerate greedy output proves little"


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_recurrent_parameters_and_state_pools_are_split_by_heads(found, name):
    for tp in SIZES[name]:
        run = found[name][str(tp)]
        split = {}  # the mixer's parameters by module: split over the devices or whole on each
        for path, p in run["params"].items():
            module = path.split("/mixer/")[1].split("/")[0]
            split[module] = p["split_axis"] is not None
            if split[module]:  # each device holds 1 / tp of the heads' (or channels') axis
                axis = p["split_axis"]
                assert {s[axis] for s in p["device_shapes"]} == {p["shape"][axis] // tp}, f"{name} {path}: {p}"
        assert split == SPLIT[name], f"{name} TP={tp}"
        pool = run["state_pool"]  # every array split on its heads' (or channels') axis but Mamba2's B/C conv state
        assert [x["split_axis"] for x in pool] == ([1, None, 1] if name == "bamba" else [1] * len(pool))
        for x in pool:
            heads = x["shape"][1]
            assert {s[1] for s in x["device_shapes"]} == {heads if x["split_axis"] is None else heads // tp}, x


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_forward_steps_only_all_reduce_the_row_parallel_outputs(found, name):
    """Megatron's pattern: the recurrent layers' parameters and states never move; their only collective is the
    reduce after out_proj (and, where Mamba2's norm groups span devices, its sum of squares): no all-gather,
    permute or all-to-all in any compiled forward program (the sampler's gather of the logits aside)."""
    for tp in SIZES[name]:
        run = found[name][str(tp)]
        assert run["forward_collectives"] and len(run["forward_collectives"]) < run["num_programs"]
        for program in run["forward_collectives"]:
            assert {op for op, _ in program} == {"all-reduce"}, f"TP={tp}: {program}"

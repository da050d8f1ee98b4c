"""The Mamba (v1) mixer against transformers' ``JambaMambaMixer`` (Mamba's mixer with RMSNorms on its time step's
input, B and C; biased projections), float32, random weights and inputs: a sequence whole, the same sequence as a
prefill chunk then decode steps through its state slot, and rows packed in one step (a row's second chunk beside a
new row, a one-token row and padding). Mamba's and FalconMamba's mixers (no norms, weightless ones) are checked
through their models' logits, whole and in chunks (tests/test_families.py), with Jamba's."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from model_utils import mixer_step, relative_error
from test_families import little_machine_code_optimization  # noqa: F401 (every test's fixture)

from jllm.models.families.mamba import jamba
from jllm.models.mamba import MambaMixer

# transformers' modeling imported: ~5 s of CPU before the first test; the mixers' programs compile once for a few
# steps: LLVM level 0 on their machine code (test_families' fixture)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("little_machine_code_optimization")]

HIDDEN = 32
# 64 channels (expand 2), a state of 8, kernel 4, a time step of rank 4
JAMBA = dict(
    hidden_size=HIDDEN,
    mamba_d_state=8,
    mamba_d_conv=4,
    mamba_expand=2,
    mamba_dt_rank=4,
    mamba_proj_bias=True,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
)
MIXER_RTOL = 1e-5  # measured: at most 3.9e-7 (float32, CPU)


@pytest.fixture(scope="module")
def mixers() -> tuple[object, MambaMixer]:
    """transformers' mixer with every parameter random, and ours (from the family reader's ``ModelArgs``) holding
    the same values."""
    import torch
    from transformers import JambaConfig
    from transformers.models.jamba.modeling_jamba import JambaMambaMixer

    config = JambaConfig(vocab_size=16, num_hidden_layers=1, **JAMBA)
    torch.manual_seed(0)
    ref = JambaMambaMixer(config, layer_idx=0).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(0.5 * torch.randn_like(p))
        ref.A_log.copy_(torch.log(torch.rand_like(ref.A_log) * 4 + 0.1))  # decays of every strength, none above 1
    args = jamba({"vocab_size": 16, "num_hidden_layers": 1, **config.to_dict()}, jnp.float32)
    ours = MambaMixer(args, args.layers[0])
    tensors = {k: jnp.asarray(v.numpy()) for k, v in ref.state_dict().items()}
    columns = ours.in_proj.kernel.get_metadata()["stored"].indices()  # x, z per channel
    ours.in_proj.kernel[...] = tensors["in_proj.weight"].T[:, columns]
    ours.in_proj.bias[...] = tensors["in_proj.bias"][columns]
    for name in ("x_proj", "dt_proj", "out_proj"):
        getattr(ours, name).kernel[...] = tensors[f"{name}.weight"].T
        if getattr(ours, name).bias is not None:
            getattr(ours, name).bias[...] = tensors[f"{name}.bias"]
    ours.conv1d.weight[...] = tensors["conv1d.weight"]
    ours.conv1d.bias[...] = tensors["conv1d.bias"]
    ours.A_log[...], ours.D[...] = tensors["A_log"], tensors["D"]
    for name in ("dt_layernorm", "b_layernorm", "c_layernorm"):
        getattr(ours, name).weight[...] = tensors[f"{name}.weight"]
    return ref, ours


def reference(ref: object, x: np.ndarray) -> np.ndarray:
    """transformers' output ``[T, hidden]`` for one whole sequence (no cache: the token-by-token reference scan)."""
    import torch

    with torch.no_grad():
        return ref(torch.from_numpy(x)[None]).numpy()[0]


def empty_pool(mixer: MambaMixer, slots: int = 4) -> tuple:
    return mixer.mamba.state_spec(jnp.float32).zeros(slots)


def test_mixer_over_a_whole_sequence_matches_transformers(mixers):
    ref, ours = mixers
    x = np.random.default_rng(1).standard_normal((21, HIDDEN)).astype(np.float32)
    (got,), _ = mixer_step(ours, empty_pool(ours), [(x, 0, 2)], num_tokens=24, num_rows=2)
    assert relative_error(got, reference(ref, x)) < MIXER_RTOL


def test_mixer_continues_a_prefill_chunk_through_decode_steps_from_its_slot(mixers):
    """13 tokens, then 8 decodes, each step reading the row's conv and SSM state from slot 3: the outputs are the
    whole sequence's."""
    ref, ours = mixers
    x = np.random.default_rng(2).standard_normal((21, HIDDEN)).astype(np.float32)
    (first,), pool = mixer_step(ours, empty_pool(ours), [(x[:13], 0, 3)], num_tokens=16, num_rows=1)
    outs = [first]
    for i in range(13, 21):
        (y,), pool = mixer_step(ours, pool, [(x[i : i + 1], i, 3)], num_tokens=2, num_rows=2)
        outs.append(y)
    assert relative_error(np.concatenate(outs), reference(ref, x)) < MIXER_RTOL


def test_mixer_steps_packed_rows_each_from_its_own_state(mixers):
    """A step packing a row's second chunk (its state from slot 1) beside a new row (slot 2, the state an earlier
    row left there ignored), a one-token row and a padding row: each row's outputs are its own sequence's."""
    ref, ours = mixers
    rng = np.random.default_rng(3)
    a, b, c = (rng.standard_normal((n, HIDDEN)).astype(np.float32) for n in (11, 6, 1))
    pool = empty_pool(ours)
    (a_first, _), pool = mixer_step(ours, pool, [(a[:7], 0, 1), (b[:2], 0, 2)], num_tokens=9, num_rows=2)
    (a_rest, b_all, c_all), _ = mixer_step(ours, pool, [(a[7:], 7, 1), (b, 0, 2), (c, 0, 3)], num_tokens=12, num_rows=4)
    assert relative_error(np.concatenate([a_first, a_rest]), reference(ref, a)) < MIXER_RTOL
    assert relative_error(b_all, reference(ref, b)) < MIXER_RTOL
    assert relative_error(c_all, reference(ref, c)) < MIXER_RTOL


def test_attention_free_engine_sizes_pages_that_store_nothing_for_every_sequence(default_model_dir, tmp_path):
    """An engine (and the server's memory plan) for Mamba on the CPU's default budget: its pool is the state pools
    alone, its pages enough for max_num_seqs sequences of max_model_len, once the state pools fit."""
    import shutil

    from model_utils import save_tiny_checkpoint

    from jllm import LLM
    from jllm.config import EngineConfig
    from jllm.kv_cache import attention_free_pages
    from jllm.memory_plan import plan_model

    config = dict(vocab_size=49152, hidden_size=32, num_hidden_layers=2, state_size=8, bos_token_id=1, eos_token_id=2)
    model_dir = save_tiny_checkpoint("MambaForCausalLM", config, tmp_path / "mamba")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / name, model_dir / name)
    settings = dict(dtype="float32", max_model_len=100, max_num_seqs=3, compile_at_start=False)
    llm = LLM(str(model_dir), **settings)
    pages = attention_free_pages(0, max_num_seqs=3, max_model_len=100, page_size=16)
    assert llm.engine.scheduler.block_manager.num_pages == pages == 1 + 3 * 7
    assert all(isinstance(layer, tuple) for layer in llm.engine.runner.kv_caches)  # state pools, no page arrays
    plan = plan_model(EngineConfig().replace(model=str(model_dir), **settings), 1 << 34, "mamba")
    assert plan.num_pages == pages
    assert plan.pool_bytes == 2 * 4 * (64 * 3 + 64 * 8) * 4  # 2 layers x 4 slots x (conv window + SSM state) x float32
    with pytest.raises(ValueError, match="recurrent state pools of max_num_seqs=3 sequences need .* bytes more"):
        plan_model(EngineConfig().replace(model=str(model_dir), kv_cache_memory_bytes=1000, **settings), 1 << 34, "m")

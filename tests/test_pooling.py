"""Hidden states, embeddings and scores from the offline API against transformers' float32 PyTorch forward.

A tiny random Llama (2 layers, GQA 4/2, wide initializer) on fresh random prompts, ragged on purpose: one prompt is
longer than the step's token budget and several share a bucket. The packing maths and the layer indexing are
checked on their own without a model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_utils import random_llama, relative_error, run_tp_worker

from jllm.buckets import StepBucket
from jllm.errors import ContextLengthError, InputError
from jllm.llm import LLM
from jllm.pooling import encode_batch, resolve_layers, scratch_pages
from jllm.sampling import SamplingParams
from pallas_kernels import PADDING_SLOT

ENGINE_ARGS = dict(dtype="float32", max_model_len=64, max_num_batched_tokens=16, max_num_seqs=4, num_pages=40)
LENGTHS = [7, 1, 23, 40, 5]  # 40 > the token budget of 16: the pass is not chunked
# float32 both sides; only the order of sums differs (measured: relative error <= 1.3e-6 per layer, the final normed
# states the largest; max abs error 4.6e-5 on values up to 50)
STATE_RTOL = 1e-5


@pytest.fixture(scope="module")
def model_dir(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_llama(tmp_path_factory.mktemp("pooling"), default_model_dir, 4, 2)


@pytest.fixture(scope="module")
def llm(model_dir: Path) -> LLM:
    return LLM(str(model_dir), **ENGINE_ARGS)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rng = np.random.default_rng()
    return [rng.integers(3, 49152, n).tolist() for n in LENGTHS]


def hf_hidden_states(model_dir: Path, prompts: list[list[int]]) -> list[np.ndarray]:
    """transformers' ``output_hidden_states`` per prompt, stacked ``[num_layers + 1, T, hidden]``."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return [
            torch.stack(model(torch.tensor([p]), output_hidden_states=True).hidden_states)[:, 0].numpy()
            for p in prompts
        ]


@pytest.fixture(scope="module")
def reference(model_dir: Path, prompts: list[list[int]]) -> list[np.ndarray]:
    return hf_hidden_states(model_dir, prompts)


def test_layer_indices_follow_output_hidden_states_and_bad_ones_name_layers() -> None:
    assert resolve_layers([0, 1, 2, -1, -3], num_layers=2) == (0, 1, 2, 2, 0)
    for bad in ([3], [-4], [1.0], [True], [], 1):
        with pytest.raises(InputError, match="layers") as e:
            resolve_layers(bad, num_layers=2)
        assert e.value.param == "layers"
    assert resolve_layers((0, -1), num_layers=2) == resolve_layers(np.array([0, -1]), num_layers=2) == (0, 2)
    for bad in (object(), "0", None):  # vLLM's encode takes pooling_params there: it had failed inside iteration
        with pytest.raises(InputError, match=r"^layers must be a non-empty list of layer indices \(LLM.encode's"):
            resolve_layers(bad, num_layers=2)  # type: ignore[arg-type]


def test_prompts_get_contiguous_pages_and_padding_writes_nowhere() -> None:
    bucket, page_size = StepBucket(32, 4, 4), 8
    batch = encode_batch([[5] * 9, [6] * 3, [7] * 8], bucket, page_size)
    assert batch.input_ids[:20].tolist() == [5] * 9 + [6] * 3 + [7] * 8 and not batch.input_ids[20:].any()
    assert batch.positions[:20].tolist() == list(range(9)) + list(range(3)) + list(range(8))
    assert batch.attn.query_start_loc.tolist() == [0, 9, 12, 20, 20]
    assert batch.attn.kv_lens.tolist() == [9, 3, 8, 0]
    assert batch.attn.block_tables.tolist() == [[1, 2, 0, 0], [3, 0, 0, 0], [4, 0, 0, 0], [0, 0, 0, 0]]
    slots = batch.attn.slot_mapping
    assert slots[:9].tolist() == list(range(8, 17)) and slots[9:12].tolist() == [24, 25, 26]
    assert slots[12:20].tolist() == list(range(32, 40)) and (slots[20:] == PADDING_SLOT).all()
    assert batch.attn.block_tables.max() < scratch_pages(bucket, page_size)


@pytest.mark.slow
def test_encode_equals_transformers_output_hidden_states(llm, prompts, reference) -> None:
    layers = [0, 1, 2, -1, -2]
    outputs = llm.encode(prompts, layers=layers, use_tqdm=False)
    for prompt, out, ref in zip(prompts, outputs, reference, strict=True):
        assert out.prompt_token_ids == prompt and out.layers == layers
        assert out.outputs.data.shape == (len(layers), len(prompt), 64) and out.outputs.data.dtype == np.float32
        for layer, states in out.hidden_states.items():
            assert relative_error(states, ref[layer]) < STATE_RTOL, (len(prompt), layer)
            np.testing.assert_allclose(states, ref[layer], rtol=1e-4, atol=1e-4 * np.abs(ref[layer]).max())


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_embed_pools_the_final_normed_states_to_unit_vectors(llm, prompts, reference, pooling) -> None:
    for normalize in (True, False):
        outputs = llm.embed(prompts, pooling=pooling, normalize=normalize, use_tqdm=False)
        for out, ref in zip(outputs, reference, strict=True):
            final = ref[-1].astype(np.float64)
            expected = final[-1] if pooling == "last" else final.mean(axis=0)
            expected = expected / np.linalg.norm(expected) if normalize else expected
            got = np.asarray(out.outputs.embedding)
            assert out.outputs.hidden_size == 64
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
            if normalize:
                assert abs(np.linalg.norm(got) - 1.0) < 1e-6


@pytest.mark.slow
def test_score_equals_the_sum_of_generates_greedy_logprobs(llm, prompts) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=0, ignore_eos=True)
    generated = llm.generate(prompts[:3], params, use_tqdm=False)
    continuations = [out.outputs[0].token_ids for out in generated]
    scores = llm.score(prompts[:3], continuations, use_tqdm=False)
    for out, score in zip(generated, scores, strict=True):
        completion = out.outputs[0]
        expected = [entry[t].logprob for t, entry in zip(completion.token_ids, completion.logprobs, strict=True)]
        assert score.continuation_token_ids == completion.token_ids and score.is_greedy
        # both float32 log-softmax of the same logits, one from a decode step and one from a prefill row
        np.testing.assert_allclose(score.token_logprobs, expected, atol=1e-4)
        assert score.logprob == pytest.approx(sum(expected), abs=1e-4)


@pytest.mark.slow
def test_score_of_a_text_continuation_and_a_non_greedy_one(llm, model_dir) -> None:
    import torch
    import transformers

    tokenizer = llm.get_tokenizer()
    [score] = llm.score("The capital of France is", " Paris, of course")
    prompt = tokenizer.encode("The capital of France is")
    assert score.prompt_token_ids == prompt
    assert score.continuation_token_ids == tokenizer.encode(" Paris, of course", add_special_tokens=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + score.continuation_token_ids])).logits[0]
    logprobs = torch.log_softmax(logits, -1)[len(prompt) - 1 : -1]
    expected = logprobs.gather(1, torch.tensor(score.continuation_token_ids)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(score.token_logprobs, expected, atol=1e-4)
    assert score.is_greedy == bool((logprobs.argmax(-1).numpy() == score.continuation_token_ids).all())


@pytest.mark.slow
def test_encode_leaves_the_step_programs_and_pool_alone(llm, prompts) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    before = [o.outputs[0].token_ids for o in llm.generate(prompts[:2], params, use_tqdm=False)]
    compiled = llm.engine.runner.num_compilations
    llm.encode(prompts, layers=[1], use_tqdm=False)
    after = [o.outputs[0].token_ids for o in llm.generate(prompts[:2], params, use_tqdm=False)]
    assert after == before and llm.engine.runner.num_compilations == compiled


@pytest.mark.slow
def test_bad_inputs_are_named_before_anything_runs(llm) -> None:
    with pytest.raises(InputError, match=r"^prompts\[1\] is empty"):
        llm.encode(["fine", ""])
    with pytest.raises(ContextLengthError, match=r"^prompts\[0\]: This model's maximum context length is 64"):
        llm.embed([[5] * 65])
    with pytest.raises(InputError, match="layers: 3 is not a hidden-state index"):
        llm.encode("fine", layers=[3])
    with pytest.raises(InputError, match="pooling='max' is unknown"):
        llm.embed("fine", pooling="max")
    with pytest.raises(InputError, match=r"^continuations\[0\] is empty"):
        llm.score("fine", [""])
    with pytest.raises(InputError, match=r"^continuations\[0\] must be a string, a list of token ids"):
        llm.score("fine", [None])
    with pytest.raises(InputError, match=r"^continuations\[0\]: token id 1000000 is outside the vocabulary"):
        llm.score("fine", [[5, 10**6]])
    with pytest.raises(ValueError, match="got 2 continuations for 1 prompts"):
        llm.score("fine", ["a", "b"])
    with pytest.raises(InputError, match="truncate_prompt_tokens must be at least 1, or -1"):
        llm.embed("fine", truncate_prompt_tokens=0)


@pytest.mark.slow
def test_truncate_prompt_tokens_keeps_each_prompts_last_tokens(llm, prompts) -> None:
    [kept] = llm.encode(prompts[3], layers=[0], use_tqdm=False, truncate_prompt_tokens=5)
    [alone] = llm.encode(prompts[3][-5:], layers=[0], use_tqdm=False)
    assert kept.prompt_token_ids == prompts[3][-5:]
    np.testing.assert_array_equal(kept.outputs.data, alone.outputs.data)
    [whole] = llm.embed(prompts[3], use_tqdm=False, truncate_prompt_tokens=-1)  # -1: up to the context length
    assert whole.prompt_token_ids == prompts[3]


@pytest.mark.slow
def test_encode_at_tensor_parallel_2_equals_transformers(model_dir, prompts, reference, tmp_path) -> None:
    """Three prompts in one bucket, on a small engine: one subprocess compiles as little as it can."""
    layers = [0, 1, -1]
    engine_args = {**ENGINE_ARGS, "max_num_batched_tokens": 8, "max_num_seqs": 2}
    spec = {"model": str(model_dir), "engine_args": engine_args, "prompts": prompts[:3], "layers": layers}
    found = run_tp_worker(spec, tmp_path, timeout=600, worker="pooling_tp_worker.py")
    assert found == {"pool_devices": 2, "mesh": 2}
    saved = np.load(tmp_path / "states.npz")
    for i, ref in enumerate(reference[:3]):
        for row, layer in enumerate(layers):
            assert relative_error(saved[f"arr_{i}"][row], ref[layer]) < STATE_RTOL, (i, layer)


@pytest.mark.slow
def test_the_pallas_kernel_reads_the_scratch_pool_as_the_reference_does(model_dir, prompts, reference) -> None:
    """The GPU kernel's path (interpreted on the CPU) over the encoder's page layout: a bucket of several prompts,
    one longer than the step budget."""
    pallas = LLM(str(model_dir), attention_backend="pallas", **ENGINE_ARGS)
    outputs = pallas.encode(prompts, layers=[1, -1], use_tqdm=False)
    for out, ref in zip(outputs, reference, strict=True):
        assert relative_error(out.outputs.data[0], ref[1]) < STATE_RTOL
        assert relative_error(out.outputs.data[1], ref[-1]) < STATE_RTOL

"""Sequence classifiers and pair scores from the offline API against transformers' float32 PyTorch forward.

Tiny random ``*ForSequenceClassification`` checkpoints (tests/model_utils.py's shape) with a character tokenizer,
prompts of different lengths classified in one batch, each checked against transformers' run of that prompt alone.
The head's activation rules and the pair shapes are checked on their own without a model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from model_utils import TINY_CONFIG, run_tp_worker, save_char_tokenizer, save_tiny_checkpoint

from jllm.classify import ClassifierHead
from jllm.errors import InputError
from jllm.scoring import cosine_scores, pair_lists

# compile_at_start off: each test compiles only the pooling buckets it runs (the start's warm-up of all seven has a
# test of its own)
ENGINE_ARGS = dict(
    dtype="float32", max_model_len=64, max_num_batched_tokens=16, max_num_seqs=4, num_pages=40, compile_at_start=False
)
LENGTHS = [7, 1, 23, 30]  # one batch of the encoder: one program per family
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
# float32 both sides, only the order of sums differs (measured: relative error <= 3.4e-7 over the families below,
# 2.9e-7 at tensor parallel 2)
LOGITS_RTOL = 1e-5
FAMILIES = {
    "Llama": {},
    "Mistral": {"sliding_window": None},
    "Qwen2": {},
    "Qwen3": {"head_dim": 32},
    "Gemma2": {"head_dim": 16, "query_pre_attn_scalar": 16, "final_logit_softcapping": 30.0},
    "Phi3": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
}


def classifier_checkpoint(root: Path, family: str, num_labels: int = 3, **overrides: object) -> Path:
    config = {**TINY_CONFIG, **FAMILIES[family], "num_labels": num_labels, **overrides}
    if num_labels == 3:
        config["id2label"] = LABELS
    out = save_tiny_checkpoint(
        f"{family}ForSequenceClassification", config, root / f"{family}_{num_labels}", config_cls_name=f"{family}Config"
    )
    save_char_tokenizer(out, TINY_CONFIG["vocab_size"])
    return out


def hf_logits(model_dir: Path, prompts: list[list[int]]) -> np.ndarray:
    """transformers' pooled logits ``[len(prompts), num_labels]``, each prompt run alone (no padding)."""
    import torch
    from model_utils import hf_model

    model = hf_model(model_dir)
    with torch.no_grad():
        return np.concatenate([model(torch.tensor([p])).logits.numpy() for p in prompts])


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def head(num_labels: int, **config: object) -> ClassifierHead:
    return ClassifierHead.from_config(config, np.eye(4, num_labels, dtype=np.float32))


def test_the_activation_follows_vllms_rules_from_config_json() -> None:
    logits = np.array([[1.0, 2.0, 0.5]])
    softmax = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(head(3).activate(logits), softmax)
    np.testing.assert_allclose(head(1).activate(logits[:, :1]), 1 / (1 + np.exp(-logits[:, :1])))
    assert head(3, problem_type="regression").activation == "identity"
    assert head(3, problem_type="multi_label_classification").activation == "sigmoid"
    assert head(1, problem_type="single_label_classification").activation == "sigmoid"
    identity = {"activation_fn": "torch.nn.modules.linear.Identity"}
    assert head(1, sentence_transformers=identity).activation == "identity"
    assert head(1, sbert_ce_default_activation_function="torch.nn.modules.activation.Sigmoid").activation == "sigmoid"
    np.testing.assert_array_equal(head(3).activate(logits, use_activation=False), logits)
    with pytest.raises(ValueError, match="'torch.nn.modules.activation.Tanh' is not supported"):
        head(1, sentence_transformers={"activation_fn": "torch.nn.modules.activation.Tanh"})


def test_labels_come_from_id2label_and_pairs_from_use_sep_token() -> None:
    named = head(3, id2label={"0": "a", "1": "b", "2": "c"})
    assert named.labels == ("a", "b", "c") and named.label(np.array([0.1, 0.7, 0.2])) == "b"
    assert head(2).labels == (None, None) and head(1).separate_pair
    assert not head(1, use_sep_token=False).separate_pair and not head(1, use_pad_token=False).separate_pair


def test_pairs_are_one_to_one_one_to_many_or_many_to_many() -> None:
    assert pair_lists("q", ["a", "b"]) == (["q"], ["a", "b"])
    assert pair_lists(["q", "r"], ["a", "b"]) == (["q", "r"], ["a", "b"])
    assert pair_lists("q", "a") == (["q"], ["a"])
    for first, second, param, message in [
        (["q", "r"], ["a", "b", "c"], "text_1", "text_1 has 2 texts and text_2 3"),
        ([], ["a"], "text_1", "text_1 is empty"),
        ("q", [], "text_2", "text_2 is empty"),
        ("q", ["a", 5], "text_2", r"text_2\[1\] must be a text, got int"),
        (1, "a", "text_1", "text_1 must be a text or a list of texts, got int"),
        ("q", None, "text_2", "text_2 must be a text or a list of texts, got NoneType"),
    ]:
        with pytest.raises(InputError, match=message) as e:
            pair_lists(first, second)
        assert e.value.param == param


def test_cosine_scores_pair_one_vector_with_many() -> None:
    q = np.array([1.0, 0.0])
    docs = [np.array([2.0, 0.0]), np.array([0.0, 3.0]), np.array([-1.0, 1.0])]
    np.testing.assert_allclose(cosine_scores([q], docs), [1.0, 0.0, -np.sqrt(0.5)])
    np.testing.assert_allclose(cosine_scores(docs[:2], docs[1:]), [0.0, np.sqrt(0.5)], atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_classify_equals_transformers_sequence_classification(family: str, tmp_path: Path) -> None:
    from jllm.llm import LLM

    model_dir = classifier_checkpoint(tmp_path, family)
    rng = np.random.default_rng()
    prompts = [rng.integers(3, TINY_CONFIG["vocab_size"], n).tolist() for n in LENGTHS]
    llm = LLM(str(model_dir), **ENGINE_ARGS)
    reference = hf_logits(model_dir, prompts)
    raw = np.array([o.outputs.probs for o in llm.classify(prompts, use_activation=False, use_tqdm=False)])
    assert relative_error(raw, reference) < LOGITS_RTOL, relative_error(raw, reference)
    outputs = llm.classify(prompts, use_tqdm=False)
    probs = np.array([o.outputs.probs for o in outputs])
    expected = np.exp(reference) / np.exp(reference).sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert [o.prompt_token_ids for o in outputs] == prompts and outputs[0].outputs.num_classes == 3
    assert llm.engine.classifier.labels == tuple(LABELS.values())


@pytest.mark.slow
def test_a_classifiers_start_compiles_every_pooling_program_so_its_requests_compile_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its only programs are the encoder's buckets (1..64 tokens); the step programs are never compiled."""
    from jllm.llm import LLM

    with caplog.at_level(logging.INFO, logger="jllm.build"):
        llm = LLM(str(classifier_checkpoint(tmp_path, "Llama")), **{**ENGINE_ARGS, "compile_at_start": True})
    (report,) = [r.warmup for r in caplog.records if getattr(r, "startup_phase", None) == "warm-up"]
    encoder = llm.engine.encoder
    assert set(report.kinds) == {"pooling"} and report.programs == len(encoder.buckets) == 7
    assert encoder.num_compilations == 7 and llm.engine.runner.num_compilations == 0
    rng = np.random.default_rng()
    for lengths in (LENGTHS, [2], [1, 1, 1, 1]):  # buckets of 64, 2 and 4 tokens
        llm.classify([rng.integers(3, TINY_CONFIG["vocab_size"], n).tolist() for n in lengths], use_tqdm=False)
    assert encoder.num_compilations == 7


@pytest.mark.slow
def test_classify_at_tensor_parallel_2_equals_transformers(tmp_path: Path) -> None:
    """The head replicated, the decoder split: one subprocess on fake CPU devices."""
    model_dir = classifier_checkpoint(tmp_path, "Qwen3")
    rng = np.random.default_rng()
    prompts = [rng.integers(3, TINY_CONFIG["vocab_size"], n).tolist() for n in LENGTHS]
    spec = {"model": str(model_dir), "engine_args": ENGINE_ARGS, "prompts": prompts, "classify": True}
    assert run_tp_worker(spec, tmp_path, timeout=600, worker="pooling_tp_worker.py") == {"pool_devices": 2, "mesh": 2}
    logits = np.load(tmp_path / "states.npz")["arr_0"]
    error = relative_error(logits, hf_logits(model_dir, prompts))
    assert error < LOGITS_RTOL, error


@pytest.mark.slow
def test_a_classifier_refuses_to_generate_or_embed_and_a_causal_lm_to_classify(
    tmp_path: Path, tiny_model: Path
) -> None:
    from jllm.llm import LLM

    llm = LLM(str(classifier_checkpoint(tmp_path, "Llama")), **ENGINE_ARGS)
    for generate in (lambda: llm.generate("hi"), lambda: llm.chat([{"role": "user", "content": "hi"}])):
        with pytest.raises(InputError, match=r"is a sequence classifier \(LlamaForSequenceClassification, 3 labels\)"):
            generate()
    with pytest.raises(InputError, match=r"3 labels\) and cannot embed text; use LLM.classify$") as e:
        llm.embed("hi")
    assert e.value.param == "model"
    with pytest.raises(InputError, match="of 3 labels; scoring pairs needs a cross-encoder"):
        llm.score_pairs("q", "d")
    causal = LLM(str(tiny_model), **ENGINE_ARGS)
    with pytest.raises(InputError, match="is not a sequence classifier") as e:
        causal.classify("hi")
    assert e.value.param == "model"


def pair_tokenizer(model_dir: Path) -> None:
    """The character tokenizer with BERT-like templates: ``<s> A </s>`` and ``<s> A </s> B </s>``."""
    from tokenizers import Tokenizer, processors

    path = model_dir / "tokenizer.json"
    backend = Tokenizer.from_file(str(path))
    specials = [("<s>", 1), ("</s>", 2)]
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A:0 </s> $B:1 </s>:1", special_tokens=specials
    )
    backend.save(str(path))


@pytest.mark.slow
def test_a_cross_encoder_scores_the_tokenizers_pair_encoding(tmp_path: Path) -> None:
    import transformers

    from jllm.llm import LLM

    model_dir = classifier_checkpoint(tmp_path, "Qwen3", num_labels=1)
    pair_tokenizer(model_dir)
    llm = LLM(str(model_dir), **ENGINE_ARGS)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    query, docs = "what is a cat?", ["a small feline", "the tax code", "cats purr"]
    pairs = [hf_tokenizer(query, doc)["input_ids"] for doc in docs]
    assert pairs[0][:2] == [1, hf_tokenizer.convert_tokens_to_ids("w")] and pairs[0][-1] == 2  # templated
    outputs = llm.score_pairs(query, docs, use_tqdm=False)
    assert [o.prompt_token_ids for o in outputs] == pairs
    logits = hf_logits(model_dir, pairs)[:, 0]
    np.testing.assert_allclose([o.outputs.score for o in outputs], 1 / (1 + np.exp(-logits)), rtol=1e-5)
    raw = llm.score_pairs([query] * 3, docs, use_activation=False, use_tqdm=False)
    assert relative_error(np.array([o.outputs.score for o in raw]), logits) < LOGITS_RTOL
    [truncated] = llm.score_pairs(query, docs[0], truncate_prompt_tokens=5, use_tqdm=False)
    assert truncated.prompt_token_ids == pairs[0][-5:]


@pytest.mark.slow
def test_a_causal_lm_scores_pairs_by_the_cosine_of_their_embeddings(tiny_model: Path) -> None:
    from jllm.llm import LLM

    llm = LLM(str(tiny_model), **ENGINE_ARGS)
    docs = ["a small feline", "the tax code"]
    outputs = llm.score_pairs("cat", docs, use_tqdm=False)
    vectors = [np.asarray(o.outputs.embedding) for o in llm.embed(["cat", *docs], use_tqdm=False)]
    for out, doc, vector in zip(outputs, docs, vectors[1:], strict=True):
        assert out.outputs.score == pytest.approx(float(vectors[0] @ vector), abs=1e-6)
        assert (
            out.prompt_token_ids == llm.engine.inputs.encode("cat").token_ids + llm.engine.inputs.encode(doc).token_ids
        )

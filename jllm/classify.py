"""A sequence classifier's head (transformers' ``*ForSequenceClassification``): its ``score`` weights, labels and
activation, applied on the host to the final normed state of each prompt's last token.

The engine runs a classifier as any decoder (its ``score`` linear loaded beside the layers, no LM head), and
``jllm.pooling.Encoder`` gives the last token's state; the head's ``[hidden, num_labels]`` weights are copied to the
host once, so no step program and no encoder program changes. vLLM pools the last token; transformers the rightmost
token that is not ``pad_token_id`` (the same unless a prompt ends with its pad token). The activation is vLLM's choice
from config.json (``get_act_fn``): ``problem_type``, then sentence-transformers' ``activation_fn``, else softmax over
two or more labels and a sigmoid over one. A classifier neither generates nor embeds (vLLM serves neither for it):
``cannot`` is the error those doors raise.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from jllm.errors import InputError

if TYPE_CHECKING:
    from jllm.loader import LoadedModel
    from jllm.pooling import Encoder

Activation = Literal["softmax", "sigmoid", "identity"]
# sentence-transformers' ``activation_fn`` names vLLM accepts, and what each computes
NAMED_ACTIVATIONS: dict[str, Activation | None] = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Sigmoid": None,  # vLLM's classify rule: by the number of labels
    "torch.nn.modules.activation.Softmax": None,
}


@dataclass(frozen=True)
class ClassifierHead:
    weight: np.ndarray  # [hidden, num_labels] float32, the checkpoint's ``score.weight`` transposed
    labels: tuple[str | None, ...]  # config.json's ``id2label`` by index (None where it names none)
    activation: Activation
    separate_pair: bool  # a text pair encoded as a pair (config's ``use_sep_token``, vLLM's default) or concatenated
    architecture: str

    @property
    def num_labels(self) -> int:
        return self.weight.shape[1]

    @classmethod
    def of(cls, loaded: LoadedModel) -> ClassifierHead | None:
        """The head of a classifier loaded by ``jllm.loader`` (None for a causal LM)."""
        score = getattr(loaded.model, "score", None)
        if score is None:
            return None
        weight = np.asarray(score.kernel[...].addressable_data(0), np.float32)  # replicated: any copy is whole
        return cls.from_config(loaded.hf_config, weight)

    @classmethod
    def from_config(cls, hf_config: dict[str, Any], weight: np.ndarray) -> ClassifierHead:
        id2label = hf_config.get("id2label") or {}
        labels = tuple(id2label.get(str(i), id2label.get(i)) for i in range(weight.shape[1]))
        separate = hf_config.get("use_pad_token", hf_config.get("use_sep_token", True))  # vLLM's older name first
        architecture = (hf_config.get("architectures") or ["?"])[0]
        return cls(weight, labels, _activation(hf_config, weight.shape[1]), bool(separate), architecture)

    def logits(
        self, encoder: Encoder, prompts: Seq[Seq[int]], progress: Callable[..., Any] | None = None
    ) -> np.ndarray:
        """``[len(prompts), num_labels]`` float32: each prompt's last final-normed state through the head
        (``progress``: ``Encoder.hidden_states``')."""
        states = encoder.embed(prompts, "last", normalize=False, progress=progress)
        return np.stack(states).astype(np.float32) @ self.weight

    def activate(self, logits: np.ndarray, use_activation: bool = True) -> np.ndarray:
        """The head's activation over the last axis (the logits as they are without ``use_activation``)."""
        if not use_activation or self.activation == "identity":
            return logits
        if self.activation == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    def label(self, probs: np.ndarray) -> str | None:
        """The most likely label's name, as vLLM's ``/classify`` names it."""
        return self.labels[int(np.argmax(probs))]

    def cannot(self, what: str, model: str, offline: bool) -> InputError:
        """What a generation or embedding door raises for this model (``what``: "generate text", "embed text"),
        naming what it can do instead."""
        if offline:
            can = "LLM.classify" + (" and LLM.score_pairs" if self.num_labels == 1 else "")
        else:
            can = "POST /classify" + (", /score and /rerank" if self.num_labels == 1 else "")
        labels = f"{self.num_labels} label" + ("s" if self.num_labels != 1 else "")
        return InputError(
            f"model `{model}` is a sequence classifier ({self.architecture}, {labels}) and cannot {what}; use {can}",
            param="model",
        )


def require_classifier(head: ClassifierHead | None, model: str) -> ClassifierHead:
    """The head of a model asked to classify; a causal LM is an InputError naming ``model``."""
    if head is None:
        raise InputError(
            f"model `{model}` is not a sequence classifier (its config.json's architectures name no "
            "*ForSequenceClassification): it cannot classify",
            param="model",
        )
    return head


def _activation(hf_config: dict[str, Any], num_labels: int) -> Activation:
    """vLLM's ``get_act_fn`` over config.json (transformers' ``ForSequenceClassificationLoss`` problem types)."""
    by_labels: Activation = "softmax" if num_labels >= 2 else "sigmoid"
    problem = hf_config.get("problem_type")
    if problem == "regression":
        return "identity"
    if problem == "multi_label_classification":
        return "sigmoid"
    if problem == "single_label_classification":
        return by_labels
    named = (hf_config.get("sentence_transformers") or {}).get("activation_fn") or hf_config.get(
        "sbert_ce_default_activation_function"
    )
    if named is None:
        return by_labels
    if named not in NAMED_ACTIVATIONS:
        raise ValueError(
            f"config.json's activation function {named!r} is not supported; supported: {', '.join(NAMED_ACTIVATIONS)}"
        )
    return NAMED_ACTIVATIONS[named] or by_labels

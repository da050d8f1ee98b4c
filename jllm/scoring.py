"""Scores of text pairs, as vLLM's score and rerank APIs compute them (``LLM.score_pairs``, ``/score``, ``/rerank``).

A cross-encoder (a sequence classifier of one label, ``jllm.classify``) reads each pair as one prompt, encoded as its
tokenizer encodes a text pair (``tokenizer(text_1, text_2)``, or the two texts joined where config.json's
``use_sep_token`` is false, as vLLM does); the score is its logit through the head's activation (a sigmoid by
default). Any other model is a bi-encoder: the score is the cosine similarity of the two texts' embeddings (the
model's ``pooling``), each text embedded once. Pairs are vLLM's: one to one, one to many, or many to many.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import numpy as np

from jllm.classify import ClassifierHead
from jllm.errors import InputError
from jllm.inputs import InputProcessor, Prompt


def pair_lists(
    first: str | Seq[str], second: str | Seq[str], names: tuple[str, str] = ("text_1", "text_2")
) -> tuple[list[str], list[str]]:
    """Both sides as lists of texts, the first one long or as long as the second (vLLM's 1:1, 1:N and N:N); any
    other shape an InputError naming the side at fault."""
    for name, value in zip(names, (first, second), strict=True):
        if not isinstance(value, str | list | tuple):
            raise InputError(f"{name} must be a text or a list of texts, got {type(value).__name__}", param=name)
    lists = [[value] if isinstance(value, str) else list(value) for value in (first, second)]
    for name, texts in zip(names, lists, strict=True):
        if not texts:
            raise InputError(f"{name} is empty: give a text or a list of texts", param=name)
        bad = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
        if bad is not None:
            raise InputError(f"{name}[{bad}] must be a text, got {type(texts[bad]).__name__}", param=name)
    if len(lists[0]) not in (1, len(lists[1])):
        raise InputError(
            f"{names[0]} has {len(lists[0])} texts and {names[1]} {len(lists[1])}: give one {names[0]} for any number "
            f"of {names[1]}, or as many of each (1:1, 1:N or N:N)",
            param=names[0],
        )
    return lists[0], lists[1]


def cross_encoder(head: ClassifierHead | None, model: str) -> ClassifierHead:
    """The head that scores pairs; a classifier of several labels is an InputError naming ``model``."""
    if head is not None and head.num_labels != 1:
        raise InputError(
            f"model `{model}` is a sequence classifier of {head.num_labels} labels; scoring pairs needs a "
            "cross-encoder (one label) or an embedding model: classify with it instead",
            param="model",
        )
    return head  # type: ignore[return-value]


def pair_prompts(
    inputs: InputProcessor,
    head: ClassifierHead,
    firsts: Seq[str],
    seconds: Seq[str],
    truncate_prompt_tokens: int | None = None,
    names: tuple[str, str] = ("text_1", "text_2"),
    truncation_side: str = "left",
) -> list[Prompt]:
    """One prompt per pair (a single first text paired with every second one), checked by the input door."""
    firsts = list(firsts) * len(seconds) if len(firsts) == 1 else list(firsts)
    tokenizer = inputs.tokenizer
    prompts = []
    for i, (first, second) in enumerate(zip(firsts, seconds, strict=True)):
        ids = tokenizer.encode_pair(first, second) if head.separate_pair else tokenizer.encode(first + second)
        param = names[1] if len(seconds) == 1 else f"{names[1]}[{i}]"
        prompt = Prompt(ids)
        prompts.append(
            inputs.process_whole(
                prompt, truncate_prompt_tokens=truncate_prompt_tokens, truncation_side=truncation_side, param=param
            )
        )
    return prompts


def text_prompts(
    inputs: InputProcessor,
    texts: Seq[str],
    name: str,
    truncate_prompt_tokens: int | None = None,
    truncation_side: str = "left",
) -> list[Prompt]:
    """A bi-encoder's prompts: each text alone, checked by the input door."""
    return [
        inputs.process_whole(
            text,
            truncate_prompt_tokens=truncate_prompt_tokens,
            truncation_side=truncation_side,
            param=name if len(texts) == 1 else f"{name}[{i}]",
        )
        for i, text in enumerate(texts)
    ]


def cosine_scores(firsts: Seq[np.ndarray], seconds: Seq[np.ndarray]) -> list[float]:
    """Each pair's cosine similarity (a single first vector against every second one)."""
    a = np.stack(firsts).astype(np.float64)
    b = np.stack(seconds).astype(np.float64)
    a /= np.linalg.norm(a, axis=-1, keepdims=True)
    b /= np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(axis=-1).tolist()

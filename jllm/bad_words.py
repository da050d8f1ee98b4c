"""vLLM's ``bad_words``: words the output must never contain, as token sequences the sampler bans one token at a time.

A word becomes its token ids twice, as vLLM does: alone (the output's first word) and after a space (a word inside
the text), the second only where the space makes other tokens of the same count. A word of one token is banned at
every step; a longer one only where the output so far ends with all its tokens but the last, which is then banned.
So a row's banned ids follow from its last tokens, and with async scheduling its mask waits for the token the step
in flight samples, as a grammar's does (``jllm.engine``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jllm.tokenizer import Tokenizer

MAX_BAD_WORDS = 128  # vLLM's limits on one request (its GPU sampler's MAX_NUM_BAD_WORDS / MAX_BAD_WORDS_TOTAL_TOKENS)
MAX_BAD_WORD_TOKENS = 1024

BadWordIds = tuple[tuple[int, ...], ...]  # each banned sequence's token ids


def check_bad_words(words: object) -> list[str]:
    """``bad_words`` as a list of words with something besides spaces (a blank word bans nothing, and vLLM fails on
    it), at most ``MAX_BAD_WORDS``."""
    if not isinstance(words, list | tuple) or not all(isinstance(w, str) for w in words):
        raise ValueError(f"bad_words must be a list of strings, got {words!r}")
    blank = [w for w in words if not w.strip()]
    if blank:
        raise ValueError(f"bad_words must be words, not blank strings, got {blank[0]!r}")
    if len(words) > MAX_BAD_WORDS:
        raise ValueError(f"bad_words must hold at most {MAX_BAD_WORDS} words, got {len(words)}")
    return list(words)


def bad_word_ids(words: Seq[str], tokenizer: Tokenizer) -> BadWordIds:
    """The token sequences ``words`` ban, in vLLM's order (``SamplingParams.update_from_tokenizer``): each word with
    its leading spaces stripped, then after one space where that gives as many tokens, the first one different."""
    found: list[tuple[int, ...]] = []
    for word in words:
        alone = tuple(tokenizer.encode(word.lstrip(), add_special_tokens=False))
        spaced = tuple(tokenizer.encode(" " + word.lstrip(), add_special_tokens=False))
        found.append(alone)
        if len(spaced) == len(alone) and spaced[0] != alone[0]:
            found.append(spaced)
    total = sum(map(len, found))
    if total > MAX_BAD_WORD_TOKENS:
        raise ValueError(f"bad_words must come to at most {MAX_BAD_WORD_TOKENS} tokens, got {total}")
    return tuple(found)


def waits_for_tokens(ids: BadWordIds) -> bool:
    """Whether the banned ids depend on the output's last tokens (a word of several tokens)."""
    return any(len(word) > 1 for word in ids)


def banned_next(ids: BadWordIds, output_token_ids: Seq[int]) -> list[int]:
    """The ids the next token may not be: each word's last token where the output ends with the rest of it (vLLM
    compares the generated tokens only, never the prompt's)."""
    banned = []
    for word in ids:
        prefix = len(word) - 1
        if prefix > len(output_token_ids):
            continue
        if prefix == 0 or tuple(output_token_ids[-prefix:]) == word[:-1]:
            banned.append(word[-1])
    return banned

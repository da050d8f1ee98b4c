"""vLLM's ``bad_words``: words as token sequences (vLLM's prefix-space rule), the ids banned after a given output, the
step's mask, and the engine loop (scripted runner, async scheduling) never emitting a banned sequence."""

from __future__ import annotations

import numpy as np
import pytest
from fake_runner import VOCAB_SIZE, fake_engine, run_requests

from jllm.bad_words import MAX_BAD_WORD_TOKENS, MAX_BAD_WORDS, bad_word_ids, banned_next, waits_for_tokens
from jllm.errors import InputError
from jllm.inputs import Prompt
from jllm.sampler import build_constraints, mask_follows_tokens, needs_general
from jllm.sampling import SamplingParams
from jllm.sequence import Sequence


class WordTokenizer:
    """Ids by whole word, a leading space its own id unless the word has a spaced form (as BPE's "Ġword")."""

    def __init__(self, words: dict[str, tuple[int, ...]]) -> None:
        self.words = words

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert not add_special_tokens  # a word's ids never carry BOS
        return list(self.words[text])


def test_a_word_is_banned_alone_and_after_a_space_where_the_space_makes_other_tokens_of_the_same_count() -> None:
    tokenizer = WordTokenizer({
        "hello": (10,), " hello": (11,),  # BPE's "Ġhello": both forms banned
        "ab cd": (20, 21, 22), " ab cd": (23, 21, 22),
        "xy": (30, 31), " xy": (5, 30, 31),  # the space its own token: the spaced form is the same word after " "
    })  # fmt: skip
    ids = bad_word_ids(["  hello", "ab cd", "xy"], tokenizer)  # leading spaces stripped, as vLLM does
    assert ids == ((10,), (11,), (20, 21, 22), (23, 21, 22), (30, 31))
    assert waits_for_tokens(ids) and not waits_for_tokens(((10,), (11,)))


def test_the_banned_ids_follow_the_outputs_last_tokens() -> None:
    ids = ((10,), (20, 21, 22), (30, 31))
    assert banned_next(ids, []) == [10]  # only the one-token word: the prompt is never compared
    assert banned_next(ids, [1, 20, 21]) == [10, 22]
    assert banned_next(ids, [20, 21, 7]) == [10]
    assert banned_next(ids, [30]) == [10, 31]


def test_bad_words_are_checked_at_the_door() -> None:
    with pytest.raises(ValueError, match="bad_words must be a list of strings, got 'word'"):
        SamplingParams(bad_words="word")
    with pytest.raises(ValueError, match="bad_words must be words, not blank strings, got ' '"):
        SamplingParams(bad_words=["ok", " "])
    with pytest.raises(ValueError, match=f"bad_words must hold at most {MAX_BAD_WORDS} words"):
        SamplingParams(bad_words=["w"] * (MAX_BAD_WORDS + 1))
    engine = fake_engine()
    with pytest.raises(InputError, match=f"bad_words must come to at most {MAX_BAD_WORD_TOKENS} tokens") as error:
        engine.inputs.check(Prompt([5]), SamplingParams(bad_words=["x" * (MAX_BAD_WORD_TOKENS + 1)]))
    assert error.value.param == "bad_words"


def _seq(params: SamplingParams, output: list[int], ids: tuple[tuple[int, ...], ...]) -> Sequence:
    return Sequence(0, "r", 0, [5, 6], params, 0.0, 0, output_token_ids=output, bad_word_ids=ids)


def test_the_steps_mask_clears_exactly_the_banned_ids_beside_allowed_token_ids() -> None:
    ids = ((40,), (50, 51))
    free = _seq(SamplingParams(), [50], ())
    banned = _seq(SamplingParams(bad_words=["w"]), [50], ids)
    both = _seq(SamplingParams(bad_words=["w"], allowed_token_ids=[40, 41, 51]), [50], ids)
    assert needs_general([banned], VOCAB_SIZE, set(), base_banned=8) and mask_follows_tokens(banned)
    mask = build_constraints([free, banned, both], 4, VOCAB_SIZE).bitmask
    bits = np.unpackbits(mask.view(np.uint8), axis=-1, bitorder="little")[:, :VOCAB_SIZE].astype(bool)
    assert bits[0].all() and bits[3].all()  # a free row and a padding row allow every token
    assert set(np.flatnonzero(~bits[1])) == {40, 51}
    assert set(np.flatnonzero(bits[2])) == {41}
    banned.num_pending_tokens = 1  # its last token still being sampled: its mask cannot be known yet
    with pytest.raises(ValueError, match="mask needs its pending token"):
        build_constraints([banned], 4, VOCAB_SIZE)


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_the_engine_never_emits_a_bad_word(async_scheduling: bool) -> None:
    """The scripted runner counts up from the prompt's last id (after [7]: 108, 109, 110, ...) and samples the lowest
    allowed id where the mask forbids its token; a two-token word waits for the token before its last."""
    engine = fake_engine(async_scheduling=async_scheduling)
    word = engine.tokenizer.decode([109, 110])
    assert engine.tokenizer.encode(word, add_special_tokens=False) == [109, 110]
    params = SamplingParams(n=2, max_tokens=6, temperature=0.0, bad_words=[word])
    free = SamplingParams(max_tokens=6, temperature=0.0)
    done = run_requests(engine, {"banned": ([7], params), "free": ([7], free)})
    assert done["free"].outputs[0].token_ids == [108, 109, 110, 111, 112, 113]
    for sample in done["banned"].outputs:
        assert sample.token_ids[:2] == [108, 109] and sample.token_ids[2] != 110  # the word's last token banned
    assert not engine.requests and engine.block_manager.num_allocated_pages == 0

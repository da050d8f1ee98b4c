"""The families' greedy comparison (``model_utils.assert_greedy_equal``): a divergence at a near-tie of transformers'
logits passes, one transformers ranks clearly passes not, and equal tokens never ask transformers."""

from __future__ import annotations

import model_utils
import numpy as np
import pytest


def _logits(gap: float) -> np.ndarray:
    """One position's logits: token 3 on top at 5.0, token 4 ``gap`` below it."""
    logits = np.zeros((1, 10), np.float32)
    logits[0, 3], logits[0, 4] = 5.0, 5.0 - gap
    return logits


def test_a_divergence_at_a_near_tie_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []
    monkeypatch.setattr(model_utils, "hf_logits", lambda _, ids: asked.append(ids) or _logits(4e-4))
    model_utils.assert_greedy_equal(None, [[1, 2]], [[7, 4, 9]], [[7, 3, 1]])
    assert asked == [[1, 2, 7]]  # transformers' logits where the two first differ


def test_a_divergence_transformers_ranks_clearly_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_utils, "hf_logits", lambda *_: _logits(0.5))
    with pytest.raises(AssertionError, match="token 1"):
        model_utils.assert_greedy_equal(None, [[1, 2]], [[7, 4, 9]], [[7, 3, 1]])


def test_equal_tokens_pass_without_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_utils, "hf_logits", lambda *_: pytest.fail("asked transformers"))
    model_utils.assert_greedy_equal(None, [[1], [2]], [[7, 3], [5]], [[7, 3], [5]])
    with pytest.raises(AssertionError):
        model_utils.assert_greedy_equal(None, [[1]], [[7, 3]], [[7, 3, 1]])

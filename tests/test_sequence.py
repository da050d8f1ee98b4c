"""Sequence.token_slice: the step builder's view of prompt + output without concatenating them."""

import pytest

from jllm.sampling import SamplingParams
from jllm.sequence import Sequence


@pytest.mark.parametrize("start, stop", [(0, 3), (1, 5), (2, 7), (5, 6), (4, 5), (0, 8), (7, 8), (3, 3)])
def test_token_slice_equals_slicing_token_ids(start, stop):
    seq = Sequence(0, "r", 0, [10, 11, 12, 13, 14], SamplingParams(), 0.0, 0, output_token_ids=[20, 21, 22])
    assert seq.token_slice(start, stop) == seq.token_ids[start:stop]

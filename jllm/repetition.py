"""vLLM's ``repetition_detection``: end a sample that has fallen into a loop ("abcabcabc...") instead of letting it
run to ``max_tokens``.

After each token the output's tail is compared with the tokens before it: a pattern of ``min_pattern_size`` to
``max_pattern_size`` tokens repeated ``min_count`` times back to back at the end of the output ends the sample
with finish_reason "repetition" and stop_reason "repetition_detected" (vLLM's ``check_stop``). Plain Python: the
scheduler checks it where it checks stop tokens.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence as Seq
from typing import Any

MAX_PATTERN_SIZE = 1024  # the longest pattern a request may ask about
MAX_SCAN_TOKENS = 16_384  # max_pattern_size x min_count: the most tokens one check may compare, per sample a step
STOP_REASON = "repetition_detected"  # vLLM's stop_reason beside finish_reason "repetition"


@dataclasses.dataclass(frozen=True)
class RepetitionDetectionParams:
    """vLLM's fields; ``max_pattern_size`` 0 asks for nothing (``of`` makes that None)."""

    max_pattern_size: int = 0  # the longest pattern looked for (tokens)
    min_pattern_size: int = 0  # the shortest (0: 1)
    min_count: int = 0  # back-to-back repeats that end the sample, at least 2

    def __post_init__(self) -> None:
        for name in ("max_pattern_size", "min_pattern_size", "min_count"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"repetition_detection.{name} must be an integer, got {value!r}")
        if self.max_pattern_size < 0 or self.min_pattern_size < 0 or self.min_pattern_size > self.max_pattern_size:
            raise ValueError(
                "repetition_detection.max_pattern_size and min_pattern_size must be >= 0 with min_pattern_size <= "
                f"max_pattern_size, got {self.min_pattern_size} and {self.max_pattern_size} (both 0: off)"
            )
        if self.max_pattern_size > 0 and self.min_count < 2:
            raise ValueError(
                f"repetition_detection.min_count must be >= 2 to detect a repeated pattern, got {self.min_count} "
                "(max_pattern_size 0 turns detection off)"
            )
        if self.max_pattern_size > MAX_PATTERN_SIZE:
            raise ValueError(
                f"repetition_detection.max_pattern_size must be <= {MAX_PATTERN_SIZE}, got {self.max_pattern_size}"
            )
        if self.max_pattern_size * self.min_count > MAX_SCAN_TOKENS:
            raise ValueError(
                f"repetition_detection.max_pattern_size x min_count must be <= {MAX_SCAN_TOKENS} (the tokens each "
                f"check compares), got {self.max_pattern_size} x {self.min_count}"
            )

    @classmethod
    def of(cls, value: Any) -> RepetitionDetectionParams | None:
        """A request's value (these params, or a dict of vLLM's keys) checked; None when it asks for nothing."""
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(f"repetition_detection has no key {sorted(unknown)[0]!r}")
            value = cls(**value)
        if not isinstance(value, cls):
            raise ValueError(f"repetition_detection must be an object of vLLM's keys, got {value!r}")
        return value if value.max_pattern_size else None


def ends_in_repetition(token_ids: Seq[int], params: RepetitionDetectionParams) -> bool:
    """Whether the last ``n`` tokens, for some ``n`` in the pattern sizes, equal each of the ``min_count - 1``
    blocks of ``n`` before them (shortest pattern first, as vLLM checks). A size whose last token differs from the
    one ``n`` before is passed over at once, so a check costs about ``max_pattern_size`` comparisons."""
    end, count = len(token_ids), params.min_count
    for size in range(max(params.min_pattern_size, 1), params.max_pattern_size + 1):
        if size * count > end:
            return False
        if token_ids[end - 1] != token_ids[end - 1 - size]:
            continue
        tail = token_ids[end - size :]
        if all(token_ids[end - size * (k + 1) : end - size * k] == tail for k in range(1, count)):
            return True
    return False

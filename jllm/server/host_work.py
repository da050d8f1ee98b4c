"""Tokenization and chat rendering for the handlers, off the event loop's shared path.

A short prompt is encoded inline (microseconds: handing it to a thread would cost more); a long one goes to a few
dedicated threads, so a flood of long prompts queues behind itself, never in front of short requests or of the
default executor everything else uses. Each request's prompt size is bounded before it gets here
(``InputProcessor.check_prompt_size``), and long texts are encoded with the GIL released (``Tokenizer.encode``).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
INLINE_CHARS = 8192  # prompts up to this many characters are tokenized on the event loop


class HostWork:
    """A bounded pool of ``workers`` threads for host work whose cost grows with the request's text."""

    def __init__(self, workers: int) -> None:
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="jllm-tokenize")

    async def run(self, chars: int, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """``fn(*args, **kwargs)`` for a request of ``chars`` characters of text: inline when short."""
        if chars <= INLINE_CHARS:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

"""Tokenization, chat rendering and body validation for the handlers, off the event loop's shared path.

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

from pydantic import BaseModel

T = TypeVar("T")
INLINE_CHARS = 8192  # prompts up to this many characters (bodies up to this many bytes) are handled on the event loop


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

    async def parse[M: BaseModel](self, model: type[M], raw: bytes) -> M:
        """A request body validated as ``model``: inline when short, else on the pool. Validation is work per JSON
        value (pydantic's, and the schemas' validators in Python): 16 MiB of 300,000 one-word chat messages took 4.9
        s, which on the event loop stopped every stream and ``/health`` as long; on a thread the loop still runs."""
        return await self.run(len(raw), model.model_validate_json, raw)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

"""Server-sent events exactly as OpenAI sends them: ``data: {json}\\n\\n`` per chunk, then ``data: [DONE]\\n\\n``.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from jllm.server.errors import from_engine_error

logger = logging.getLogger(__name__)


async def send_events(request: web.Request, payloads: AsyncIterator[str]) -> web.StreamResponse:
    """Streams each JSON payload as one event, then ``[DONE]``.

    A failure once the headers are out can no longer change the status, so it goes out as an error event (OpenAI's
    error body) before ``[DONE]``. A client that hangs up ends the stream quietly; the caller aborts its request.
    """
    response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    response.content_type = "text/event-stream"
    response.charset = "utf-8"
    await response.prepare(request)
    try:
        async with contextlib.aclosing(payloads):
            try:
                async for payload in payloads:
                    await _write(response, payload)
            except ConnectionResetError:
                raise
            except Exception as e:
                await _write(response, json.dumps(from_engine_error(e).body(), separators=(",", ":")))
        await _write(response, "[DONE]")
        await response.write_eof()
    except ConnectionResetError:
        logger.info("client of %s %s hung up mid-stream", request.method, request.path)
    return response


async def _write(response: web.StreamResponse, payload: str) -> None:
    await response.write(f"data: {payload}\n\n".encode())

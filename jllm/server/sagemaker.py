"""Amazon SageMaker's two routes, which vLLM serves too: ``GET`` / ``POST /ping`` is ``/health``, and ``POST
/invocations`` takes any request body and answers it on the route its shape belongs to: chat messages on chat
completions, a prompt on completions, an input on embeddings. A body of none of those shapes is a 400 naming them.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from aiohttp import web

from jllm.server.chat import create_chat_completion
from jllm.server.completions import create_completion
from jllm.server.embeddings import create_embedding
from jllm.server.errors import Handler, bad_request, json_body

# the key whose presence names a body's route, in this order
ROUTES: tuple[tuple[str, Handler], ...] = (
    ("messages", create_chat_completion),
    ("prompt", create_completion),
    ("input", create_embedding),
)


async def invocations(request: web.Request) -> web.StreamResponse:
    body = json_body(await request.read())
    for key, handler in ROUTES:
        if isinstance(body, dict) and key in body:
            return await handler(request)  # aiohttp keeps the body read: the route reads it again
    keys = ", ".join(key for key, _ in ROUTES)
    raise bad_request(f"/invocations answers a body with one of {keys} (chat, completions, embeddings)")

"""What the engine raises at its doors, free of JAX so the server can map each to an HTTP status cheaply.

``InputError`` and its subclasses are the client's fault (a 400 naming ``param``); ``QueueFullError`` asks the client
to retry (429); ``EngineUnavailableError`` means no request can run now (503); ``GrammarFailedError`` is a request
whose structured-output grammar broke while it ran (a 400, or an error event once a stream has begun).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations


class InputError(ValueError):
    """A prompt or request field the engine cannot take; ``param`` names the request field at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthError(InputError):
    """The prompt (plus max_tokens) does not fit the model's context."""


class QueueFullError(RuntimeError):
    """``max_queued_requests`` sequences already wait for a slot; the client should retry later (HTTP 429)."""


class EngineUnavailableError(RuntimeError):
    """The engine is draining for shutdown or its loop has died; no request can run (HTTP 503)."""


class GrammarFailedError(InputError):
    """A request's grammar failed mid-generation (llguidance refused a token, or ran past its limits: the regex
    ``a{1000000}`` builds too many lexer expressions on its first token). Nothing at the door could tell; the output
    so far does not follow the constraint, so the client gets this error instead of it."""

    code = "structured_output_failed"

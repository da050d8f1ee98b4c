"""The one input door: text, token ids and chat messages become a checked ``Prompt`` here, and only here.

``LLM``, the server, ``jllm run`` and the CLI all pass their prompts through an ``InputProcessor``, so a prompt is
encoded one way and held to one set of limits (not empty, inside the model's vocabulary, fitting the context with
its ``max_tokens``) whichever front end sent it; the engine takes the resulting token ids and checks nothing again.
Failures raise ``InputError`` naming the request field, which the server turns into a 400. Plain Python, no JAX.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2

from jllm.errors import ContextLengthError, InputError
from jllm.sampling import SamplingParams
from jllm.tokenizer import Tokenizer


@dataclass(frozen=True)
class Prompt:
    """A prompt as the engine runs it: its token ids, and the text it came from (None for token-id prompts whose
    text nobody asked for)."""

    token_ids: list[int]
    text: str | None = None


PromptInput = str | list[int] | Prompt  # what the offline API takes: text, token ids, or an already checked prompt


def check_token_ids(token_ids: Sequence[int], vocab_size: int, param: str) -> None:
    """Client ids must be in the vocabulary before anything embeds or decodes them (the decoder overflows on -1)."""
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise InputError(f"{param}: token id {bad[0]} is outside the vocabulary [0, {vocab_size})", param=param)


class InputProcessor:
    """Encodes and checks prompts for one engine: its tokenizer, the model's vocabulary and its context length."""

    def __init__(self, tokenizer: Tokenizer, *, vocab_size: int, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size  # the model's embedding rows: every id the engine can run
        self.max_model_len = max_model_len

    def encode(self, prompt: PromptInput, *, with_text: bool = False, param: str = "prompt") -> Prompt:
        """Text is encoded (special tokens added, as the tokenizer defines); token ids are checked against the
        vocabulary, and decoded only ``with_text`` (echo needs it)."""
        if isinstance(prompt, Prompt):
            return prompt
        if isinstance(prompt, str):
            return Prompt(self.tokenizer.encode(prompt), prompt)
        token_ids = list(prompt)
        check_token_ids(token_ids, self.vocab_size, param)
        return Prompt(token_ids, self.tokenizer.decode(token_ids) if with_text else None)

    def decode(self, token_ids: list[int], *, param: str = "tokens") -> str:
        check_token_ids(token_ids, self.vocab_size, param)
        return self.tokenizer.decode(token_ids)

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> Prompt:
        """The conversation through the model's chat template; a template that rejects the messages (or a model
        without one) is the client's error."""
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message
            )
        except (jinja2.TemplateError, ValueError) as e:  # transformers: ValueError when the last message is not found
            raise InputError(f"the chat template rejected these messages: {e}", param="messages") from e
        return Prompt(self.tokenizer.encode(text, add_special_tokens=False), text)

    def check(self, prompt: Prompt, params: SamplingParams, *, param: str = "prompt") -> None:
        """A prompt the engine can run with ``params``: at least one token (the first step needs one to start
        from), and room in the context for the prompt plus ``max_tokens`` (one, when it is None)."""
        num_prompt = len(prompt.token_ids)
        if not num_prompt:
            raise InputError(f"{param} is empty: give at least one token", param=param)
        completion = params.max_tokens or 1
        requested = num_prompt + completion
        if num_prompt >= self.max_model_len or requested > self.max_model_len:
            raise ContextLengthError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{requested} tokens ({num_prompt} in the prompt, {completion} for the completion). "
                "Please reduce the length of the prompt or the completion.",
                param=param,
            )

    def process(self, prompt: PromptInput, params: SamplingParams, *, with_text: bool = False) -> Prompt:
        """``encode`` then ``check``: what a front end calls for each prompt before handing it to the engine."""
        encoded = self.encode(prompt, with_text=with_text)
        self.check(encoded, params)
        return encoded

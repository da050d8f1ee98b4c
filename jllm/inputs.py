"""The one input door: text, token ids and chat messages become a checked ``Prompt`` here, and only here.

``LLM``, the server, ``jllm run`` and the CLI all pass their prompts through an ``InputProcessor``, so a prompt is
encoded one way and held to one set of limits (not empty, inside the model's vocabulary, fitting the context with
its ``max_tokens``) whichever front end sent it; the engine takes the resulting token ids and checks nothing again.
Failures raise ``InputError`` naming the request field, which the server turns into a 400. Plain Python, no JAX.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NotRequired, TypedDict

import pydantic_core

from jllm.bad_words import BadWordIds, bad_word_ids
from jllm.chat_content import check_content_format, content_for_template, resolve_content_format
from jllm.config import LimitsConfig, parse_chat_template
from jllm.errors import ContextLengthError, InputError
from jllm.sampling import TRUNCATION_SIDES, SamplingParams
from jllm.speculative import check_request
from jllm.tokenizer import Tokenizer


@dataclass(frozen=True)
class Prompt:
    """A prompt as the engine runs it: its token ids, and the text it came from (None for token-id prompts whose
    text nobody asked for)."""

    token_ids: list[int]
    text: str | None = None
    cache_salt: str | None = None  # vLLM's: prefix-cache pages are shared only among prompts of the same salt


class TextPrompt(TypedDict):
    """vLLM's ``TextPrompt``: ``LLM.generate(TextPrompt(prompt="..."))`` (a plain dict of these keys does the same)."""

    prompt: str
    cache_salt: NotRequired[str]


class TokensPrompt(TypedDict):
    """vLLM's ``TokensPrompt``: token ids, with the text they stand for if known (the output's ``prompt``)."""

    prompt_token_ids: list[int]
    prompt: NotRequired[str]
    cache_salt: NotRequired[str]


# What the offline API takes: text, token ids, vLLM's {"prompt": text} / {"prompt_token_ids": ids}, or a checked prompt.
PromptInput = str | list[int] | TextPrompt | TokensPrompt | dict[str, Any] | Prompt
PROMPT_KEYS = ("prompt", "prompt_token_ids")
PROMPT_OPTIONS = ("cache_salt",)  # what else a prompt dict may carry (vLLM's TextPrompt / TokensPrompt)
# vLLM's prompt-dict keys for inputs jllm has no use for: taken when they ask for nothing (None)
PROMPT_UNUSED = ("multi_modal_data", "mm_processor_kwargs", "multi_modal_uuids", "token_type_ids")
PROMPT_CHARS_PER_TOKEN = 32  # max_prompt_chars's default per token of context: far above any tokenizer's average
# apply_chat_template's own arguments: chat_template_kwargs may not set them (the rest reach the template as variables)
RESERVED_TEMPLATE_KWARGS = frozenset(
    {"conversation", "messages", "tokenize", "chat_template", "padding", "truncation", "max_length",
     "return_tensors", "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs"}
)  # fmt: skip


def check_token_ids(token_ids: Sequence[int], vocab_size: int, param: str) -> None:
    """Client ids must be in the vocabulary before anything embeds or decodes them (the decoder overflows on -1)."""
    not_int = [t for t in token_ids if not isinstance(t, numbers.Integral) or isinstance(t, bool)]  # NumPy's too
    if not_int:
        raise InputError(f"{param}: token ids must be integers, got {not_int[0]!r}", param=param)
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise InputError(f"{param}: token id {bad[0]} is outside the vocabulary [0, {vocab_size})", param=param)


def check_text(text: str, param: str) -> str:
    """A lone surrogate (JSON's or YAML's ``"\\udcff"``, a byte of argv or stdin that is not UTF-8) is no text the
    tokenizer can encode: refused naming it rather than failing inside the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{param} holds a lone surrogate {text[e.start]!r} at character {e.start}, which is not text: send UTF-8 "
            "text",
            param=param,
        ) from e
    return text


class InputProcessor:
    """Encodes and checks prompts for one engine: its tokenizer, the model's vocabulary and its context length."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        vocab_size: int,
        max_model_len: int,
        limits: LimitsConfig | None = None,
        speculative: bool = False,
        default_template_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.default_template_kwargs = default_template_kwargs  # default_chat_template_kwargs
        self.vocab_size = vocab_size  # the model's embedding rows: every id the engine can run
        self.max_model_len = max_model_len
        self.limits = limits or LimitsConfig()
        self.speculative = speculative  # the engine verifies drafts: requests it cannot verify exactly are refused

    def template_kwargs(
        self, asked: dict[str, Any] | None, reasoning_effort: str | None = None
    ) -> dict[str, Any] | None:
        """A request's ``chat_template_kwargs`` over the model's ``default_chat_template_kwargs``: what its chat
        renders with, and what its reasoning format reads. With a ``reasoning_effort``, vLLM's rule: the thinking
        switch ``enable_thinking`` on ("none": off) unless the request's kwargs set it, so an effort reaches the
        templates that read only the switch (Qwen3's, Gemma 4's) and the reasoning format reads the same switch."""
        kwargs = {**self.default_template_kwargs, **(asked or {})} if self.default_template_kwargs else asked
        if reasoning_effort is None or "enable_thinking" in (asked or {}):
            return kwargs
        return {**(kwargs or {}), "enable_thinking": reasoning_effort != "none"}

    def encode(
        self, prompt: PromptInput, *, with_text: bool = False, add_special_tokens: bool = True, param: str = "prompt"
    ) -> Prompt:
        """Text is encoded (special tokens added, as the tokenizer defines, unless ``add_special_tokens`` is false);
        token ids are checked against the vocabulary, and decoded only ``with_text`` (echo needs it)."""
        if isinstance(prompt, Prompt):
            return prompt
        salt = text = None
        if isinstance(prompt, dict):
            (prompt, text), salt = _unwrap(prompt, param), checked_cache_salt(prompt.get("cache_salt"), param)
        if isinstance(prompt, str):
            token_ids = self.tokenizer.encode(check_text(prompt, param), add_special_tokens=add_special_tokens)
            return Prompt(token_ids, prompt, salt)
        if not isinstance(prompt, list | tuple):
            raise InputError(
                f"{param} must be a string, a list of token ids, or a dict with 'prompt' or 'prompt_token_ids', "
                f"got {type(prompt).__name__}",
                param=param,
            )
        check_token_ids(prompt, self.vocab_size, param)
        token_ids = [int(t) for t in prompt]  # NumPy integers as Python's
        if text is None and with_text:
            text = self._text(token_ids)
        return Prompt(token_ids, text, salt)

    def truncate(self, prompt: Prompt, keep: int | None, side: str = "left", max_tokens: int | None = None) -> Prompt:
        """vLLM's ``truncate_prompt_tokens``: keep the last ``keep`` tokens (-1: as many as the context leaves beside
        ``max_tokens``, vLLM's ``max_input_tokens``; all of it when that is None), or with ``truncation_side``
        "right" the first; the text of a truncated prompt is what its kept tokens decode to."""
        if side not in TRUNCATION_SIDES:
            raise InputError(f"truncation_side must be 'left' or 'right', got {side!r}", param="truncation_side")
        if keep == -1:  # at least one token: a max_tokens past the context is check's error, which names it
            keep = max(self.max_model_len - (max_tokens or 0), 1)
        if keep is not None and keep > self.max_model_len:  # vLLM's 400 too: no prompt may keep more than that
            raise InputError(
                f"truncate_prompt_tokens={keep} is greater than the model's context length max_model_len="
                f"{self.max_model_len}: select a smaller truncation size, or -1 for the context length",
                param="truncate_prompt_tokens",
            )
        if keep is None or len(prompt.token_ids) <= keep:
            return prompt
        token_ids = prompt.token_ids[-keep:] if side == "left" else prompt.token_ids[:keep]
        text = None if prompt.text is None else self._text(token_ids)
        return replace(prompt, token_ids=token_ids, text=text)

    def decode(self, token_ids: list[int], *, param: str = "tokens") -> str:
        """``/detokenize``: the inverse of ``/tokenize``, special tokens included (vLLM's decode)."""
        check_token_ids(token_ids, self.vocab_size, param)
        return self._text(token_ids)

    def _text(self, token_ids: list[int]) -> str:
        """A prompt's text as the model reads it: its special tokens kept (a text prompt's own text holds them), so
        echo's text and its logprobs' tokens and ``text_offset`` agree whether the prompt came as text or ids."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool | None = None,
        continue_final_message: bool | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        add_special_tokens: bool = False,
        reasoning_effort: str | None = None,
        content_format: str = "auto",
        **template_options: Any,
    ) -> Prompt:
        """The conversation through the model's chat template; a template that rejects the messages (or a model
        without one) is the client's error. Message content reaches the template in ``content_format`` (vLLM's
        ``chat_template_content_format``, ``jllm.chat_content``): one string, OpenAI's text parts, or "auto" the one
        the template in use reads;
        ``chat_template_kwargs`` reach the template as variables; ``template_options`` are further arguments of the
        template call (``documents``, ``chat_template``, ``tools``). Where both give a key, vLLM's rule: the two
        switches, ``reasoning_effort``, ``documents`` and ``chat_template`` given here win, and ``tools`` yield to a
        ``tools`` variable (vLLM's server merges the request's tools under its chat_template_kwargs); a switch left
        None takes ``chat_template_kwargs``' value, else its default (True / False), where vLLM would drop that value
        for its field's default.
        The template adds the special tokens it wants; ``add_special_tokens`` adds the tokenizer's on top.
        ``reasoning_effort`` (OpenAI's request field) is the template variable of that name, as gpt-oss's template
        reads it (``chat_template_kwargs`` may still set it); it and ``documents`` are refused where the template
        (the request's own, else the model's) does not read them, since they would change nothing."""
        chat_template = template_options.get("chat_template")
        if reasoning_effort is not None:
            self.check_template_reads(
                "reasoning_effort",
                chat_template,
                f"reasoning_effort {reasoning_effort!r}: the chat template reads neither reasoning_effort nor "
                "enable_thinking (which an effort switches, vLLM's rule), so it would change nothing; leave it out (a "
                "template's thinking switch goes in chat_template_kwargs)",
                or_reads=("enable_thinking",),
            )
        if template_options.get("documents"):
            self.check_template_reads(
                "documents",
                chat_template,
                "documents: the chat template does not read documents, so they would not reach the model; leave "
                "them out (or put their text in the messages)",
            )
        given = {
            "add_generation_prompt": add_generation_prompt,
            "continue_final_message": continue_final_message,
            "reasoning_effort": reasoning_effort,
            **template_options,
        }
        tools = given.pop("tools", None)
        kwargs = {
            "add_generation_prompt": True,
            "continue_final_message": False,
            **({} if tools is None else {"tools": tools}),
            **_template_kwargs(chat_template_kwargs),
            **{key: value for key, value in given.items() if value is not None},
        }
        if kwargs["continue_final_message"] and kwargs["add_generation_prompt"]:
            raise InputError(
                "continue_final_message needs add_generation_prompt set to false (the reply continues the last "
                "message)",
                param="continue_final_message",
            )
        try:
            content_format = check_content_format(content_format)
        except ValueError as e:
            raise InputError(str(e), param="chat_template_content_format") from e
        content_format = resolve_content_format(content_format, self._template_in_use(kwargs))
        conversation = [_message_for_template(m, i, content_format) for i, m in enumerate(messages)]
        import jinja2  # here, not at the top: 0.17 s of every start-up for what only chat requests use

        try:
            text = self.tokenizer.apply_chat_template(conversation, **kwargs)
        # transformers: ValueError when the last message is not found, TypeError for tools or documents that are
        # not lists of mappings (chat_template_kwargs may set them)
        except (jinja2.TemplateError, TypeError, ValueError) as e:
            raise InputError(f"the chat template rejected these messages: {e}", param="messages") from e
        return Prompt(self.tokenizer.encode(check_text(text, "messages"), add_special_tokens=add_special_tokens), text)

    def _template_in_use(self, kwargs: dict[str, Any]) -> str | None:
        """The template a render with these arguments uses, as transformers picks it (the request's own or one of
        the model's named templates it names, else the model's, its ``tool_use`` one with tools); None: none."""
        if not self.tokenizer.chat_template and kwargs.get("chat_template") is None:
            return None
        try:
            return self.tokenizer.hf.get_chat_template(kwargs.get("chat_template"), kwargs.get("tools"))
        except (ValueError, TypeError):  # no such template: the render names it
            return None

    def check_template_reads(
        self, variable: str, chat_template: str | None, refusal: str, *, or_reads: tuple[str, ...] = ()
    ) -> None:
        """An ``InputError`` (``refusal``, on the field ``variable``) unless the template a render uses reads
        ``variable`` (or one of ``or_reads``): the request's own ``chat_template`` (or one of the model's named
        templates it names), else any of the model's."""
        template = self.tokenizer.hf.chat_template  # a model's named templates: a mapping of them
        named = template if isinstance(template, dict) else {}
        if chat_template is not None:
            sources = [named.get(chat_template, chat_template)]
        else:
            sources = list(named.values()) if named else [template or ""]
        if not any(_reads_variable(source, name) for source in sources for name in (variable, *or_reads)):
            raise InputError(refusal, param=variable)

    def check(self, prompt: Prompt, params: SamplingParams, *, param: str = "prompt") -> None:
        """A prompt the engine can run with ``params``: at least one token (the first step needs one to start
        from), room in the context for the prompt plus ``max_tokens`` (one, when it is None), and the ids of
        ``allowed_token_ids`` / ``logit_bias`` in the vocabulary, the request's bounded work (``limits``), and with
        speculative decoding the sampling it serves (``jllm.speculative.check_request``)."""
        self.check_limits(params)
        if self.speculative:
            check_request(params)
        if params.logit_bias:
            check_token_ids(list(params.logit_bias), self.vocab_size, "logit_bias")
        bad_words = self._check_bad_words(params.bad_words) if params.bad_words else ()
        if params.allowed_token_ids is not None:
            check_token_ids(params.allowed_token_ids, self.vocab_size, "allowed_token_ids")
            self._check_a_token_is_left(params, bad_words)
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

    def with_default_max_tokens(
        self, params: SamplingParams, default: int | None, prompts: Sequence[Prompt]
    ) -> SamplingParams:
        """``params`` of a request that left ``max_tokens`` unset (None) with the model's default (generation_config
        .json's ``max_new_tokens``) up to the room its longest checked prompt leaves, as vLLM's ``get_max_tokens``
        caps it: a default is no request for more than the context holds (one larger than it had refused every
        such request with a context-length error). A set ``max_tokens``, or no default: ``params`` unchanged."""
        if params.max_tokens is not None or default is None:
            return params
        room = self.max_model_len - max(len(prompt.token_ids) for prompt in prompts)
        return replace(params, max_tokens=min(default, room))

    def _check_a_token_is_left(self, params: SamplingParams, bad_words: BadWordIds) -> None:
        """``allowed_token_ids`` not all banned: the sampler bans one-token ``bad_words`` at every step, and EOS and
        ``stop_token_ids`` until ``min_tokens`` are out (``jllm.sampler``); its pick of a row with every token banned
        would be token 0, outside the allowed set."""
        allowed = set(params.allowed_token_ids or ())
        always = {word[0] for word in bad_words if len(word) == 1}
        if allowed <= always:
            raise InputError(
                f"allowed_token_ids {sorted(allowed)} are all one-token bad_words: no token could be sampled; allow "
                "another token, or leave those words out of bad_words",
                param="allowed_token_ids",
            )
        if params.min_tokens and allowed <= always | self.tokenizer.eos_token_ids | set(params.stop_token_ids or ()):
            raise InputError(
                f"allowed_token_ids {sorted(allowed)} are all EOS, stop_token_ids or bad_words, which "
                f"min_tokens={params.min_tokens} bans until that many tokens are out: no token could be sampled; "
                "allow another token, or drop min_tokens",
                param="allowed_token_ids",
            )

    def _check_bad_words(self, words: list[str]) -> BadWordIds:
        """Words whose tokens the sampler can ban: within vLLM's token limit, every id in the model's vocabulary
        (a tokenizer may know more ids than the model's embedding). Returns their token ids."""
        try:
            ids = bad_word_ids(words, self.tokenizer)
        except ValueError as e:
            raise InputError(str(e), param="bad_words") from e
        check_token_ids([t for word in ids for t in word], self.vocab_size, "bad_words")
        return ids

    def check_limits(self, params: SamplingParams) -> None:
        """The ``limits`` section: refused by name, since each would cost every other stream time."""
        stops, limits = params.stop or [], self.limits
        if len(stops) > limits.max_stop_strings:
            raise InputError(
                f"stop: {len(stops)} stop strings exceed the server's limit max_stop_strings={limits.max_stop_strings}",
                param="stop",
            )
        if len(params.stop_token_ids or []) > limits.max_stop_token_ids:
            raise InputError(
                f"stop_token_ids: {len(params.stop_token_ids or [])} ids exceed the server's limit "
                f"max_stop_token_ids={limits.max_stop_token_ids}",
                param="stop_token_ids",
            )
        longest = max(map(len, stops), default=0)
        if longest > limits.max_stop_string_chars:
            raise InputError(
                f"stop: a stop string of {longest} characters exceeds the server's limit "
                f"max_stop_string_chars={limits.max_stop_string_chars}",
                param="stop",
            )

    @property
    def max_prompt_chars(self) -> int:
        return self.limits.max_prompt_chars or PROMPT_CHARS_PER_TOKEN * self.max_model_len

    def check_prompt_size(self, value: object, param: str) -> int:
        """Refuses a request whose prompt text (every string in ``value``: prompts, prompt dicts, messages) is longer
        than ``max_prompt_chars``, before anything tokenizes it; returns the characters counted."""
        chars = text_chars(value)
        if chars > self.max_prompt_chars:
            raise InputError(
                f"{param}: {chars} characters of prompt text exceed the server's limit max_prompt_chars="
                f"{self.max_prompt_chars}",
                param=param,
            )
        return chars

    def process(
        self,
        prompt: PromptInput,
        params: SamplingParams,
        *,
        with_text: bool = False,
        add_special_tokens: bool = True,
        param: str = "prompt",
    ) -> Prompt:
        """``encode``, ``truncate`` then ``check``: what a front end calls for each prompt before handing it to the
        engine (a rendered chat ``Prompt`` goes through the same truncation and checks)."""
        encoded = self.encode(prompt, with_text=with_text, add_special_tokens=add_special_tokens, param=param)
        truncated = self.truncate(encoded, params.truncate_prompt_tokens, params.truncation_side, params.max_tokens)
        self.check(truncated, params, param=param)
        return truncated

    def process_offline(
        self, prompt: PromptInput, params: SamplingParams, *, add_special_tokens: bool = True, param: str = "prompt"
    ) -> tuple[Prompt, SamplingParams]:
        """``process`` as vLLM's offline ``LLM.generate`` takes a prompt: a ``max_tokens`` past the room the prompt
        leaves in the context is no error there (vLLM's server refuses it, and so does ``process``); the request
        runs until the context is full and finishes by "length". The prompt, and ``params`` with ``max_tokens`` and
        ``min_tokens`` capped by that room; a prompt that leaves no room is still refused."""
        encoded = self.encode(prompt, add_special_tokens=add_special_tokens, param=param)
        truncated = self.truncate(encoded, params.truncate_prompt_tokens, params.truncation_side, params.max_tokens)
        room = self.max_model_len - len(truncated.token_ids)
        if params.max_tokens is not None and params.max_tokens > room >= 1:
            params = replace(params, max_tokens=room, min_tokens=min(params.min_tokens, room))
        self.check(truncated, params, param=param)
        return truncated, params

    def process_whole(
        self,
        prompt: PromptInput,
        *,
        add_special_tokens: bool = True,
        truncate_prompt_tokens: int | None = None,
        truncation_side: str = "left",
        param: str = "prompt",
    ) -> Prompt:
        """A prompt run once over, nothing generated (hidden states, embeddings): encoded, truncated as asked (its
        last tokens kept, or its first with ``truncation_side`` "right"), then at least one token and at most the
        model's context length."""
        keep = truncate_prompt_tokens
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or (keep < 1 and keep != -1)):
            raise InputError(
                f"truncate_prompt_tokens must be at least 1, or -1 (the context length), got {keep!r}",
                param="truncate_prompt_tokens",
            )
        encoded = self.encode(prompt, add_special_tokens=add_special_tokens, param=param)
        encoded = self.truncate(encoded, keep, truncation_side)
        num_prompt = len(encoded.token_ids)
        if not num_prompt:
            raise InputError(f"{param} is empty: give at least one token", param=param)
        if num_prompt > self.max_model_len:
            raise ContextLengthError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{num_prompt} tokens in the input. Please reduce the length of the input.",
                param=param,
            )
        return encoded


def text_chars(value: object) -> int:
    """Characters in every string inside ``value`` (nested lists and dicts: prompts, messages, their parts); a token
    id counts as one."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int):
        return 1
    if isinstance(value, dict):
        return sum(text_chars(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(text_chars(v) for v in value)
    return 0


def checked_cache_salt(salt: Any, param: str = "cache_salt") -> str | None:
    """vLLM's ``cache_salt`` (a request's, or a prompt dict's: ``param`` names where): None, or a non-empty string."""
    if salt is not None and (not isinstance(salt, str) or not salt):
        where = "" if param == "cache_salt" else f"{param}: "
        raise InputError(f"{where}cache_salt must be a non-empty string, got {salt!r}", param=param)
    return salt


def _unwrap(prompt: dict[str, Any], param: str) -> tuple[Any, str | None]:
    """vLLM's ``TextPrompt`` / ``TokensPrompt``: ``prompt`` or ``prompt_token_ids`` (with both, as a
    ``TokensPrompt`` carries its text: the ids run and the text is the output's ``prompt``), optionally
    ``cache_salt``; vLLM's multimodal keys only as None. Returns the text or ids, and a ``TokensPrompt``'s text."""
    unknown = [
        key
        for key in prompt
        if key not in PROMPT_KEYS + PROMPT_OPTIONS and not (key in PROMPT_UNUSED and prompt[key] is None)
    ]
    if unknown:
        raise InputError(
            f"{param}: {unknown[0]!r} is not supported (a prompt dict takes 'prompt' or 'prompt_token_ids', and "
            "'cache_salt')",
            param=param,
        )
    if not any(key in prompt for key in PROMPT_KEYS):
        raise InputError(f"{param}: give 'prompt' or 'prompt_token_ids', got {sorted(prompt)}", param=param)
    if "prompt" in prompt and not isinstance(prompt["prompt"], str):
        raise InputError(f"{param}: 'prompt' must be a string, got {type(prompt['prompt']).__name__}", param=param)
    if "prompt_token_ids" not in prompt:
        return prompt["prompt"], None
    value = prompt["prompt_token_ids"]
    if not isinstance(value, list | tuple):
        raise InputError(f"{param}: 'prompt_token_ids' must be a list of ints, got {type(value).__name__}", param=param)
    return value, prompt.get("prompt")


@functools.lru_cache(maxsize=8)
def _reads_variable(template: str, name: str) -> bool:
    """Whether a chat template looks up the variable ``name``, by Jinja's own reading of its source (a name only in
    a comment is not read)."""
    import jinja2
    from jinja2 import meta

    try:
        return name in meta.find_undeclared_variables(parse_chat_template(template))
    except jinja2.TemplateSyntaxError:  # a tag transformers adds ({% generation %}): read the text
        return name in template


def _template_kwargs(chat_template_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    if chat_template_kwargs is None:
        return {}
    if not isinstance(chat_template_kwargs, dict):
        raise InputError("chat_template_kwargs must be a mapping", param="chat_template_kwargs")
    reserved = sorted(RESERVED_TEMPLATE_KWARGS & chat_template_kwargs.keys())
    if reserved:
        raise InputError(
            f"chat_template_kwargs may not set {reserved[0]!r}: it is an argument of the template call, "
            "not a template variable",
            param="chat_template_kwargs",
        )
    return chat_template_kwargs


def _message_for_template(message: Any, index: int, content_format: str) -> dict[str, Any]:
    """A message as chat templates expect it: its content in ``content_format`` ("string": OpenAI's text parts
    joined on a newline, as vLLM joins them, null as empty; "openai": a list of text parts), and tool calls'
    arguments as mappings (``_tool_calls_for_template``)."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise InputError(f"messages[{index}] must be a mapping with a string 'role'", param="messages")
    try:
        content = content_for_template(message["role"], message.get("content"), content_format)
    except ValueError as e:
        if isinstance(message.get("content"), list):
            raise InputError(
                f"messages[{index}].content: only text parts ({{'type': 'text', 'text': ...}}) are supported",
                param="messages",
            ) from e
        raise InputError(f"messages[{index}].content must be a string or a list of text parts", param="messages") from e
    if message.get("tool_calls"):
        return {**message, "content": content, "tool_calls": _tool_calls_for_template(message["tool_calls"], index)}
    return {**message, "content": content}


def _tool_calls_for_template(calls: Any, index: int) -> list[dict[str, Any]]:
    """OpenAI's tool calls carry their arguments as JSON text; templates read them as a mapping (``| tojson`` would
    quote the text a second time), so the text is parsed, as vLLM and the chat route parse it (none or empty: {}),
    by the parser a request body gets (its nesting limit: json.loads raised RecursionError ~1,000 levels deep)."""
    if not isinstance(calls, list | tuple) or not all(
        isinstance(call, dict) and isinstance(call.get("function"), dict) for call in calls
    ):
        raise InputError(
            f"messages[{index}].tool_calls must be a list of {{'function': {{'name': ..., 'arguments': ...}}}}",
            param="messages",
        )
    parsed = []
    for call in calls:
        arguments = call["function"].get("arguments") or {}
        if isinstance(arguments, str):
            try:
                arguments = pydantic_core.from_json(arguments)
            except ValueError as e:
                raise InputError(
                    f"messages[{index}].tool_calls: arguments {arguments!r:.100} are not JSON: {e}", param="messages"
                ) from e
        parsed.append({**call, "function": {**call["function"], "arguments": arguments}})
    return parsed

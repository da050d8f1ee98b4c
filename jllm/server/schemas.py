"""What the OpenAI API's request and response bodies share (plus vLLM's extra fields), as pydantic models: the
strict request base, the refusal of fields this server cannot honour, the sampling fields completions and chat both
take, and usage and prompt logprobs. Each endpoint's own bodies live beside its route (``chat_schemas``,
``completions_schemas``, ``info_schemas``, ``responses_schemas`` and ``responses_output``).

Requests validate strictly, as OpenAI does: ``"max_tokens": "10"`` is a 400, not a silent cast. No field of vLLM's
``CompletionRequest`` / ``ChatCompletionRequest`` or OpenAI's create parameters is silently ignored: each is
honoured, or, when it asks for what this server cannot do (``UNSUPPORTED_FIELDS``: logits processors, prompt
embeddings, ``functions``, ``audio``, ``store``, ``prediction``, a ``service_tier`` other than the default ...), a 400
naming it unless it holds its "nothing" value (``false``, ``{}``, its default), so clients that always send a field
keep working. A field the route does not know at all is a 400 naming it too, as OpenAI answers one
(``refuse_unknown``; vLLM logs it and goes on, which answers as if it had not been sent).
Range checks stay in ``SamplingParams`` (one definition of what is allowed); a violation there becomes a 400 naming
the field. Structured output comes under several names (``response_format``, ``structured_outputs``, the older
``guided_*`` and ``structural_tag``): one of them per request becomes ``SamplingParams.structured_outputs``.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Collection
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_serializer, model_validator

from jllm.beam_search import BeamSearchParams
from jllm.outputs import Logprob
from jllm.sampling import SamplingParams
from jllm.server.errors import bad_request
from jllm.tokenizer import Tokenizer

MAX_N = 128  # OpenAI's limit on choices per request; also bounds the sequences one request can create
MIN_LOGPROB = -9999.0  # what -inf becomes in JSON (OpenAI's and vLLM's clamp)

_NOTHING = (None, False, {}, [])
# vLLM request fields this server cannot honour: (the values that ask for nothing, why a request asking more is refused)
UNSUPPORTED_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "logprob_token_ids": (_NOTHING, "is not supported: logprobs come for the top tokens only"),
    "logits_processors": (_NOTHING, "are not supported: custom code cannot run inside the compiled sampler"),
    "guided_decoding_backend": ((None, "auto", "guidance"), "names the grammar engine: this server has 'guidance'"),
    "prompt_embeds": (_NOTHING, "are not supported: prompts are text or token ids"),
    "mm_processor_kwargs": (_NOTHING, "is not supported: the served models take text only"),
    "media_io_kwargs": (_NOTHING, "is not supported: the served models take text only"),
    "kv_transfer_params": (_NOTHING, "is not supported: this server does not disaggregate prefill and decode"),
    "ec_transfer_params": (_NOTHING, "is not supported: this server has no encoder cache"),
    "vllm_xargs": (_NOTHING, "is not supported: this server has no request extensions"),
    "watermarking": ((None, False), "is not supported: this server's sampler does not watermark its tokens"),
    "routed_experts_prompt_start": ((None, 0), "applies to routed-expert data, which this server does not return"),
    # vLLM takes these two on its /render routes alone and ignores them on generation's
    "return_token_offsets": ((None, False), "applies to vLLM's /render routes: this route returns no token offsets"),
    "return_mm_kwargs": ((None, True), "applies to vLLM's /render routes: this route returns no multimodal data"),
    "thinking_token_budget": (
        (None, -1),
        "applies to chat completions, where the model's reasoning_parser reads the reply",
    ),
    "spaces_between_special_tokens": ((None, True), "must be true: the only spacing this server decodes with"),
    "chat_template": ((None,), "renders chat messages, so chat completions (and /tokenize of messages) alone take it"),
    "reasoning_effort": ((None,), "reaches a chat template, so chat completions alone take it"),
    # OpenAI's fields that ask for what this server does not do (ignoring them would answer something else)
    "functions": (_NOTHING, "is OpenAI's deprecated function calling: send tools instead"),
    "function_call": ((None, "none", "auto"), "is OpenAI's deprecated function calling: send tool_choice instead"),
    "modalities": ((None, ["text"]), "is not supported: the served models generate text only"),
    "audio": ((None,), "is not supported: the served models generate text only"),
    "web_search_options": ((None,), "is not supported: this server cannot search the web"),
    "store": ((None, False), "is not supported: this server stores no completions"),
    "verbosity": ((None, "medium"), "is not supported: a reply's length follows the model and max_tokens"),
    "service_tier": (
        (None, "auto", "default"),
        "asks for a processing tier this server does not have: every request runs at its one tier, 'default'",
    ),
    "prediction": (
        (None,),
        "is not supported: this server does not draft from a predicted output (its speculative decoding looks up "
        "n-grams of the prompt and output)",
    ),
    "prompt_cache_retention": ((None, "in_memory"), "must be 'in_memory': the prefix cache lives in memory"),
    "prompt_cache_options": (_NOTHING, "is not supported: the prefix cache has no options per request"),
    "moderation": (_NOTHING, "is not supported: this server does not moderate"),
}

_BEAM = "is not supported with use_beam_search: beams are ranked by their logprobs alone"
# Fields a beam search cannot honour: (the values that ask for nothing, why a request asking more is refused)
BEAM_SEARCH_REFUSED: dict[str, tuple[tuple[Any, ...], str]] = {
    **{name: ((None,), _BEAM) for name in ("seed", "allowed_token_ids", "guided_json", "guided_regex")},
    **{name: ((None,), _BEAM) for name in ("guided_choice", "guided_grammar", "guided_whitespace_pattern")},
    "structural_tag": ((None,), _BEAM),
    "response_format": ((None, {"type": "text"}), _BEAM),
    **{name: (_NOTHING, _BEAM) for name in ("stop", "stop_token_ids", "logit_bias", "structured_outputs", "tools")},
    "bad_words": (_NOTHING, _BEAM),
    "repetition_detection": ((None,), _BEAM),
    "thinking_token_budget": ((None, -1), _BEAM),
    "priority": ((None, 0), _BEAM),
    "top_p": ((None, 1, 1.0), _BEAM),
    "top_k": ((None, -1, 0), _BEAM),
    "min_p": ((None, 0, 0.0), _BEAM),
    "presence_penalty": ((None, 0, 0.0), _BEAM),
    "frequency_penalty": ((None, 0, 0.0), _BEAM),
    "repetition_penalty": ((None, 1, 1.0), _BEAM),
    "min_tokens": ((None, 0), _BEAM),
    "logprobs": ((None, False), "is not supported with use_beam_search: the choices come without logprobs"),
    "top_logprobs": ((None, 0), "is not supported with use_beam_search: the choices come without logprobs"),
    "prompt_logprobs": ((None, 0), "is not supported with use_beam_search"),
    "tool_choice": ((None, "none"), "is not supported with use_beam_search: a beam is not held to a tool's schema"),
}


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data: Any) -> Any:
        """OpenAI's API makes its optional fields nullable, and clients send null for "not set" (``"n": null``,
        ``"stream": null``, ``"stream_options": {"include_usage": null}``): a null field that has a default takes
        it, as if left out."""
        if not isinstance(data, dict):
            return data
        defaulted = _defaulted_fields(cls)
        return {k: v for k, v in data.items() if v is not None or k not in defaulted}


def _chars(value: Any) -> int:
    """Characters in every key and string of a JSON value; any other scalar counts one."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_chars(k) + _chars(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(_chars(v) for v in value)
    return 1


@functools.cache
def _defaulted_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of ``model`` that are optional with a default other than None."""
    return frozenset(
        name for name, info in model.model_fields.items() if not info.is_required() and info.default is not None
    )


def refuse_unsupported(data: Any, table: dict[str, tuple[tuple[Any, ...], str]] = UNSUPPORTED_FIELDS) -> Any:
    """A 400 naming the first field of ``table`` that asks for something (in the table's order)."""
    if isinstance(data, dict):
        for name, (nothing, why) in table.items():
            if name in data and not any(data[name] == v and type(data[name]) is type(v) for v in nothing):
                raise bad_request(f"{name} {why}; leave it out", param=name)
    return data


def refuse_unknown(model: type[BaseModel], data: Any, refused: Collection[str] = ()) -> Any:
    """OpenAI's answer to a field ``model`` does not know (nor ``refused`` names): a 400 naming it. vLLM logs such a
    field and goes on, so a client's misspelt or newer field would be answered as if it had not been sent."""
    if isinstance(data, dict):
        known = _known_fields(model)
        unknown = next((name for name in data if name not in known and name not in refused), None)
        if unknown is not None:
            raise bad_request(
                f"Unrecognized request argument supplied: {unknown} (this route neither takes nor ignores it; leave "
                "it out)",
                param=str(unknown),
            )
    return data


@functools.cache
def _known_fields(model: type[BaseModel]) -> frozenset[str]:
    """The keys a body of ``model`` may hold: its fields' names and aliases."""
    return frozenset(name for field, info in model.model_fields.items() for name in (field, info.alias) if name)


def _refused_when_set(field: str, why: str) -> Any:
    """A validator for a known field this server cannot honour: any non-empty value is a 400 saying ``why``
    (ignoring it would return something else than asked for); an empty one (``{}``, ``""``, false) passes."""

    def refuse(cls: type, value: Any) -> Any:
        if value:
            raise ValueError(why)
        return value

    return field_validator(field)(classmethod(refuse))


# OpenAI's tags on a request (16 pairs at most, keys of 64 characters, values of 512): nothing in the answer
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)
]


class _StrictRequest(_Request):
    """A request part whose keys OpenAI defines: a key not known is a 400 naming its path, as OpenAI answers it
    (vLLM drops it), rather than ignored."""

    model_config = ConfigDict(strict=True, extra="forbid")


class ObfuscationOption(_StrictRequest):
    """OpenAI's ``stream_options`` as the Responses API takes them."""

    include_obfuscation: bool = False  # OpenAI's: random padding in each chunk, which this server does not send

    _no_obfuscation = _refused_when_set(
        "include_obfuscation", "is not supported: this server sends no obfuscation padding; send false or leave it out"
    )


class StreamOptions(ObfuscationOption):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: every chunk's usage too, its choice's tokens so far

    @model_validator(mode="after")
    def _continuous_with_usage(self) -> StreamOptions:
        if self.continuous_usage_stats and not self.include_usage:
            raise ValueError("continuous_usage_stats needs include_usage: true (vLLM's rule: usage in every chunk)")
        return self


class JsonSchemaFormat(_Request):
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None  # the output always follows the schema: strict or not, it is enforced


STRUCTURAL_TAG_KEYS = ("structures", "triggers", "format")  # vLLM's structural_tag response format ("format": refused)


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchemaFormat | None = None
    structures: list[Any] | None = None  # these three: checked by jllm.structural_tag, which names what is wrong
    triggers: list[Any] | None = None
    format: Any = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.json_schema is None) == (self.type == "json_schema"):
            raise ValueError("json_schema is required with type 'json_schema', and only with it")
        tag_keys = [key for key in STRUCTURAL_TAG_KEYS if getattr(self, key) is not None]
        if tag_keys and self.type != "structural_tag":
            raise ValueError(f"{tag_keys[0]} comes only with type 'structural_tag'")
        return self

    def structured_outputs(self) -> dict[str, Any] | None:
        if self.type == "json_object":
            return {"json_object": True}
        if self.json_schema is not None:
            return {"json": self.json_schema.json_schema}
        if self.type == "structural_tag":
            return {
                "structural_tag": {
                    key: getattr(self, key) for key in STRUCTURAL_TAG_KEYS if getattr(self, key) is not None
                }
            }
        return None


class _GenerationRequest(_Request):
    """The fields both generation endpoints share: OpenAI's, then vLLM's extras. None means "the default"."""

    refused_fields: ClassVar[dict[str, tuple[tuple[Any, ...], str]]] = UNSUPPORTED_FIELDS  # the route's refusals

    model: str | None = None
    n: int = Field(1, le=MAX_N)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None  # chat: omitted (or null) = up to the context limit
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    best_of: int | None = None
    response_format: ResponseFormat | None = None
    logit_bias: dict[str, float] | None = None  # OpenAI's: token id (as a string) -> bias in [-100, 100]
    allowed_token_ids: list[int] | None = None  # vLLM's: only these ids may be sampled
    bad_words: list[str] | None = None  # vLLM's: words never to generate (jllm.bad_words)
    repetition_detection: dict[str, Any] | None = None  # vLLM's: end a sample caught in a loop (jllm.repetition)
    # vLLM's structured output (its StructuredOutputsParams' keys), and its older guided_* names
    structured_outputs: dict[str, Any] | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_whitespace_pattern: str | None = None  # vLLM's older name for structured_outputs.whitespace_pattern
    structural_tag: str | dict[str, Any] | None = None  # vLLM's older name for structured_outputs.structural_tag
    prompt_logprobs: int | None = None  # vLLM's: the prompt tokens' logprobs, in the response's prompt_logprobs
    return_tokens_as_token_ids: bool | None = None  # vLLM's: logprobs name each token "token_id:<id>" (TokenNames)
    return_token_ids: bool | None = None  # vLLM's: token_ids (and prompt_token_ids) beside the text (WithTokenIds)
    cache_salt: str | None = None  # vLLM's: the prompt's prefix-cache pages shared only with the same salt's
    truncate_prompt_tokens: int | None = None  # vLLM's: keep the last k prompt tokens (-1: the context less max_tokens)
    truncation_side: Literal["left", "right"] | None = None  # vLLM's: "right" keeps the first k instead
    priority: int = 0  # vLLM's: lower runs first, under the priority scheduling policy only (LLMEngine.check_priority)
    user: str | None = None  # OpenAI's end-user id for abuse monitoring: accepted, unused (as vLLM)
    # OpenAI's developer tags for finding a completion in its dashboard: nothing in the answer, so accepted as sent
    # (vLLM ignores them; LiteLLM and other proxies send them without store), held to OpenAI's limits
    metadata: Metadata | None = None
    session_id: str | None = None  # vLLM's: a conversation's stable id, for routing: changes nothing in the answer
    stream_interval: int | None = Field(None, ge=1)  # vLLM's: a streamed chunk per this many tokens (1: each token)
    request_id: str | None = None  # vLLM's: the request's id when no X-Request-Id header names one
    # vLLM's beam search (jllm.beam_search): n beams, the n best returned, each ranked by its cumulative logprob over
    # its length to the power length_penalty
    use_beam_search: bool = False
    length_penalty: float = 1.0

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        data = refuse_unknown(cls, refuse_unsupported(data, cls.refused_fields), cls.refused_fields)
        if isinstance(data, dict) and data.get("use_beam_search") is True:
            refuse_unsupported(data, BEAM_SEARCH_REFUSED)
        return data

    @field_validator("length_penalty")
    @classmethod
    def _beam_search_only(cls, value: float, info: ValidationInfo) -> float:
        if value != 1.0 and not info.data.get("use_beam_search"):
            raise ValueError("applies to beam search only: send use_beam_search true, or leave it out")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n")
        if value is not None and n is not None and value != n:
            raise ValueError(f"must equal n={n}, got {value}: ranking more samples than are returned is not supported")
        return value

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        """Options for a stream; without one, an empty object (or only nulls) asks for nothing and is taken as left
        out, as vLLM takes it (it refuses only a non-empty one)."""
        if value is None or info.data.get("stream"):
            return value
        if not value.model_fields_set:
            return None
        raise ValueError("is only allowed when stream is true")

    @field_validator("prompt_logprobs")
    @classmethod
    def _not_streamed(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and info.data.get("stream"):
            raise ValueError("is not available when stream is true (vLLM's rule); ask without streaming")
        return value

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.continuous_usage_stats

    def _sampling_params(
        self,
        *,
        max_tokens: int | None,
        logprobs: int | None,
        prompt_logprobs: int | None = None,
        sent_as: dict[str, str] | None = None,
        forced_call: dict[str, Any] | None = None,
        defaults: dict[str, Any] | None = None,
    ) -> SamplingParams:
        """``sent_as`` renames a SamplingParams field in errors to the request field it came from; ``defaults``
        (the served model's generation_config.json's) fill the fields the request leaves unset, but for
        ``max_tokens``: the route caps its default by the prompt (``InputProcessor.with_default_max_tokens``)."""
        defaults = defaults or {}
        given = {
            name: getattr(self, name)
            for name in (
                "truncate_prompt_tokens",
                "truncation_side",
                "temperature",
                "top_p",
                "seed",
                "stop",
                "presence_penalty",
                "frequency_penalty",
                "top_k",
                "min_p",
                "repetition_penalty",
                "min_tokens",
                "ignore_eos",
                "stop_token_ids",
                "skip_special_tokens",
                "include_stop_str_in_output",
                "logit_bias",
                "allowed_token_ids",
                "bad_words",
                "repetition_detection",
            )
            if getattr(self, name) is not None
        }
        optional = {**{name: value for name, value in defaults.items() if name != "max_tokens"}, **given}
        source, structured = self._structured_outputs(forced_call)
        sent_as = {**(sent_as or {}), "structured_outputs": source}
        try:
            return SamplingParams(
                n=self.n,
                max_tokens=max_tokens,
                logprobs=logprobs,
                prompt_logprobs=prompt_logprobs,
                structured_outputs=structured,
                **optional,
            )
        except ValueError as e:  # SamplingParams' messages start with the field's name (repetition_detection.<key>)
            field, _, rest = str(e).partition(" ")
            base, dot, key = field.partition(".")
            name = sent_as.get(base, base)
            field = name + dot + key if name == base else name  # a field sent under another name: that name
            raise bad_request(f"{field} {rest}", param=name if name in type(self).model_fields else None) from e

    def constraint_chars(self, forced_call: dict[str, Any] | None = None) -> int:
        """The size of the structured-output constraint (characters of its keys and values): llguidance checks a
        grammar in time that grows with it (3.6 s for 100,000 choices), so a large one is checked off the event
        loop (``HostWork``)."""
        return _chars(self._structured_outputs(forced_call)[1])

    def constraint_field(self, forced_call: dict[str, Any] | None = None) -> str | None:
        """The field that asked for structured output (``tool_choice`` for a forced call); None if none did."""
        source, structured = self._structured_outputs(forced_call)
        return None if structured is None else source

    def beam_search_params(self, params: SamplingParams, context_left: int) -> BeamSearchParams:
        """The search this request asks for (``use_beam_search``), from its checked ``params``: ``n`` beams, its
        temperature or 0 (the model's generation_config.json does not apply, as its other sampling fields cannot),
        ``max_tokens`` or else the context the longest prompt leaves (``context_left``)."""
        try:
            return BeamSearchParams(
                beam_width=self.n,
                max_tokens=params.max_tokens if params.max_tokens is not None else context_left,
                ignore_eos=params.ignore_eos,
                temperature=self.temperature or 0.0,
                length_penalty=self.length_penalty,
                include_stop_str_in_output=params.include_stop_str_in_output,
            )
        except ValueError as e:  # BeamSearchParams' messages start with the field's name
            field, _, rest = str(e).partition(" ")
            name = "n" if field == "beam_width" else field
            raise bad_request(f"{name} {rest}", param=name) from e

    def _structured_outputs(self, forced_call: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
        """The one structured-output constraint asked for, and the field that asked (vLLM's several names, or a
        forced tool call's schema)."""
        given = {
            name: value
            for name, value in [
                ("tool_choice", None if forced_call is None else {"json": forced_call}),
                ("response_format", self.response_format and self.response_format.structured_outputs()),
                ("structured_outputs", self.structured_outputs or None),
                ("guided_json", None if self.guided_json is None else {"json": self.guided_json}),
                ("guided_regex", None if self.guided_regex is None else {"regex": self.guided_regex}),
                ("guided_choice", None if self.guided_choice is None else {"choice": self.guided_choice}),
                ("guided_grammar", None if self.guided_grammar is None else {"grammar": self.guided_grammar}),
                ("structural_tag", None if self.structural_tag is None else {"structural_tag": self.structural_tag}),
            ]
            if value is not None
        }
        if len(given) > 1:
            names = sorted(given)
            raise bad_request(
                f"{names[1]}: give one structured-output constraint, got {', '.join(names)}", param=names[1]
            )
        source, constraint = next(iter(given.items()), ("structured_outputs", None))
        if self.guided_whitespace_pattern is None:
            return source, constraint
        if constraint is None:
            raise bad_request(
                "guided_whitespace_pattern shapes a JSON constraint's whitespace: send one (guided_json, "
                "response_format, structured_outputs), or leave it out",
                param="guided_whitespace_pattern",
            )
        return source, {**constraint, "whitespace_pattern": self.guided_whitespace_pattern}


def prompt_list(value: str | list[str] | list[int] | list[list[int]], param: str) -> list[str | list[int]]:
    """OpenAI's prompt-or-input field as one entry per engine request: a string, strings, one token-id list or
    several; an empty list is a 400 naming ``param``."""
    if isinstance(value, str):
        return [value]
    if not value:
        raise bad_request(f"{param} is empty: give a string, a list of strings, or token ids", param=param)
    if isinstance(value[0], int):
        return [value]  # one prompt of token ids
    return list(value)


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails | None = None  # with a reasoning format in force (vLLM's)

    @model_serializer(mode="wrap")
    def _details_when_counted(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("completion_tokens_details") is None:
            data.pop("completion_tokens_details", None)
        return data


@dataclasses.dataclass(frozen=True)
class TokenNames:
    """How logprobs name a token: its text and bytes (``Tokenizer.token_text``), or with vLLM's
    ``return_tokens_as_token_ids`` ``"token_id:<id>"``, which tells every token apart, those whose bytes are not a
    whole character and those whose text another token shares among them."""

    tokenizer: Tokenizer
    as_ids: bool = False

    def text(self, token_id: int) -> str:
        return f"token_id:{token_id}" if self.as_ids else self.tokenizer.token_text(token_id)

    def bytes(self, token_id: int) -> bytes:
        return self.text(token_id).encode() if self.as_ids else self.tokenizer.token_bytes(token_id)


class WithTokenIds(BaseModel):
    """A response part that carries vLLM's ``token_ids`` / ``prompt_token_ids`` when ``return_token_ids`` asks for
    them (and ``prompt_text`` when ``return_prompt_text`` does), and leaves the keys out otherwise (a response asked
    without them is as it was)."""

    @model_serializer(mode="wrap")
    def _ids_when_asked(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for key in ("token_ids", "prompt_token_ids", "prompt_text"):
            if key in data and data[key] is None:
                del data[key]
        return data


class PromptLogprob(BaseModel):
    """vLLM's ``Logprob`` as its responses carry it in ``prompt_logprobs`` (keyed by token id)."""

    logprob: float
    rank: int | None
    decoded_token: str | None

    @classmethod
    def of(cls, lp: Logprob) -> PromptLogprob:
        return cls(logprob=max(lp.logprob, MIN_LOGPROB), rank=lp.rank, decoded_token=lp.decoded_token)


PromptLogprobs = list[dict[int, PromptLogprob] | None]


def prompt_logprobs_json(entries: list[dict[int, Logprob] | None] | None) -> PromptLogprobs | None:
    """The engine's prompt logprobs as vLLM returns them: None for the first token, then one dict per token."""
    if entries is None:
        return None
    return [None if e is None else {tid: PromptLogprob.of(lp) for tid, lp in e.items()} for e in entries]

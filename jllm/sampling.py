"""`SamplingParams`: what one request asks of the sampler, validated once at the door.

Fields, defaults and ranges follow vLLM's ``SamplingParams`` so OpenAI-style clients behave the same here. Plain
Python: the scheduler, engine and server import this without JAX. The device sampler lives in ``jllm/sampler.py``.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from jllm.bad_words import check_bad_words
from jllm.repetition import RepetitionDetectionParams
from jllm.structured_output import StructuredOutputsParams

logger = logging.getLogger(__name__)

FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32: device maths flushes smaller values to 0
FLOAT32_MAX = 3.4028234663852886e38
SAMPLING_EPS = 1e-5  # temperatures below this mean greedy (vLLM's _SAMPLING_EPS)
MIN_TEMPERATURE = 1e-2  # smaller positive temperatures are raised to this: logits / 1e-5 overflow to inf/NaN
MAX_LOGPROBS = 20  # the most top logprobs one token may ask for (OpenAI's limit)
MAX_INT32 = 2**31 - 1  # top_k and token ids go to the device as int32: a larger one would kill the step loop
TRUNCATION_SIDES = ("left", "right")  # vLLM's truncation_side: "left" keeps a prompt's last tokens, "right" its first
SEED_RANGE = (-(2**63), 2**63 - 1)  # int64, as vLLM and OpenAI accept
MAX_LOGIT_BIAS = (
    1024  # entries per request: the general sampler's logit-bias width (one shape, whatever a request sends)
)
LOGIT_BIAS_RANGE = 100.0  # OpenAI's: each bias in [-100, 100]
UNSUPPORTED = {  # vLLM SamplingParams fields jllm refuses when set, and why
    "guided_decoding": "it is vLLM's earlier name: use structured_outputs",
    "logits_processors": "custom logits processors cannot run inside the compiled sampler",
    "logprob_token_ids": "logprobs come for the top tokens only",
    "extra_args": "they are read by custom sampling implementations and plugins, which jllm does not load",
    "flat_logprobs": "logprobs come as vLLM's default list of dicts",
    "skip_reading_prefix_cache": "a request reads the prefix cache as every other does (prompt_logprobs ones never)",
}


# generation_config.json keys a request's sampling defaults to, as vLLM reads them (max_new_tokens as max_tokens)
GENERATION_CONFIG_KEYS = ("repetition_penalty", "temperature", "top_k", "top_p", "min_p", "max_new_tokens")


def generation_defaults(generation_config: dict[str, Any]) -> dict[str, Any]:
    """The sampling fields a model's ``generation_config.json`` recommends (vLLM's ``get_diff_sampling_param``):
    each key it sets, ``max_new_tokens`` renamed ``max_tokens``; checked as ``SamplingParams`` checks a request."""
    found = {key: generation_config[key] for key in GENERATION_CONFIG_KEYS if generation_config.get(key) is not None}
    if "max_new_tokens" in found:
        found["max_tokens"] = found.pop("max_new_tokens")
    try:
        SamplingParams(**found)
    except ValueError as e:
        raise ValueError(f"generation_config.json: {e}") from e
    return found


class RequestOutputKind(Enum):
    """Which outputs ``LLMEngine.step`` returns for a request (vLLM's names)."""

    CUMULATIVE = 0  # after every step that adds tokens: the whole output so far
    DELTA = 1  # after every step that adds tokens: only what is new since the last output (what a stream sends)
    FINAL_ONLY = 2  # once, when the request finishes: no per-step output objects, text decoded once at the end


@dataclass
class SamplingParams:
    """How to pick each next token and when to stop. ``__post_init__`` validates and normalises in place."""

    n: int = 1  # samples per request, each its own sequence
    temperature: float = 1.0  # 0 (below SAMPLING_EPS) = greedy
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches top_p; 1 = off
    top_k: int = 0  # keep the k most likely tokens; 0 or -1 = off
    min_p: float = 0.0  # drop tokens less likely than min_p times the most likely one; 0 = off
    presence_penalty: float = 0.0  # subtracted once from every token already in the output
    frequency_penalty: float = 0.0  # subtracted per occurrence in the output
    repetition_penalty: float = 1.0  # divides positive / multiplies negative logits of prompt+output tokens; 1 = off
    seed: int | None = None  # None: the engine draws one (every sample stays reproducible from its Sequence)
    stop: str | list[str] | None = None  # stop strings; normalised to a list
    stop_token_ids: list[int] | None = None  # normalised to a de-duplicated list
    ignore_eos: bool = False  # keep going past EOS (the sampler still bans EOS before min_tokens)
    max_tokens: int | None = 16  # None = up to the model's context limit
    min_tokens: int = 0  # EOS and stop_token_ids are banned until this many tokens are out
    logprobs: int | None = None  # how many top logprobs to return per output token (the sampled one always comes)
    prompt_logprobs: int | None = None  # how many top logprobs to return per prompt token
    detokenize: bool = True  # vLLM's: False leaves every text empty (token ids and logprobs without decoded tokens)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False  # also shows the text of a stop token (EOS or a stop id), as vLLM
    spaces_between_special_tokens: bool = True  # vLLM's; only the default is supported
    truncate_prompt_tokens: int | None = None  # keep the last k prompt tokens (-1: the context less max_tokens)
    truncation_side: str = "left"  # vLLM's: "right" keeps the first truncate_prompt_tokens tokens instead
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE  # LLM.generate asks for FINAL_ONLY
    logit_bias: dict[int, float] | None = None  # OpenAI's: token id -> bias in [-100, 100] added to its logit
    allowed_token_ids: list[int] | None = None  # vLLM's: only these ids may be sampled
    # a grammar the output must follow: a StructuredOutputsParams or a dict of its fields (vLLM's names)
    structured_outputs: StructuredOutputsParams | dict[str, Any] | None = None
    bad_words: list[str] | None = None  # vLLM's: words never to generate (jllm.bad_words)
    # vLLM's: end a sample caught in a loop (jllm.repetition); a dict of its keys is taken too
    repetition_detection: RepetitionDetectionParams | dict[str, Any] | None = None
    # vLLM's names for what jllm cannot do yet: accepted as arguments only to be refused by name when set.
    guided_decoding: object | None = None  # vLLM's earlier name for structured_outputs
    logits_processors: list | None = None
    logprob_token_ids: list[int] | None = None
    extra_args: dict[str, Any] | None = None
    flat_logprobs: bool | None = None  # False (vLLM's default) is taken too
    skip_reading_prefix_cache: bool | None = None  # False is taken too
    best_of: int | None = None  # vLLM's: samples drawn, the n most likely returned; only n itself (no ranking)

    def __post_init__(self) -> None:
        if self.seed == -1:  # vLLM and OpenAI clients send -1 for "no seed"
            self.seed = None
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = _as_list("stop", self.stop, "a string or a list of non-empty strings")
        ids = [] if self.stop_token_ids is None else _as_list("stop_token_ids", self.stop_token_ids, "a list of ids")
        self.stop_token_ids = list(dict.fromkeys(ids))
        if self.top_k == -1:
            self.top_k = 0
        self._validate()
        if self.is_greedy:
            # Greedy ignores the truncations; resetting them keeps greedy rows off the sort path.
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
        elif self.temperature < MIN_TEMPERATURE:
            logger.warning(
                "temperature=%s is below %s, which makes logits overflow; using %s",
                self.temperature,
                MIN_TEMPERATURE,
                MIN_TEMPERATURE,
            )
            self.temperature = MIN_TEMPERATURE

    def _validate(self) -> None:
        """Field families in a fixed order, so a request with several bad fields always reports the same one first."""
        self._validate_sampling()
        self._validate_lengths()
        self._validate_logprobs()
        self._validate_stops()
        self._validate_flags()
        self._validate_constraints()
        self._refuse_unsupported()

    def _validate_sampling(self) -> None:
        """How each token is drawn: sample count, temperature, truncations, penalties and seed."""
        _check_int("n", self.n, low=1)
        _check_real(
            "temperature", self.temperature, f"be in [0, {FLOAT32_MAX:.3g}] (float32)", lambda v: 0 <= v <= FLOAT32_MAX
        )
        _check_real("top_p", self.top_p, f"be in [{FLOAT32_TINY:.3g}, 1] (float32, as the sampler)", _in_float32(1.0))
        _check_int("top_k", self.top_k, low=0, high=MAX_INT32, hint=f"0 or -1 (off) or in [1, {MAX_INT32}]")
        _check_real("min_p", self.min_p, "be in [0, 1]", lambda v: 0.0 <= v <= 1.0)
        for name in ("presence_penalty", "frequency_penalty"):
            _check_real(name, getattr(self, name), "be in [-2, 2]", lambda v: -2.0 <= v <= 2.0)
        _check_real(
            "repetition_penalty",
            self.repetition_penalty,
            f"be in [{FLOAT32_TINY:.3g}, {FLOAT32_MAX:.3g}] (float32, as the sampler; 1 = off)",
            _in_float32(FLOAT32_MAX),
        )
        if self.seed is not None:
            _check_int("seed", self.seed, *SEED_RANGE)
        if self.best_of is not None and self.best_of != self.n:
            _check_int("best_of", self.best_of, low=self.n, hint=f"an integer >= n={self.n}")
            raise ValueError(
                f"best_of={self.best_of} is not supported: it must equal n={self.n} or be left out (jllm returns every "
                "sample it draws; ranking more samples than are returned is not supported)"
            )

    def _validate_lengths(self) -> None:
        if self.truncation_side not in TRUNCATION_SIDES:
            raise ValueError(f"truncation_side must be 'left' or 'right', got {self.truncation_side!r}")
        if self.truncate_prompt_tokens is not None and self.truncate_prompt_tokens != -1:
            _check_int(
                "truncate_prompt_tokens", self.truncate_prompt_tokens, low=1, hint="at least 1, or -1 (the context)"
            )
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, low=1, hint="at least 1, or None for the context limit")
        _check_int("min_tokens", self.min_tokens, low=0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be <= max_tokens={self.max_tokens}, got {self.min_tokens}")

    def _validate_logprobs(self) -> None:
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, low=0, high=MAX_LOGPROBS)

    def _validate_stops(self) -> None:
        """After ``__post_init__`` made both lists: what is in them."""
        if not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be non-empty strings, got {self.stop!r}")
        if not all(_is_int(t) and 0 <= t <= MAX_INT32 for t in self.stop_token_ids):
            raise ValueError(
                f"stop_token_ids must be non-negative integers up to {MAX_INT32}, got {self.stop_token_ids!r}"
            )

    def _validate_flags(self) -> None:
        for name in ("ignore_eos", "detokenize", "skip_special_tokens", "include_stop_str_in_output"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not self.detokenize and self.stop:  # vLLM's rule: stop strings are matched in the decoded text
            raise ValueError(
                f"stop strings need the text: stop={self.stop!r} with detokenize=False; use stop_token_ids"
            )
        if not isinstance(self.output_kind, RequestOutputKind):
            raise ValueError(f"output_kind must be a RequestOutputKind, got {self.output_kind!r}")
        if self.spaces_between_special_tokens is not True:
            raise ValueError(
                f"spaces_between_special_tokens must be true (the only spacing jllm decodes with), "
                f"got {self.spaces_between_special_tokens!r}"
            )

    def _validate_constraints(self) -> None:
        """The token mask and bias: ids must be token ids (the input door checks them against the vocabulary)."""
        if self.structured_outputs is not None:
            self.structured_outputs = StructuredOutputsParams.of(self.structured_outputs)
        if self.allowed_token_ids is not None:
            ids = _as_list("allowed_token_ids", self.allowed_token_ids, "a non-empty list of token ids")
            if not ids or not all(_is_int(t) and 0 <= t <= MAX_INT32 for t in ids):
                raise ValueError(f"allowed_token_ids must be a non-empty list of token ids, got {ids!r}")
            self.allowed_token_ids = sorted(set(ids))
        if self.logit_bias is not None:
            self.logit_bias = _logit_bias(self.logit_bias)
        if self.bad_words is not None:
            self.bad_words = check_bad_words(self.bad_words)
        if self.repetition_detection is not None:
            self.repetition_detection = RepetitionDetectionParams.of(self.repetition_detection)

    def _refuse_unsupported(self) -> None:
        """vLLM's arguments for what jllm cannot do yet: set to anything but "nothing", they are refused by name
        rather than ignored, since ignoring them would return something else than asked for."""
        for name, why in UNSUPPORTED.items():
            value = getattr(self, name)
            if value not in (None, {}, []) and value is not False:  # False: a switch left off
                raise ValueError(f"{name} is not supported by jllm yet ({why}); leave it out")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS

    @property
    def uses_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0


def _logit_bias(value: object) -> dict[int, float]:
    """Token id (an int, or its decimal string as JSON sends it) -> bias in [-100, 100]."""
    if not isinstance(value, dict) or len(value) > MAX_LOGIT_BIAS:
        raise ValueError(f"logit_bias must map at most {MAX_LOGIT_BIAS} token ids to biases, got {value!r:.200}")
    bias = {}
    for key, b in value.items():
        token = int(key) if isinstance(key, str) and key.isdigit() else key
        if not _is_int(token) or not 0 <= token <= MAX_INT32:
            raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
        _check_real(
            "logit_bias",
            b,
            f"map to biases in [-{LOGIT_BIAS_RANGE:g}, {LOGIT_BIAS_RANGE:g}]",
            lambda v: abs(v) <= LOGIT_BIAS_RANGE,
        )
        bias[token] = float(b)
    return bias


def _as_list(name: str, value: object, allowed: str) -> list:
    """``value`` as a list, when it is a list or tuple (a YAML or Python caller may send anything)."""
    if not isinstance(value, list | tuple):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return list(value)


def _in_float32(high: float) -> Callable[[float], bool]:
    """A positive value the device's float32 keeps as a normal number (a subnormal flushes to 0, flipping the
    meaning of top_p or repetition_penalty), up to ``high``."""
    return lambda v: FLOAT32_TINY <= v <= high


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value: object, low: int | None = None, high: int | None = None, hint: str = "") -> None:
    if low is not None and high is not None:
        allowed = f"an integer in [{low}, {high}]"
    elif low is not None:
        allowed = f"an integer >= {low}"
    else:
        allowed = "an integer"
    if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {hint or allowed}, got {value!r}")


def _check_real(name: str, value: object, allowed: str, ok: Callable[[float], bool]) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} must {allowed}, got {value!r}")

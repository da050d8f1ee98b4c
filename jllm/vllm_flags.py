"""vLLM's engine options that jllm spells differently or has no key for, so that a vLLM command line runs as
``jllm serve`` and a vLLM script's ``LLM(...)`` keywords run as they are: each is honoured (``block_size`` is
``page_size``; ``trust_remote_code``, ``disable_log_requests`` and ``disable_log_stats`` ask for what jllm does anyway,
as ``swap_space`` 0, parallel sizes of 1, the model's own ``tokenizer``, ``max_logprobs`` 20 and a ``task`` / ``runner``
of generation or embedding do), or refused naming why (chunked prefill off, ``enforce_eager``, a swap space, pipeline
or data parallelism, another tokenizer, a Hub ``revision`` or ``download_dir``). Options vLLM and jllm share keep their
one spelling (``jllm.config``'s keys).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from jllm.config import ConfigError
from jllm.sampling import MAX_LOGPROBS

logger = logging.getLogger(__name__)

# option -> why jllm already does what it asks (accepted: a flag that changes nothing here)
ALREADY_SO = {
    "trust_remote_code": "jllm converts checkpoints without running their code: there is none to trust",
    "disable_log_requests": "jllm logs no request's prompt or parameters",
    "disable_log_stats": "jllm logs no periodic engine statistics (they are at /metrics)",
}
# vLLM's parallel sizes jllm has no such parallelism for: 1 (vLLM's default) asks for what jllm does
UNPARALLEL = {
    "pipeline_parallel_size": "jllm splits a model over devices by tensor parallelism alone: use tensor_parallel_size",
    "data_parallel_size": "one jllm engine runs per process: start one server per replica behind a load balancer",
}
# option -> why jllm cannot honour it (the tokenizer is taken where it is the model's own path)
ELSEWHERE = {
    "tokenizer": "jllm reads the tokenizer from the model's own directory (its tokenizer.json)",
    "revision": "jllm loads local directories and .gguf files: there is no Hub revision to pick",
    "download_dir": "jllm downloads nothing: fetch the model first and give its directory",
}
# vLLM's model-runner choices that jllm makes from the checkpoint's architecture instead: the values taken ask for
# what every decoder does here (generate, and encode / embed through LLM and /v1/embeddings)
RUNNER_CHOICES = {"task": ("auto", "generate", "embed", "embedding"), "runner": ("auto", "generate", "pooling")}
VLLM_KEYS = (
    *RUNNER_CHOICES,
    "block_size",
    *ALREADY_SO,
    "enable_chunked_prefill",
    "enforce_eager",
    "swap_space",
    *UNPARALLEL,
    *ELSEWHERE,
    "max_logprobs",
)


def add_vllm_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("vLLM's spellings (vllm serve command lines run as they are)")
    group.add_argument("--block-size", type=int, default=None, metavar="N", help="vLLM's name for --page-size")
    for key in ALREADY_SO:
        option = "--" + key.replace("_", "-")
        group.add_argument(option, action="store_true", help=f"accepted: {ALREADY_SO[key]}")
    group.add_argument(
        "--enable-chunked-prefill",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="always on: long prompts are prefilled in chunks under --max-num-batched-tokens",
    )
    group.add_argument("--enforce-eager", action="store_true", help="refused: every step is a compiled program")
    group.add_argument(
        "--swap-space", type=float, default=None, metavar="GIB", help="refused but for 0: see --num-pages"
    )
    for key, why in UNPARALLEL.items():
        group.add_argument(
            "--" + key.replace("_", "-"), type=int, default=None, metavar="N", help=f"1, or refused: {why}"
        )
    for key, why in ELSEWHERE.items():
        taken = "the model's own path, or " if key == "tokenizer" else ""
        group.add_argument(
            "--" + key.replace("_", "-"), default=None, metavar=key.upper(), help=f"{taken}refused: {why}"
        )
    group.add_argument(
        "--max-logprobs", type=int, default=None, metavar="N", help=f"{MAX_LOGPROBS} (jllm's fixed limit), or refused"
    )
    for key, values in RUNNER_CHOICES.items():
        group.add_argument("--" + key, default=None, metavar=key.upper(), help=f"{' | '.join(values)}, or refused")


def apply_vllm_options(args: argparse.Namespace) -> None:
    """Folds vLLM's spellings into jllm's keys on ``args``; ConfigError names an option that cannot be honoured."""
    given = {key: getattr(args, key) for key in VLLM_KEYS if getattr(args, key) is not None}
    folded = _fold(given, args.page_size, args.model_arg or args.model, cli=True)
    if "page_size" in folded:
        args.page_size = folded["page_size"]


def apply_vllm_keywords(overrides: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """``LLM(model, ...)``'s keywords with vLLM's spellings folded into jllm's keys (``block_size=16`` is
    ``page_size``, ``trust_remote_code=True`` accepted); ConfigError names one that cannot be honoured
    (``enforce_eager=True``)."""
    given = {key: overrides[key] for key in VLLM_KEYS if key in overrides}
    rest = {key: value for key, value in overrides.items() if key not in given}
    return rest | _fold(given, overrides.get("page_size"), model, cli=False)


def _fold(given: dict[str, Any], page_size: Any, model: str | None, cli: bool) -> dict[str, Any]:
    """jllm's keys for the vLLM options ``given`` (each with its value); ``cli``: named as options, else keywords."""
    for name in ("enforce_eager", "enable_chunked_prefill", *ALREADY_SO):
        if name in given and not isinstance(given[name], bool):
            raise ConfigError(f"{name} must be true or false, got {given[name]!r}", key=name)
    _refuse(given, cli)
    _refuse_choices(given, model, cli)
    for name, why in ALREADY_SO.items():
        if given.get(name):
            logger.info("%s: %s", _key(name, cli), why)
    block = given.get("block_size")
    if block is None:
        return {}
    if page_size is not None and page_size != block:
        raise ConfigError(
            f"{_asked('block_size', block, cli)} and {_asked('page_size', page_size, cli)}: give one (the same)",
            key="block_size",
        )
    return {"page_size": block}


def _refuse(given: dict[str, Any], cli: bool) -> None:
    """A ConfigError naming the first option of ``given`` that asks for what jllm cannot do, and why."""
    if given.get("enable_chunked_prefill") is False:
        raise ConfigError(
            f"{_asked('enable_chunked_prefill', False, cli)} cannot be honoured: jllm always prefills long prompts in "
            f"chunks of at most {_key('max_num_batched_tokens', cli)} beside the running decodes (raise that to "
            "prefill a prompt in one step)",
            key="enable_chunked_prefill",
        )
    if given.get("enforce_eager"):
        raise ConfigError(
            f"{_asked('enforce_eager', True, cli)} cannot be honoured: every jllm step is a compiled XLA program "
            f"(there is no eager mode); {_asked('compile_at_start', False, cli)} compiles each on its first use "
            "instead of at start-up",
            key="enforce_eager",
        )
    if given.get("max_logprobs", MAX_LOGPROBS) != MAX_LOGPROBS:
        raise ConfigError(
            f"{_asked('max_logprobs', given['max_logprobs'], cli)} cannot be honoured: jllm returns at most "
            f"{MAX_LOGPROBS} top logprobs a token (OpenAI's limit), a limit fixed in its sampler",
            key="max_logprobs",
        )
    swap = given.get("swap_space")
    if swap is not None and swap != 0:
        raise ConfigError(
            f"{_asked('swap_space', swap, cli)} cannot be honoured: jllm recomputes a preempted request's KV instead "
            f"of swapping it to the host (a swap space of 0); size the pool with {_key('num_pages', cli)} or "
            f"{_key('gpu_memory_utilization', cli)}",
            key="swap_space",
        )


def _refuse_choices(given: dict[str, Any], model: str | None, cli: bool) -> None:
    """The same for the options whose values jllm takes only where they ask for what it does: the runner, one
    replica and stage, the model's own tokenizer, no Hub revision or download folder."""
    for name, values in RUNNER_CHOICES.items():
        if given.get(name) is not None and given[name] not in values:
            raise ConfigError(
                f"{_asked(name, given[name], cli)} cannot be honoured: jllm runs a checkpoint as its architecture "
                "says (a decoder generates, encodes and embeds; a *ForSequenceClassification classifies and scores); "
                f"{_key(name, cli)} takes {', '.join(values)}",
                key=name,
            )
    for name, why in UNPARALLEL.items():
        if given.get(name, 1) != 1:
            raise ConfigError(f"{_asked(name, given[name], cli)} cannot be honoured: {why}", key=name)
    for name in ("revision", "download_dir"):
        if given.get(name) is not None:
            raise ConfigError(f"{_asked(name, given[name], cli)} cannot be honoured: {ELSEWHERE[name]}", key=name)
    if given.get("tokenizer") is not None and given["tokenizer"] != model:
        raise ConfigError(
            f"{_asked('tokenizer', given['tokenizer'], cli)} cannot be honoured: {ELSEWHERE['tokenizer']}",
            key="tokenizer",
        )


def _key(name: str, cli: bool) -> str:
    return "--" + name.replace("_", "-") if cli else name


def _asked(name: str, value: object, cli: bool) -> str:
    """How the user wrote ``name`` with ``value``: ``--no-enforce-eager``, ``--block-size 8``, ``block_size=8``."""
    if not cli:
        return f"{name}={value!r}"
    if isinstance(value, bool):
        return _key(name, cli) if value else "--no-" + name.replace("_", "-")
    return f"{_key(name, cli)} {value}"

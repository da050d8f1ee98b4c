"""vLLM's ``vllm serve`` options that jllm spells differently or has no key for, so that a vLLM command line runs
as ``jllm serve``: each is honoured (``--block-size`` is ``--page-size``; ``--trust-remote-code``,
``--disable-log-requests`` and ``--disable-log-stats`` ask for what jllm does anyway), or refused naming why
(``--no-enable-chunked-prefill``, ``--enforce-eager``, ``--swap-space``). Options vLLM and jllm share keep their
one spelling (``jllm.config``'s keys).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import argparse
import logging

from jllm.config import ConfigError

logger = logging.getLogger(__name__)

# option -> why jllm already does what it asks (accepted: a flag that changes nothing here)
ALREADY_SO = {
    "trust_remote_code": "jllm converts checkpoints without running their code: there is none to trust",
    "disable_log_requests": "jllm logs no request's prompt or parameters",
    "disable_log_stats": "jllm logs no periodic engine statistics (they are at /metrics)",
}


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
    group.add_argument("--swap-space", type=float, default=None, metavar="GIB", help="refused: see --num-pages")


def apply_vllm_options(args: argparse.Namespace) -> None:
    """Folds vLLM's spellings into jllm's keys on ``args``; ConfigError names an option that cannot be honoured."""
    if args.block_size is not None:
        if args.page_size is not None and args.page_size != args.block_size:
            raise ConfigError(f"--block-size {args.block_size} and --page-size {args.page_size}: give one (the same)")
        args.page_size = args.block_size
    for key, why in ALREADY_SO.items():
        if getattr(args, key):
            logger.info("--%s: %s", key.replace("_", "-"), why)
    if args.enable_chunked_prefill is False:
        raise ConfigError(
            "--no-enable-chunked-prefill cannot be honoured: jllm always prefills long prompts in chunks of at most "
            "--max-num-batched-tokens beside the running decodes (raise that to prefill a prompt in one step)"
        )
    if args.enforce_eager:
        raise ConfigError(
            "--enforce-eager cannot be honoured: every jllm step is a compiled XLA program (there is no eager mode); "
            "--no-compile-at-start compiles each on its first use instead of at start-up"
        )
    if args.swap_space is not None:
        raise ConfigError(
            "--swap-space cannot be honoured: jllm recomputes a preempted request's KV instead of swapping it to the "
            "host; size the pool with --num-pages or --gpu-memory-utilization"
        )

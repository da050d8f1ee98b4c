"""The `jllm` command: generate, chat, run (a batch job from YAML) and serve.

    jllm generate --temperature 0 "The capital of France is"
    jllm chat --config configs/smollm2-cpu.yaml
    jllm run configs/examples/perplexity.yaml --set run.output_dir=out/ppl
    jllm serve /models/llama --port 8000 --api-key secret --served-model-name llama my-llama
    jllm serve --config configs/multi-model.yaml      (a models: list: several models, one server)

Engine options (``--max-model-len``, ``--dtype``, ``--num-pages`` ...) are made from ``jllm.config``'s keys, so every
key a config file takes is also an option, spelt with dashes. They default to "not given", which keeps vLLM's
precedence: command line > ``--config`` file > defaults. ``serve`` also takes vLLM's own spellings of a few
(``jllm.vllm_flags``), so a ``vllm serve`` command line runs as it is. ``--seed`` is the engine's seed, from which every
request without its own seed draws one, so a run is reproducible. Bad input exits with status 2 and ``jllm: error:``.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import jllm
from jllm.config import (
    ENGINE_SECTIONS,
    GIVEN_NULL,
    OFFLINE_SECTIONS,
    ConfigError,
    EngineConfig,
    engine_keys,
    given_options,
    key_type,
    load_yaml,
    merge_config,
    unknown_key_error,
)
from jllm.sampling import SamplingParams
from jllm.timing import show_info_logs
from jllm.vllm_flags import add_vllm_options, apply_vllm_options

if TYPE_CHECKING:
    from jllm.llm import LLM

ALL_SECTIONS = (*ENGINE_SECTIONS, "server")  # serve's options
DEFAULT_MAX_TOKENS = 256  # SamplingParams' own 16 is an API default, too short for a person reading the reply
# The one-shot commands' (generate, chat) own engine defaults, under a config file's keys and the options given: their
# few prompts pick a few step programs, so each compiles on its first use instead of all of them at start-up (a warm
# `jllm generate` of the quick start on a 2-core CPU: 13 s instead of 44 s; docs/benchmarks.md).
ONE_SHOT_DEFAULTS: dict[str, object] = {"compile_at_start": False}


def add_engine_options(
    parser: argparse.ArgumentParser,
    sections: tuple[str, ...],
    config_file: bool = True,
    defaults: dict[str, object] | None = None,
) -> None:
    """One option per engine key of ``sections``, plus ``--config`` unless the command's file is the config;
    ``defaults``: the command's own defaults for some keys (shown in the help)."""
    if config_file:
        parser.add_argument("--config", type=Path, metavar="C.yaml", help="YAML file of engine keys")
    group = parser.add_argument_group("engine options (command line > config file > defaults)")
    for key, f in engine_keys(*sections).items():
        option = "--" + key.replace("_", "-")
        kind, choices = key_type(key)
        help_text = f"default: {(defaults or {}).get(key, f.default)}"
        if kind is bool:
            group.add_argument(option, dest=key, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind is dict:  # vLLM's --speculative-config '{"method": "ngram", ...}'
            group.add_argument(option, dest=key, type=json_option, default=None, metavar="JSON", help=help_text)
        elif kind is list:  # vLLM's --served-model-name takes the name and its aliases
            group.add_argument(option, dest=key, nargs="+", default=None, metavar=key.upper(), help=help_text)
        else:
            metavar = None if choices else key.upper()
            group.add_argument(
                option, dest=key, type=kind, choices=choices, default=None, metavar=metavar, help=help_text
            )


def json_option(text: str) -> object:
    """A JSON option's value (``null``: ``GIVEN_NULL``, over a config file's value); argparse's own message would
    name the parser function ("invalid loads value")."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({e})") from e
    return GIVEN_NULL if value is None else value


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument(
        "--max-tokens", type=int, help=f"default: {DEFAULT_MAX_TOKENS}, or what the context leaves after the prompt"
    )
    group.add_argument("--temperature", type=float, help="0 = greedy; default: 1.0")
    group.add_argument("--top-p", type=float, help="default: 1.0 (off)")


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """A one-shot command's config: its defaults (``ONE_SHOT_DEFAULTS``), then ``--config``, then the engine options
    given (None = not given)."""
    file_values = load_yaml(args.config) if args.config is not None else {}
    in_file = {str(key).replace("-", "_") for key in file_values}
    defaults = {key: value for key, value in ONE_SHOT_DEFAULTS.items() if key not in in_file}
    given = given_options({key: getattr(args, key) for key in engine_keys(*OFFLINE_SECTIONS)})
    return merge_config({**defaults, **file_values}, **given)


def sampling_params(args: argparse.Namespace, defaults: SamplingParams | None = None) -> SamplingParams:
    """The options given over ``defaults`` (``LLM.get_default_sampling_params()``: the model's
    generation_config.json's, once it is loaded); called before loading too, so a bad option is named before the
    wait."""
    given = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p}
    given = {"max_tokens": DEFAULT_MAX_TOKENS} | {k: v for k, v in given.items() if v is not None}
    return SamplingParams(**given) if defaults is None else dataclasses.replace(defaults, **given)


def request_params(llm: LLM, args: argparse.Namespace) -> SamplingParams:
    """What the command's requests are sent with: the options over the model's defaults, ``--max-tokens`` (else
    ``DEFAULT_MAX_TOKENS``) capped by the room each prompt leaves, as vLLM's offline ``LLM`` runs it
    (``--max-model-len 64`` had refused every prompt: 256 tokens asked that nobody asked for)."""
    return sampling_params(args, llm.get_default_sampling_params())


def make_llm(config: EngineConfig, max_concurrent: int | None = None) -> LLM:
    """``max_concurrent``: sequences this command can ever run at once. Capping ``max_num_seqs`` there changes no
    output, but skips compiling step buckets for batches that cannot happen (minutes on a CPU)."""
    from jllm.llm import LLM  # the engine and JAX load only once the input is known to be good

    show_info_logs("jllm")  # the start-up phases' lines (other libraries' INFO stays quiet), as vLLM's command shows
    if max_concurrent is not None:
        config = config.replace(max_num_seqs=min(config.scheduler.max_num_seqs, max_concurrent))
    return LLM(**config.llm_kwargs())


def cmd_generate(args: argparse.Namespace) -> None:
    config = engine_config(args)
    sampling_params(args)  # a bad sampling option is named before the model loads
    llm = make_llm(config, len(args.prompts))
    outputs = llm.generate(args.prompts, request_params(llm, args))
    for i, out in enumerate(outputs, 1):
        print(f"=== prompt {i} ===\n{out.prompt}")
        for c in out.outputs:
            label = f"{i}" if len(out.outputs) == 1 else f"{i}.{c.index + 1}"
            print(f"=== completion {label} ({c.finish_reason}) ===\n{c.text}")
        print(flush=True)


def cmd_chat(args: argparse.Namespace) -> None:
    config = engine_config(args)
    sampling_params(args)  # a bad sampling option is named before the model loads
    llm = make_llm(config, 1)
    params = request_params(llm, args)
    history = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    if interactive:
        print("type a message; /exit or Ctrl-D ends the chat", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return
        if not line.strip():
            continue
        history.append({"role": "user", "content": line.rstrip("\n")})
        try:
            reply = llm.chat(history, params, use_tqdm=False)[0].outputs[0].text
        except ValueError as e:  # e.g. the conversation outgrew the context: say so and let the user go on
            history.pop()
            print(f"jllm: error: {e}", file=sys.stderr)
            continue
        history.append({"role": "assistant", "content": reply})
        print(reply, flush=True)


def cmd_run(args: argparse.Namespace) -> None:
    from jllm.batch_run import run_job
    from jllm.job_file import apply_sets, load_job_file, plan_job

    job = load_job_file(args.job)
    apply_sets(job, args.set)
    points = plan_job(job, **{key: getattr(args, key) for key in engine_keys(*OFFLINE_SECTIONS)})
    run_job(points, make_llm)


def cmd_serve(args: argparse.Namespace) -> None:
    show_info_logs()  # the server's address and request lines, and what vLLM's spellings became
    apply_vllm_options(args)
    if args.model_arg is not None and args.model is not None and args.model_arg != args.model:
        raise ConfigError(f"the model is given twice: {args.model_arg!r} and --model {args.model!r}; give one")
    if args.model_arg is not None:
        args.model = args.model_arg
    from jllm.serve_config import load_serve_config

    serve = load_serve_config(
        args.config, **given_options({key: getattr(args, key) for key in engine_keys(*ALL_SECTIONS)})
    )
    from jllm.server.app import run_server  # the server (aiohttp) loads only for `serve`

    try:
        run_server(serve)
    except OSError as e:  # the address is taken, not this host's or no name: a usage error, not a traceback
        if not isinstance(e, socket.gaierror) and e.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        where = f"--host {serve.server.host} --port {serve.server.port}"
        raise ConfigError(f"{where}: cannot listen there: {e.strerror or e}") from e
    except RuntimeError as e:  # grpc's bind failure has no errno, only these words
        if serve.server.grpc_port is None or not str(e).startswith("Failed to bind to address"):
            raise
        where = f"--host {serve.server.host} --grpc-port {serve.server.grpc_port}"
        raise ConfigError(f"{where}: cannot listen there: {str(e).split(';')[0]}") from e


def build_parser() -> argparse.ArgumentParser:
    """Options are never abbreviated: a prefix that is unique today could name two keys tomorrow."""
    parser = argparse.ArgumentParser(prog="jllm", description="JAX/XLA LLM inference engine.", allow_abbrev=False)
    parser.add_argument("-v", "--version", action="version", version=f"%(prog)s {jllm.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], None], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        sub.set_defaults(handler=handler, parser=sub)
        return sub

    generate = command("generate", cmd_generate, "Complete each prompt and print prompt and completion.")
    generate.add_argument("prompts", nargs="+", metavar="PROMPT")
    add_sampling_options(generate)
    add_engine_options(generate, OFFLINE_SECTIONS, defaults=ONE_SHOT_DEFAULTS)

    chat = command("chat", cmd_chat, "Chat on stdin/stdout through the model's chat template; /exit or EOF ends.")
    chat.add_argument("--system", help="a system message to start the conversation with")
    add_sampling_options(chat)
    add_engine_options(chat, OFFLINE_SECTIONS, defaults=ONE_SHOT_DEFAULTS)

    run = command("run", cmd_run, "Run an experiment from YAML (engine keys, a run: section, an optional sweep:).")
    run.add_argument("job", type=Path, metavar="JOB.yaml")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the file (dotted: run.output_dir=out/, or a short name: temperature=0.7); repeatable",
    )
    add_engine_options(run, OFFLINE_SECTIONS, config_file=False)  # the job file is the config file

    serve = command("serve", cmd_serve, "Serve the OpenAI-compatible HTTP API.")
    serve.add_argument("model_arg", nargs="?", metavar="MODEL", help="model directory, .gguf file or alias")
    add_engine_options(serve, ALL_SECTIONS)
    add_vllm_options(serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        options = [o for action in args.parser._actions for o in action.option_strings]  # argparse has no public list
        if unknown[0].startswith("-"):
            parser.exit(2, f"jllm: error: {unknown_key_error(unknown[0].split('=')[0], options, where='option')}\n")
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        args.handler(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:  # ConfigError is a ValueError
        parser.exit(2, f"jllm: error: {e}\n")
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The `jllm` command: options made from the config keys, precedence, clean errors, and end-to-end runs."""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import pytest
import yaml

from jllm import cli
from jllm.config import EngineConfig, ServerConfig, engine_keys, key_type
from jllm.outputs import CompletionOutput, RequestOutput
from jllm.sampling import SamplingParams

# Small enough that engine start-up compiles only four step buckets of the tiny model.
ENGINE_ARGS = ["--max-model-len", "64", "--max-num-batched-tokens", "32", "--max-num-seqs", "4", "--num-pages", "32"]
ENGINE_KEYS = dict(max_model_len=64, max_num_batched_tokens=32, max_num_seqs=4, num_pages=32)
PROMPTS = ["Hello world", "x = [1, 2]"]
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def expected(tiny_model: Path) -> dict[str, CompletionOutput]:
    """Greedy completions of PROMPTS from the Python API, with the same engine settings the CLI gets."""
    from jllm.llm import LLM
    from jllm.sampling import SamplingParams

    llm = LLM(str(tiny_model), **ENGINE_KEYS)
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=MAX_TOKENS), use_tqdm=False)
    completions = {p: out.outputs[0] for p, out in zip(PROMPTS, outputs, strict=True)}
    assert all(c.text and c.token_ids for c in completions.values())
    return completions


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "JLLM_CACHE": str(cwd / "cache")}
    if jax.config.jax_compilation_cache_dir:  # where `expected`'s engine left its programs: the CLI's loads them
        env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
    return subprocess.run(
        [sys.executable, "-m", "jllm.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def fail(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Runs the CLI in-process expecting a usage error; returns stderr."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------ options and precedence


@pytest.mark.parametrize(
    ("command", "required"), [("generate", ["hi"]), ("chat", []), ("run", ["j.yaml"]), ("serve", [])]
)
def test_every_engine_key_is_an_option_of_its_type(command: str, required: list[str]) -> None:
    parser = cli.build_parser()
    sections = cli.ALL_SECTIONS if command == "serve" else cli.OFFLINE_SECTIONS
    samples = {int: ("8", 8), float: ("0.5", 0.5), str: ("x", "x"), list: ("x", ["x"]), dict: ('{"a": 1}', {"a": 1})}
    for key in engine_keys(*sections):
        option = "--" + key.replace("_", "-")
        kind, choices = key_type(key)
        if kind is bool:
            assert getattr(parser.parse_args([command, "--no-" + option[2:], *required]), key) is False
            given, value = [option], True
        else:
            text, value = (choices[-1], choices[-1]) if choices else samples[kind]
            given = [option, text]
        assert getattr(parser.parse_args([command, *given, *required]), key) == value, key
        assert getattr(parser.parse_args([command, *required]), key) is None, key  # absent = not given
    assert hasattr(parser.parse_args([command, *required]), "port") == (command == "serve")


def test_a_json_option_given_as_null_turns_the_file_value_off(tmp_path: Path) -> None:
    """``--speculative-config null`` overrides a config file's speculative decoding (argparse's None means "not
    given", which had kept the file's value)."""
    spec = {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3}
    config = write_yaml(tmp_path / "c.yaml", {"speculative_config": spec})
    parse = cli.build_parser().parse_args
    assert cli.engine_config(parse(["generate", "--config", str(config), "hi"])).scheduler.speculative_config == spec
    args = parse(["generate", "--config", str(config), "--speculative-config", "null", "hi"])
    assert cli.engine_config(args).scheduler.speculative_config is None


def test_command_line_beats_config_file_beats_defaults(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "c.yaml", {"max_num_seqs": 8, "max_model_len": 1024, "enable_prefix_caching": False})
    args = cli.build_parser().parse_args(["generate", "--config", str(config), "--max-num-seqs", "4", "hi"])
    engine = cli.engine_config(args)
    assert engine.scheduler.max_num_seqs == 4  # command line over file
    assert engine.model.max_model_len == 1024  # file over default
    assert engine.cache.enable_prefix_caching is False  # an absent flag does not reset the file's value
    assert engine.cache.page_size == 16  # default
    args = cli.build_parser().parse_args(["generate", "--config", str(config), "--enable-prefix-caching", "hi"])
    assert cli.engine_config(args).cache.enable_prefix_caching is True


@pytest.mark.parametrize("command", ["generate", "chat"])
def test_one_shot_commands_compile_on_first_use_unless_told(command: str, tmp_path: Path) -> None:
    """Their own default sits under the config file and the command line; `serve` and the Python API keep the
    engine's (every program compiled at start-up)."""
    prompt = ["hi"] if command == "generate" else []
    parse = cli.build_parser().parse_args
    assert cli.engine_config(parse([command, *prompt])).scheduler.compile_at_start is False
    assert cli.engine_config(parse([command, "--compile-at-start", *prompt])).scheduler.compile_at_start is True
    for key in ("compile_at_start", "compile-at-start"):
        config = write_yaml(tmp_path / "c.yaml", {key: True})
        args = parse([command, "--config", str(config), *prompt])
        assert cli.engine_config(args).scheduler.compile_at_start is True  # the file over the command's default
        args = parse([command, "--config", str(config), "--no-compile-at-start", *prompt])
        assert cli.engine_config(args).scheduler.compile_at_start is False
    assert EngineConfig().scheduler.compile_at_start is True


def test_sampling_options_default_to_sampling_params() -> None:
    args = cli.build_parser().parse_args(["generate", "--temperature", "0", "hi"])
    params = cli.sampling_params(args)
    assert (params.temperature, params.max_tokens, params.top_p) == (0, cli.DEFAULT_MAX_TOKENS, 1.0)
    args = cli.build_parser().parse_args(["generate", "--top-p", "0.5", "--max-tokens", "3", "hi"])
    params = cli.sampling_params(args)
    assert (params.temperature, params.top_p, params.max_tokens) == (1.0, 0.5, 3)


def fake_llm(monkeypatch: pytest.MonkeyPatch, **engine: object) -> list[RequestOutput]:
    """The one-shot commands build an LLM over the scripted engine (tests/fake_runner.py) instead of a model; the
    list returned collects what its generate returns."""
    from fake_runner import fake_engine

    from jllm.llm import LLM

    outputs: list[RequestOutput] = []

    class Recording(LLM):
        def generate(self, *args: object, **kwargs: object) -> list[RequestOutput]:
            outputs.extend(done := super().generate(*args, **kwargs))
            return done

    def make(config: EngineConfig, max_concurrent: int | None = None) -> LLM:
        llm = Recording.__new__(Recording)
        llm.engine, llm._ids, llm.config = fake_engine(**engine), itertools.count(), config
        return llm

    monkeypatch.setattr(cli, "make_llm", make)
    return outputs


def test_max_tokens_is_capped_by_the_room_the_prompt_leaves(monkeypatch, capsys) -> None:
    """256 tokens in a context of 64 had refused every prompt with a context-length error the user never asked for;
    an explicit --max-tokens past the context runs until it is full too, as vLLM's offline LLM runs it."""
    outputs = fake_llm(monkeypatch, max_model_len=64)
    assert cli.main(["generate", "--temperature", "0", "hi"]) == 0
    assert "=== completion 1 (length) ===" in capsys.readouterr().out
    [done] = outputs
    assert len(done.prompt_token_ids) + len(done.outputs[0].token_ids) == 64
    assert cli.main(["generate", "--temperature", "0", "--max-tokens", "100", "hi"]) == 0
    assert "=== completion 1 (length) ===" in capsys.readouterr().out
    assert len(outputs[-1].prompt_token_ids) + len(outputs[-1].outputs[0].token_ids) == 64
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    assert cli.main(["chat", "--temperature", "0"]) == 0
    assert "error" not in capsys.readouterr().err
    assert len(outputs[-1].prompt_token_ids) + len(outputs[-1].outputs[0].token_ids) == 64


# ------------------------------------------------------------------ errors: exit 2, the field named, no traceback


@pytest.mark.slow  # a fresh interpreter imports jax: ~7 s
def test_python_dash_m_jllm_is_the_cli(tmp_path: Path) -> None:
    """``python -m jllm serve ...`` works where the console script is not installed (a checkout, the GPU image)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "jllm", "serve", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--max-num-seqs" in done.stdout


def test_version_prints_the_installed_version_as_vllm_does(capsys: pytest.CaptureFixture) -> None:
    import importlib.metadata

    import jllm

    for flag in ("--version", "-v"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([flag])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out == f"jllm {importlib.metadata.version('jllm')}\n"
    assert jllm.__version__ == importlib.metadata.version("jllm")


def test_version_from_a_checkout_never_installed_is_its_pyprojects(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU image runs the tree from PYTHONPATH, uninstalled: ``jllm serve`` died there of PackageNotFoundError
    while building ``--version`` (every serving step of the device job, 2026-12-07)."""
    import importlib.metadata

    import jllm

    installed = importlib.metadata.version("jllm")

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert jllm.__version__ == installed  # the editable install's version is pyproject.toml's
    assert cli.build_parser().parse_args(["serve"]).command == "serve"


def test_unknown_option_suggests_the_close_one(capsys: pytest.CaptureFixture) -> None:
    err = fail(["generate", "--max-num-seq", "4", "hi"], capsys)
    assert "jllm: error: unknown option '--max-num-seq' (did you mean '--max-num-seqs'?)" in err


def test_options_are_not_abbreviated(capsys: pytest.CaptureFixture) -> None:
    assert "unknown option '--temp'" in fail(["generate", "--temp", "0", "hi"], capsys)


def test_out_of_range_option_names_key_and_value(capsys: pytest.CaptureFixture) -> None:
    err = fail(["generate", "--max-num-seqs", "0", "hi"], capsys)
    assert err == "jllm: error: max_num_seqs=0 is not allowed: must be >= 1\n"


def test_badly_typed_option_is_an_argparse_error(capsys: pytest.CaptureFixture) -> None:
    assert "argument --max-num-seqs: invalid int value: 'many'" in fail(
        ["generate", "--max-num-seqs", "many", "x"], capsys
    )
    assert "argument --dtype: invalid choice: 'bf16'" in fail(["generate", "--dtype", "bf16", "x"], capsys)
    assert "argument --speculative-config: '{method: ngram}' is not JSON (Expecting property name" in fail(
        ["generate", "--speculative-config", "{method: ngram}", "x"], capsys
    )


def test_bad_sampling_value_names_the_field(capsys: pytest.CaptureFixture) -> None:
    assert "jllm: error: top_p must be in [1.18e-38, 1] (float32, as the sampler), got 2.0" in fail(
        ["generate", "--top-p", "2", "hi"], capsys
    )


def test_unknown_key_in_config_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_yaml(tmp_path / "c.yaml", {"max_num_seq": 4})
    err = fail(["chat", "--config", str(config)], capsys)
    assert "jllm: error: unknown key 'max_num_seq' (did you mean 'max_num_seqs'?)" in err


@pytest.mark.parametrize(
    "text, message",
    [("{bad", "config.json is not valid JSON: Expecting property name"), ("[]", "config.json must hold a JSON object")],
)
def test_a_model_directory_s_unreadable_config_json_is_named(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """It had been a traceback (a list's AttributeError) or a bare JSON error that named no file."""
    (tmp_path / "config.json").write_text(text)
    assert f"jllm: error: {tmp_path}/{message}" in fail(["generate", "--model", str(tmp_path), "hi"], capsys)


def test_missing_and_malformed_config_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "does not exist" in fail(["generate", "--config", str(tmp_path / "nope.yaml"), "hi"], capsys)
    (tmp_path / "bad.yaml").write_text("max_num_seqs: [4\n")
    assert "is not readable YAML" in fail(["generate", "--config", str(tmp_path / "bad.yaml"), "hi"], capsys)


# ------------------------------------------------------------------ jllm run: the job file


def job(tmp_path: Path, run: object, **engine: object) -> Path:
    return write_yaml(tmp_path / "job.yaml", {**engine, "run": run})


def test_job_file_without_run_section(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write_yaml(tmp_path / "job.yaml", {"max_num_seqs": 4})
    assert "has no `run:` section" in fail(["run", str(path)], capsys)


def test_unknown_engine_key_in_job_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = job(tmp_path, {"dataset": ["a"], "output_dir": "o"}, max_modl_len=64)
    err = fail(["run", str(path)], capsys)
    assert "job.yaml line 1: unknown key 'max_modl_len' (did you mean 'max_model_len'?)" in err


# ------------------------------------------------------------------ serve and chat, without an engine


def test_one_shot_commands_leave_a_shared_config_s_server_keys_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """LLM refuses server settings (they change nothing offline); a config file shared with serve may set them."""
    import jllm.llm
    from jllm.config import merge_config

    made = []
    monkeypatch.setattr(jllm.llm, "LLM", lambda **kwargs: made.append(kwargs))
    cli.make_llm(merge_config({"port": 7000, "api_key": "k", "max_model_len": 64}))
    [kwargs] = made
    assert kwargs["max_model_len"] == 64 and not {"port", "api_key", "host"} & kwargs.keys()


def test_serve_on_a_taken_port_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """aiohttp's bind error had ended `jllm serve --port P` (P in use) in a Python traceback."""
    import errno

    def taken(serve: object) -> None:
        raise OSError(errno.EADDRINUSE, "error while attempting to bind on address ('127.0.0.1', 9001): in use")

    monkeypatch.setitem(sys.modules, "jllm.server.app", types.SimpleNamespace(run_server=taken))
    err = fail(["serve", "/models/x", "--port", "9001"], capsys)
    assert err == (
        "jllm: error: --host 127.0.0.1 --port 9001: cannot listen there: error while attempting to bind on address "
        "('127.0.0.1', 9001): in use\n"
    )

    def no_such_host(serve: object) -> None:
        import socket

        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setitem(sys.modules, "jllm.server.app", types.SimpleNamespace(run_server=no_such_host))
    err = fail(["serve", "/models/x", "--host", "nowhere.invalid"], capsys)
    assert err == "jllm: error: --host nowhere.invalid --port 8000: cannot listen there: Name or service not known\n"

    def grpc_taken(serve: object) -> None:
        raise RuntimeError("Failed to bind to address 127.0.0.1:9002; set GRPC_VERBOSITY=debug environment variable")

    monkeypatch.setitem(sys.modules, "jllm.server.app", types.SimpleNamespace(run_server=grpc_taken))
    err = fail(["serve", "/models/x", "--grpc-port", "9002"], capsys)
    assert (
        err == "jllm: error: --host 127.0.0.1 --grpc-port 9002: cannot listen there: Failed to bind to address "
        "127.0.0.1:9002\n"
    )


def test_serve_builds_the_config_and_calls_run_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setitem(sys.modules, "jllm.server.app", types.SimpleNamespace(run_server=seen.append))
    config = write_yaml(tmp_path / "c.yaml", {"port": 7000, "host": "0.0.0.0", "max_num_seqs": 8})
    argv = [
        "serve",
        "/models/x",
        "--config",
        str(config),
        "--port",
        "9001",
        "--api-key",
        "k",
        "--served-model-name",
        "m",
        "--grpc-port",
        "9002",
    ]
    assert cli.main(argv) == 0
    [serve] = seen
    [entry] = serve.models
    engine = entry.config
    assert (engine.model.model, serve.server.port, serve.server.host) == ("/models/x", 9001, "0.0.0.0")
    assert (serve.server.api_key, entry.names, engine.scheduler.max_num_seqs) == ("k", ("m",), 8)
    assert serve.server.shutdown_timeout == ServerConfig().shutdown_timeout
    assert (serve.server.grpc_port, ServerConfig().grpc_port) == (9002, None)  # gRPC is off unless asked for


def test_serve_rejects_two_different_models(capsys: pytest.CaptureFixture) -> None:
    assert "the model is given twice" in fail(["serve", "/a", "--model", "/b"], capsys)


class FakeLLM:
    """Replies with the number of messages it was given; fails on the message "too long"."""

    def __init__(self) -> None:
        self.conversations: list[list[dict]] = []
        # as a model's generation_config.json might say
        self.engine = types.SimpleNamespace(sampling_defaults={"repetition_penalty": 1.1})

    def get_default_sampling_params(self) -> SamplingParams:
        return SamplingParams(**self.engine.sampling_defaults)

    def chat(self, messages, sampling_params, use_tqdm=True):
        self.conversations.append([dict(m) for m in messages])
        self.sampling_params = sampling_params or self.get_default_sampling_params()  # None: as LLM.chat
        if messages[-1]["content"] == "too long":
            raise ValueError("This model's maximum context length is 64 tokens")
        reply = CompletionOutput(0, f"reply to {len(messages)}", [5], None, None, "stop")
        return [RequestOutput("r", None, [1], None, [reply], True)]


def test_chat_keeps_history_and_ends_at_exit(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    llm = FakeLLM()
    monkeypatch.setattr(cli, "make_llm", lambda config, *_: llm)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n\ntoo long\nagain\n/exit\nnever read\n"))
    assert cli.main(["chat", "--system", "be brief", "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    assert out == "reply to 2\nreply to 4\n"
    # the model's sampling defaults under the options given
    assert (llm.sampling_params.repetition_penalty, llm.sampling_params.temperature) == (1.1, 0)
    assert "jllm: error: This model's maximum context length is 64 tokens" in err
    assert llm.conversations[-1] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "reply to 2"},
        {"role": "user", "content": "again"},  # the failed message was dropped from the history
    ]


def test_chat_ends_at_eof(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    llm = FakeLLM()
    monkeypatch.setattr(cli, "make_llm", lambda config, *_: llm)
    monkeypatch.setattr(sys, "stdin", io.StringIO("only line"))
    assert cli.main(["chat"]) == 0
    assert capsys.readouterr().out == "reply to 1\n"
    assert llm.conversations == [[{"role": "user", "content": "only line"}]]


# ------------------------------------------------------------------ end to end on a tiny random model


@pytest.mark.slow
def test_generate_prints_the_python_api_greedy_completions(tiny_model: Path, expected, tmp_path: Path) -> None:
    result = run_cli(
        "generate", "--model", str(tiny_model), *ENGINE_ARGS, "--temperature", "0", "--max-tokens", str(MAX_TOKENS),
        *PROMPTS, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for i, prompt in enumerate(PROMPTS, 1):
        c = expected[prompt]
        assert f"=== prompt {i} ===\n{prompt}\n=== completion {i} ({c.finish_reason}) ===\n{c.text}\n" in result.stdout


@pytest.mark.slow
def test_run_writes_one_json_line_per_prompt(tiny_model: Path, expected, tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    sampling = {"temperature": 0, "max_tokens": MAX_TOKENS}
    run = {"dataset": "prompts.txt", "sampling": sampling, "record": {"logprobs": 0}, "output_dir": "o"}
    path = job(tmp_path, run, model=str(tiny_model), **ENGINE_KEYS)
    result = run_cli("run", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert [r["inputs"]["prompt"] for r in records] == PROMPTS
    for record in records:
        c = expected[record["inputs"]["prompt"]]
        [out] = record["outputs"]
        assert (out["text"], out["token_ids"], out["finish_reason"]) == (c.text, c.token_ids, c.finish_reason)
        assert len(out["logprobs"]) == len(c.token_ids) and all(lp <= 0 for lp in out["logprobs"])


def test_vllm_s_llm_keywords_jllm_cannot_honour_take_what_it_does_alone() -> None:
    from jllm.vllm_flags import apply_vllm_keywords

    assert apply_vllm_keywords({"pipeline_parallel_size": 1, "data_parallel_size": 1, "seed": 3}) == {"seed": 3}
    assert apply_vllm_keywords({"tokenizer": "/m", "revision": None, "max_logprobs": 20}, model="/m") == {}
    assert apply_vllm_keywords({"task": "embed", "runner": "pooling"}) == {}  # vLLM's embedding scripts
    with pytest.raises(ValueError, match=r"^task='classify' cannot be honoured: jllm runs a checkpoint as its arch"):
        apply_vllm_keywords({"task": "classify"})
    with pytest.raises(ValueError, match=r"^tokenizer='/t' cannot be honoured: jllm reads the tokenizer from"):
        apply_vllm_keywords({"tokenizer": "/t"}, model="/m")
    with pytest.raises(ValueError, match=r"^pipeline_parallel_size=4 cannot be honoured: .* use tensor_parallel_size"):
        apply_vllm_keywords({"pipeline_parallel_size": 4})


def test_a_vllm_serve_command_line_runs_as_it_is(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """vLLM's spellings: --block-size is --page-size; options asking for what jllm does anyway are accepted (and
    say so); those it cannot honour are refused naming why."""
    caplog.set_level(logging.INFO, logger="jllm.vllm_flags")
    seen = []
    monkeypatch.setitem(sys.modules, "jllm.server.app", types.SimpleNamespace(run_server=seen.append))
    vllm_line = ["serve", "/models/x", "--block-size", "8", "--trust-remote-code", "--enable-chunked-prefill"]
    assert cli.main([*vllm_line, "--disable-log-requests", "--disable-log-stats"]) == 0
    [serve] = seen
    assert serve.models[0].config.cache.page_size == 8
    assert "there is none to trust" in caplog.text and "no request's prompt" in caplog.text
    assert cli.main(["serve", "/models/x", "--swap-space", "0"]) == 0  # no swap space: what jllm does
    assert cli.main(["serve", "/models/x", "--pipeline-parallel-size", "1", "--data-parallel-size", "1"]) == 0
    assert cli.main(["serve", "/models/x", "--tokenizer", "/models/x", "--max-logprobs", "20"]) == 0
    for refused, why in (
        (["--no-enable-chunked-prefill"], "always prefills long prompts in chunks"),
        (["--enforce-eager"], "there is no eager mode"),
        (["--swap-space", "4"], "recomputes a preempted request's KV"),
        (["--block-size", "8", "--page-size", "16"], "give one"),
        (["--pipeline-parallel-size", "2"], "--pipeline-parallel-size 2 cannot be honoured: jllm splits a model"),
        (["--data-parallel-size", "2"], "--data-parallel-size 2 cannot be honoured: one jllm engine runs per"),
        (["--tokenizer", "/models/t"], "--tokenizer /models/t cannot be honoured: jllm reads the tokenizer from"),
        (["--revision", "main"], "--revision main cannot be honoured: jllm loads local directories"),
        (["--download-dir", "/d"], "--download-dir /d cannot be honoured: jllm downloads nothing"),
        (["--max-logprobs", "5"], "--max-logprobs 5 cannot be honoured: jllm returns at most 20 top logprobs"),
        (["--runner", "draft"], "--runner draft cannot be honoured: jllm runs a checkpoint as its architecture"),
    ):
        assert why in fail(["serve", "/models/x", *refused], capsys)

"""Multi-host under ``jax.distributed``, as CI can run it: CPU processes of one device each on loopback (gloo).

Two processes at tensor_parallel_size=2 generate one process's tokens: the lead (``jllm run``) schedules and
publishes each step, the follower (``jllm serve`` or ``LLM(...)``) runs it on its half of the model and takes no
requests. Every process gets a timeout, so a hang fails the test instead of stalling CI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from model_utils import random_llama

from jllm import cli, distributed
from jllm.buckets import StepBucket
from jllm.config import ConfigError, EngineConfig
from jllm.distributed import _decode, _encode
from jllm.sampler import SamplingMode, TokenConstraints
from jllm.step_inputs import StepPlan, host_inputs

# Two step buckets (16 tokens x 1 / 4 sequences); the long prompt is prefilled in 16-token chunks beside decodes.
# Programs compiled on first use: greedy decoding needs the forwards and one sampler, not warm-up's dozen programs
# (on a CPU warm-up only compiles, on each process alone, so it has no part in the processes' lockstep).
ENGINE_ARGS = dict(
    dtype="float32", max_model_len=128, max_num_batched_tokens=16, max_num_seqs=4, num_pages=40, compile_at_start=False
)
PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "A long prompt that is prefilled in several chunks of sixteen tokens beside the decodes of the other prompts, "
    "so that chunked prefill and decoding share the steps that both processes run.",
]
GREEDY = dict(temperature=0, max_tokens=12, ignore_eos=True)
TIMEOUT_S = 300  # per process; the two-process run takes ~15 s on two cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def options(values: dict) -> list[str]:
    """The command line of engine keys: ``--key value``, and ``--key`` / ``--no-key`` for a bool."""
    args = []
    for key, value in values.items():
        flag = key.replace("_", "-")
        args += [f"--{flag}" if value else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)]
    return args


def run_group(commands: dict[str, list[str]], tmp_path: Path, cache: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Starts one CPU process of one device per command; returns their exit statuses and logs by name.

    On a timeout all are killed and the test fails with their logs. ``cache``: the compilation cache they share.
    """
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1", "JLLM_CACHE": str(cache)}
    logs = {name: tmp_path / f"{name}.log" for name in commands}
    procs = {
        name: subprocess.Popen([sys.executable, *args], env=env, stdout=logs[name].open("w"), stderr=subprocess.STDOUT)
        for name, args in commands.items()
    }
    try:
        status = {name: proc.wait(timeout=TIMEOUT_S) for name, proc in procs.items()}
    except subprocess.TimeoutExpired:
        for proc in procs.values():
            proc.kill()
        tails = "\n".join(f"--- {name}\n{log.read_text()[-3000:]}" for name, log in logs.items())
        pytest.fail(f"a process hung past {TIMEOUT_S} s\n{tails}")
    return status, {name: log.read_text() for name, log in logs.items()}


@pytest.fixture(scope="module")
def model_dir(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_llama(tmp_path_factory.mktemp("model"), default_model_dir, 4, 2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One persistent compilation cache for every process group here: later groups load the step programs."""
    return tmp_path_factory.mktemp("jllm_cache")


@pytest.fixture(scope="module")
def one_process_tokens(model_dir: Path) -> list[list[int]]:
    from jllm import LLM, SamplingParams

    outputs = LLM(str(model_dir), **ENGINE_ARGS).generate(PROMPTS, SamplingParams(**GREEDY), use_tqdm=False)
    tokens = [o.outputs[0].token_ids for o in outputs]
    assert len({t for seq in tokens for t in seq}) > 3, "degenerate greedy output proves little"
    return tokens


@pytest.mark.slow
@pytest.mark.parametrize("follower", ["serve", "LLM"])
def test_two_processes_generate_the_tokens_of_one(
    follower: str, model_dir: Path, one_process_tokens: list[list[int]], cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"run": {"dataset": PROMPTS, "sampling": GREEDY, "output_dir": str(out)}}))
    group = dict(distributed_coordinator=f"127.0.0.1:{free_port()}", num_processes=2)
    engine = dict(model=str(model_dir), **ENGINE_ARGS, tensor_parallel_size=2, **group)
    with socket.socket() as http:  # the port the follower is told to serve on stays ours: listening there fails
        http.bind(("127.0.0.1", 0))
        http.listen()
        if follower == "serve":
            follower_args = ["-m", "jllm.cli", "serve", *options(engine), "--process-id", "1"]
            follower_args += ["--port", str(http.getsockname()[1])]
        else:  # the same script on every process: on a follower, LLM(...) never returns
            script = "import json, logging, sys; from jllm import LLM; logging.basicConfig(level=logging.INFO); "
            script += "LLM(**json.loads(sys.argv[1])); sys.exit(3)"
            follower_args = ["-c", script, json.dumps({**engine, "process_id": 1})]
        lead_args = ["-m", "jllm.cli", "run", str(job), *options(engine), "--process-id", "0"]
        status, logs = run_group({"lead": lead_args, "follower": follower_args}, tmp_path, cache)
    assert status == {"lead": 0, "follower": 0}, logs
    assert "process 1 follows the lead's steps" in logs["follower"], logs["follower"]
    tokens = [json.loads(line)["outputs"][0]["token_ids"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert tokens == one_process_tokens


@pytest.mark.slow
def test_mesh_that_leaves_a_process_out_is_refused_naming_the_key(model_dir: Path, cache: Path, tmp_path: Path) -> None:
    group = dict(distributed_coordinator=f"127.0.0.1:{free_port()}", num_processes=2, tensor_parallel_size=1)
    args = ["-m", "jllm.cli", "generate", "--model", str(model_dir), *options(group), "--max-tokens", "2", "hi"]
    status, logs = run_group({f"p{rank}": [*args, "--process-id", str(rank)] for rank in (0, 1)}, tmp_path, cache)
    assert status == {"p0": 2, "p1": 2}, logs
    for log in logs.values():
        assert "tensor_parallel_size=1 is not allowed with 2 processes" in log, log


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"distributed_coordinator": "10.0.0.1:1234", "num_processes": 2, "process_id": 2}, "process_id=2"),
        ({"distributed_coordinator": "10.0.0.1:1234", "num_processes": 2, "process_id": -1}, "process_id=-1"),
        ({"distributed_coordinator": "10.0.0.1:1234", "process_id": 0}, "num_processes=None"),
        ({"distributed_coordinator": "10.0.0.1:1234", "num_processes": 2}, "process_id=None"),
        ({"distributed_coordinator": "10.0.0.1:1234", "num_processes": 0, "process_id": 0}, "num_processes=0"),
        ({"distributed_coordinator": "10.0.0.1", "num_processes": 2, "process_id": 0}, "distributed_coordinator="),
        ({"process_id": 1}, "process_id=1"),
        ({"num_processes": 2}, "num_processes=2"),
    ],
)
def test_bad_process_group_is_refused_naming_the_key(values: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        EngineConfig.from_flat(values)


def test_auto_detection_needs_no_count_or_rank() -> None:
    parallel = EngineConfig.from_flat({"distributed_coordinator": "auto"}).parallel
    assert (parallel.num_processes, parallel.process_id) == (None, None)


def test_cli_refuses_a_coordinator_without_the_process_count(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--distributed-coordinator", "127.0.0.1:1234", "--process-id", "0", "hi"])
    assert exit_info.value.code == 2
    assert "num_processes=None is not allowed" in capsys.readouterr().err


def test_plan_round_trips_exactly_and_leaves_padding_behind() -> None:
    rng = np.random.default_rng(0)
    # A 128k context in 16-token pages: block tables [64, 8192], of which three sequences use <= 40 pages.
    empty = host_inputs(
        [], StepBucket(16, 64, 64), page_size=16, pages_per_seq=8192, last_rows={}, eos_token_ids={2}, widths=(0, 8)
    )
    block_tables = empty.attn.block_tables.copy()
    block_tables[:3, :40] = rng.integers(1, 1000, (3, 40))
    banned_ids = empty.sampling.banned_ids.copy()  # [64, 8], -1 padded
    banned_ids[0, :2] = [2, 7]
    inputs = dataclasses.replace(
        empty,
        input_ids=rng.integers(0, 500, 16).astype(np.int32),
        attn=dataclasses.replace(empty.attn, block_tables=block_tables),
        sampling=dataclasses.replace(
            empty.sampling,
            banned_ids=banned_ids,
            temperature=np.where(np.arange(64) == 5, np.nan, rng.random(64)).astype(np.float32),  # NaN stays exact
            seeds=rng.integers(0, 2**32, 64, dtype=np.uint32),
        ),
    )
    assert empty.sampling.prompt_ids.shape == (64, 0)  # no penalties: zero-width token lists
    structure = jax.tree.structure(inputs)
    for variant in [(0, None, SamplingMode.GREEDY), (3, 2, SamplingMode.TRUNCATED), (1, 0, SamplingMode.RANDOM)]:
        data = _encode(StepPlan(inputs, variant))
        got = _decode(data, structure)
        assert got.variant == variant
        assert jax.tree.structure(got.inputs) == structure
        for sent, back in zip(jax.tree.leaves(inputs), jax.tree.leaves(got.inputs), strict=True):
            assert sent.dtype == back.dtype and sent.shape == back.shape
            np.testing.assert_array_equal(sent, back)
    assert len(data) < 20_000 < block_tables.nbytes
    bitmask = rng.integers(-(2**31), 2**31, (64, 1536), dtype=np.int64).astype(np.int32)  # a vocabulary of 49152
    bias_ids = np.full((64, 16), -1, np.int32)
    bias_ids[3, :2] = [11, 12]
    constraints = TokenConstraints(bitmask, bias_ids, rng.random((64, 16)).astype(np.float32))
    got = _decode(_encode(StepPlan(inputs, (0, None, SamplingMode.GREEDY), constraints)), structure)
    assert got.constraints is not None and jax.tree.structure(got.inputs) == structure
    for sent, back in zip(jax.tree.leaves(constraints), jax.tree.leaves(got.constraints), strict=True):
        assert sent.dtype == back.dtype and sent.shape == back.shape
        np.testing.assert_array_equal(sent, back)


CLAIM_TWICE = """
import sys
from jllm import distributed
from jllm.config import ParallelConfig

group = dict(distributed_coordinator=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
distributed.initialize(ParallelConfig(tensor_parallel_size=2, **group))
publisher = distributed.claim_engine()
print("publisher:", type(publisher).__name__)
try:
    distributed.claim_engine()
except RuntimeError as e:
    print("second:", e)
"""


@pytest.mark.slow  # starts a process group and an engine
def test_a_second_engine_in_a_process_group_is_refused(cache: Path, tmp_path: Path) -> None:
    """Followers serve the first engine until the lead exits, so a second one would wait on them for ever."""
    coordinator = f"127.0.0.1:{free_port()}"
    commands = {f"p{rank}": ["-c", CLAIM_TWICE, coordinator, str(rank)] for rank in (0, 1)}
    status, logs = run_group(commands, tmp_path, cache)
    assert status == {"p0": 0, "p1": 0}, logs
    assert "publisher: PlanPublisher" in logs["p0"] and "publisher: NoneType" in logs["p1"], logs
    for log in logs.values():
        assert "second: one engine per process" in log, log
    assert distributed.claim_engine() is None  # one process: engines come and go freely
    assert distributed.claim_engine() is None

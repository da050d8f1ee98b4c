"""One engine over several processes (hosts): ``jax.distributed`` start-up, the one-engine claim, and step plans.

Under ``jax.distributed`` the tensor-parallel mesh spans every process's devices, so every process must run every
step program, in the same order, or the collectives inside them never meet. Only the lead (process 0) takes
requests and schedules: before each step its ``PlanPublisher`` publishes the step's ``StepPlan`` and every follower
(``run_follower``) runs the same programs on it. Start-up (loading, the KV pool, warm-up) needs no plan: it is the
same on every process.

Plans travel through the coordination service's key-value store that ``jax.distributed`` already runs, not through a
device broadcast (``multihost_utils.broadcast_one_to_all``): a broadcast needs the array shapes agreed beforehand,
while a plan's shapes change with its bucket, and an idle follower would wait inside a collective, which times out
(gloo after 30 minutes) while a server waits for requests. A plan is one message of a few KB (its padding stays
behind): no compilation, no device transfer, one key-value write and one delete per step.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import math
from collections.abc import Iterator
from typing import Any, Protocol

import jax
import numpy as np
from jax._src import distributed as jax_distributed  # the coordination service client: no public handle yet
from jax.experimental import multihost_utils

from jllm.config import ConfigError, ParallelConfig
from jllm.sampler import SamplingMode, TokenConstraints
from jllm.step_inputs import StepPlan

logger = logging.getLogger(__name__)

ENGINE_KEY = "jllm/engine/{}"  # set once process n has built its engine: there is no second one
PLAN_KEY = "jllm/plan/{}"  # the n-th plan the lead published; an empty value means "stop"
POLL_MS = 60_000  # an idle follower's wait for the next plan is cut into waits this long


class Follower(Protocol):
    """What a follower needs of its engine's runner (``jllm.runner.ModelRunner``)."""

    input_structure: jax.tree_util.PyTreeDef  # the tree of every plan's StepInputs, which a plan's leaves fill

    def run(self, plan: StepPlan) -> object: ...


def initialize(config: ParallelConfig) -> None:
    """Joins the process group ``config`` names; a no-op for one process or when already joined.

    Must run before anything touches a JAX device. Checks that the mesh can span every process.
    """
    if config.distributed_coordinator is None or jax.distributed.is_initialized():
        return
    auto = config.distributed_coordinator == "auto"
    try:
        jax.distributed.initialize(
            coordinator_address=None if auto else config.distributed_coordinator,
            num_processes=config.num_processes,
            process_id=config.process_id,
        )
    except ValueError as e:  # what JAX's cluster detection could not find
        raise ConfigError(
            f"distributed_coordinator={config.distributed_coordinator!r} could not start the process group ({e}); "
            "outside SLURM, Open MPI, Kubernetes or Cloud TPU give host:port, num_processes and process_id"
        ) from e
    if jax.process_count() > 1 and config.tensor_parallel_size != jax.device_count():
        raise ConfigError(
            f"tensor_parallel_size={config.tensor_parallel_size} is not allowed with {jax.process_count()} processes: "
            f"the mesh must span every process, so it must equal their {jax.device_count()} devices in all"
        )
    logger.info("process %d of %d joined %s", jax.process_index(), jax.process_count(), config.distributed_coordinator)


def claim_engine() -> PlanPublisher | None:
    """Claims this process's engine in a process group; the lead gets the publisher of the engine's step plans.

    A second engine is refused: the followers stay in the first one's step loop, so a second engine's start-up would
    wait on them for ever. The claim is a key in the coordination service, which refuses to set a key twice.
    """
    if not is_multiprocess():
        return None  # one process: engines come and go freely
    client = _client()
    try:
        client.key_value_set(ENGINE_KEY.format(jax.process_index()), "claimed")
    except jax.errors.JaxRuntimeError as e:
        if "ALREADY_EXISTS" not in str(e):
            raise
        raise RuntimeError(
            "one engine per process under jax.distributed: the followers run the first engine's steps until the lead "
            "process exits; reuse that engine (LLM object) instead of building another"
        ) from e
    return PlanPublisher(client) if is_lead() else None


def is_multiprocess() -> bool:
    return jax.distributed.is_initialized() and jax.process_count() > 1


def is_lead() -> bool:
    """Whether this process schedules and serves; true without ``jax.distributed`` (and starts no backend then)."""
    return not jax.distributed.is_initialized() or jax.process_index() == 0


def min_over_processes(value: int) -> int:
    """The smallest of every process's ``value``: what each process sized alone, made one decision for all."""
    if not is_multiprocess():
        return value
    return int(multihost_utils.process_allgather(np.int64(value)).min())


class PlanPublisher:
    """The lead's side of the step loop: each step's plan, in order, then "stop" when the lead process exits."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._published = itertools.count()  # plans published so far
        atexit.register(self.stop)  # runs before JAX's own exit hook, while the coordination service is up

    def publish(self, plan: StepPlan) -> None:
        """The next step, for the followers to run too; before the lead runs it."""
        n = next(self._published)
        self._client.key_value_set_bytes(PLAN_KEY.format(n), _encode(plan))
        if n >= 2:  # the lead has collected step n - 2 (step n - 1 may still run), so its collectives met: every
            self._client.key_value_delete(PLAN_KEY.format(n - 2))  # follower has read that plan

    def stop(self) -> None:
        self._client.key_value_set_bytes(PLAN_KEY.format(next(self._published)), b"")


def run_follower(runner: Follower) -> None:
    """A follower's whole job after start-up: run the lead's steps, in order, until the lead stops."""
    logger.info("process %d follows the lead's steps; only process 0 takes requests", jax.process_index())
    for plan in _plans(runner.input_structure):
        runner.run(plan)
    logger.info("process %d: the lead stopped", jax.process_index())


def _plans(structure: jax.tree_util.PyTreeDef) -> Iterator[StepPlan]:
    client = _client()
    for n in itertools.count():
        data = _wait_for(client, PLAN_KEY.format(n))
        if not data:
            return
        yield _decode(data, structure)


def _encode(plan: StepPlan) -> bytes:
    """A JSON header (variant; each input leaf's dtype, shape and full width; whether token constraints follow the
    inputs' leaves), then the leaves' bytes.

    2-D leaves leave behind their trailing columns that repeat the last one (a block table's unused pages, the -1
    padding of token lists): with long contexts MBs of padding would otherwise cross every step. Plain JSON and raw
    bytes, not pickle, so nothing executable crosses; no zip container, whose parsing costs a follower a millisecond.
    """
    leaves = jax.tree.leaves(plan.inputs) + jax.tree.leaves(plan.constraints)  # no constraints: no leaves
    widths = [x.shape[1] if x.ndim == 2 and x.shape[1] else -1 for x in leaves]
    kept = [np.ascontiguousarray(x if w < 0 else x[:, : _kept_columns(x)]) for x, w in zip(leaves, widths, strict=True)]
    arrays = [[x.dtype.str, x.shape, w] for x, w in zip(kept, widths, strict=True)]
    header = json.dumps({"variant": plan.variant, "arrays": arrays, "constraints": plan.constraints is not None})
    header = header.encode()
    return b"".join([len(header).to_bytes(4, "little"), header, *(x.tobytes() for x in kept)])


def _decode(data: bytes, structure: jax.tree_util.PyTreeDef) -> StepPlan:
    """``structure``: the follower's own tree of ``StepInputs`` (its static fields, the mesh included, are local)."""
    size = int.from_bytes(data[:4], "little")
    header, offset = json.loads(data[4 : 4 + size]), 4 + size
    leaves = []
    for dtype, shape, width in header["arrays"]:
        x = np.frombuffer(data, dtype, count=math.prod(shape), offset=offset).reshape(shape)
        offset += x.nbytes
        leaves.append(x if width < 0 else np.concatenate([x, np.repeat(x[:, -1:], width - x.shape[1], axis=1)], 1))
    top_logprobs, prompt_logprobs, mode = header["variant"]
    constraints = None
    if header["constraints"]:
        constraints, leaves = TokenConstraints(*leaves[-3:]), leaves[:-3]
    variant = (top_logprobs, prompt_logprobs, SamplingMode(mode))
    return StepPlan(jax.tree.unflatten(structure, leaves), variant, constraints)


def _kept_columns(x: np.ndarray) -> int:
    """Columns up to the first of the trailing run that equals the last column (which restores the rest)."""
    same = (x == x[:, -1:]).all(axis=0)[::-1]  # [W] from the last column back: equal to the last column?
    return x.shape[1] - (int(np.argmin(same)) if not same.all() else x.shape[1]) + 1


def _wait_for(client: Any, key: str) -> bytes:
    """Blocks until the lead publishes ``key``, however long the lead stays idle; fails if the lead dies."""
    while True:
        try:
            return client.blocking_key_value_get_bytes(key, POLL_MS)
        except jax.errors.JaxRuntimeError as e:
            if "DEADLINE_EXCEEDED" not in str(e):
                raise


def _client() -> Any:
    client = jax_distributed.global_state.client
    if client is None:
        raise RuntimeError("jax.distributed is not initialized: step plans need its coordination service")
    return client

"""LoRA adapters over the server: a request's ``model`` naming an adapter runs the base model with it, the model
list shows each adapter with its parent, and the runtime load / unload routes (vLLM's) behind their key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_runner import fake_engine
from server_utils import RunningServer, http

from jllm.config import load_config
from jllm.engine import LLMEngine
from jllm.lora import LoRARequest
from jllm.lora.slots import LoRASlots
from jllm.sampling import SamplingParams

MODEL = "scripted"
SQL = LoRARequest("sql", 1, "/adapters/sql")


class RecordingLoRA:
    """Stands in for ``jllm.lora.manager.LoRAManager``: knows adapters without reading files, records requests."""

    def __init__(self, adapters: list[LoRARequest]) -> None:
        self.known = {a.lora_int_id: a for a in adapters}
        self.slots = LoRASlots(max_loras=2)
        self.added: list[LoRARequest] = []

    @property
    def adapters(self) -> list[LoRARequest]:
        return list(self.known.values())

    def add(self, request: LoRARequest) -> None:
        self.added.append(request)
        self.known[request.lora_int_id] = request

    def remove(self, lora_int_id: int) -> None:
        self.slots.evict(lora_int_id)
        del self.known[lora_int_id]


def _engine() -> LLMEngine:
    engine = fake_engine()
    engine.lora = RecordingLoRA([SQL])
    engine.scheduler.lora_slots = engine.lora.slots
    return engine


@pytest.fixture
def engine() -> LLMEngine:
    return _engine()


@pytest.fixture
def server(engine: LLMEngine) -> Iterator[RunningServer]:
    config = load_config(None, served_model_name=MODEL, enable_lora=True, allow_runtime_lora_updating=True)
    with RunningServer(engine, config) as running:
        yield running


def _complete(server: RunningServer, model: str) -> int:
    body = {"model": model, "prompt": "hello", "max_tokens": 3}
    return http("POST", f"{server.url}/v1/completions", json_body=body).status


def test_a_request_naming_an_adapter_runs_the_base_model_with_it(server: RunningServer, engine: LLMEngine) -> None:
    assert _complete(server, "sql") == 200
    assert engine.lora.added == [SQL]
    chat = {"model": "sql", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert http("POST", f"{server.url}/v1/chat/completions", json_body=chat).status == 200
    assert _complete(server, MODEL) == 200
    assert engine.lora.added == [SQL, SQL]  # the base model's request named none
    missing = http("POST", f"{server.url}/v1/completions", json_body={"model": "nope", "prompt": "x"})
    assert missing.status == 404 and "`sql`" in missing.json()["error"]["message"]


def test_the_model_list_shows_each_adapter_with_its_base_as_parent(server: RunningServer) -> None:
    cards = http("GET", f"{server.url}/v1/models").json()["data"]
    assert [(c["id"], c["parent"], c["root"]) for c in cards] == [(MODEL, None, None), ("sql", MODEL, "/adapters/sql")]
    card = http("GET", f"{server.url}/v1/models/sql").json()
    assert (card["id"], card["parent"]) == ("sql", MODEL)


def test_embeddings_naming_an_adapter_are_refused_naming_the_base(server: RunningServer) -> None:
    reply = http("POST", f"{server.url}/v1/embeddings", json_body={"model": "sql", "input": "hi"})
    assert reply.status == 400 and f"name `{MODEL}`" in reply.json()["error"]["message"]


def test_adapters_load_and_unload_at_run_time(server: RunningServer, engine: LLMEngine) -> None:
    url = server.url
    loaded = http("POST", f"{url}/v1/load_lora_adapter", json_body={"lora_name": "new", "lora_path": "/adapters/new"})
    assert loaded.status == 200 and loaded.body == b"Success: LoRA adapter 'new' added successfully."
    assert engine.lora.added == [LoRARequest("new", 2, "/adapters/new")]
    again = http("POST", f"{url}/v1/load_lora_adapter", json_body={"lora_name": "new", "lora_path": "/x"})
    assert again.status == 400 and "already been loaded" in again.json()["error"]["message"]
    assert _complete(server, "new") == 200
    assert http("POST", f"{url}/v1/unload_lora_adapter", json_body={"lora_name": "new"}).status == 200
    assert _complete(server, "new") == 404
    gone = http("POST", f"{url}/v1/unload_lora_adapter", json_body={"lora_name": "new"})
    assert gone.status == 404 and "cannot be found" in gone.json()["error"]["message"]


def test_runtime_adapter_routes_are_off_unless_the_key_allows_them() -> None:
    config = load_config(None, served_model_name=MODEL, enable_lora=True)
    with RunningServer(_engine(), config) as server:
        reply = http("POST", f"{server.url}/v1/load_lora_adapter", json_body={"lora_name": "a", "lora_path": "/a"})
        assert reply.status == 404 and "allow_runtime_lora_updating" in reply.json()["error"]["message"]


def test_an_adapter_a_request_still_uses_is_not_removed(engine: LLMEngine) -> None:
    params = SamplingParams(max_tokens=2)
    engine.add_request("r", engine.inputs.process("hello", params), params, lora_request=SQL)
    with pytest.raises(ValueError, match="adapter 1 is in use by 1 unfinished requests"):
        engine.remove_lora(SQL.lora_int_id)
    while engine.has_unfinished_requests():
        engine.step()
    engine.remove_lora(SQL.lora_int_id)
    assert engine.lora.adapters == []

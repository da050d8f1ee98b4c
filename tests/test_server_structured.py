"""Structured output and tool calls with the official ``openai`` client against the real server on the default model
(SmolLM2-135M-Instruct): constrained decoding guarantees the syntax whatever the small model would say."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from model_utils import assert_only_warmup_programs
from server_utils import ENGINE_ARGS, RunningServer, engine_config

from jllm.llm import LLM
from jllm.structured_output import StructuredOutputsParams, fill_bitmask

pytestmark = pytest.mark.slow  # the default model on the CPU

MODEL = "smollm2"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3},
    },
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def _is_person(value: Any) -> bool:
    """PERSON's constraints, checked by hand (jsonschema is not a dependency)."""
    return (
        isinstance(value, dict)
        and set(value) == {"name", "age", "pets"}
        and isinstance(value["name"], str)
        and len(value["name"]) <= 16
        and type(value["age"]) is int
        and 0 <= value["age"] <= 120
        and isinstance(value["pets"], list)
        and len(value["pets"]) <= 3
        and all(p in ("cat", "dog", "fish") for p in value["pets"])
    )


ARGS = {**ENGINE_ARGS, "max_num_seqs": 8, "max_model_len": 512, "num_pages": 160}


@pytest.fixture(scope="module")
def llm(default_model_dir: Path) -> LLM:
    return LLM(str(default_model_dir), **ARGS)


@pytest.fixture(scope="module")
def client(llm: LLM, default_model_dir: Path) -> Iterator[openai.OpenAI]:
    config = engine_config(default_model_dir, served_model_name=MODEL, **ARGS)
    with RunningServer(llm.engine, config) as running:
        yield openai.OpenAI(base_url=f"{running.url}/v1", api_key="none", max_retries=0)


def test_json_schema_output_parses_and_follows_the_schema_on_20_prompts(client: openai.OpenAI) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}

    def ask(i: int) -> str:
        messages = [{"role": "user", "content": f"Invent person number {i} and describe them as JSON."}]
        reply = client.chat.completions.create(
            model=MODEL, messages=messages, response_format=response_format, max_tokens=60, temperature=0.7, seed=i
        )
        assert reply.choices[0].finish_reason == "stop", reply
        return reply.choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(ask, range(20)))
    assert all(_is_person(json.loads(text)) for text in texts), texts
    assert len(set(texts)) > 1  # sampled, not one canned answer


def test_guided_choice_and_regex(client: openai.OpenAI) -> None:
    choices = ["red", "green", "blue"]
    for seed in range(3):
        reply = client.completions.create(
            model=MODEL,
            prompt="My favourite colour is",
            max_tokens=10,
            seed=seed,
            extra_body={"guided_choice": choices},
        )
        assert reply.choices[0].text in choices and reply.choices[0].finish_reason == "stop"
    pattern = r"[0-9]{3}-[a-z]{2,4}"
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give me a code."}],
        max_tokens=20,
        extra_body={"structured_outputs": {"regex": pattern}},
    )
    assert re.fullmatch(pattern, reply.choices[0].message.content)


def _streamed_calls(stream: Any) -> tuple[list[dict[str, Any]], str | None]:
    """The calls OpenAI's deltas assemble to, and the finish reason."""
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for d in choice.delta.tool_calls or []:
            if d.id is not None:  # the first delta of a call
                calls[d.index] = {"id": d.id, "type": d.type, "name": d.function.name, "arguments": ""}
            calls[d.index]["arguments"] += d.function.arguments or ""
    return [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_round_trip(client: openai.OpenAI, stream: bool) -> None:
    """Request with tools -> tool_calls -> a tool message -> the answer."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather in Paris?"}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    ask = dict(model=MODEL, tools=[WEATHER_TOOL], max_tokens=60, temperature=0)
    if stream:  # "required" streams each call whole once complete
        calls, finish = _streamed_calls(
            client.chat.completions.create(messages=messages, tool_choice="required", stream=True, **ask)
        )
    else:  # a named function
        reply = client.chat.completions.create(messages=messages, tool_choice=named, **ask)
        finish = reply.choices[0].finish_reason
        calls = [
            {"id": c.id, "type": c.type, "name": c.function.name, "arguments": c.function.arguments}
            for c in reply.choices[0].message.tool_calls
        ]
    assert finish == ("tool_calls" if stream else "stop") and len(calls) >= 1  # named: "stop", as OpenAI ends it
    call = calls[0]
    assert call["type"] == "function" and call["name"] == "get_weather" and call["id"].startswith("call_")
    arguments = json.loads(call["arguments"])
    assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}
        ]},
        {"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 24 degrees."},
    ]  # fmt: skip
    if stream:
        chunks = list(client.chat.completions.create(messages=messages, stream=True, tool_choice="none", **ask))
        answer = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        reply = client.chat.completions.create(messages=messages, tool_choice="none", **ask)
        answer, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
    assert answer.strip() and finish in ("stop", "length")


FEW_SHOT_CALLS = (
    "Tool calls, one per line.\n"
    'Weather in Paris: <function=get_weather>{"town":"Paris","when":"today"}</function>\n'
    'Weather in Rome: <function=get_weather>{"town":"Rome","when":"today"}</function>\n'
    "Weather in Oslo:"
)
FORECAST = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
CALL_TAG = {"structures": [{"begin": "<function=get_weather>", "schema": FORECAST, "end": "</function>"}]}
CALL_TAG["triggers"] = ["<function="]


def test_a_structural_tag_holds_each_call_to_its_schema(client: openai.OpenAI) -> None:
    """The few-shot prompt's calls say "town"; greedy, the model copies them, unless the structural tag (vLLM's, sent
    as response_format and as the older structural_tag field) holds the call to FORECAST."""
    ask = {"model": MODEL, "prompt": FEW_SHOT_CALLS, "max_tokens": 40, "temperature": 0, "stop": ["\n"]}
    free = client.completions.create(**ask).choices[0].text
    assert '<function=get_weather>{"town":"Oslo"' in free
    tag_format = {"type": "structural_tag", **CALL_TAG}
    call = {"type": "tag", "begin": "<function=get_weather>", "end": "</function>"}
    call["content"] = {"type": "json_schema", "json_schema": FORECAST}
    xgrammar_form = {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": ["<function="]}}
    xgrammar_form["format"]["tags"] = [call]
    for extra in (
        {"response_format": tag_format},
        {"structural_tag": json.dumps(CALL_TAG)},
        {"response_format": xgrammar_form},
    ):
        text = client.completions.create(**ask, extra_body=extra).choices[0].text
        call = re.fullmatch(r" ?<function=get_weather>(.*)</function>", text)
        assert call, text
        arguments = json.loads(call[1])
        assert set(arguments) == {"city", "days"} and type(arguments["days"]) is int and arguments["days"] >= 1
    with pytest.raises(openai.BadRequestError) as refused:
        token_level = {"type": "structural_tag", "format": {"type": "token", "token": "<x>"}}
        client.completions.create(**ask, extra_body={"response_format": token_level})
    assert refused.value.body["param"] == "response_format" and "'token' formats" in refused.value.body["message"]


def test_a_trigger_that_is_a_special_token_is_sampled_as_that_token(llm: LLM) -> None:
    """SmolLM2's "<repo_name>" is a special token: as a trigger, the mask lets the model write that token (not its
    characters), after which the structure's begin follows."""
    compiler = llm.engine.grammars
    tokenizer = llm.engine.tokenizer
    (special,) = tokenizer.encode("<repo_name>", add_special_tokens=False)
    assert compiler.is_special_token("<repo_name>") and not compiler.is_special_token("<function=")
    tag = {"structures": [{"begin": "<repo_name>call", "schema": FORECAST, "end": "."}], "triggers": ["<repo_name>"]}
    matcher = compiler.matcher(StructuredOutputsParams(structural_tag=tag))
    vocab = compiler.vocab_size

    def allowed() -> np.ndarray:
        mask = fill_bitmask([(0, matcher, None)], 1, vocab)
        return np.flatnonzero(np.unpackbits(mask[0].view(np.uint8), bitorder="little")[:vocab])

    for token in tokenizer.encode("Hi there", add_special_tokens=False):
        assert not matcher.accept(token)
    assert special in allowed()
    assert not matcher.accept(special) and matcher.error is None
    after = {tokenizer.decode([t]) for t in allowed()}
    assert after and all("call".startswith(text) for text in after), after


def test_constrained_steps_compiled_no_forward_program(llm: LLM, client: openai.OpenAI) -> None:
    """Masks and biases travel apart from the step's inputs, and warm-up compiled the sampler that takes them: after
    the tests above, the programs are still the ones warm-up compiled, one forward per bucket."""
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=3, logit_bias={"28": 5})
    runner = llm.engine.runner
    assert_only_warmup_programs(runner)

"""gpt-oss on the server (``reasoning_parser: openai_gptoss``, ``tool_call_parser: openai``): the reply's analysis as
reasoning, its final message as content, its calls as ``tool_calls``, whole and streamed, through the openai SDK; a
grammar on the final message alone; the Responses API's items; and the prompt side through gpt-oss's own chat
template (``reasoning_effort``, a tool call and its result in the history).

A synthetic tokenizer stands for o200k_harmony: GPT-2's byte alphabet without merges plus the harmony special tokens,
``<|return|>`` and ``<|call|>`` ending generation as gpt-oss's generation_config has them; the chat template is
gpt-oss's own (``tests/data/gpt_oss/chat_template.jinja``: openai/gpt-oss-120b's, as llama.cpp vendors it in
``models/templates/openai-gpt-oss-120b.jinja``). Each reply is scripted by the user's message."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import openai
import pytest
from fake_runner import fake_engine
from server_utils import RunningServer, http
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers

from jllm.config import load_config
from jllm.engine import LLMEngine

MODEL = "gpt-oss"
TEMPLATE = Path(__file__).parent / "data" / "gpt_oss" / "chat_template.jinja"
SPECIALS = ["<|endoftext|>", "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>"]
SPECIALS += ["<|call|>"]
THOUGHT = "User asks about Paris. Need the weather."
ANALYSIS = f"<|channel|>analysis<|message|>{THOUGHT}<|end|>"
CALL = (
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
    '{"city": "Paris"}<|call|>'
)
REPLIES = {  # the user's message -> the model's reply (the prompt ends with <|start|>assistant)
    "weather": f"{ANALYSIS}<|start|>assistant<|channel|>final<|message|>It is sunny.<|return|>",
    "call": f"{ANALYSIS}<|start|>assistant<|channel|>commentary<|message|>Let me check.<|end|>{CALL}",
    "json": f'{ANALYSIS}<|start|>assistant<|channel|>final<|message|>{{"city":"Paris"}}<|return|>',
    "long": f"{ANALYSIS}<|start|>assistant<|channel|>final<|message|>It is sunny and warm today.<|return|>",
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


def harmony_tokenizer(out: Path) -> Path:
    """The harmony special tokens (ids 0-7) and GPT-2's byte alphabet, no merges; gpt-oss's chat template."""
    out.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    vocab |= {c: len(SPECIALS) + i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = BackendTokenizer(models.BPE(vocab, []))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIALS)
    backend.save(str(out / "tokenizer.json"))
    config = {"backend": "tokenizers", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"}
    (out / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "TokenizersBackend"}))
    ends = [SPECIALS.index(t) for t in ("<|return|>", "<|endoftext|>", "<|call|>")]
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": ends}))
    shutil.copy(TEMPLATE, out / "chat_template.jinja")
    return out


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LLMEngine:
    engine = fake_engine(
        max_model_len=2048, num_pages=1024, tokenizer_dir=harmony_tokenizer(tmp_path_factory.mktemp("harmony"))
    )
    chosen: dict[tuple[int, ...], list[int]] = {}

    def reply_to(prompt: str) -> str:
        if "<|start|>user<|message|>effort<|end|>" in prompt:  # says the effort the system message was given
            effort = re.search(r"Reasoning: (\w+)", prompt)
            return f"<|channel|>final<|message|>{effort.group(1) if effort else 'none'}<|return|>"
        return next(text for key, text in REPLIES.items() if f"<|start|>user<|message|>{key}<|end|>" in prompt)

    def script(prompt: Sequence[int], position: int) -> int:
        if tuple(prompt) not in chosen:
            text = reply_to(engine.tokenizer.decode(list(prompt), skip_special_tokens=False))
            chosen[tuple(prompt)] = engine.tokenizer.encode(text, add_special_tokens=False)
        ids = chosen[tuple(prompt)]
        return ids[min(position - len(prompt), len(ids) - 1)]

    engine.runner.script = script
    return engine


@pytest.fixture(scope="module")
def server(engine: LLMEngine) -> Iterator[RunningServer]:
    config = load_config(
        None,
        served_model_name=MODEL,
        reasoning_parser="openai_gptoss",
        tool_call_parser="openai",
        enable_auto_tool_choice=True,
    )
    with RunningServer(engine, config) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def _ask(key: str) -> list[dict]:
    return [{"role": "user", "content": key}]


def _streamed(client: openai.OpenAI, **body: object) -> tuple[str, str, list]:
    chunks = list(client.chat.completions.create(model=MODEL, max_tokens=300, stream=True, **body))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert "<|" not in reasoning + content  # no marker leaks
    return reasoning, content, chunks


def test_analysis_is_reasoning_and_the_final_message_the_content_whole_and_streamed(
    client: openai.OpenAI, engine: LLMEngine
) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=_ask("weather"), max_tokens=300)
    message = reply.choices[0].message
    assert (message.model_extra["reasoning"], message.content) == (THOUGHT, "It is sunny.")
    assert reply.choices[0].finish_reason == "stop" and not message.tool_calls
    analysis_tokens = len(engine.tokenizer.encode(ANALYSIS, add_special_tokens=False))
    assert reply.usage.completion_tokens_details.reasoning_tokens == analysis_tokens
    reasoning, content, chunks = _streamed(client, messages=_ask("weather"), stream_options={"include_usage": True})
    assert (reasoning, content) == (THOUGHT, "It is sunny.")
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == analysis_tokens


def test_a_call_comes_as_tool_calls_after_its_preamble_whole_and_streamed(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=_ask("call"), tools=TOOLS, max_tokens=300)
    choice = reply.choices[0]
    assert (choice.message.model_extra["reasoning"], choice.message.content) == (THOUGHT, "Let me check.")
    assert [(c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        ("get_weather", '{"city": "Paris"}')
    ]
    assert choice.finish_reason == "tool_calls"
    reasoning, content, chunks = _streamed(client, messages=_ask("call"), tools=TOOLS)
    assert (reasoning, content) == (THOUGHT, "Let me check.")
    calls = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert calls[0].function.name == "get_weather" and calls[0].id.startswith("call_")
    assert "".join(d.function.arguments or "" for d in calls) == '{"city": "Paris"}'
    assert len([d for d in calls if d.function.arguments]) > 1  # streamed as generated, not whole
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_reply_cut_short_in_its_final_message_keeps_what_was_said(client: openai.OpenAI, engine: LLMEngine) -> None:
    analysis_tokens = len(engine.tokenizer.encode(ANALYSIS, add_special_tokens=False))
    header = len(engine.tokenizer.encode("<|start|>assistant<|channel|>final<|message|>", add_special_tokens=False))
    reply = client.chat.completions.create(model=MODEL, messages=_ask("long"), max_tokens=analysis_tokens + header + 5)
    assert reply.choices[0].message.content == "It is" and reply.choices[0].finish_reason == "length"


def test_a_grammar_holds_the_final_message_alone(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    reply = client.chat.completions.create(
        model=MODEL, messages=_ask("json"), response_format=response_format, max_tokens=300
    )
    message = reply.choices[0].message
    assert (message.model_extra["reasoning"], json.loads(message.content)) == (THOUGHT, {"city": "Paris"})
    reasoning, content, _ = _streamed(client, messages=_ask("json"), response_format=response_format)
    assert (reasoning, json.loads(content)) == (THOUGHT, {"city": "Paris"})


def test_a_forced_call_is_the_final_messages_json(client: openai.OpenAI) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    reply = client.chat.completions.create(
        model=MODEL, messages=_ask("json"), tools=TOOLS, tool_choice=choice, max_tokens=300
    )
    call = reply.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert reply.choices[0].message.model_extra["reasoning"] == THOUGHT


def test_reasoning_effort_reaches_gpt_oss_template(client: openai.OpenAI, server: RunningServer) -> None:
    for effort, said in (("low", "low"), ("high", "high"), (None, "medium")):  # the template's default: medium
        body = {"reasoning_effort": effort} if effort else {}
        reply = client.chat.completions.create(model=MODEL, messages=_ask("effort"), max_tokens=20, **body)
        assert reply.choices[0].message.content == said
    bad = http(
        "POST",
        f"{server.url}/v1/chat/completions",
        json_body={"model": MODEL, "messages": _ask("effort"), "reasoning_effort": "extreme"},
    )
    assert bad.status == 400 and "reasoning_effort" in bad.json()["error"]["message"]


def test_a_call_and_its_result_render_as_gpt_oss_template_expects(server: RunningServer, engine: LLMEngine) -> None:
    """The assistant's call as a commentary message to its function (its reasoning as the analysis before it), the
    result as the function's message back: what the model was trained to read."""
    messages = [
        *_ask("weather"),
        {
            "role": "assistant",
            "content": None,
            "reasoning": "Need the weather.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    reply = http("POST", f"{server.url}/tokenize", json_body={"model": MODEL, "messages": messages, "tools": TOOLS})
    assert reply.status == 200, reply.body
    prompt = engine.tokenizer.decode(reply.json()["tokens"], skip_special_tokens=False)
    assert "// The weather in a city.\ntype get_weather = (_: {\ncity: string,\n}) => any;" in prompt
    assert prompt.endswith(
        "<|start|>user<|message|>weather<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>Need the weather.<|end|>"
        '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>'
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"sunny"<|end|>'
        "<|start|>assistant"
    )


def test_the_responses_api_gives_reasoning_then_message_then_function_call(client: openai.OpenAI) -> None:
    tool = {"type": "function", **TOOLS[0]["function"]}  # gpt-oss's template needs a description
    response = client.responses.create(model=MODEL, input="call", tools=[tool], max_output_tokens=300)
    assert [item.type for item in response.output] == ["reasoning", "message", "function_call"]
    reasoning, message, call = response.output
    assert reasoning.content[0].text == THOUGHT and message.content[0].text == "Let me check."
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')
    with client.responses.stream(model=MODEL, input="call", tools=[tool], max_output_tokens=300) as stream:
        streamed = stream.get_final_response()
    assert [item.type for item in streamed.output] == ["reasoning", "message", "function_call"]
    assert (streamed.output[2].name, streamed.output[2].arguments) == ("get_weather", '{"city": "Paris"}')
    assert streamed.output[0].content[0].text == THOUGHT and streamed.output[1].content[0].text == "Let me check."
    answer = client.responses.create(model=MODEL, input="weather", max_output_tokens=300)
    assert [item.type for item in answer.output] == ["reasoning", "message"]
    assert answer.output_text == "It is sunny."


def test_the_responses_apis_reasoning_effort_reaches_the_template(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="effort", reasoning={"effort": "low"}, max_output_tokens=20)
    assert response.output_text == "low" and response.reasoning.effort == "low"
    with pytest.raises(openai.BadRequestError) as refused:  # "auto" is the reasoning whole: tests/test_server_codex.py
        client.responses.create(model=MODEL, input="effort", reasoning={"summary": "concise"})
    assert refused.value.body["param"] == "reasoning" and "summary 'concise'" in refused.value.message

"""vLLM's ``chat_template_content_format``: a template that loops over a message's content parts (Gemma 3's, Llama
4's) gets a list of text parts, a template that prints the content gets one string; "auto" tells them apart by the
template's Jinja syntax tree, and the server's and ``LLM.chat``'s setting forces either."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_runner import TINY_TOKENIZER, fake_engine
from server_utils import RunningServer, http

from jllm.chat_content import detect_content_format
from jllm.config import load_config
from jllm.config_base import ConfigError
from jllm.engine import LLMEngine
from jllm.errors import InputError
from jllm.inputs import InputProcessor
from jllm.tokenizer import Tokenizer

# Gemma 3's chat template, its image branches left out: a system message's text comes from its first part where its
# content is not a string; each turn's content is printed whole if a string, else part by part
GEMMA3_LIKE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- set role = "model" if message['role'] == 'assistant' else message['role'] -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- else -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"""
# a template that reads parts only (no string branch): given a string, its loop runs over characters and prints none
PARTS_ONLY = (
    "{% for m in messages %}<{{ m.role }}>{% for p in m.content %}{% if p.type == 'text' %}{{ p.text }}|{% endif %}"
    "{% endfor %}{% endfor %}"
)
STRING = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
SPLIT = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]}]


@pytest.mark.parametrize(
    "template, found",
    [
        (GEMMA3_LIKE, "openai"),
        (PARTS_ONLY, "openai"),
        (STRING, "string"),
        ("{% set ms = messages %}{% for m in ms | reverse %}{% for c in m['content'][1:] %}{% endfor %}{% endfor %}",
         "openai"),  # a variable set from the messages, a filter, a slice: as vLLM reads them
        ("{% for m in messages %}{% generation %}{% for c in m.content %}{% endfor %}{% endgeneration %}{% endfor %}",
         "openai"),  # transformers' own tag parses
        ("{% for c in content %}{% endfor %}{% for m in messages %}{{ m.content }}{% endfor %}", "string"),
        ("{% for m in messages %}{% for c in m.tool_calls %}{% endfor %}{% endfor %}", "string"),
        ("{% for x in %}", "string"),  # cannot parse: the render names the error
    ],
)  # fmt: skip
def test_auto_reads_whether_the_template_loops_over_a_messages_content(template: str, found: str) -> None:
    assert detect_content_format(template) == found


@pytest.fixture(scope="module")
def inputs() -> InputProcessor:
    return InputProcessor(Tokenizer.from_pretrained(TINY_TOKENIZER), vocab_size=512, max_model_len=256)


def test_a_template_looping_over_parts_gets_parts_and_a_string_template_a_string(inputs: InputProcessor) -> None:
    """jllm had joined every message's parts into one string: Gemma 3's template then printed "hi\\nthere" where
    vLLM's gives it the parts ("hithere"), and a template reading parts only printed nothing of a string's."""
    conversation = [{"role": "system", "content": "Be brief."}, *SPLIT]

    def text(template: str, messages: list[dict], content_format: str = "auto") -> str:
        return inputs.render_chat(messages, chat_template=template, content_format=content_format).text

    turn = "<start_of_turn>user\nBe brief.\n\n{}<end_of_turn>\n<start_of_turn>model\n"
    assert text(GEMMA3_LIKE, conversation) == "<s>" + turn.format("hithere")
    assert text(GEMMA3_LIKE, conversation, "string") == "<s>" + turn.format("hi\nthere")  # jllm's before
    assert text(PARTS_ONLY, [{"role": "user", "content": "hi"}]) == "<user>hi|"  # a string is one part
    assert text(PARTS_ONLY, [{"role": "user", "content": "hi"}], "string") == "<user>"
    assert text(STRING, SPLIT) == "<user>hi\nthere" == text(STRING, SPLIT, "string")
    tool_turn = [
        {"role": "assistant", "content": None},
        {"role": "tool", "tool_call_id": "c", "content": SPLIT[0]["content"]},
    ]
    assert text(PARTS_ONLY + "{{ messages[1].content }}", tool_turn) == "<assistant><tool>hi\nthere"  # vLLM's: a
    # tool message's text parts as one string, an assistant's null content as no parts
    with pytest.raises(InputError, match="^chat_template_content_format must be 'auto', 'string' or 'openai'") as e:
        text(STRING, SPLIT, "text")
    assert e.value.param == "chat_template_content_format"


def test_null_text_parts_are_skipped_and_thinking_parts_are_text_at_the_door(inputs: InputProcessor) -> None:
    """vLLM's chat parser (offline LLM.chat too): a text or refusal part with null text is skipped (jllm's door had
    refused the whole content), a "thinking" part is its text, in either format."""
    parts = [
        {"type": "text", "text": None},
        {"type": "thinking", "thinking": "hm"},
        {"type": "refusal", "refusal": None},
        {"type": "text", "text": "hi"},
    ]
    for template, expected in ((STRING, "<user>hm\nhi"), (PARTS_ONLY, "<user>hm|hi|")):
        assert inputs.render_chat([{"role": "user", "content": parts}], chat_template=template).text == expected


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    engine = fake_engine(max_model_len=256, num_pages=96)
    engine.tokenizer.hf.chat_template = PARTS_ONLY
    return engine


@pytest.fixture(scope="module")
def server(engine: LLMEngine) -> Iterator[RunningServer]:
    with RunningServer(engine, load_config(None, served_model_name="m")) as running:
        yield running


@pytest.mark.parametrize("content", ["hi", [{"type": "text", "text": "hi"}, {"type": "input_text", "text": "you"}]])
def test_the_chat_route_and_tokenize_give_a_parts_template_parts(server: RunningServer, content: object) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    chat = http(
        "POST", f"{server.url}/v1/chat/completions", json_body={**body, "max_tokens": 1, "return_prompt_text": True}
    )
    assert chat.status == 200, chat.body
    text = chat.json()["prompt_text"]
    assert text == ("<user>hi|" if content == "hi" else "<user>hi|you|")
    tokens = http("POST", f"{server.url}/tokenize", json_body=body).json()["count"]
    assert tokens == chat.json()["usage"]["prompt_tokens"]


def test_the_servers_setting_forces_a_format_and_a_bad_one_is_refused(engine: LLMEngine) -> None:
    config = load_config(None, served_model_name="m", chat_template_content_format="string")
    with RunningServer(engine, config) as running:
        body = {"model": "m", "messages": SPLIT, "max_tokens": 1, "return_prompt_text": True}
        reply = http("POST", f"{running.url}/v1/chat/completions", json_body=body)
    assert reply.json()["prompt_text"] == "<user>"  # as told: the parts joined, which this template cannot print
    with pytest.raises(ConfigError, match="chat_template_content_format"):
        load_config(None, chat_template_content_format="parts")

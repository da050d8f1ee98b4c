"""Tool calls: each family's parser on whole and streamed text, and the chat endpoint over the scripted engine
through the ``openai`` client (auto calls parsed from the script's Hermes text, streamed as OpenAI's deltas; tools
and tool history reaching the template; the refusals)."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from fake_runner import TINY_TOKENIZER, fake_engine, repeating_text_engine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_utils import RunningServer, http

from jllm.config import load_config
from jllm.engine import LLMEngine
from jllm.inputs import Prompt
from jllm.sampling import SamplingParams
from jllm.tool_calls import (
    PARSERS,
    CallPart,
    ForcedCallStream,
    ToolCall,
    ToolCallStream,
    cut_short_inside,
    forced_call_schema,
    forced_calls,
    make_parser,
    parse_tool_calls,
)

MODEL = "scripted"
WEATHER = {"city": "Paris", "days": [1, 2]}
OUTPUTS = {  # (output, content, [(name, arguments)])
    "hermes": (
        'Let me check.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris", "days": [1, 2]}}\n</tool_call>'
        '\n<tool_call>{"name": "time", "arguments": {}}</tool_call>',
        "Let me check.",
        [("weather", WEATHER), ("time", {})],
    ),
    "llama3_json": (
        '{"name": "weather", "parameters": {"city": "Paris", "days": [1, 2]}}; {"name": "time", "parameters": {}}',
        None,
        [("weather", WEATHER), ("time", {})],
    ),
    "mistral": (
        '[TOOL_CALLS][{"name": "weather", "arguments": {"city": "Paris", "days": [1, 2]}}, '
        '{"name": "time", "arguments": {}}]',
        None,
        [("weather", WEATHER), ("time", {})],
    ),
}
NOT_CALLS = ["Just text, no calls.", '<tool_call>{"name": broken</tool_call>', '{"no_name": 1}', "[TOOL_CALLS]nope"]


def _assemble(parts: list[CallPart]) -> list[ToolCall]:
    """Calls as a client puts them together from streamed parts: a call begins with its id and name, fragments of
    its arguments follow, and one call's parts never interleave with the next's."""
    calls: list[ToolCall] = []
    for index, call, fragment in parts:
        if call is not None:
            assert index == len(calls) and not call.arguments
            calls.append(call)
        else:
            assert index == len(calls) - 1
            calls[-1] = dataclasses.replace(calls[-1], arguments=calls[-1].arguments + fragment)
    return calls


def _pairs(calls: list) -> list[tuple[str, Any]]:
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("family", sorted(OUTPUTS))
def test_parser_reads_its_familys_calls_whole_and_streamed(family: str) -> None:
    text, content, expected = OUTPUTS[family]
    parser = make_parser(family)
    got_content, calls = parse_tool_calls(parser, text)
    assert got_content == content and _pairs(calls) == expected
    assert all(c.id.startswith("call_") and len(c.id) > 20 for c in calls) and len({c.id for c in calls}) == 2
    rng = random.Random(family)
    for _ in range(5):  # random chunkings: the same calls, the content before them
        stream, streamed, sent = ToolCallStream(parser), [], ""
        cuts = sorted(rng.sample(range(1, len(text)), 12))
        for piece in [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]:
            delta, new = stream.feed(piece)
            sent, streamed = sent + delta, streamed + new
        delta, new = stream.finish()
        sent, streamed = sent + delta, streamed + new
        assert _pairs(_assemble(streamed)) == expected and sent.strip() == (content or "")


@pytest.mark.parametrize("text", NOT_CALLS)
@pytest.mark.parametrize("family", sorted(OUTPUTS))
def test_text_that_is_not_calls_stays_content(family: str, text: str) -> None:
    parser = make_parser(family)
    assert parse_tool_calls(parser, text) == (text, [])
    stream = ToolCallStream(parser)
    sent, calls = stream.feed(text)
    rest, more = stream.finish()
    assert sent + rest == text and calls == more == []


# vLLM's test strings for each format (tests/tool_parsers/test_<format>_tool_parser.py): (output, content, calls)
SF = "get_weather(city='San Francisco', metric='celsius')"
SF_CALL = ("get_weather", {"city": "San Francisco", "metric": "celsius"})
USER = (
    "register_user(name='John Doe', age=37, address={'city': 'San Francisco', 'state': 'CA'}, role=None, "
    "passed_test=True, aliases=['John', 'Johnny'])"
)
USER_CALL = (
    "register_user",
    {"name": "John Doe", "age": 37, "address": {"city": "San Francisco", "state": "CA"}, "role": None,
     "passed_test": True, "aliases": ["John", "Johnny"]},
)  # fmt: skip
DALLAS = {"city": "Dallas", "state": "TX", "unit": "fahrenheit"}
ORLANDO = {**DALLAS, "city": "Orlando", "state": "FL"}
QWEN_DALLAS = (
    "<tool_call>\n<function=get_current_weather>\n<parameter=city>\nDallas\n</parameter>\n<parameter=state>\nTX\n"
    "</parameter>\n<parameter=unit>\nfahrenheit\n</parameter>\n</function>\n</tool_call>"
)
QWEN_TOOLS = [
    {"type": "function", "function": {"name": "get_current_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "state": {"type": "string"}, "unit": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "calculate_area", "parameters": {"type": "object", "properties": {
        "shape": {"type": "string"}, "dimensions": {"type": "object"}, "precision": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "test_types", "parameters": {"type": "object", "properties": {
        "int_param": {"type": "integer"}, "float_param": {"type": "float"}, "bool_param": {"type": "boolean"},
        "str_param": {"type": "string"}, "obj_param": {"type": "object"},
        "maybe_int": {"anyOf": [{"type": "integer"}, {"type": "null"}]}, "list_type": {"type": ["integer", "null"]}}}}},
]  # fmt: skip
DS_CALL = "<｜tool▁call▁begin｜>function<｜tool▁sep｜>{}\n```json\n{}\n```<｜tool▁call▁end｜>"
KIMI_CALL = "<|tool_call_begin|>{} <|tool_call_argument_begin|>{}<|tool_call_end|>"
Q = '<|"|>'  # Gemma 4's string delimiter
GEMMA_CALL = "<|tool_call>call:{}{{{}}}<tool_call|>"
V31_CALL = "<｜tool▁call▁begin｜>{}<｜tool▁sep｜>{}<｜tool▁call▁end｜>"
DSML_CALL = '<｜DSML｜invoke name="{}">\n{}</｜DSML｜invoke>\n'
DSML_PARAM = '<｜DSML｜parameter name="{}" string="{}">{}</｜DSML｜parameter>\n'
DSML_TOOLS = [
    {"type": "function", "function": {"name": "toggle", "parameters": {"type": "object", "properties": {
        "enabled": {"type": "boolean"}, "count": {"type": "integer"}, "note": {"type": "string"}}}}},
]  # fmt: skip
MINIMAX_CALL = '<invoke name="{}">\n{}</invoke>\n'
MINIMAX_PARAM = '<parameter name="{}">{}</parameter>\n'
USER_JSON = USER.replace("None", "null").replace("True", "true")  # OLMo 3 writes JSON's literals too
GLM_DALLAS = (
    "<tool_call>get_current_weather\n<arg_key>city</arg_key>\n<arg_value>Dallas</arg_value>\n<arg_key>state</arg_key>"
    "\n<arg_value>TX</arg_value>\n<arg_key>unit</arg_key>\n<arg_value>fahrenheit</arg_value>\n</tool_call>"
)
CASES: dict[str, list[tuple[str, str | None, list[tuple[str, Any]]]]] = {
    "hermes": [
        ('<tool_call>\n{"arguments": {"a": [1, "}"]}, "name": "f"}\n</tool_call>\n<tool_call>\n{"name": "g", '
         '"arguments": "{\\"b\\": 2}"}\n</tool_call><tool_call>\n{"name": "h", "arguments": {"c":\n 3}}\n',
         None, [("f", {"a": [1, "}"]}), ("g", {"b": 2}), ("h", {"c": 3})]),  # any key order, text arguments, unclosed
    ],
    "pythonic": [
        (f"[{SF}]", None, [SF_CALL]),
        (f"[{SF}, {USER}]", None, [SF_CALL, USER_CALL]),
        ("[get_weather()]", None, [("get_weather", {})]),
        ("[do_something_cool(additional_data={}, steps=[])]", None,
         [("do_something_cool", {"additional_data": {}, "steps": []})]),
        (r"""[get_weather(city='Martha\'s Vineyard', metric='\"cool units\"')]""", None,
         [("get_weather", {"city": "Martha's Vineyard", "metric": '"cool units"'})]),
        (f"[bad(x=b'z'), {SF}]", None, [SF_CALL]),  # a call JSON cannot hold is dropped, its siblings kept
        (f"[calc(x=1e999), {SF}]", None, [SF_CALL]),
        ('[f(t="""a ]) b""", n=-2.5)]', None, [("f", {"t": "a ]) b", "n": -2.5})]),
    ],
    "llama4_pythonic": [(f"<|python_start|>[{SF}, get_time()]<|python_end|>", None, [SF_CALL, ("get_time", {})])],
    "qwen3_coder": [
        (QWEN_DALLAS, None, [("get_current_weather", DALLAS)]),
        ("Sure! Let me check the weather for you." + QWEN_DALLAS, "Sure! Let me check the weather for you.",
         [("get_current_weather", DALLAS)]),
        ("<tool_call>\n<function=calculate_area>\n<parameter=shape>\nrectangle\n</parameter>\n<parameter=dimensions>"
         '\n{"width": 10, \n "height": 20}\n</parameter>\n<parameter=precision>\n2\n</parameter>\n</function>\n'
         "</tool_call>", None,
         [("calculate_area", {"shape": "rectangle", "dimensions": {"width": 10, "height": 20}, "precision": 2})]),
        (QWEN_DALLAS + "\n" + QWEN_DALLAS.replace("Dallas", "Orlando").replace("TX", "FL"), None,
         [("get_current_weather", DALLAS), ("get_current_weather", ORLANDO)]),
        ("<tool_call>\n<function=test_types>\n<parameter=int_param>\n42\n</parameter>\n<parameter=float_param>\n3.14\n"
         "</parameter>\n<parameter=bool_param>\ntrue\n</parameter>\n<parameter=str_param>\nhello world\n</parameter>\n"
         '<parameter=obj_param>\n{"key": "value"}\n</parameter>\n<parameter=maybe_int>\nnull\n</parameter>\n'
         "<parameter=list_type>\n7\n</parameter>\n<parameter=unknown>\n5\n</parameter>\n</function>\n</tool_call>",
         None,
         [("test_types", {"int_param": 42, "float_param": 3.14, "bool_param": True, "str_param": "hello world",
                          "obj_param": {"key": "value"}, "maybe_int": None, "list_type": 7, "unknown": "5"})]),
        ("<function=get_current_weather>\n<parameter=city>\nDallas\n</parameter>\n<parameter=state>\nTX\n</parameter>"
         "\n</function>", None, [("get_current_weather", {"city": "Dallas", "state": "TX"})]),  # no <tool_call>
        ("<tool_call>\n<function=get_current_weather>\n<parameter=city>\nDallas\n<parameter=state>\nTX\n</parameter>\n"
         "<parameter=state>\nFL\n</parameter>\n</function>\n</tool_call>", None,
         [("get_current_weather", {"city": "Dallas", "state": "TX"})]),  # an unclosed parameter; one given twice
    ],
    "granite": [
        ('<|tool_call|> [{"name": "get_weather", "arguments": {"city": "Tokyo"}}]', None,
         [("get_weather", {"city": "Tokyo"})]),
        ('<|tool_call|> [\n  {"name": "get_weather", "arguments": {"city": "Tokyo"}},\n  {"name": "get_time", '
         '"arguments": {"timezone": "Asia/Tokyo"}}\n]', None,
         [("get_weather", {"city": "Tokyo"}), ("get_time", {"timezone": "Asia/Tokyo"})]),
        ('<tool_call> [{\n  "name": "test_function",\n  "arguments": {\n    "quoted": "He said \\"hello\\"",\n'
         '    "path": "C:\\\\Users\\\\file.txt",\n    "unicode": "emoji: 🎉"\n  }\n}]', None,
         [("test_function", {"quoted": 'He said "hello"', "path": "C:\\Users\\file.txt", "unicode": "emoji: 🎉"})]),
        ('<|tool_call|> [{"name": "refresh", "arguments": {}}]', None, [("refresh", {})]),
    ],
    "phi4_mini_json": [
        ('functools[{"name": "get_weather", "arguments": {"city": "Tokyo", "days": [1, 2]}}, '
         '{"name": "get_time", "parameters": {}}]', None,
         [("get_weather", {"city": "Tokyo", "days": [1, 2]}), ("get_time", {})]),
    ],
    "internlm": [
        ('<|action_start|><|plugin|>{"name": "get_current_weather", "parameters": {"city": "Dallas", "state": "TX", '
         '"unit": "fahrenheit"}}<|action_end|>', None, [("get_current_weather", DALLAS)]),
        ('Sure! let me call the tool for you.<|action_start|><|plugin|>\n{"name": "get_current_weather", '
         '"parameters": {"city": "Dallas", "state": "TX", "unit": "fahrenheit"}}<|action_end|>',
         "Sure! let me call the tool for you.", [("get_current_weather", DALLAS)]),
    ],
    "deepseek_v3": [
        ("<｜tool▁calls▁begin｜>" + DS_CALL.format("get_weather", '{"city": "Tokyo"}') + "<｜tool▁calls▁end｜>",
         None, [("get_weather", {"city": "Tokyo"})]),
        ("Let me check.<｜tool▁calls▁begin｜>" + DS_CALL.format("get_weather", '{\n  "city": "Tokyo"\n}') +
         DS_CALL.format("get_time", "{}") + "<｜tool▁calls▁end｜>", "Let me check.",
         [("get_weather", {"city": "Tokyo"}), ("get_time", {})]),
    ],
    "kimi_k2": [
        ("I'll check. <|tool_calls_section_begin|>" + KIMI_CALL.format("functions.get_weather:0", '{"city": "Beijing"}')
         + KIMI_CALL.format("functions.get_news:1", '{"topic": "technology"}') + "<|tool_calls_section_end|>",
         "I'll check.", [("get_weather", {"city": "Beijing"}), ("get_news", {"topic": "technology"})]),
        ("<|tool_calls_section_begin|>" + KIMI_CALL.format("functions.invalid.0", '{"city": "Beijing"}')
         + KIMI_CALL.format("get_weather:1", '{"html": "<div>content</div>"}') + "<|tool_calls_section_end|>", None,
         [("get_weather", {"html": "<div>content</div>"})]),  # a malformed id is skipped
    ],
    "glm45": [
        (GLM_DALLAS, None, [("get_current_weather", DALLAS)]),
        ("I'll check.\n" + GLM_DALLAS + "<tool_call>calculate_area\n<arg_key>dimensions</arg_key>\n"
         '<arg_value>{"radius": 15.5}</arg_value>\n<arg_key>shape</arg_key>\n<arg_value>12</arg_value>\n</tool_call>',
         "I'll check.",
         [("get_current_weather", DALLAS), ("calculate_area", {"dimensions": {"radius": 15.5}, "shape": "12"})]),
    ],
    "jamba": [
        (' <tool_calls>[\n    {"name": "get_current_weather", "arguments": {"city": "Dallas", "state": "TX", '
         '"unit": "fahrenheit"}}\n]</tool_calls>', None, [("get_current_weather", DALLAS)]),
        ('Sure! let me call the tool for you. <tool_calls>[\n    {"name": "get_current_weather", "arguments": '
         '{"city": "Dallas", "state": "TX", "unit": "fahrenheit"}},\n    {"name": "get_current_weather", "arguments":'
         ' {"city": "Orlando", "state": "FL", "unit": "fahrenheit"}}\n]</tool_calls>',
         "Sure! let me call the tool for you.", [("get_current_weather", DALLAS), ("get_current_weather", ORLANDO)]),
    ],
    "openai": [  # the answer openai_gptoss leaves: a preamble as text, each call a harmony message
        ('Let me check.<|start|>assistant<|channel|>commentary to=functions.get_current_weather <|constrain|>json'
         '<|message|>{"city": "Dallas", "state": "TX", "unit": "fahrenheit"}<|call|>',
         "Let me check.", [("get_current_weather", DALLAS)]),
        ('<|start|>assistant to=functions.f<|channel|>commentary json<|message|>{"a": [1, "}"]}<|call|>'
         '<|start|>assistant<|channel|>commentary to=functions.g<|message|>{}<|end|>',
         None, [("f", {"a": [1, "}"]}), ("g", {})]),  # the recipient in the role's section or the channel's
    ],
    "gemma4": [
        (GEMMA_CALL.format("get_weather", f"location:{Q}London{Q}"), None, [("get_weather", {"location": "London"})]),
        ("Let me check the weather for you. " + GEMMA_CALL.format("get_weather", f"location:{Q}San Francisco{Q},"
         f"unit:{Q}celsius{Q}") + GEMMA_CALL.format("get_time", ""), "Let me check the weather for you.",
         [("get_weather", {"location": "San Francisco", "unit": "celsius"}), ("get_time", {})]),
        (GEMMA_CALL.format("complex_function", f"nested:{{inner:{Q}value{Q},{Q}3{Q}:{Q}new text{Q}}},"
         f"list:[{Q}a{Q},{Q}b{Q},[1,true]],count:42,score:-3.14,e:1e3,flag:false,gone:null,word:hello"), None,
         [("complex_function", {"nested": {"inner": "value", "3": "new text"}, "list": ["a", "b", [1, True]],
                                "count": 42, "score": -3.14, "e": 1000.0, "flag": False, "gone": None,
                                "word": "hello"})]),  # Gemma 4's syntax typed into JSON
        (GEMMA_CALL.format("weather.get-now", f"text:{Q}a}}, b: [c] <|x{Q}, text:{Q}again{Q}"), None,
         [("weather.get-now", {"text": "a}, b: [c] <|x"})]),  # delimiters in a string; a key twice keeps its first
    ],
    "deepseek_v31": [
        ("normal text<｜tool▁calls▁begin｜>" + V31_CALL.format("foo", '{"x":1}') + "<｜tool▁calls▁end｜>",
         "normal text", [("foo", {"x": 1})]),
        ("some prefix text<｜tool▁calls▁begin｜>" + V31_CALL.format("foo", '{\n  "x": 1\n}')
         + V31_CALL.format("bar", '{"y": "<b>"}') + "<｜tool▁calls▁end｜> some suffix text", "some prefix text",
         [("foo", {"x": 1}), ("bar", {"y": "<b>"})]),
    ],
    "deepseek_v32": [
        ("<｜DSML｜function_calls>\n" + DSML_CALL.format("get_weather", DSML_PARAM.format("location", "true", "杭州")
         + DSML_PARAM.format("date", "true", "2024-01-16")) + "</｜DSML｜function_calls>", None,
         [("get_weather", {"location": "杭州", "date": "2024-01-16"})]),
        ("Sure, let me check! <｜DSML｜function_calls>\n" + DSML_CALL.format("get_time", "")
         + DSML_CALL.format("toggle", DSML_PARAM.format("enabled", "false", "true") + DSML_PARAM.format("count", "true",
         "42") + DSML_PARAM.format("note", "false", "null") + DSML_PARAM.format("meta", "false", '{"k": [1]}')
         + DSML_PARAM.format("raw", "true", "[1]")) + "</｜DSML｜function_calls>", "Sure, let me check!",
         [("get_time", {}), ("toggle", {"enabled": True, "count": 42, "note": "null", "meta": {"k": [1]},
                                        "raw": "[1]"})]),  # typed by the schema, else by string="..."
    ],
    "minimax_m2": [
        ("<minimax:tool_call>\n" + MINIMAX_CALL.format("get_weather", MINIMAX_PARAM.format("city", "Seattle")
         + MINIMAX_PARAM.format("days", "5")) + "</minimax:tool_call>", None,
         [("get_weather", {"city": "Seattle", "days": "5"})]),  # no schema: text
        ("Let me check. <minimax:tool_call>\n" + MINIMAX_CALL.format("calculate_area", MINIMAX_PARAM.format("shape",
         "circle") + MINIMAX_PARAM.format("dimensions", '\n{"radius": 15.5}\n') + MINIMAX_PARAM.format("precision",
         "3")) + "<invoke name='get_current_weather'><parameter name='city'>Dallas</parameter></invoke>"
         "</minimax:tool_call>", "Let me check.",
         [("calculate_area", {"shape": "circle", "dimensions": {"radius": 15.5}, "precision": 3}),
          ("get_current_weather", {"city": "Dallas"})]),
    ],
    "olmo3": [
        (f"<function_calls>{SF}</function_calls>", None, [SF_CALL]),
        (f"<function_calls>{SF}\n{USER_JSON}\nget_weather()</function_calls>", None,
         [SF_CALL, USER_CALL, ("get_weather", {})]),
        (r"""<function_calls>get_weather(city='Martha\'s Vineyard', metric='\"cool units\"')</function_calls>""",
         None, [("get_weather", {"city": "Martha's Vineyard", "metric": '"cool units"'})]),
    ],
    "ernie45": [
        ('<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Beijing"}}\n</tool_call>\n', None,
         [("get_current_weather", {"location": "Beijing"})]),
        ('Let me check.\n\n<tool_call>\n{"name": "a", "arguments": {"x": [1]}}\n</tool_call>\n<tool_call>\n'
         '{"name": "b", "arguments": {}}\n</tool_call>\n', "Let me check.", [("a", {"x": [1]}), ("b", {})]),
    ],
    "qwen3_xml": [
        (QWEN_DALLAS, None, [("get_current_weather", DALLAS)]),
        ("Sure! " + QWEN_DALLAS + "\n" + QWEN_DALLAS.replace("Dallas", "Orlando").replace("TX", "FL"), "Sure!",
         [("get_current_weather", DALLAS), ("get_current_weather", ORLANDO)]),
    ],
}  # fmt: skip
MALFORMED = {  # stays content whole and streamed, as vLLM leaves it
    "pythonic": ["How can I help you today?", "[f(a='x 'y' 'z), g(b='p 'q' 'r)]", "[1, 2]", "[get_weather(", "[x]()"],
    "qwen3_coder": ["<tool_call>\n<function>\n</tool_call>", "<tool_call>no function</tool_call>"],
    "granite": [
        '<|tool_call|> [{"name": "func", "arguments": {',
        '<|tool_call|> {"name": "func", "arguments": {}}',
        '[{"name": "func", "arguments": "not a dict"}]',
        'Some text [{"name": "func"}]',
    ],
    "phi4_mini_json": ['functools[{"name": "f", "arguments": {', "functools are neat", "functools[1]"],
    "internlm": ["<|action_start|><|plugin|>{broken}<|action_end|>"],
    "deepseek_v3": ["<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{}"],
    "kimi_k2": ["<|tool_calls_section_begin|><|tool_call_begin|>no id<|tool_call_argument_begin|>{}"],
    "glm45": ["<tool_call>f\n<arg_key>a</arg_key>"],
    "jamba": ['<tool_calls>[{"name": "f", "arguments": {', "<tool_calls>[]</tool_calls>", "<tool_calls>[1]"],
    "gemma4": [
        f"<|tool_call>call:get_weather{{location:{Q}London",  # unfinished (vLLM's example)
        "<|tool_call>call:f{a:1}",  # no end marker
        "<|tool_call>call:f{a:}<tool_call|>",  # no value
        "<|tool_call>call:f{a:1}junk<tool_call|>",
        "<|tool_call>call:f{a b:1}<tool_call|>",
        "<|tool_call>no call here<tool_call|>",
    ],
    "deepseek_v31": [
        "Let me look that up.<｜tool▁calls▁begin｜>get_weather",  # vLLM's examples
        '<｜tool▁calls▁begin｜>foo<｜tool▁sep｜>{"x":1}<｜tool▁calls▁end｜>',
        '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>foo<｜tool▁sep｜>{"x": 1}',
    ],
    "deepseek_v32": [
        '<｜DSML｜function_calls>\n<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="a" string="true">x',
        "<｜DSML｜function_calls>\n</｜DSML｜function_calls>",
        '<｜DSML｜function_calls><｜DSML｜invoke name="">\n</｜DSML｜invoke>',
    ],
    "minimax_m2": [
        '<minimax:tool_call>\n<invoke name="f">\n<parameter name="a">1</parameter>\n',
        "<minimax:tool_call>no invoke</minimax:tool_call>",
    ],
    "olmo3": [
        "<function_calls>foo(x=1])</function_calls>",
        "<function_calls>get_weather(city='Paris')",  # no end tag (vLLM's: no calls)
        "<function_calls>hello</function_calls>",
    ],
}
TOOLS_OF = {
    "qwen3_coder": QWEN_TOOLS,
    "qwen3_xml": QWEN_TOOLS,
    "glm45": QWEN_TOOLS,
    "minimax_m2": QWEN_TOOLS,
    "deepseek_v32": DSML_TOOLS,
}
FORMAT_CASES = [(f, *case) for f, cases in CASES.items() for case in cases] + [(f, *OUTPUTS[f]) for f in OUTPUTS]


def _stream(parser_name: str, pieces: list[str]) -> tuple[str, list]:
    """The content and calls a client assembles from ``pieces`` fed one by one."""
    stream, content, parts = ToolCallStream(make_parser(parser_name, TOOLS_OF.get(parser_name))), "", []
    for piece in pieces:
        delta, new = stream.feed(piece)
        content, parts = content + delta, parts + new
    delta, new = stream.finish()
    return content + delta, _assemble(parts + new)


@pytest.mark.parametrize("family, text, content, expected", FORMAT_CASES)
def test_each_format_reads_vllms_examples_whole_and_char_by_char(
    family: str, text: str, content: str | None, expected: list
) -> None:
    got_content, calls = parse_tool_calls(make_parser(family, TOOLS_OF.get(family)), text)
    assert (got_content, _pairs(calls)) == (content, expected)
    streamed_content, streamed = _stream(family, list(text))
    assert streamed_content.strip() == (content or "") and _pairs(streamed) == expected


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("family, text, content, expected", FORMAT_CASES)
def test_random_chunk_boundaries_give_the_whole_texts_calls(
    family: str, text: str, content: str | None, expected: list, data: st.DataObject
) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(1, len(text) - 1), max_size=12)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    streamed_content, streamed = _stream(family, pieces)
    assert streamed_content.strip() == (content or "") and _pairs(streamed) == expected


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("family, text, content, expected", FORMAT_CASES)
def test_an_output_cut_anywhere_streams_as_it_reads_whole(
    family: str, text: str, content: str | None, expected: list, data: st.DataObject
) -> None:
    """Cut short (max_tokens) anywhere: the stream's calls are the whole reply's (and perhaps the start of one
    more, cut off), or, where calls began but the whole reply holds none, the stream is marked broken (so it ends
    with the reply's finish reason) and its content is the whole text, as the reply's. Where the whole reply ended
    inside a call (hermes), its calls are the stream's, the last with the arguments streamed so far."""
    cut = text[: data.draw(st.integers(1, len(text)))]
    points = sorted(data.draw(st.sets(st.integers(1, max(1, len(cut) - 1)), max_size=8)))
    pieces = [cut[a:b] for a, b in zip([0, *points], [*points, len(cut)], strict=True) if cut[a:b]]
    parser = make_parser(family, TOOLS_OF.get(family))
    whole_content, whole_calls = parse_tool_calls(parser, cut)
    stream, sent, parts = ToolCallStream(make_parser(family, TOOLS_OF.get(family))), "", []
    for piece in pieces:
        delta, new = stream.feed(piece)
        sent, parts = sent + delta, parts + new
    delta, new = stream.finish()
    sent, parts = sent + delta, parts + new
    if not whole_calls:  # the whole text (openai's markers left out: special tokens)
        assert sent == (whole_content or "") and (stream.broken or not parts)
    elif cut_short_inside(parser, cut):
        assert stream.cut_short and not stream.broken and sent.strip() == (whole_content or "")
        assert [(c.name, c.arguments) for c in _assemble(parts)] == [(c.name, c.arguments) for c in whole_calls]
    else:
        streamed = _assemble(parts)
        assert not stream.broken and _pairs(streamed[: len(whole_calls)]) == _pairs(whole_calls)
        assert len(streamed) <= len(whole_calls) + 1 and sent.strip() == (whole_content or "")


@pytest.mark.parametrize("family, text", [(f, t) for f, texts in MALFORMED.items() for t in texts])
def test_malformed_calls_stay_content_whole_and_streamed(family: str, text: str) -> None:
    """All content, whole and streamed; a call begun while streaming (its name and the start of its arguments
    sent) is marked broken, so the server ends it with the generation's own finish reason, as the whole reply."""
    assert parse_tool_calls(make_parser(family, TOOLS_OF.get(family)), text) == (text, [])
    stream, content, parts = ToolCallStream(make_parser(family, TOOLS_OF.get(family))), "", []
    for ch in text:
        delta, new = stream.feed(ch)
        content, parts = content + delta, parts + new
    delta, new = stream.finish()
    assert content + delta == text and new == [] and stream.broken == bool(parts)


@pytest.mark.parametrize(
    "family, text, expected",
    [
        ("hermes", OUTPUTS["hermes"][0], OUTPUTS["hermes"][2]),
        ("mistral", OUTPUTS["mistral"][0], OUTPUTS["mistral"][2]),
        ("llama3_json", OUTPUTS["llama3_json"][0], OUTPUTS["llama3_json"][2]),
        *[(f, CASES[f][0][0], CASES[f][0][2]) for f in ("granite", "phi4_mini_json", "jamba", "internlm")],
    ],
)
def test_json_calls_stream_their_arguments_as_written(family: str, text: str, expected: list) -> None:
    """A call written name first streams its arguments as the model writes them, character by character here (they
    are the call's arguments whole too, so the fragments add up)."""
    stream, parts = ToolCallStream(make_parser(family)), []
    for ch in text:
        parts += stream.feed(ch)[1]
    parts += stream.finish()[1]
    assert len([f for i, call, f in parts if i == 0 and call is None]) > 10
    assert _pairs(_assemble(parts)) == expected


def test_glm45_streams_each_value_once_closed() -> None:
    stream, parts = ToolCallStream(make_parser("glm45", QWEN_TOOLS)), []
    for ch in CASES["glm45"][1][0]:
        parts += stream.feed(ch)[1]
    parts += stream.finish()[1]
    fragments = [f for i, call, f in parts if i == 0 and call is None]
    assert fragments == ["{", '"city": "Dallas"', ', "state": "TX"', ', "unit": "fahrenheit"', "}"]
    assert _pairs(_assemble(parts)) == CASES["glm45"][1][2]


def test_qwen3_coder_streams_each_parameter_once_it_is_settled() -> None:
    """Long arguments (a file's text) do not wait for the call's end: each parameter goes out once a tag after it
    has come, and the fragments add up to the whole call's arguments."""
    text = QWEN_DALLAS + "\n" + QWEN_DALLAS.replace("Dallas", "Orlando").replace("TX", "FL")
    stream, parts = ToolCallStream(make_parser("qwen3_coder", QWEN_TOOLS)), []
    for ch in text:
        parts += stream.feed(ch)[1]
    parts += stream.finish()[1]
    fragments = [f for i, call, f in parts if i == 0 and call is None]
    assert fragments == ["{", '"city": "Dallas"', ', "state": "TX"', ', "unit": "fahrenheit"', "}"]
    assert _pairs(_assemble(parts)) == [("get_current_weather", DALLAS), ("get_current_weather", ORLANDO)]


def test_every_parser_name_is_vllms_and_unknown_ones_are_refused() -> None:
    assert set(CASES) | set(OUTPUTS) == set(PARSERS)
    with pytest.raises(ValueError, match="tool_call_parser must be one of hermes"):
        make_parser("qwen")


def test_forced_calls_read_the_forced_schemas_layout() -> None:
    tools = [{"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}}]
    schema = forced_call_schema(tools, None, parallel=False)
    assert schema["maxItems"] == 1 and schema["items"]["anyOf"][0]["properties"]["name"] == {"const": "a"}
    assert forced_call_schema(tools, "a", parallel=True) == {"type": "object"}
    assert _pairs(forced_calls('[{"name": "a", "parameters": {"k": 1}}]', None)) == [("a", {"k": 1})]
    assert _pairs(forced_calls('{"k": 1}', "a")) == [("a", {"k": 1})]
    assert forced_calls('{"k": 1', "a") is None  # cut short by max_tokens


# ---------------------------------------------------------------------------------------------------- the server

TEMPLATE = (  # shows what reaches the template: the tools, earlier calls (arguments as a mapping), tool results
    "{% for t in tools or [] %}[{{ t.function.name }}]{% endfor %}"
    "{% for m in messages %}{{ m.role }}: {{ m.content }}"
    "{% for c in m.tool_calls or [] %}<{{ c.function.name }} city={{ c.function.arguments.city }}>{% endfor %}"
    "{% if m.tool_call_id %}({{ m.tool_call_id }}){% endif %}|{% endfor %}assistant:"
)
TOOLS = [
    {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "time"}},
]
MESSAGES = [{"role": "user", "content": "Weather?"}]


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    """Every reply is the Hermes output above, then EOS."""
    engine = fake_engine(max_model_len=256, num_pages=192)
    ids = engine.tokenizer.encode(OUTPUTS["hermes"][0], add_special_tokens=False)
    engine.runner.script = lambda prompt, position: (ids + [2])[min(position - len(prompt), len(ids))]
    engine.tokenizer.hf.chat_template = TEMPLATE
    return engine


@pytest.fixture(scope="module")
def server(engine: LLMEngine) -> Iterator[RunningServer]:
    config = load_config(None, served_model_name=MODEL, tool_call_parser="hermes", enable_auto_tool_choice=True)
    with RunningServer(engine, config) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def test_auto_calls_come_as_tool_calls_whole_and_streamed(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=200)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    calls = choice.message.tool_calls
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("function", "weather", WEATHER),
        ("function", "time", {}),
    ]
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=200, stream=True)
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    firsts = [d for d in deltas if d.id is not None]
    assert [(d.index, d.type, d.function.name) for d in firsts] == [(0, "function", "weather"), (1, "function", "time")]
    assert all(d.id.startswith("call_") for d in firsts)
    arguments = ["".join(d.function.arguments or "" for d in deltas if d.index == i) for i in (0, 1)]
    assert [json.loads(a) for a in arguments] == [WEATHER, {}]
    assert content.strip() == "Let me check." and chunks[-1].choices[0].finish_reason == "tool_calls"


CUT_IN_SECOND = [  # (output cut inside the second call, the whole reply's calls as (name, arguments as written))
    ('<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n<tool_call>{"name": "b", "arguments": {"y": [2',
     [("a", '{"x": 1}'), ("b", '{"y": [2')]),
    ('<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n<tool_call>{"name": "b", "argu',
     [("a", '{"x": 1}')]),
    ('<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call>\n<tool_call>\n', [("a", '{"x": 1}')]),
    ('<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call><tool_call>{"name": "b", "arguments": {"s": "}',
     [("a", '{"x": 1}'), ("b", '{"s": "}')]),  # a brace inside a string does not close the object
]  # fmt: skip


@pytest.mark.parametrize("text, expected", CUT_IN_SECOND)
def test_hermes_cut_inside_a_second_call_reads_the_same_whole_and_streamed(text: str, expected: list) -> None:
    """The defect: the whole reply was all content (vLLM's hermes parser returns it so), while its stream had sent
    the first call and the start of the second and then the whole text as content. Now both have the calls the
    stream sent, the last unfinished, and end with the generation's finish reason (``cut_short``)."""
    parser = make_parser("hermes")
    text = "Let me check.\n" + text
    content, calls = parse_tool_calls(parser, text)
    assert (content, [(c.name, c.arguments) for c in calls]) == ("Let me check.", expected)
    assert cut_short_inside(parser, text)
    for pieces in (list(text), [text]):
        stream, sent, parts = ToolCallStream(parser), "", []
        for piece in pieces:
            delta, new = stream.feed(piece)
            sent, parts = sent + delta, parts + new
        delta, new = stream.finish()
        assert (sent + delta).strip() == "Let me check." and stream.cut_short and not stream.broken
        assert [(c.name, c.arguments) for c in _assemble(parts + new)] == expected


def test_hermes_closed_or_never_begun_calls_are_not_cut_short() -> None:
    parser = make_parser("hermes")
    assert not cut_short_inside(parser, OUTPUTS["hermes"][0])  # complete
    unnamed = 'Hi <tool_call>{"arguments": {"x": 1'  # nothing streamed: all content
    assert not cut_short_inside(parser, unnamed) and parse_tool_calls(parser, unnamed) == (unnamed, [])


def test_a_reply_cut_inside_its_second_call_reads_the_same_whole_and_streamed(
    client: openai.OpenAI, engine: LLMEngine
) -> None:
    """Through the server: max_tokens ends the scripted reply inside its second call; the whole reply and the
    stream have the same content and calls, and both end "length", not "tool_calls"."""
    ids = engine.tokenizer.encode(OUTPUTS["hermes"][0], add_special_tokens=False)
    cut = next(k for k in range(len(ids)) if engine.tokenizer.decode(ids[:k]).endswith('"time", "arguments": {'))
    ask = dict(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=cut)
    choice = client.chat.completions.create(**ask).choices[0]
    whole = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    assert choice.finish_reason == "length" and choice.message.content == "Let me check."
    assert [name for name, _ in whole] == ["weather", "time"] and json.loads(whole[0][1]) == WEATHER
    chunks = list(client.chat.completions.create(**ask, stream=True))
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    names = {d.index: d.function.name for d in deltas if d.id is not None}
    streamed = [(names[i], "".join(d.function.arguments or "" for d in deltas if d.index == i)) for i in sorted(names)]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == whole and content.strip() == "Let me check."
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


def test_one_call_without_parallel_tool_calls(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=200, parallel_tool_calls=False
    )
    assert [c.function.name for c in reply.choices[0].message.tool_calls] == ["weather"]


def test_tools_and_tool_history_reach_the_template(
    server: RunningServer, engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Prompt] = []
    add = engine.add_request

    def spy(request_id: str, prompt: Prompt, params: SamplingParams, grammar: object = None, **options: Any) -> None:
        seen.append(prompt)
        add(request_id, prompt, params, grammar, **options)

    monkeypatch.setattr(engine, "add_request", spy)
    call = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    history = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
    ]
    body = {"model": MODEL, "messages": history, "tools": TOOLS, "tool_choice": "none", "max_tokens": 2}
    reply = http("POST", f"{server.url}/v1/chat/completions", json_body=body)
    assert reply.status == 200, reply.body
    assert seen[0].text == "[weather][time]user: Weather?|assistant: <weather city=Oslo>|tool: rain(call_1)|assistant:"
    assert reply.json()["choices"][0]["message"]["tool_calls"] == []  # "none": the text is not parsed


@pytest.mark.parametrize(
    "change, param, words",
    [
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages", "tool_call_id"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages", "assistant"),
        ({"tool_choice": "required", "tools": None}, "tool_choice", "needs at least one tool"),
        ({"tool_choice": "auto", "tools": None}, "tool_choice", "'auto' needs at least one tool"),  # was a 200
        ({"tool_choice": {"type": "function", "function": {"name": "weather"}}, "tools": None}, "tool_choice",
         "needs at least one tool"),
        ({"tools": [], "tool_choice": "auto"}, "tools", "must not be an empty array"),
        ({"tools": [], "tool_choice": "none"}, "tools", "must not be an empty array"),  # vLLM's and OpenAI's 400
        ({"tools": []}, "tools", "must not be an empty array"),
        ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice", "one structured"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
         "messages", "not JSON"),
    ],
)  # fmt: skip
def test_bad_tool_requests_are_400s_naming_the_field(
    server: RunningServer, change: dict, param: str, words: str
) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS, "max_tokens": 2, **change}
    reply = http("POST", f"{server.url}/v1/chat/completions", json_body=body)
    error = reply.json()["error"]
    assert reply.status == 400 and error["param"] == param and words in error["message"], error


def test_tool_choice_none_without_tools_is_answered(server: RunningServer) -> None:
    """vLLM's rule: "none" is the one tool_choice that needs no tools."""
    body = {"model": MODEL, "messages": MESSAGES, "tool_choice": "none", "max_tokens": 2}
    reply = http("POST", f"{server.url}/v1/chat/completions", json_body=body)
    assert reply.status == 200 and reply.json()["choices"][0]["message"]["tool_calls"] == [], reply.body


def test_auto_without_a_parser_is_a_400_naming_the_flag(engine: LLMEngine) -> None:
    with RunningServer(engine, load_config(None, served_model_name=MODEL)) as plain:
        body = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS}
        reply = http("POST", f"{plain.url}/v1/chat/completions", json_body=body)
    error = reply.json()["error"]
    assert reply.status == 400 and error["param"] == "tool_choice" and "--enable-auto-tool-choice" in error["message"]


ONE_X = {"type": "object", "properties": {"x": {"enum": [1]}}, "required": ["x"], "additionalProperties": False}
PICK = {"type": "function", "function": {"name": "pick", "parameters": ONE_X}}


def test_a_named_call_streams_its_arguments_as_generated(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "pick"}}
    ask = dict(model=MODEL, messages=MESSAGES, tools=[PICK, *TOOLS], tool_choice=named, max_tokens=30)
    whole = client.chat.completions.create(**ask)
    [call] = whole.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("pick", {"x": 1})
    chunks = list(client.chat.completions.create(**ask, stream=True))
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "pick"
    assert deltas[0].function.arguments == ""  # present and empty in the naming delta, as OpenAI sends it
    assert len(deltas) > 2 and all(d.id is None and d.function.name is None for d in deltas[1:])  # fragments
    assert "".join(d.function.arguments for d in deltas) == call.function.arguments
    # a named function's call ends by "stop" with content "" (OpenAI's and vLLM's; it had been "tool_calls", null)
    assert chunks[-1].choices[0].finish_reason == "stop" == whole.choices[0].finish_reason
    assert whole.choices[0].message.content == "" and not any(c.choices[0].delta.content for c in chunks)


def test_a_forced_call_cut_short_comes_back_as_text(client: openai.OpenAI) -> None:
    ask = dict(model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="required", max_tokens=3)
    whole = client.chat.completions.create(**ask)
    assert whole.choices[0].finish_reason == "length" and not whole.choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(**ask, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content != ""


def test_tokenize_renders_the_tools_as_the_chat_route_does(server: RunningServer) -> None:
    """/tokenize ignored ``tools`` (vLLM's tokenize takes them), so its count was not the chat prompt's; the fields
    it cannot honour are a 400 naming them."""
    body = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS}
    tokens = http("POST", f"{server.url}/tokenize", json_body=body).json()["tokens"]
    chat = {**body, "tool_choice": "none", "max_tokens": 1}
    usage = http("POST", f"{server.url}/v1/chat/completions", json_body=chat).json()["usage"]
    without = http("POST", f"{server.url}/tokenize", json_body={**body, "tools": None}).json()["count"]
    assert len(tokens) == usage["prompt_tokens"] > without
    for field, value in [("mm_processor_kwargs", {"x": 1}), ("chat_template", "{{ messages }}")]:
        refused = http("POST", f"{server.url}/tokenize", json_body={**body, field: value})
        assert refused.status == 400 and refused.json()["error"]["param"] == field


def _assembled(chunks: list) -> list[tuple[str, Any]]:
    deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
    names = {d.index: d.function.name for d in deltas if d.id is not None}
    arguments = {i: "".join(d.function.arguments or "" for d in deltas if d.index == i) for i in names}
    return [(names[i], json.loads(arguments[i])) for i in sorted(names)]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "pick"}}])
def test_a_forced_stream_sends_a_chunk_only_when_a_step_adds_something(client: openai.OpenAI, choice: Any) -> None:
    """ "required" sent its call at the end and an empty chunk for every step before it; now its name goes out once
    generated and its arguments as they come (OpenAI's stream), and no chunk is empty."""
    ask = dict(
        model=MODEL,
        messages=MESSAGES,
        tools=[PICK, *TOOLS],
        tool_choice=choice,
        max_tokens=100,
        parallel_tool_calls=False,
    )
    whole = client.chat.completions.create(**ask)
    chunks = list(client.chat.completions.create(**ask, stream=True))
    for c in chunks:
        delta = c.choices[0].delta
        assert delta.role or delta.content or delta.tool_calls or c.choices[0].finish_reason, c
    calls = whole.choices[0].message.tool_calls
    assert _assembled(chunks) == [(c.function.name, json.loads(c.function.arguments)) for c in calls]
    assert _assembled(chunks) == [("pick", {"x": 1})]
    fragments = [d for c in chunks for d in c.choices[0].delta.tool_calls or [] if d.id is None]
    finish = "tool_calls" if choice == "required" else "stop"  # a named call ends by "stop" (OpenAI's, vLLM's)
    assert len(fragments) > 1 and chunks[-1].choices[0].finish_reason == finish == whole.choices[0].finish_reason
    assert whole.choices[0].message.content == ""  # not null beside forced calls (vLLM's)


def test_forced_list_streams_each_calls_arguments_as_generated() -> None:
    text = '[{"name": "a", "parameters": {"k": [1, "}"]}}, {"name": "b", "parameters": {}}]'
    stream, parts = ForcedCallStream(), []
    for ch in text:
        parts += stream.feed(ch)
    content, rest = stream.finish()
    assert content is None and rest == []
    begun = [(i, call.name) for i, call, _ in parts if call is not None]
    arguments = {i: "".join(a for j, call, a in parts if j == i and call is None) for i, _ in begun}
    assert begun == [(0, "a"), (1, "b")] and arguments == {0: '{"k": [1, "}"]}', 1: "{}"}
    assert sum(1 for i, call, _ in parts if i == 0 and call is None) > 5  # fragments, not the whole at the end
    cut = ForcedCallStream()
    cut.feed('[{"na')
    assert cut.finish() == ('[{"na', [])  # cut short before a call began: the text, as the whole reply has it


@pytest.mark.parametrize(
    "choice, cuts", [("required", (4, 30, 34)), ({"type": "function", "function": {"name": "pick"}}, (2, 4))]
)
def test_a_forced_stream_cut_short_ends_as_the_whole_reply_does(
    client: openai.OpenAI, choice: Any, cuts: tuple[int, ...]
) -> None:
    """A call cut off by max_tokens finishes by "length" whole and streamed, even once its name has gone out (the
    stream said "tool_calls"); and the whole reply has the call the stream sent, with the arguments generated so far,
    as vLLM returns a named call cut short (it had been the partial JSON as content, and no call)."""
    began = 0
    for max_tokens in cuts:
        ask = dict(model=MODEL, messages=MESSAGES, tools=[PICK], tool_choice=choice, max_tokens=max_tokens)
        whole = client.chat.completions.create(**ask, parallel_tool_calls=False).choices[0]
        chunks = list(client.chat.completions.create(**ask, parallel_tool_calls=False, stream=True))
        assert chunks[-1].choices[0].finish_reason == whole.finish_reason == "length"
        deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
        names = {d.index: d.function.name for d in deltas if d.id is not None}
        streamed = [(names[i], "".join(d.function.arguments or "" for d in deltas if d.index == i)) for i in names]
        calls = [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert streamed == calls and content == (whole.message.content or ""), (max_tokens, calls, chunks)
        if calls:  # else cut before a call began: the text is the content, whole and streamed
            assert whole.message.content == ""  # beside forced calls, as vLLM's
            with pytest.raises(json.JSONDecodeError):  # partial
                json.loads(calls[-1][1])
        began += bool(calls)
    assert began >= len(cuts) - 1


def test_a_qwen3_coder_server_types_arguments_by_the_requests_tools() -> None:
    """The request's tools reach the parser: qwen3_coder's parameters come back typed by their schemas, whole and
    streamed parameter by parameter."""
    text = (
        "Let me calculate that area for you.<tool_call>\n<function=calculate_area>\n<parameter=shape>\ncircle\n"
        '</parameter>\n<parameter=dimensions>\n{"radius": 15.5}\n</parameter>\n<parameter=precision>\n3\n'
        "</parameter>\n</function>\n</tool_call>"
    )
    engine = fake_engine(max_model_len=512, num_pages=256)
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    engine.runner.script = lambda prompt, position: (ids + [2])[min(position - len(prompt), len(ids))]
    config = load_config(None, served_model_name=MODEL, tool_call_parser="qwen3_coder", enable_auto_tool_choice=True)
    expected = [("calculate_area", {"shape": "circle", "dimensions": {"radius": 15.5}, "precision": 3})]
    with RunningServer(engine, config) as running:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="none", max_retries=0)
        ask = dict(model=MODEL, messages=MESSAGES, tools=QWEN_TOOLS, max_tokens=400)
        whole = client.chat.completions.create(**ask).choices[0]
        chunks = list(client.chat.completions.create(**ask, stream=True))
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls]
    assert whole.message.content == "Let me calculate that area for you." and calls == expected
    assert _assembled(chunks) == expected and chunks[-1].choices[0].finish_reason == "tool_calls"
    fragments = [d for c in chunks for d in c.choices[0].delta.tool_calls or [] if d.function.arguments]
    assert len(fragments) == 5  # "{", then each parameter, then "}"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Let me calculate that area for you."


def test_a_gemma4_server_reads_the_thought_channel_then_the_calls() -> None:
    """Gemma 4 with ``enable_thinking``: its thought channel is the reasoning (its name left out), the calls after it
    come typed from Gemma 4's syntax, whole and streamed (a string argument as written)."""
    text = (
        "<|channel>thought\nThe user wants weather.<channel|>On it."
        + GEMMA_CALL.format("get_weather", f"city:{Q}Paris{Q},days:3")
        + GEMMA_CALL.format("get_time", "")
    )
    engine = fake_engine(max_model_len=512, num_pages=256)
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    engine.runner.script = lambda prompt, position: (ids + [2])[min(position - len(prompt), len(ids))]
    gemma4 = {"reasoning_parser": "gemma4", "tool_call_parser": "gemma4", "enable_auto_tool_choice": True}
    config = load_config(None, served_model_name=MODEL, **gemma4)
    expected = [("get_weather", {"city": "Paris", "days": 3}), ("get_time", {})]
    with RunningServer(engine, config) as running:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="none", max_retries=0)
        ask = dict(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=400)
        thinking = {"chat_template_kwargs": {"enable_thinking": True}}
        whole = client.chat.completions.create(**ask, extra_body=thinking).choices[0]
        chunks = list(client.chat.completions.create(**ask, extra_body=thinking, stream=True))
        plain = client.chat.completions.create(**ask).choices[0]  # thinking off: no reasoning read
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls]
    assert whole.message.model_extra["reasoning_content"] == "The user wants weather."
    assert (whole.message.content, calls, whole.finish_reason) == ("On it.", expected, "tool_calls")
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == "The user wants weather."
    assert "".join(d.content or "" for d in deltas) == "On it." and _assembled(chunks) == expected
    fragments = [d.function.arguments for d in deltas for d in d.tool_calls or [] if d.function.arguments]
    assert fragments[:4] == ["{", '"city": "', "P", "a"]  # Paris as written
    assert plain.message.content == "<|channel>thought\nThe user wants weather.<channel|>On it."
    assert "reasoning_content" not in (plain.message.model_extra or {}) and len(plain.message.tool_calls) == 2


def test_an_auto_call_cut_short_ends_as_the_whole_reply_does(client: openai.OpenAI) -> None:
    """A call begun in the stream (its name and part of its arguments sent) but cut off by max_tokens is no call:
    the stream ends with the whole reply's finish reason ("length", not "tool_calls") and carries its content."""
    began = 0
    for max_tokens in range(10, 130, 8):
        ask = dict(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=max_tokens)
        whole = client.chat.completions.create(**ask).choices[0]
        chunks = list(client.chat.completions.create(**ask, stream=True))
        assert chunks[-1].choices[0].finish_reason == whole.finish_reason
        assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == whole.message.content.strip()
        began += whole.finish_reason == "length" and any(c.choices[0].delta.tool_calls for c in chunks)
    assert began  # some began a call the whole reply does not have


@pytest.mark.parametrize(
    "family, first", [("deepseek_v3", '{\n  "city": "Tokyo"\n}'), ("deepseek_v31", '{\n  "x": 1\n}')]
)
def test_deepseek_streams_arguments_as_written(family: str, first: str) -> None:
    text, _, expected = CASES[family][1]
    stream, parts = ToolCallStream(make_parser(family)), []
    for ch in text:
        parts += stream.feed(ch)[1]
    parts += stream.finish()[1]
    assert "".join(f for i, call, f in parts if i == 0 and call is None) == first
    assert len([f for i, call, f in parts if i == 0 and call is None]) > 10
    assert _pairs(_assemble(parts)) == expected


@pytest.mark.parametrize(
    "family, text, fragments",
    [
        ("minimax_m2", CASES["minimax_m2"][1][0],
         ["{", '"shape": "circle"', ', "dimensions": {"radius": 15.5}', ', "precision": 3', "}"]),
        ("deepseek_v32", CASES["deepseek_v32"][0][0], ["{", '"location": "杭州"', ', "date": "2024-01-16"', "}"]),
        ("gemma4", CASES["gemma4"][2][0],
         ["{", '"nested": {"inner": "value", "3": "new text"}', ', "list": ["a", "b", [1, true]]', ', "count": 42',
          ', "score": -3.14', ', "e": 1000.0', ', "flag": false', ', "gone": null', ', "word": "hello"', "}"]),
    ],
)  # fmt: skip
def test_tagged_arguments_stream_each_once_closed(family: str, text: str, fragments: list[str]) -> None:
    """Char by char, a parameter (a Gemma 4 pair that is not a string) goes out once closed, so a number or a
    boolean split across tokens never goes out as a different value."""
    stream, parts = ToolCallStream(make_parser(family, TOOLS_OF.get(family))), []
    for ch in text:
        parts += stream.feed(ch)[1]
    parts += stream.finish()[1]
    assert [f for i, call, f in parts if i == 0 and call is None] == fragments


def test_gemma4_streams_a_string_argument_as_written_holding_back_its_delimiter() -> None:
    """vLLM's bug #38946: a token boundary inside ``<|"|>`` leaked ``<|`` into the arguments; here the text of a
    string goes out as written, less what may begin its closing delimiter, and a number split across tokens waits."""
    pieces = ["<|tool", "_call>call:todo{", "content:", "<|", '"|>Buy', " milk<|", '"|>', ",n:4", "2}", "<tool_call|>"]
    stream, steps = ToolCallStream(make_parser("gemma4")), []
    for piece in pieces:
        content, parts = stream.feed(piece)
        assert content == ""
        steps.append([f for _, call, f in parts if call is None])
    assert stream.finish() == ("", [])
    assert steps == [[], ["{"], [], [], ['"content": "Buy'], [" milk"], ['"'], [], [', "n": 42'], ["}"]]


def test_a_gemma4_call_that_turns_out_malformed_stays_unfinished_and_its_sibling_comes_whole() -> None:
    text = GEMMA_CALL.format("bad", "a:1,b:") + GEMMA_CALL.format("ok", f"x:{Q}y{Q}")
    assert _pairs(parse_tool_calls(make_parser("gemma4"), text)[1]) == [("ok", {"x": "y"})]
    stream, parts = ToolCallStream(make_parser("gemma4")), []
    for ch in text:
        parts += stream.feed(ch)[1]
    parts += stream.finish()[1]
    bad, ok = _assemble(parts)
    assert (bad.name, bad.arguments) == ("bad", '{"a": 1') and _pairs([ok]) == [("ok", {"x": "y"})]


FUZZ_PIECES = {  # each format's markup in pieces: random texts of them must neither crash a parser nor stream apart
    "gemma4": ["<|tool_call>", "<tool_call|>", "call:", "f", "{", "}", "[", "]", ":", ",", Q, "<|", "1", "true", "x"],
    "deepseek_v31": ["<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>",
                     "f", "{}"],
    "deepseek_v32": ["<｜DSML｜function_calls>", '<｜DSML｜invoke name="f">', "</｜DSML｜invoke>",
                     "</｜DSML｜parameter>", '<｜DSML｜parameter name="a" string="false">', "1", '"', "<"],
    "minimax_m2": ["<minimax:tool_call>", '<invoke name="f">', "</invoke>", '<parameter name="a">', "</parameter>",
                   "x", "<"],
    "olmo3": ["<function_calls>", "</function_calls>", "f(", ")", "a=", "1", "null", "'", "\n", ", ", "["],
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(FUZZ_PIECES))
def test_random_markup_never_crashes_a_parser(family: str) -> None:
    """Malformed and unfinished markup in any order: the whole reply's calls carry JSON objects, and the stream
    (random chunks) assembles into calls a client can read, its content the whole reply's when no call is made."""
    rng, as_written = random.Random(family), family == "deepseek_v31"  # whose arguments pass on as written
    for _ in range(300):
        text = "".join(rng.choice(FUZZ_PIECES[family]) for _ in range(rng.randint(1, 14)))
        content, calls = parse_tool_calls(make_parser(family), text)
        assert as_written or all(isinstance(json.loads(c.arguments), dict) for c in calls)
        cuts = sorted(rng.sample(range(1, len(text)), min(4, len(text) - 1)))
        streamed, parts = _stream(family, [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)])
        if not calls:
            assert streamed == (content or "")


def test_gemma4_arguments_nested_past_pythons_recursion_limit_are_no_call() -> None:
    text = GEMMA_CALL.format("f", "a:" + "[" * 2000 + "]" * 2000)
    assert parse_tool_calls(make_parser("gemma4"), text) == (text, [])
    stream = ToolCallStream(make_parser("gemma4"))
    assert stream.feed(text) == ("", []) and stream.finish() == (text, [])


DEEP = "[" * 2000 + "]" * 2000  # past CPython 3.12's ~1,500 levels: a logit_bias on "[[" gets a model there


XML_DEEP = "<tool_call>\n<function=calculate_area>\n<parameter=dimensions>\n" + DEEP + "\n</parameter>\n</function>\n"


@pytest.mark.parametrize(
    ("family", "text"),
    [
        ("hermes", '<tool_call>{"name": "f", "arguments": {"a": ' + DEEP + "}}</tool_call>"),
        ("llama3_json", '{"name": "f", "parameters": {"a": ' + DEEP + "}}"),
        ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {"a": ' + DEEP + "}}]"),
        ("qwen3_coder", XML_DEEP + "</tool_call>"),  # an "object" parameter: read as JSON
        ("qwen3_xml", XML_DEEP + "</tool_call>"),
    ],
)
def test_json_arguments_nested_past_pythons_recursion_limit_are_no_call(family: str, text: str) -> None:
    """json's RecursionError had escaped the JSON formats' readers and the XML ones' typed values: a 500 for the
    reply (the gemma4 one above)."""
    tools = QWEN_TOOLS if family.startswith("qwen3") else None
    content, calls = parse_tool_calls(make_parser(family, tools), text)
    assert all(isinstance(json.loads(c.arguments), dict) for c in calls)
    stream = ToolCallStream(make_parser(family, tools))
    stream.feed(text)
    stream.finish()


def test_a_forced_list_nested_past_pythons_recursion_limit_is_no_call() -> None:
    """``tool_choice`` "required" with a ``logit_bias`` on "[[": the whole reply's reading raised RecursionError, a
    500, cut short or closed alike."""
    opened = '[{"name": "a", "parameters": {"k": ' + "[" * 2000
    assert forced_calls(opened, None) is None and forced_calls(opened + "]" * 2000 + "}}]", None) is None
    assert forced_calls("[" * 2000, "a") is None
    stream = ForcedCallStream()
    stream.feed(opened)
    assert stream.finish()[1] == []


def test_a_forced_call_held_to_brackets_past_the_recursion_limit_is_answered_not_a_500() -> None:
    """What a client's ``logit_bias`` on "[[" did to the default model: ~1,800 brackets opened in a forced call's
    arguments, and the reply's reading raised RecursionError (a 500). Here the script writes "[" at every step."""
    engine = repeating_text_engine("[", TINY_TOKENIZER, max_model_len=2048, num_pages=520, max_num_batched_tokens=64)
    array = {"type": "object", "properties": {"a": {"type": "array"}}, "required": ["a"]}
    body = {"model": MODEL, "messages": MESSAGES, "tool_choice": "required", "max_tokens": 1600}
    body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": array}}]
    with RunningServer(engine, load_config(None, served_model_name=MODEL)) as running:
        for stream in (False, True):
            reply = http("POST", f"{running.url}/v1/chat/completions", json_body={**body, "stream": stream})
            assert reply.status == 200 and reply.body.count(b"[") > 1500, reply.body[-300:]
            assert b'"finish_reason":"length"' in reply.body and b'"error"' not in reply.body


def test_pythonic_streams_keyword_arguments_as_they_settle() -> None:
    stream, parts = ToolCallStream(make_parser("pythonic")), []
    for ch in f"[{USER}, {SF}]":
        parts += stream.feed(ch)[1]
    parts += stream.finish()[1]
    fragments = [f for i, call, f in parts if i == 0 and call is None]
    assert fragments[:3] == [
        '{"name": "John Doe"',
        ', "age": 37',
        ', "address": {"city": "San Francisco", "state": "CA"}',
    ]
    assert len(fragments) == 6 and _pairs(_assemble(parts)) == [USER_CALL, SF_CALL]


def test_a_begun_call_the_parser_drops_does_not_take_the_next_calls_arguments() -> None:
    """``1e999`` is no JSON value, so vLLM's pythonic drops the call; streamed, its name and first argument had
    gone out, and it stays unfinished while the next call comes whole at the next index."""
    text = f"[calc(a=1, x=1e999), {SF}]"
    assert _pairs(parse_tool_calls(make_parser("pythonic"), text)[1]) == [SF_CALL]
    stream, parts = ToolCallStream(make_parser("pythonic")), []
    for ch in text:
        parts += stream.feed(ch)[1]
    parts += stream.finish()[1]
    calc, weather = _assemble(parts)
    assert (calc.name, calc.arguments) == ("calc", '{"a": 1') and _pairs([weather]) == [SF_CALL]


def test_prose_that_mentions_a_marker_word_streams_at_once() -> None:
    stream = ToolCallStream(make_parser("phi4_mini_json"))
    assert stream.feed("Use functools.partial here")[0] == "Use functools.partial here"


@pytest.mark.parametrize(
    "family, text",
    [
        ("pythonic", "[1] Smith, J. (2020)."),
        ("pythonic", "[Note: see below] fine"),
        ("granite", "[1, 2, 3] are odd"),
        ("llama3_json", "{x} is a set"),
    ],
)
def test_a_whole_output_format_lets_text_go_once_it_cannot_be_calls(family: str, text: str) -> None:
    """A format whose calls are the whole output held all text that began like them until the end; once the text
    cannot be its calls, it streams as content."""
    stream, sent = ToolCallStream(make_parser(family)), ""
    for ch in text:
        sent += stream.feed(ch)[0]
    assert sent == text and stream.finish() == ("", [])  # every character went out as it came

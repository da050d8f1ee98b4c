"""Fuzz a running ``jllm serve``: mutated bodies to every POST route, each answer checked against the rule.

The rule: bad input gets a 4xx with OpenAI's error JSON (``{"error": {"message", "type", "param", "code"}}``;
Anthropic's ``{"type": "error", "error": {"type", "message"}}`` on ``/v1/messages``), never a 5xx, a dropped connection
or a hang; and the server still answers ``/health`` and an ordinary request afterwards. Bodies come from valid seeds per
route, mutated at one field at a time (wrong types, negative and huge numbers, NaN / Infinity, deep nesting, lone
surrogates, giant strings, unknown fields, arrays for strings, nulls) and as raw bytes (empty, non-UTF-8, truncated,
wrong Content-Type, 1.4 million small values), and written byte for byte on a socket (bodies cut off or stalled,
half-closed, framed two ways, header bytes that are not UTF-8), which must be answered within ``--stall-timeout`` (the
server's ``body_timeout_s`` and then some); ordinary, broken and streamed requests pipelined on one connection must each
be answered, in order. A 200 stream may end with an error event only for the request's own fault found after the headers
(a grammar that broke mid-generation). The pooling routes (embeddings, classify, score, rerank) get their own mutations
(empty, huge and mixed lists, token ids out of the vocabulary, texts past the context, vLLM's fields this server
refuses, every served model's name: a model of the wrong kind among them), and each 200 must hold one finite result per
input (rerank: the ``top_n`` best, best first). Prints each failure (status, body, the request that caused it) and a
summary; exits 1 if any request broke the rule.

    jllm serve --port 8000 &
    python scripts/fuzz_server.py --url http://127.0.0.1:8000 --rounds 3
    python scripts/fuzz_server.py --model my-reranker --routes /rerank /score /classify /v1/embeddings
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import sys
from collections import Counter
from typing import Any

import aiohttp

from jllm.server.scores import PAIR_FIELDS

POOLING: dict[str, Any] = {"user": "u", "truncate_prompt_tokens": 16, "use_activation": True}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
SEEDS: dict[str, dict[str, Any]] = {
    "/v1/completions": {
        "prompt": "hi",
        "max_tokens": 2,
        "temperature": 0.5,
        "top_p": 0.9,
        "n": 1,
        "stop": ["\n"],
        "logprobs": 1,
        "echo": False,
        "seed": 1,
        "logit_bias": {"5": 1},
        "stream": False,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.1,
        "user": "u",
        "best_of": 1,
        "suffix": None,
    },
    "/v1/chat/completions": {
        "messages": [{"role": "user", "content": "hi", "name": "n"}],
        "max_tokens": 2,
        "max_completion_tokens": 2,
        "temperature": 0.5,
        "n": 1,
        "stop": "\n",
        "logprobs": True,
        "top_logprobs": 1,
        "seed": 1,
        "tools": TOOLS,
        "tool_choice": "none",
        "parallel_tool_calls": True,
        "response_format": {"type": "text"},
        "stream": False,
        "user": "u",
        "safety_identifier": "u",
        "prompt_cache_key": "k",
        "metadata": {"app": "fuzz"},
        "include_reasoning": True,  # vLLM's; read where the server has a reasoning parser
        "chat_template_kwargs": {"enable_thinking": True},
    },
    "/v1/responses": {
        "input": [{"role": "user", "content": "hi"}],
        "instructions": "be brief",
        "max_output_tokens": 2,
        "temperature": 0.5,
        "top_p": 0.9,
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}],
        "tool_choice": "none",
        "parallel_tool_calls": True,
        "text": {"format": {"type": "text"}},
        "include": [],
        "store": False,
        "previous_response_id": None,  # a stored response's id continues it; weird ones must be a 4xx
        "stream": False,
        "user": "u",
        "metadata": {"a": "b"},
        "seed": 1,
    },
    "/v1/embeddings": {
        "input": ["hi", "there"],
        "encoding_format": "float",
        "user": "u",
        "add_special_tokens": True,
        "endianness": "little",
        **POOLING,
    },
    "/v1/messages": {  # Anthropic's Messages API
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 2,
        "system": "be brief",
        "stop_sequences": ["zz"],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 5,
        "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "none"},
        "metadata": {"user_id": "u"},
        "stream": False,
    },
    "/v1/messages/count_tokens": {"messages": [{"role": "user", "content": "hi"}], "system": "be brief"},
    "/tokenize": {"prompt": "hi", "add_special_tokens": True},
    "/detokenize": {"tokens": [1, 2, 3]},
    # vLLM's pooling routes; /classify wants a classifier, /score and /rerank a cross-encoder or any causal LM
    "/classify": {"input": ["good", "bad"], "add_special_tokens": True, **POOLING},
    "/score": {"text_1": "q", "text_2": ["a", "b"], **POOLING},
    "/v1/score": {"queries": ["q", "r"], "documents": ["a", "b"], **POOLING},
    "/rerank": {"query": "q", "documents": ["a", "b", "c"], "top_n": 2, **POOLING},
    "/v1/rerank": {"query": "q", "documents": ["a", "b", "c"], "top_n": 2, **POOLING},
    "/v2/rerank": {"query": "q", "documents": "a", "top_n": 1, **POOLING},
}
ORDINARY = {"/v1/completions": {"prompt": "hi", "max_tokens": 2}}  # the request after each round, where not the seed
POOLING_ROUTES = ("/v1/embeddings", "/classify", "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank")
STREAMING_ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages")
WEIRD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**31,
    2**63,
    2**64,
    10**30,
    -(10**30),
    1.5,
    -1e308,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    "x",
    "10",
    "\ud800",
    "\udfff\ud800",
    "\x00",
    "é" * 10,
    "x" * 100_000,
    [],
    [None],
    [1, "a"],
    ["\ud800"],
    [[1]],
    {},
    {"a": 1},
    {"type": None},
    [{"type": "text", "text": "\ud800"}],
    {"role": "user", "content": "hi"},
]
MESSAGE_MUTATIONS: list[Any] = [
    [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]}],
    [{"role": "assistant", "content": None}],
    [{"role": "assistant", "content": None, "tool_calls": []}],
    [
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
        }
    ],
    [
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "1"}}],
        }
    ],
    [
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}],
        }
    ],
    [{"role": "tool", "content": "x"}],
    [{"role": "tool", "content": "x", "tool_call_id": "c"}],
    [{"role": "user", "content": "x", "tool_call_id": "c"}],
    [{"role": "function", "content": "x", "name": "f"}],
    [{"role": "user", "content": "x", "unknown": 1}],
    [{"role": "user", "content": [{"type": "text"}]}],
    [{"role": "user", "content": [{"text": "x"}]}],
    [{"role": "user", "content": [{"type": "text", "text": 5}]}],
    [{"role": "user", "content": [{"type": "input_text", "text": "x"}]}],
    [{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}],
    [{"role": "system", "content": ""}],
    [{"role": "user", "content": "x"}] * 2000,
    [{"role": "user", "content": "\x00\x01\x02"}],
]
ANTHROPIC_MESSAGE_MUTATIONS: list[Any] = [  # /v1/messages conversations
    [],
    [{"role": "system", "content": "x"}],
    [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "AAAA"}}]}],
    [{"role": "user", "content": [{"type": "document", "source": {}}]}],
    [{"role": "user", "content": [{"type": "text"}]}],
    [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}],
    [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image"}]}]}],
    [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}]}],
    [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": [1]}]}],
    [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}] * 2,
    [{"role": "assistant", "content": [{"type": "thinking"}]}],
    [{"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]}],
    [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}],
    [{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}],
    [{"role": "user", "content": "x"}] * 2000,
]
INPUT_MUTATIONS: list[Any] = [  # /v1/responses items
    [],
    [{"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "x"}]}],
    [{"role": "user", "content": [{"type": "input_text"}]}],
    [{"role": "tool", "content": "x"}],
    [{"type": "reasoning", "summary": []}],
    [{"type": "item_reference", "id": "msg_1"}],
    [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}],
    [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}],
    [{"type": "function_call", "call_id": "c", "name": "f"}],
    [{"type": "function_call_output", "output": "x"}],
    [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "x"}]}],
    [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_file", "file_id": "f"}]}],
    [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}] * 2,
    [{"role": "assistant", "content": [{"type": "output_text", "text": "x", "annotations": [], "logprobs": [1]}]}],
    [{"role": "user", "content": "x"}] * 2000,
    [{"type": None, "role": "user", "content": "x"}],
    [5],
]
EXTRA_FIELDS: list[tuple[str, Any]] = [
    # Anthropic's Messages API fields (sent to every route: elsewhere ignored or refused)
    ("thinking", {"type": "enabled", "budget_tokens": 8}),
    ("thinking", {"type": "disabled"}),
    ("thinking", {"type": "adaptive", "budget_tokens": -1}),
    ("output_config", {"effort": "max", "format": {"type": "json_schema", "schema": {"type": "object"}}}),
    ("output_config", {"format": {"type": "json_schema"}}),
    ("tool_choice", {"type": "any", "disable_parallel_tool_use": True}),
    ("tool_choice", {"type": "tool", "name": "absent"}),
    ("tools", [{"type": "bash_20250124", "name": "bash"}]),
    ("tools", [{"name": "f"}]),
    ("container", "c"),
    ("mcp_servers", [{"type": "url", "url": "http://x"}]),
    ("system", [{"type": "image"}]),
    ("chat_template_kwargs", {"messages": 1}),
    ("chat_template_kwargs", {"add_generation_prompt": "x"}),
    ("chat_template_kwargs", {"tools": 5}),
    ("chat_template_kwargs", {"raise_exception": 1}),
    ("chat_template_kwargs", {"bos_token": 1}),
    ("documents", [{"a": "b"}]),
    ("documents", [{"a": 1}]),
    ("structured_outputs", {"json": {"type": "object", "properties": {"a": {"type": "nan"}}}}),
    ("structured_outputs", {"regex": "("}),
    ("structured_outputs", {"grammar": "start: x"}),
    ("structured_outputs", {"choice": []}),
    ("structured_outputs", {"choice": [1]}),
    ("structured_outputs", {"json": "not json"}),
    ("structured_outputs", {"nonsense": 1}),
    ("structured_outputs", {"json": {"type": "number", "minimum": float("nan")}}),
    ("guided_json", "{"),
    ("guided_json", {"$ref": "#/nope"}),
    ("guided_regex", "a{1000000}"),
    ("guided_choice", ["\ud800"]),
    ("guided_grammar", "root ::= "),
    (
        "response_format",
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "x": float("nan")}}},
    ),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
    (
        "response_format",
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "items": {"$ref": "#"}}}},
    ),
    ("response_format", {"type": "json_object", "json_schema": None}),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": []}}]),
    ("tools", [{"type": "function", "function": {"name": "\ud800"}}]),
    ("tools", [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "required"),
    ("tool_choice", {"type": "function", "function": {"name": "f"}}),
    ("tool_choice", {"type": "function", "function": {"name": "g"}}),
    ("tool_choice", {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}),
    ("stream_options", {"include_usage": True, "continuous_usage_stats": True}),
    ("stream_options", {"continuous_usage_stats": True}),
    ("allowed_token_ids", [10**9]),
    ("allowed_token_ids", []),
    # vLLM's fields honoured since 2026-12-06: bad words, loops, the thinking budget, priority, truncation, whitespace
    ("bad_words", ["the", " a", "\ud800"]),
    ("bad_words", [""]),
    ("bad_words", "the"),
    ("bad_words", ["x"] * 129),
    ("bad_words", ["word " * 600]),
    ("repetition_detection", {"max_pattern_size": 3, "min_count": 2}),
    ("repetition_detection", {"max_pattern_size": 3, "min_count": 1}),
    ("repetition_detection", {"max_pattern_size": 10**9, "min_count": 2}),
    ("repetition_detection", {"max_pattern_size": "3"}),
    ("repetition_detection", [1]),
    ("thinking_token_budget", 0),
    ("thinking_token_budget", -2),
    ("thinking_token_budget", 2**63),
    ("priority", 1),
    ("priority", -(2**70)),
    ("priority", "high"),
    ("truncation_side", "right"),
    ("truncation_side", "middle"),
    ("guided_whitespace_pattern", "[ ]?"),
    ("guided_whitespace_pattern", "("),
    ("structured_outputs", {"json_object": True, "whitespace_pattern": "\\s{0,2}"}),
    ("structured_outputs", {"regex": "a+", "whitespace_pattern": " "}),
    ("structural_tag", '{"structures": [{"begin": "<f>", "schema": {}, "end": "</f>"}], "triggers": ["<f>"]}'),
    ("structural_tag", {"structures": [{"begin": "x", "schema": {}, "end": ""}], "triggers": ["<"]}),
    ("structural_tag", "{"),
    ("structural_tag", {"structures": [{"begin": "<|", "schema": {"type": 5}, "end": "|>"}], "triggers": ["<|"]}),
    ("response_format", {"type": "structural_tag", "structures": "a", "triggers": []}),
    ("response_format", {"type": "structural_tag", "format": {"type": "any_text"}}),
    ("response_format", {"type": "structural_tag", "format": {"type": "repeat", "min": 5, "max": 2, "content": {}}}),
    ("response_format", {"type": "structural_tag", "format": {"type": "regex", "pattern": "(/"}}),
    ("response_format", {"type": "structural_tag", "format": {"type": "grammar", "grammar": "root ::= ("}}),
    ("structured_outputs", {"structural_tag": {"format": {"type": "sequence", "elements": [{"type": "or"}] * 3}}}),
    ("structured_outputs", {"structural_tag": {"format": {"type": "triggered_tags", "triggers": [""], "tags": []}}}),
    ("response_format", {"type": "text", "triggers": ["<"]}),
    (
        "structured_outputs",
        {
            "structural_tag": {
                "structures": [{"begin": "<a>", "schema": {}, "end": "</a>"}] * 50,
                "triggers": ["<a>"] * 50,
            }
        },
    ),
    ("prompt_logprobs", 5),
    ("truncate_prompt_tokens", 0),
    ("truncate_prompt_tokens", 10**9),
    ("min_tokens", 10**9),
    ("stop_token_ids", [1] * 100),
    ("repetition_penalty", 0),
    ("top_k", -5),
    ("min_p", 2),
    ("logit_bias", {str(i): 1 for i in range(2000)}),
    ("logit_bias", {"-1": 1}),
    ("logit_bias", {"1": "a"}),
    ("request_id", "\ud800"),
    ("request_id", "x" * 100_000),
    ("request_id", "a\nb"),
    ("model", "\ud800"),
    ("model", ["a"]),
    ("add_generation_prompt", False),
    ("continue_final_message", True),
    ("include_stop_str_in_output", True),
    ("skip_special_tokens", False),
    # prompts: token ids out of range or of the wrong type, NUL and surrogates inside text, nested lists
    ("prompt", [49152]),
    ("prompt", [-1]),
    ("prompt", [2**63]),
    ("prompt", [[1], [10**12]]),
    ("prompt", [1, "a"]),
    ("prompt", [[1, 2], "x"]),
    ("prompt", ["a\x00b", "\ud800x"]),
    ("prompt", [[]]),
    ("prompt", {"prompt_token_ids": [1, 2]}),
    ("stop", ["\x00"]),
    ("stop", ["a\ud800", "\udfff"]),
    ("stop", [""] * 3),
    ("stop", ["x"] * 65),
    ("stop", ["x" * 513]),
    # n and best_of at and past their limits
    ("n", 128),
    ("n", 129),
    ("best_of", 128),
    ("best_of", 2**31),
    ("n", 2.0),
    # logit_bias: ids outside the vocabulary, keys that are not integers, values out of range
    ("logit_bias", {"49152": 1}),
    ("logit_bias", {"99999999999999999999999": 1}),
    ("logit_bias", {"1.5": 1}),
    ("logit_bias", {" 5": 1}),
    ("logit_bias", {"0x5": 1}),
    ("logit_bias", {"\ud800": 1}),
    ("logit_bias", {"5": 1e308}),
    ("logit_bias", {"5": None}),
    ("logit_bias", [5, 1]),
    # max_tokens at the edges of the context
    ("max_tokens", 0),
    ("max_tokens", -(2**63)),
    ("max_tokens", 10**6),
    ("max_completion_tokens", 10**6),
    ("min_tokens", -1),
    # tool schemas that are not objects; tools that are not tools
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": "string"}}]),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": 5}}]),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": None}}]),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]),
    ("tools", [{"type": "function", "function": "f"}]),
    ("tools", [5]),
    ("tools", [{"type": "function", "function": {"name": ""}}]),
    ("tools", [{"type": "function", "function": {"name": "f" * 10_000}}]),
    # structured output whose schema is not an object, or whose grammar breaks mid-generation
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": 5}}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}),
    (
        "response_format",
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": "x"}},
    ),
    ("structured_outputs", {"json": 5}),
    ("structured_outputs", {"regex": "[0-9]{3}a{1000000}"}),
    ("structured_outputs", {"choice": ["a"] * 10_000}),
    ("structured_outputs", {"json": {"type": "object"}, "regex": "a"}),
    ("guided_choice", []),
    ("guided_choice", [""]),
]

LONG_TEXT = "hello " * 100  # 600 characters: past a tiny character-tokenizer model's context, not the character limit
TEXTS_MUTATIONS: list[Any] = [  # any text-or-texts field of a pooling route
    [""],
    ["a", ""],
    ["a"] * 7,
    ["a"] * 1000,
    LONG_TEXT,
    ["a", LONG_TEXT],
    "é🙂\u200b\u202e\ufeff" * 10,
    ["\ud800"],
    ["a\x00b"],
    [{"type": "text", "text": "x"}],
    {"content": [{"type": "text", "text": "x"}]},
    [[1, 2]],
    [1, 2, 3],
    [True],
]
POOLING_MUTATIONS: dict[str, list[Any]] = {  # per field of a pooling seed, beyond WEIRD_VALUES
    "input": [
        [10**6],
        [-1],
        [2**63],
        [[1], [10**12]],
        [[]],
        [1] * 100_000,
        [[1] * 200],
        [[1, 2], "x"],
        [[1, "a"]],
        [1.5],
        {"prompt_token_ids": [1]},
        *TEXTS_MUTATIONS,
    ],
    "text_1": TEXTS_MUTATIONS,
    "text_2": TEXTS_MUTATIONS,
    "queries": TEXTS_MUTATIONS,
    "documents": TEXTS_MUTATIONS,
    "query": ["", LONG_TEXT, ["q"], {"text": "q"}, [{"type": "text", "text": "q"}], "\ud800q"],
    "top_n": [1, 3, 4, 10**9, 2**63 - 1, 2**63, 2.0, "2"],
    "truncate_prompt_tokens": [-2, 1, 127, 128, 129, 10**9, 2**63, 1.0],
    "encoding_format": ["base64", "binary", "bytes", "FLOAT"],
    "endianness": ["big", "native", "BIG", "middle"],
}
POOLING_EXTRA_FIELDS: list[tuple[str, Any]] = [  # fields vLLM's pooling requests have (and some they had), not seeded
    ("normalize", False),
    ("normalize", "x"),
    ("softmax", False),
    ("activation", False),
    ("use_activation", False),
    ("dimensions", 8),
    ("dimensions", 0),
    ("embed_dtype", "float16"),
    ("embed_dtype", "float32"),
    ("priority", 1),
    ("priority", 2**64),
    ("padding", "max_length"),
    ("padding", "do_not_pad"),
    ("truncation_side", "right"),
    ("truncation_side", "left"),
    ("mm_processor_kwargs", {"a": 1}),
    ("cache_salt", ""),
    ("cache_salt", "x" * 1025),
    ("cache_salt", 5),
    ("messages", [{"role": "user", "content": "hi"}]),
    ("chat_template", "{{ x }}"),
    ("chat_template_kwargs", {"a": 1}),
    ("instruction", "be strict"),
    ("max_tokens_per_query", 4),
    ("max_tokens_per_doc", 4),
    ("task", "embed"),
    ("items", ["x"]),
    ("data_1", "q"),
    ("data_2", ["a", "b", "c"]),
    ("return_documents", False),
    ("input", "x"),
]


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def mutated_bodies(route: str, rng: random.Random, models: list[str] = ()) -> list[tuple[str, bytes, dict[str, str]]]:
    """(what, body bytes, headers) for ``route``: every field of its seed set to every weird value or removed, extra
    fields, the message mutations (chat and /tokenize), the pooling mutations (the pooling routes), the seed naming
    each of ``models`` (the server's: a model of the wrong kind for the route among them), and the raw-byte cases."""
    seed = SEEDS[route]
    bodies = [(f"{field}={value!r:.60}", {**seed, field: value}) for field, value in field_mutations(route)]
    removable = [field for field in seed if not _unbounded(route, field)]
    bodies += [(f"{field} removed", {k: v for k, v in seed.items() if k != field}) for field in removable]
    bodies += [(f"model={model!r}", {**seed, "model": model}) for model in models]
    for field, value in EXTRA_FIELDS + [("zzz_unknown", value) for value in WEIRD_VALUES]:
        bodies.append((f"{field}={value!r:.80}", {**seed, field: value}))
        bodies.append((f"stream {field}={value!r:.80}", {**seed, field: value, "stream": True}))
    if route in POOLING_ROUTES:
        pooling = [(f, v) for f in seed for v in POOLING_MUTATIONS.get(f, [])] + POOLING_EXTRA_FIELDS
        bodies += [(f"{field}={value!r:.80}", {**seed, field: value}) for field, value in pooling]
    if route == "/v1/chat/completions":
        for messages in MESSAGE_MUTATIONS:
            bodies.append((f"messages={messages!r:.100}", {**seed, "messages": messages}))
            bodies.append((f"stream messages={messages!r:.100}", {**seed, "messages": messages, "stream": True}))
    if route == "/v1/responses":
        for items in INPUT_MUTATIONS:
            bodies.append((f"input={items!r:.100}", {**seed, "input": items}))
            bodies.append((f"stream input={items!r:.100}", {**seed, "input": items, "stream": True}))
    if route.startswith("/v1/messages"):
        for messages in ANTHROPIC_MESSAGE_MUTATIONS:
            bodies.append((f"messages={messages!r:.100}", {**seed, "messages": messages}))
            bodies.append((f"stream messages={messages!r:.100}", {**seed, "messages": messages, "stream": True}))
    if route == "/tokenize":
        bodies += [(f"tokenize messages={messages!r:.100}", {"messages": messages}) for messages in MESSAGE_MUTATIONS]
    json_headers = {"Content-Type": "application/json"}
    encoded = [(what, json.dumps(body).encode("utf-8", "surrogatepass"), json_headers) for what, body in bodies]
    return encoded + raw_bodies(seed, rng)


def field_mutations(route: str) -> list[tuple[str, Any]]:
    """Every field of the route's seed with every weird value; a completion's ``max_tokens`` is never left unset
    (``_unbounded``: it would run to the context limit, minutes on a CPU)."""
    return [(f, v) for f in SEEDS[route] for v in WEIRD_VALUES if not (v is None and _unbounded(route, f))]


def _unbounded(route: str, field: str) -> bool:
    """Whether leaving ``field`` unset lets the request generate up to the context limit."""
    return (route, field) in (("/v1/completions", "max_tokens"), ("/v1/responses", "max_output_tokens"))


def raw_bodies(seed: dict[str, Any], rng: random.Random) -> list[tuple[str, bytes, dict[str, str]]]:
    """Bodies that are not the JSON of an object, or not sent as JSON: empty, other types, non-UTF-8, truncated,
    deeply nested, NaN / Infinity literals, a lone surrogate escape, other Content-Types and encodings."""
    raw = json.dumps(seed).encode()
    json_headers = {"Content-Type": "application/json"}
    return [
        ("empty body", b"", json_headers),
        ("null body", b"null", json_headers),
        ("list body", b"[]", json_headers),
        ("number body", b"1", json_headers),
        ("string body", b'"x"', json_headers),
        ("non-UTF-8 body", b'{"prompt": "\xff\xfe", "messages": [{"role":"user","content":"\xc3"}]}', json_headers),
        ("non-UTF-8 whole", bytes(rng.randrange(256) for _ in range(200)), json_headers),
        ("truncated", raw[: len(raw) // 2], json_headers),
        ("trailing garbage", raw + b"}}", json_headers),
        ("two objects", raw + raw, json_headers),
        ("deep list", deep(100_000).encode(), json_headers),
        ("deep field", raw[:-1] + b', "zzz": ' + deep(5000).encode() + b"}", json_headers),
        ("deep object field", raw[:-1] + b', "zzz": ' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}", json_headers),
        ("NaN literal", raw[:-1] + b', "temperature": NaN}', json_headers),
        ("Infinity literal", raw[:-1] + b', "temperature": Infinity}', json_headers),
        ("-Infinity top_p", raw[:-1] + b', "top_p": -Infinity}', json_headers),
        ("huge exponent", raw[:-1] + b', "temperature": 1e99999}', json_headers),
        ("huge int", raw[:-1] + b', "max_tokens": ' + b"9" * 5000 + b"}", json_headers),
        ("lone surrogate escape", raw[:-1] + b', "user": "\\ud800"}', json_headers),
        ("bad escape", raw[:-1] + b', "user": "\\x41"}', json_headers),
        ("duplicate keys", raw[:-1] + b', "max_tokens": "a", "max_tokens": 2}', json_headers),
        ("BOM", b"\xef\xbb\xbf" + raw, json_headers),
        ("text/plain", raw, {"Content-Type": "text/plain"}),
        ("form", b"prompt=hi", {"Content-Type": "application/x-www-form-urlencoded"}),
        ("no content type", raw, {}),
        ("multipart", b"--x\r\n\r\nhi\r\n--x--", {"Content-Type": "multipart/form-data; boundary=x"}),
        ("gzip claimed", raw, {"Content-Type": "application/json", "Content-Encoding": "gzip"}),
        ("charset latin1", raw, {"Content-Type": "application/json; charset=latin-1"}),
        ("NUL in a prompt escape", raw[:-1] + b', "prompt": "a\\u0000b"}', json_headers),
        ("surrogate pair halves swapped", raw[:-1] + b', "prompt": "\\udc00\\ud800"}', json_headers),
        ("deep messages", raw[:-1] + b', "messages": ' + b"[" * 2000 + b"]" * 2000 + b"}", json_headers),
        ("deep logit_bias", raw[:-1] + b', "logit_bias": ' + b'{"1":' * 2000 + b"1" + b"}" * 2000 + b"}", json_headers),
        ("huge negative exponent", raw[:-1] + b', "top_p": 1e-99999}', json_headers),
        ("long number", raw[:-1] + b', "temperature": 0.' + b"1" * 100_000 + b"}", json_headers),
        ("JSON content type with params", raw, {"Content-Type": "application/json; boundary=x; charset=utf-8"}),
        # 1.4 million values, each a little work for the parser and the validators (off the event loop, or every
        # stream waits); 4 MiB a route, as the cases of every route are held at once
        ("4 MiB of empty objects", raw[:-1] + b', "zzz": [' + b"{}," * (1400 << 10) + b"{}]}", json_headers),
    ]


# (what, bytes after the request line and Host header, seconds to stall before half-closing, or None to keep the
# connection open until the server answers): bodies cut off, stalled, malformed, or framed two ways.
RAW_CASES: list[tuple[str, bytes, float | None]] = [
    ("Content-Length body cut off, stalled", b'Content-Length: 100\r\n\r\n{"prompt": "hi", ', None),
    ("Content-Length body cut off, half-closed", b'Content-Length: 100\r\n\r\n{"prompt": "hi", ', 0.2),
    ("chunked body stalled", b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"pro\r\n', None),
    ("chunked body half-closed", b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"pro\r\n', 0.2),
    ("bad chunk size", b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", None),
    (
        "chunked and Content-Length",
        b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        None,
    ),
    ("negative Content-Length", b"Content-Length: -5\r\n\r\n{}", None),
    ("Content-Length past the body limit", b"Content-Length: 99999999999\r\n\r\n{", None),
    ("two Content-Lengths", b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", None),
    ("non-UTF-8 X-Request-Id", b"Connection: close\r\nX-Request-Id: \xff\xfe\r\nContent-Length: 2\r\n\r\n{}", None),
    ("non-UTF-8 header name", b"Connection: close\r\nX-\xff: 1\r\nContent-Length: 2\r\n\r\n{}", None),
    ("NUL in a header", b"Connection: close\r\nX-Request-Id: a\x00b\r\nContent-Length: 2\r\n\r\n{}", None),
    ("bare LF line ends", b"Connection: close\nContent-Length: 2\n\n{}", None),
]


def pipelined(route: str, host: str, bodies: list[bytes], auth: bytes) -> bytes:
    """``bodies`` as requests to ``route`` written back to back on one connection (HTTP/1.1 pipelining), the last
    asking the server to close it once answered."""
    out = b""
    for i, body in enumerate(bodies):
        close = b"Connection: close\r\n" if i == len(bodies) - 1 else b""
        out += f"POST {route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n".encode() + auth + close
        out += f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    return out


def error_shape_problem(status: int, body: bytes, route: str = "") -> str | None:
    """Why ``body`` is not OpenAI's error JSON (Anthropic's on its routes), or None."""
    try:
        data = json.loads(body)
    except ValueError:
        return "not JSON"
    error = data.get("error") if isinstance(data, dict) else None
    if route.startswith("/v1/messages"):
        if data.get("type") != "error" or not isinstance(error, dict) or set(error) != {"type", "message"}:
            return "not {'type': 'error', 'error': {type, message}}"
    elif not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return "not {'error': {message, type, param, code}}"
    if not isinstance(error["message"], str) or not error["message"]:
        return "no message"
    return None


def stream_problem(body: bytes, route: str = "") -> str | None:
    """A 200 stream must be SSE events of JSON ending in [DONE] (the Responses API's: named events ending in its
    final one); an error event is allowed only for the request's own fault found after the headers (a grammar that
    broke mid-generation: ``invalid_request_error``), in OpenAI's shape."""
    if route.startswith("/v1/messages"):
        return messages_stream_problem(body)
    if body.startswith(b"event: "):
        return responses_stream_problem(body)
    events = body.decode("utf-8", "replace").split("\n\n")
    if events[-2:] != ["data: [DONE]", ""]:
        return f"stream does not end with [DONE]: {body[-200:]!r}"
    for event in events[:-2]:
        payload = event.removeprefix("data: ")
        try:
            data = json.loads(payload)
        except ValueError:
            return f"event is not JSON: {payload[:200]!r}"
        if "error" in data and (
            error_shape_problem(400, payload.encode()) or data["error"]["type"] != "invalid_request_error"
        ):
            return f"error event in a 200 stream: {payload[:300]}"
    return None


def named_events(body: bytes) -> list[dict[str, Any]] | str:
    """A stream of named events (``event: TYPE`` then ``data: JSON``): each JSON, or why the stream is not one
    (a payload that is not JSON, an event not named as its JSON's type)."""
    events = body.decode("utf-8", "replace").removesuffix("\n\n").split("\n\n")
    payloads = []
    for i, event in enumerate(events):
        name, _, payload = event.partition("\ndata: ")
        try:
            data = json.loads(payload)
        except ValueError:
            return f"event is not JSON: {payload[:200]!r}"
        if name != f"event: {data.get('type')}":
            return f"event {i} is not named as its JSON: {event[:300]!r}"
        payloads.append(data)
    return payloads


def responses_stream_problem(body: bytes) -> str | None:
    """Each event named after its JSON's type and numbered in order, the last one the response's end, or an error
    event for the request's own fault found after the headers (a grammar that broke: ``structured_output_failed``)."""
    events = named_events(body)
    if isinstance(events, str):
        return events
    if [e.get("sequence_number") for e in events] != list(range(len(events))):
        return f"events not numbered in order: {[e.get('sequence_number') for e in events][:50]}"
    last = events[-1]
    if last["type"] == "error" and last.get("code") == "structured_output_failed":
        return None
    if last["type"] not in ("response.completed", "response.incomplete", "response.failed"):
        return f"stream ends with {last['type']}: {json.dumps(last)[:300]}"
    return None


def messages_stream_problem(body: bytes) -> str | None:
    """Anthropic's stream: each event named after its JSON's type, message_start first and message_stop last, or an
    error event (Anthropic's shape) for the request's own fault found after the headers."""
    events = named_events(body)
    if isinstance(events, str):
        return events
    first, last = events[0]["type"], events[-1]
    if last["type"] == "error" and last["error"]["type"] == "invalid_request_error":
        return None
    if first != "message_start" or last["type"] != "message_stop":
        return f"stream runs {first} .. {last['type']}: {json.dumps(last)[:300]}"
    return None


def pooling_answer_problem(route: str, request: Any, answer: Any) -> str | None:
    """What is wrong with a pooling route's 200 to ``request``: one result per input in order (per pair for /score;
    /rerank's top_n best, best first), every number a number (a NaN leaves pydantic as null)."""
    if route.endswith("rerank"):
        documents = request["documents"]
        count = 1 if isinstance(documents, str) else len(documents)
        results = answer["results"]
        scores = [r["relevance_score"] for r in results]
        if len(results) != min(request.get("top_n") or count, count):
            return f"{len(results)} results for {count} documents and top_n={request.get('top_n')!r}"
        if scores != sorted(scores, reverse=True):
            return f"results not sorted by relevance: {scores}"
        numbers = scores
    else:
        if route.endswith("score"):
            inputs = next(
                request[b] for a, b in PAIR_FIELDS if request.get(a) is not None and request.get(b) is not None
            )
        else:
            inputs = request["input"]
        count = 1 if isinstance(inputs, str) or isinstance(inputs[0], int) else len(inputs)
        data = answer["data"]
        if [d["index"] for d in data] != list(range(count)):
            return f"indices {[d['index'] for d in data]} for {count} inputs"
        key = {"/v1/embeddings": "embedding", "/classify": "probs"}.get(route, "score")
        values = [d[key] for d in data]
        numbers = [x for v in values for x in (v if isinstance(v, list) else [v]) if not isinstance(v, str)]
    if not all(isinstance(x, int | float) and math.isfinite(x) for x in numbers):
        return f"a result is not a finite number: {numbers[:20]}"
    return None


class Fuzzer:
    def __init__(self, url: str, model: str | None, timeout: float, headers: dict[str, str]) -> None:
        self.url, self.model, self.headers = url, model, headers
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.failures: list[str] = []
        self.statuses: Counter[int] = Counter()

    async def send(self, session: aiohttp.ClientSession, route: str, what: str, data: bytes, headers: dict) -> None:
        if self.model and data.startswith(b"{") and b'"model"' not in data:
            data = b'{"model": ' + json.dumps(self.model).encode() + b", " + data[1:] if data != b"{}" else data
        try:
            async with session.post(self.url + route, data=data, headers={**self.headers, **headers}) as response:
                body = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as e:
            self.failures.append(f"{route} [{what}]: {type(e).__name__}: {e}")
            return
        self.statuses[status] += 1
        if status >= 500:
            problem = f"{status}: {body[:300]!r}"
        elif status >= 400:
            problem = error_shape_problem(status, body, route)
        elif response.content_type == "text/event-stream":
            problem = stream_problem(body, route)
        elif not body.startswith(b"{"):
            problem = f"200 without JSON: {body[:200]!r}"
        else:
            problem = self.answer_problem(route, data, body)
        if problem:
            self.failures.append(f"{route} [{what}] -> {problem}")

    @staticmethod
    def answer_problem(route: str, data: bytes, body: bytes) -> str | None:
        if route not in POOLING_ROUTES:
            return None
        try:
            return pooling_answer_problem(route, json.loads(data), json.loads(body))
        except (ValueError, KeyError, TypeError, IndexError, StopIteration) as e:
            return f"the answer does not fit the request ({type(e).__name__}: {e}): {body[:300]!r}"

    async def send_raw(self, route: str, what: str, rest: bytes, half_close: float | None, timeout: float) -> None:
        """A request written byte for byte; the server must answer it (a 4xx in OpenAI's JSON, or a plain close
        when the client half-closed first) within ``timeout`` seconds, never a 5xx, never keep it waiting."""
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        auth = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items()).encode()
        head = f"POST {route} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n".encode() + auth
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(head + rest)
            if half_close is not None:
                await asyncio.sleep(half_close)
                writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), timeout)
        except TimeoutError:
            self.failures.append(f"{route} [raw: {what}]: no answer within {timeout:g} s")
            return
        except OSError:
            return  # reset by the server: no answer is owed to a broken request
        finally:
            writer.close()
        if not answer:
            return
        status_line, _, rest_of_answer = answer.partition(b"\r\n")
        status = int(status_line.split()[1])
        self.statuses[status] += 1
        body = rest_of_answer.partition(b"\r\n\r\n")[2]
        if status >= 500:
            self.failures.append(f"{route} [raw: {what}] -> {status}: {body[:300]!r}")
        elif status >= 400 and (problem := error_shape_problem(status, body, route)):
            # a message HTTP cannot parse is answered before its path is known: OpenAI's shape on every route
            if error_shape_problem(status, body) is not None:
                self.failures.append(f"{route} [raw: {what}] -> {problem}")

    async def send_pipelined(self, route: str, timeout: float) -> None:
        """Ordinary, broken and streamed requests to ``route`` in one write: every one must be answered, in order,
        none with a 5xx, within ``timeout`` seconds."""
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        seed = ORDINARY.get(route, SEEDS[route]) | ({"model": self.model} if self.model else {})
        bodies = [json.dumps(seed).encode(), b"{not json", json.dumps(seed | {"stream": True}).encode()] * 2
        if route not in STREAMING_ROUTES:
            bodies = bodies[:2] * 3
        auth = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items()).encode()
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(pipelined(route, host, bodies, auth))
            answer = await asyncio.wait_for(reader.read(), timeout)
        except (TimeoutError, OSError) as e:
            self.failures.append(f"{route} [pipelined]: {type(e).__name__} {e}")
            return
        finally:
            writer.close()
        statuses = [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]
        self.statuses.update(statuses)
        if len(statuses) != len(bodies) or any(s >= 500 for s in statuses):
            self.failures.append(f"{route} [pipelined]: {len(bodies)} requests answered {statuses}")

    async def still_serving(self, session: aiohttp.ClientSession, route: str) -> str | None:
        """Whether ``/health`` and an ordinary request to ``route`` (its seed) answer 200."""
        async with session.get(f"{self.url}/health") as response:
            if response.status != 200:
                return f"/health answered {response.status}"
        body = ORDINARY.get(route, SEEDS[route]) | ({"model": self.model} if self.model else {})
        async with session.post(f"{self.url}{route}", json=body, headers=self.headers) as response:
            if response.status != 200:
                return f"an ordinary {route} answered {response.status}: {await response.text()}"
        return None

    async def served_models(self, session: aiohttp.ClientSession) -> list[str]:
        async with session.get(f"{self.url}/v1/models", headers=self.headers) as response:
            return [model["id"] for model in (await response.json())["data"]]


async def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    fuzzer = Fuzzer(args.url, args.model, args.timeout, headers)
    semaphore = asyncio.Semaphore(args.concurrency)
    # a connection per request: a case that ends its connection cannot fail the next case sent on it
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=fuzzer.timeout, connector=connector) as session:
        models = await fuzzer.served_models(session)
        cases = [(route, *case) for route in args.routes for case in mutated_bodies(route, rng, models)]
        for round_index in range(args.rounds):
            rng.shuffle(cases)

            async def one(case: tuple) -> None:
                async with semaphore:
                    await fuzzer.send(session, *case)

            await asyncio.gather(*(one(case) for case in cases))
            raw = [(route, *case) for route in args.routes for case in RAW_CASES]
            await asyncio.gather(*(fuzzer.send_raw(*case, args.stall_timeout) for case in raw))
            await asyncio.gather(*(fuzzer.send_pipelined(route, args.timeout) for route in args.routes))
            alive = await fuzzer.still_serving(session, args.routes[0])
            print(f"round {round_index + 1}: {len(cases)} requests, statuses {dict(sorted(fuzzer.statuses.items()))}")
            if alive:
                fuzzer.failures.append(f"after round {round_index + 1}: {alive}")
                break
    for failure in dict.fromkeys(fuzzer.failures):
        print("FAIL", failure)
    print(f"{len(fuzzer.failures)} failures")
    return 1 if fuzzer.failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="the model to name in each body (default: the server's first)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument(
        "--routes",
        nargs="+",
        default=list(SEEDS),
        choices=list(SEEDS),
        help="the first one is the ordinary request that must answer 200 after each round",
    )
    parser.add_argument("--rounds", type=int, default=1, help="passes over every case, shuffled")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one request may take")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stall-timeout", type=float, default=60.0, help="seconds a stalled or cut-off body may go unanswered"
    )
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()

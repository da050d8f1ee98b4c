"""Every field of vLLM's ``CompletionRequest`` / ``ChatCompletionRequest``, and what this server does with it.

No field is silently ignored: each is honoured (a behaviour check below, over the scripted engine) or refused with
a 400 naming it. ``VLLM_*_FIELDS`` are vLLM's request fields (``vllm/entrypoints/openai/protocol.py``, old guided_*
names included); a test fails when one of them is in neither table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, get_type_hints

import pytest
from fake_runner import counting_script, fake_engine
from openai.types import completion_create_params
from openai.types.chat import completion_create_params as chat_create_params
from server_utils import RunningServer, assert_engine_left_empty, http
from tokenizers.processors import TemplateProcessing

from jllm.config import load_config
from jllm.engine import LLMEngine
from jllm.inputs import Prompt
from jllm.sampling import SamplingParams
from jllm.server.chat_schemas import CHAT_UNSUPPORTED_FIELDS, ChatCompletionRequest
from jllm.server.completions_schemas import CompletionRequest
from jllm.server.schemas import UNSUPPORTED_FIELDS

MODEL = "scripted"
TOOL = {
    "type": "function",
    "function": {
        "name": "pick",
        "parameters": {
            "type": "object",
            "properties": {"x": {"enum": [1]}},
            "required": ["x"],
            "additionalProperties": False,
        },
    },
}
COMPLETION = {"model": MODEL, "prompt": "hello", "max_tokens": 3}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
# The test engine's template shows what reaches it: documents, a variable, the messages, the generation prompt.
TEMPLATE = (
    "{% for d in documents or [] %}[{{ d.title }}]{% endfor %}{{ greeting or '' }}"
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

TAG = {"structures": [{"begin": "<f>", "schema": {"type": "object"}, "end": "</f>"}], "triggers": ["<f>"]}

VLLM_COMPLETION_FIELDS = """
    model prompt best_of echo frequency_penalty logit_bias logprobs max_tokens n presence_penalty seed
    stop stream stream_options suffix temperature top_p user use_beam_search top_k min_p
    repetition_penalty length_penalty stop_token_ids include_stop_str_in_output ignore_eos min_tokens
    skip_special_tokens spaces_between_special_tokens truncate_prompt_tokens truncation_side
    allowed_token_ids prompt_logprobs logprob_token_ids bad_words prompt_embeds add_special_tokens
    response_format structured_outputs guided_json guided_regex guided_choice guided_grammar
    guided_decoding_backend guided_whitespace_pattern priority request_id logits_processors
    return_tokens_as_token_ids return_token_ids return_token_offsets cache_salt kv_transfer_params
    ec_transfer_params vllm_xargs repetition_detection thinking_token_budget watermarking session_id
    routed_experts_prompt_start stream_interval
""".split()

VLLM_CHAT_FIELDS = """
    messages model frequency_penalty logit_bias logprobs top_logprobs max_tokens max_completion_tokens n
    presence_penalty response_format seed stop stream stream_options temperature top_p tools tool_choice
    reasoning_effort include_reasoning parallel_tool_calls user best_of use_beam_search top_k min_p
    repetition_penalty length_penalty stop_token_ids include_stop_str_in_output ignore_eos min_tokens
    skip_special_tokens spaces_between_special_tokens truncate_prompt_tokens prompt_logprobs
    allowed_token_ids bad_words echo add_generation_prompt continue_final_message add_special_tokens
    documents chat_template chat_template_kwargs media_io_kwargs mm_processor_kwargs structured_outputs
    guided_json guided_regex guided_choice guided_grammar structural_tag guided_decoding_backend
    guided_whitespace_pattern priority request_id logits_processors return_tokens_as_token_ids
    return_token_ids cache_salt kv_transfer_params vllm_xargs repetition_detection return_prompt_text
    truncation_side logprob_token_ids ec_transfer_params thinking_token_budget return_token_offsets watermarking
    session_id routed_experts_prompt_start stream_interval return_mm_kwargs
""".split()


@dataclass
class Seen:
    """What one request handed the engine."""

    prompt: Prompt
    params: SamplingParams
    reply: dict
    raw: bytes


Check = Callable[[Seen, LLMEngine], bool]


@dataclass
class Honoured:
    field: str
    changes: dict[str, Any]
    check: Check
    chat: bool = False  # True: the chat endpoint, else completions

    @property
    def body(self) -> dict:
        return {**(CHAT if self.chat else COMPLETION), **self.changes}


def _choice(seen: Seen) -> dict:
    return seen.reply["choices"][0]


def _scripted(engine: LLMEngine, prompt: Prompt, count: int) -> list[int]:
    ids = prompt.token_ids
    return [counting_script(ids, len(ids) + k) for k in range(count)]


def _params(field: str, value: Any, **changes: Any) -> Honoured:
    """A sampling knob honoured by handing it to the sampler (whose behaviour tests/test_sampling.py checks)."""
    return Honoured(field, {field: value, **changes}, lambda seen, _: getattr(seen.params, field) == value)


def _prompt_logprobs_follow_the_script(entries: list, prompt: Prompt) -> bool:
    expected = [None] + [
        {str((t + 1) % 512): {"logprob": -0.5, "rank": 1}, str(t): {"logprob": -1.0, "rank": 2}}
        for t in prompt.token_ids[1:]
    ]
    got = [
        None if e is None else {k: {"logprob": v["logprob"], "rank": v["rank"]} for k, v in e.items()} for e in entries
    ]
    return got == expected


def _stop_token(seen: Seen, engine: LLMEngine) -> bool:
    tokens = _scripted(engine, seen.prompt, 3)
    choice = _choice(seen)
    return (
        choice["finish_reason"] == "stop"
        and choice["stop_reason"] == tokens[1]
        and choice["text"] == engine.tokenizer.decode(tokens[:1])  # vLLM: a stop token's text is left out
    )


def _calls(seen: Seen) -> list[tuple[str, Any]]:
    """The reply's calls as (name, arguments), when it ended for them (a named function's by "stop", as OpenAI's)."""
    if _choice(seen)["finish_reason"] not in ("tool_calls", "stop"):
        return []
    return [
        (c["function"]["name"], json.loads(c["function"]["arguments"])) for c in _choice(seen)["message"]["tool_calls"]
    ]


BON = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Bon"}]


def _streamed_token_counts(raw: bytes) -> list[int]:
    """The tokens each streamed chunk with a choice carried (``return_token_ids``)."""
    chunks = [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]
    return [len(c["choices"][0].get("token_ids", [])) for c in chunks if c["choices"]]


def _document_and_variable(seen: Seen, _: LLMEngine) -> bool:
    return seen.prompt.text == "[doc]hey user: hi\nassistant:"


HONOURED = [
    Honoured("model", {}, lambda seen, _: seen.reply["model"] == MODEL),
    Honoured("prompt", {"prompt": [7, 8, 9]}, lambda seen, _: seen.prompt.token_ids == [7, 8, 9]),
    Honoured("max_tokens", {"max_tokens": 2}, lambda seen, _: seen.reply["usage"]["completion_tokens"] == 2),
    Honoured("n", {"n": 3, "temperature": 0},  # greedy samples, all equal (OpenAI and vLLM accept it)
             lambda seen, _: len({c["text"] for c in seen.reply["choices"]}) == 1 == len(seen.reply["choices"]) - 2),
    Honoured("best_of", {"best_of": 1}, lambda seen, _: len(seen.reply["choices"]) == 1),
    Honoured("echo", {"echo": True}, lambda seen, _: _choice(seen)["text"].startswith("hello")),
    Honoured("logprobs", {"logprobs": 1}, lambda seen, _: len(_choice(seen)["logprobs"]["tokens"]) == 3),
    Honoured("stream", {"stream": True}, lambda seen, _: seen.raw.endswith(b"data: [DONE]\n\n")),
    Honoured("stream_options", {"stream": True, "stream_options": {"include_usage": True}},
             lambda seen, _: b'"usage":{"prompt_tokens"' in seen.raw),
    Honoured("stop", {"stop": ["\u00ab"], "prompt": [7]},  # after [7] the script samples ids 108, 109, 110: "ª«¬"
             lambda seen, _: _choice(seen)["stop_reason"] == "\u00ab" and _choice(seen)["text"] == "\u00aa"),
    Honoured("stop_token_ids", {"stop_token_ids": [109], "prompt": [7]}, _stop_token),
    Honoured("include_stop_str_in_output", {"stop_token_ids": [109], "prompt": [7], "include_stop_str_in_output": True},
             lambda seen, engine: _choice(seen)["text"] == engine.tokenizer.decode(_scripted(engine, seen.prompt, 2))),
    _params("temperature", 0.5),
    _params("top_p", 0.5, temperature=1.0),
    _params("top_k", 5, temperature=1.0),
    _params("min_p", 0.1, temperature=1.0),
    _params("presence_penalty", 0.5),
    _params("frequency_penalty", 0.5),
    _params("repetition_penalty", 1.2),
    _params("seed", 7),
    _params("min_tokens", 2),
    _params("ignore_eos", True),
    _params("skip_special_tokens", False),
    _params("spaces_between_special_tokens", True),
    Honoured("truncate_prompt_tokens", {"prompt": list(range(10, 30)), "truncate_prompt_tokens": 4},
             lambda seen, _: seen.prompt.token_ids == [26, 27, 28, 29]),
    Honoured("truncation_side", {"prompt": [5, 6, 7], "truncate_prompt_tokens": 2, "truncation_side": "left"},
             lambda seen, _: seen.prompt.token_ids == [6, 7]),
    Honoured("truncation_side right", {"prompt": [5, 6, 7], "truncate_prompt_tokens": 2, "truncation_side": "right"},
             lambda seen, _: seen.prompt.token_ids == [5, 6]),
    Honoured("prompt_logprobs", {"prompt_logprobs": 1},
             lambda seen, _: _prompt_logprobs_follow_the_script(_choice(seen)["prompt_logprobs"], seen.prompt)),
    Honoured("add_special_tokens", {"add_special_tokens": False},  # the test tokenizer adds BOS (1) by default
             lambda seen, engine: seen.prompt.token_ids == engine.tokenizer.encode("hello", add_special_tokens=False)),
    Honoured("user", {"user": "someone"}, lambda seen, _: seen.reply["usage"]["completion_tokens"] == 3),
    Honoured("session_id", {"session_id": "s1"}, lambda seen, _: seen.reply["usage"]["completion_tokens"] == 3),
    # a chunk per two tokens of the five: the first at once, then two and two (a token a step here)
    Honoured("stream_interval", {"stream": True, "stream_interval": 2, "max_tokens": 5, "return_token_ids": True},
             lambda seen, _: _streamed_token_counts(seen.raw) == [1, 2, 2]),
    Honoured("chat stream_interval",  # logprobs: a chunk even where the tokens decode to no text yet
             {"stream": True, "stream_interval": 2, "max_tokens": 5, "return_token_ids": True, "logprobs": True},
             lambda seen, _: _streamed_token_counts(seen.raw) == [0, 1, 2, 2], chat=True),  # the role chunk first
    Honoured("request_id", {"request_id": "mine"}, lambda seen, _: seen.reply["id"] == "cmpl-mine"),
    Honoured("return_tokens_as_token_ids", {"return_tokens_as_token_ids": True, "logprobs": 1, "prompt": [7]},
             lambda seen, _: _choice(seen)["logprobs"]["tokens"] == ["token_id:108", "token_id:109", "token_id:110"]),
    Honoured("return_token_ids", {"return_token_ids": True, "prompt": [7]},
             lambda seen, _: (_choice(seen)["token_ids"], _choice(seen)["prompt_token_ids"]) == ([108, 109, 110], [7])),
    Honoured("cache_salt", {"cache_salt": "tenant-a"}, lambda seen, _: seen.prompt.cache_salt == "tenant-a"),
    Honoured("chat cache_salt", {"cache_salt": "tenant-a"}, lambda seen, _: seen.prompt.cache_salt == "tenant-a",
             chat=True),
    # after [7] the script samples 108, 109, 110: the word "«¬" (109, 110) bans 110 once 109 is out
    Honoured("bad_words", {"bad_words": ["\u00ab\u00ac"], "prompt": [7], "return_token_ids": True},
             lambda seen, _: _choice(seen)["token_ids"][:2] == [108, 109] and _choice(seen)["token_ids"][2] != 110),
    Honoured("repetition_detection", {"repetition_detection": {"max_pattern_size": 2, "min_count": 2}},
             lambda seen, _: seen.params.repetition_detection.max_pattern_size == 2),  # the loop: test_repetition.py
    Honoured("chat repetition_detection", {"repetition_detection": {"max_pattern_size": 2, "min_count": 2}},
             lambda seen, _: seen.params.repetition_detection.min_count == 2, chat=True),
    Honoured("guided_whitespace_pattern", {"guided_json": {"type": "object"}, "guided_whitespace_pattern": "[ ]?"},
             lambda seen, _: seen.params.structured_outputs.whitespace_pattern == "[ ]?"),  # masks: structured_output
    Honoured("chat bad_words", {"bad_words": ["zz"]}, lambda seen, _: seen.params.bad_words == ["zz"], chat=True),
    # the token mask: the scripted runner samples the lowest allowed id where the mask forbids the script's token
    Honoured("allowed_token_ids", {"allowed_token_ids": [41, 40], "prompt": [7]},
             lambda seen, engine: _choice(seen)["text"] == engine.tokenizer.decode([40] * 3)),
    Honoured("logit_bias", {"logit_bias": {"5": 10, "6": -100}},  # numerics: tests/test_structured_output.py
             lambda seen, _: seen.params.logit_bias == {5: 10.0, 6: -100.0}),
    Honoured("guided_regex", {"guided_regex": "[0-9]{2}", "max_tokens": 8},
             lambda seen, _: re.fullmatch("[0-9]{2}", _choice(seen)["text"]) is not None),
    Honoured("guided_choice", {"guided_choice": ["no", "yes"], "max_tokens": 8},
             lambda seen, _: _choice(seen)["text"] in ("no", "yes") and _choice(seen)["finish_reason"] == "stop"),
    Honoured("guided_grammar", {"guided_grammar": 'start: "ab" | "cd"', "max_tokens": 8},
             lambda seen, _: _choice(seen)["text"] in ("ab", "cd")),
    Honoured("guided_json", {"guided_json": {"type": "object"}, "max_tokens": 2},
             lambda seen, _: seen.params.structured_outputs.json == {"type": "object"}),
    Honoured("structural_tag", {"structural_tag": json.dumps(TAG), "max_tokens": 8},  # masks: structured_output
             lambda seen, _: seen.params.structured_outputs.structural_tag == json.dumps(TAG)),
    Honoured("chat structural_tag", {"structural_tag": TAG, "max_tokens": 8},
             lambda seen, _: seen.params.structured_outputs.structural_tag == TAG, chat=True),
    Honoured("structured_outputs", {"structured_outputs": {"choice": ["left", "right"]}, "max_tokens": 8},
             lambda seen, _: _choice(seen)["text"] in ("left", "right")),
    # beam search (the script's two candidates a step: distinct beams); tests/test_server_beam_search.py has more
    Honoured("use_beam_search", {"use_beam_search": True, "n": 2, "prompt": [7]},
             lambda seen, _: len({c["text"] for c in seen.reply["choices"]}) == 2 == len(seen.reply["choices"])),
    Honoured("length_penalty", {"use_beam_search": True, "length_penalty": 0.0, "n": 2},
             lambda seen, _: len(seen.reply["choices"]) == 2 and seen.params.logprobs == 4),
    # chat
    Honoured("messages", {}, lambda seen, _: seen.prompt.text == "user: hi\nassistant:", chat=True),
    Honoured("max_completion_tokens", {"max_completion_tokens": 2},
             lambda seen, _: seen.reply["usage"]["completion_tokens"] == 2, chat=True),
    Honoured("top_logprobs", {"logprobs": True, "top_logprobs": 2},
             lambda seen, _: len(_choice(seen)["logprobs"]["content"][0]["top_logprobs"]) == 2, chat=True),
    Honoured("add_generation_prompt", {"add_generation_prompt": False},
             lambda seen, _: seen.prompt.text == "user: hi\n", chat=True),
    Honoured("continue_final_message",
             {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Bon"}],
              "add_generation_prompt": False, "continue_final_message": True},
             lambda seen, _: seen.prompt.text.endswith("assistant: Bon"), chat=True),
    Honoured("chat_template_kwargs", {"chat_template_kwargs": {"greeting": "hey "}},
             lambda seen, _: seen.prompt.text == "hey user: hi\nassistant:", chat=True),
    Honoured("documents", {"documents": [{"title": "doc", "text": "x"}], "chat_template_kwargs": {"greeting": "hey "}},
             _document_and_variable, chat=True),
    Honoured("include_reasoning", {"include_reasoning": False},  # no reasoning parser: nothing to leave out
             lambda seen, _: seen.reply["usage"]["completion_tokens"] == 3, chat=True),
    # forced calls follow their schema (the scripted runner samples inside the mask); tests/test_tool_calls.py has more
    Honoured("tools", {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "pick"}},
                       "max_tokens": 20},
             lambda seen, _: _calls(seen) == [("pick", {"x": 1})], chat=True),
    Honoured("tool_choice", {"tools": [TOOL], "tool_choice": "none"},
             lambda seen, _: seen.params.structured_outputs is None and not _choice(seen)["message"]["tool_calls"],
             chat=True),
    Honoured("parallel_tool_calls", {"tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": False,
                                     "max_tokens": 40},
             lambda seen, _: _calls(seen) == [("pick", {"x": 1})], chat=True),
    Honoured("response_format", {"response_format": {"type": "text"}},
             lambda seen, _: seen.params.structured_outputs is None, chat=True),
    Honoured("chat response_format", {"response_format": {"type": "json_object"}},
             lambda seen, _: _choice(seen)["message"]["content"].startswith("{"), chat=True),
    Honoured("chat response_format", {"response_format": {"type": "json_schema", "json_schema": {
                 "name": "n", "schema": {"enum": ["a"]}, "strict": True}}},
             lambda seen, _: _choice(seen)["message"]["content"] == '"a"', chat=True),
    Honoured("chat prompt_logprobs", {"prompt_logprobs": 1},
             lambda seen, _: _prompt_logprobs_follow_the_script(seen.reply["prompt_logprobs"], seen.prompt), chat=True),
    Honoured("chat add_special_tokens", {"add_special_tokens": True},
             lambda seen, _: seen.prompt.token_ids[0] == 1 and seen.prompt.token_ids[1] != 1, chat=True),
    Honoured("chat truncate_prompt_tokens", {"truncate_prompt_tokens": 3},
             lambda seen, _: len(seen.prompt.token_ids) == 3, chat=True),
    Honoured("chat echo", {"echo": True, "messages": BON, "add_generation_prompt": False,
                           "continue_final_message": True},  # the reply starts with the message it continues
             lambda seen, _: _choice(seen)["message"]["content"].startswith("Bon") and seen.prompt.text.endswith("Bon"),
             chat=True),
    Honoured("chat echo streamed", {"echo": True, "messages": BON, "add_generation_prompt": False,
                                    "continue_final_message": True, "stream": True, "n": 2},
             lambda seen, _: seen.raw.count(b'"delta":{"content":"Bon"}') == 2, chat=True),
    Honoured("chat echo of a user's message", {"echo": True},  # vLLM: only a message of the reply's role
             lambda seen, _: not _choice(seen)["message"]["content"].startswith("hi"), chat=True),
    Honoured("return_prompt_text", {"return_prompt_text": True},
             lambda seen, _: seen.reply["prompt_text"] == seen.prompt.text == "user: hi\nassistant:", chat=True),
    Honoured("chat return_prompt_text streamed", {"return_prompt_text": True, "stream": True, "n": 2},
             lambda seen, _: seen.raw.count(b'"prompt_text":"user: hi\\nassistant:"') == 2, chat=True),
]  # fmt: skip

REFUSED_ELSEWHERE = {  # today's refusals outside UNSUPPORTED_FIELDS: the value that is refused, and where
    "suffix": ("def f():", False),
    "logit_bias": ({"5": 101}, False),  # out of OpenAI's [-100, 100]
    "allowed_token_ids": ([100_000], False),  # outside the vocabulary
    "response_format": ({"type": "json_schema"}, False),  # without its schema
    "guided_regex": ("(", False),  # not a regex
    "guided_json": ({"type": "nonsense"}, True),
    "guided_choice": ([], False),
    "structured_outputs": ({"regex": "a", "choice": ["a"]}, True),  # two constraints in one
    "tools": ([{"type": "function"}], True),  # no function
    "tool_choice": ({"type": "function", "function": {"name": "absent"}}, True),  # not among the tools
    "best_of": (2, False),  # above n
    "length_penalty": (0.5, True),  # without use_beam_search
    "cache_salt": ("", False),  # empty
    "bad_words": (["  "], False),  # a blank word
    "repetition_detection": ({"max_pattern_size": 4, "min_count": 1}, True),  # a "repeat" of one
    "guided_whitespace_pattern": (" ", False),  # no JSON constraint to shape
    "structural_tag": ('{"triggers": ["<f"]}', True),  # no structures
    "priority": (1, False),  # this server schedules first come, first served (test_priority_scheduling.py)
}
REFUSED_VALUES = {  # a value asking for something, per UNSUPPORTED_FIELDS entry
    "logprob_token_ids": [3], "logits_processors": ["my.Processor"],
    "guided_decoding_backend": "xgrammar", "prompt_embeds": ["AAAA"],
    "mm_processor_kwargs": {"x": 1}, "media_io_kwargs": {"image": {}},
    "kv_transfer_params": {"x": 1}, "ec_transfer_params": {"x": 1}, "vllm_xargs": {"x": 1},
    "thinking_token_budget": 10, "spaces_between_special_tokens": False,
    "chat_template": "{{ messages }}", "reasoning_effort": "low",
    "functions": [{"name": "f", "parameters": {}}], "function_call": {"name": "f"}, "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"}, "web_search_options": {}, "store": True, "verbosity": "low",
    "watermarking": True, "routed_experts_prompt_start": 2, "service_tier": "flex",
    "prediction": {"type": "content", "content": "x"}, "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "explicit"}, "moderation": {"model": "omni-moderation-latest"},
    "return_token_offsets": True, "return_mm_kwargs": False,
}  # fmt: skip


@pytest.fixture(scope="module")
def engine() -> LLMEngine:
    """A tokenizer that adds BOS (id 1) and the template above: what add_special_tokens and the template fields
    change shows in the prompt."""
    engine = fake_engine()
    engine.tokenizer.backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    engine.tokenizer.hf.chat_template = TEMPLATE
    return engine


@pytest.fixture(scope="module")
def server(engine: LLMEngine) -> Iterator[RunningServer]:
    with RunningServer(engine, load_config(None, served_model_name=MODEL)) as running:
        yield running


@pytest.fixture(autouse=True)
def engine_is_left_empty(engine: LLMEngine) -> Iterator[None]:
    yield
    assert_engine_left_empty(engine)


def _send(server: RunningServer, engine: LLMEngine, body: dict, chat: bool, monkeypatch: pytest.MonkeyPatch) -> Seen:
    added: list[tuple[Prompt, SamplingParams]] = []
    add_request = engine.add_request

    def spy(request_id: str, prompt: Prompt, params: SamplingParams, grammar: object = None, **options: Any) -> None:
        added.append((prompt, params))
        add_request(request_id, prompt, params, grammar, **options)

    monkeypatch.setattr(engine, "add_request", spy)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    reply = http("POST", f"{server.url}{path}", json_body=body)
    assert reply.status == 200, reply.body[:500]
    reply_json = {} if body.get("stream") else reply.json()
    return Seen(added[0][0], added[0][1], reply_json, reply.body)


def test_every_vllm_field_is_honoured_or_refused() -> None:
    honoured = {h.field.removeprefix("chat ") for h in HONOURED}
    refused = set(UNSUPPORTED_FIELDS) | set(REFUSED_ELSEWHERE)
    assert set(REFUSED_VALUES) == set(UNSUPPORTED_FIELDS)
    for field in VLLM_COMPLETION_FIELDS + VLLM_CHAT_FIELDS:
        assert field in honoured | refused, f"{field}: neither honoured nor refused"


def test_every_openai_create_parameter_is_a_field_or_refused() -> None:
    """The SDK's create parameters (openai's typed params): each a field of the request, honoured (or met as sent:
    ``user``, ``safety_identifier``, ``prompt_cache_key``, which ask nothing of the answer) or refused by name."""
    for params, model, refused in [
        (chat_create_params.CompletionCreateParamsBase, ChatCompletionRequest, CHAT_UNSUPPORTED_FIELDS),
        (completion_create_params.CompletionCreateParamsBase, CompletionRequest, UNSUPPORTED_FIELDS),
    ]:
        sdk = set(get_type_hints(params, include_extras=False)) | {"stream"}
        assert sdk <= set(model.model_fields) | set(refused), sorted(sdk - set(model.model_fields) - set(refused))


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize("field", ["repeat_penalty", "typical_p", "extra_body", "prompt_cache_key"])
def test_a_field_the_route_does_not_know_is_a_400_naming_it(server: RunningServer, field: str, chat: bool) -> None:
    """OpenAI's answer ("Unrecognized request argument supplied"); vLLM logs the field and answers as if it had not
    been sent, as this server did. ``prompt_cache_key`` is chat's alone (OpenAI's completions do not take it)."""
    path, body = ("/v1/chat/completions", CHAT) if chat else ("/v1/completions", COMPLETION)
    reply = http("POST", f"{server.url}{path}", json_body={**body, field: 1.5 if field != "prompt_cache_key" else "k"})
    if chat and field == "prompt_cache_key":
        assert reply.status == 200, reply.body
        return
    error = reply.json()["error"]
    assert reply.status == 400 and error["param"] == field, error
    assert error["message"].startswith(f"Unrecognized request argument supplied: {field}"), error


def test_openai_fields_that_ask_nothing_of_the_answer_are_accepted_on_chat(server: RunningServer) -> None:
    """An end-user id, a cache-routing hint (one server's prefix cache serves every request), the default tier, no
    stored completion, dashboard tags, no obfuscation: each met as sent."""
    body = {
        **CHAT, "safety_identifier": "u1", "prompt_cache_key": "k", "service_tier": "default", "store": False,
        "metadata": {"app": "litellm", "trace": "t1"}, "prompt_cache_retention": "in_memory", "stream": True,
        "stream_options": {"include_usage": True, "include_obfuscation": False},
    }  # fmt: skip
    reply = http("POST", f"{server.url}/v1/chat/completions", json_body=body)
    assert reply.status == 200 and _sse(reply.body)[-1]["usage"]["completion_tokens"] == 3, reply.body
    for tier in ("auto", "default"):
        assert (
            http("POST", f"{server.url}/v1/completions", json_body={**COMPLETION, "service_tier": tier}).status == 200
        )


@pytest.mark.parametrize(
    "metadata",
    [{f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}, {"k": 1}, ["k"]],
    ids=["17 keys", "long key", "long value", "number", "list"],
)
def test_metadata_is_held_to_openais_limits_on_both_routes(server: RunningServer, metadata: object) -> None:
    """Dashboard tags are accepted on chat and completions (as sent, nothing in the answer), within OpenAI's limits:
    16 pairs, keys of 64 characters, string values of 512."""
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)):
        assert http("POST", f"{server.url}{path}", json_body={**body, "metadata": {"k": "v"}}).status == 200
        reply = http("POST", f"{server.url}{path}", json_body={**body, "metadata": metadata})
        assert reply.status == 400 and "metadata" in reply.json()["error"]["message"], reply.body


@pytest.mark.parametrize(
    "options, words",
    [({"include_obfuscation": True}, "obfuscation padding"), ({"include_usage": True, "usage": True}, "usage")],
    ids=str,
)
def test_a_stream_option_not_honoured_is_a_400(server: RunningServer, options: dict, words: str) -> None:
    """``include_obfuscation`` (OpenAI's padding, which this server does not send) and an unknown option were
    ignored."""
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)):
        reply = http("POST", f"{server.url}{path}", json_body={**body, "stream": True, "stream_options": options})
        error = reply.json()["error"]
        assert reply.status == 400 and error["param"] == "stream_options" and words in error["message"], error


@pytest.mark.parametrize(
    "field, value", [("seed", 3), ("tools", [TOOL]), ("logit_bias", {"5": 1}), ("stop", ["x"])], ids=str
)
def test_what_a_chat_beam_search_cannot_honour_is_a_400_as_on_completions(
    server: RunningServer, field: str, value: Any
) -> None:
    """Chat's own refusal table had replaced the beam-search refusals (a validator of the same name), so a chat
    search took these and dropped them."""
    body = {**CHAT, "use_beam_search": True, field: value}
    error = http("POST", f"{server.url}/v1/chat/completions", json_body=body).json()["error"]
    assert error["param"] == field and "use_beam_search" in error["message"], error


def test_a_reply_message_passed_back_as_openai_returned_it_is_taken(
    server: RunningServer, engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenAI's assistant message as the SDK dumps it (null refusal, audio and function_call, empty annotations)
    is history as it stands; a refusal passed back without content is the assistant's text, as a refusal part."""
    reply = {"role": "assistant", "content": "Bonjour", "refusal": None, "annotations": [], "audio": None,
             "function_call": None, "tool_calls": None}  # fmt: skip
    refused = {"role": "assistant", "content": None, "refusal": "I can't."}
    messages = [CHAT["messages"][0], reply, CHAT["messages"][0], refused, CHAT["messages"][0]]
    seen = _send(server, engine, {**CHAT, "messages": messages}, True, monkeypatch)
    assert seen.prompt.text == "user: hi\nassistant: Bonjour\nuser: hi\nassistant: I can't.\nuser: hi\nassistant:"


@pytest.mark.parametrize(
    "change, words",
    [
        ({"messages": [{"role": "user", "content": "hi", "id": "m1"}]}, "messages.0.id"),
        ({"messages": [{"role": "assistant", "content": "a", "audio": {"id": "audio_1"}}]}, "text only"),
        ({"messages": [{"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}]},
         "tool_calls"),
        ({"messages": [{"role": "assistant", "content": "a", "annotations": [{"type": "url_citation"}]}]},
         "citations"),
        ({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}", "extra": 1}}]}]},
         "messages.0.tool_calls.0.function.extra"),
        ({"tools": [{**TOOL, "defer_loading": True}]}, "tool search"),
        ({"tools": [{**TOOL, "function": {**TOOL["function"], "stric": True}}]}, "tools.0.function.stric"),
        ({"tool_choice": {"type": "function", "function": {"name": "pick"}, "x": 1}, "tools": [TOOL]},
         "tool_choice.NamedToolChoice.x"),
    ],
    ids=str,
)  # fmt: skip
def test_a_key_openai_does_not_define_in_a_message_or_tool_is_a_400(
    server: RunningServer, change: dict, words: str
) -> None:
    """They were dropped (vLLM drops them too); OpenAI refuses them. Deferred tools need vLLM's tool search."""
    reply = http("POST", f"{server.url}/v1/chat/completions", json_body={**CHAT, **change})
    error = reply.json()["error"]
    assert reply.status == 400 and error["param"] == next(iter(change)) and words in error["message"], error


@pytest.mark.parametrize("effort", ["none", "minimal", "xhigh", "max"])
def test_reasoning_efforts_beyond_low_medium_high_reach_the_template(
    server: RunningServer, engine: LLMEngine, effort: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenAI's and vLLM's values (DeepSeek V4's "max" too) were a 400 from a three-value literal."""
    template = TEMPLATE + "[{{ reasoning_effort }}]"
    monkeypatch.setattr(engine.tokenizer.hf, "chat_template", template)
    seen = _send(server, engine, {**CHAT, "reasoning_effort": effort}, True, monkeypatch)
    assert seen.prompt.text.endswith(f"[{effort}]"), seen.prompt.text


@pytest.mark.parametrize(
    "bias, words",
    [
        ({"x": 1}, "logit_bias"),  # not a token id
        ({"5": "1"}, "logit_bias"),  # not a number (strict: no cast)
        ({"5": -100.5}, "[-100, 100]"),
        ({"-1": 1}, "logit_bias"),
        ({"1000000": 1}, "logit_bias"),  # past the vocabulary
    ],
    ids=str,
)
def test_a_logit_bias_that_is_not_an_id_to_a_bias_in_range_is_a_400(
    server: RunningServer, bias: dict, words: str
) -> None:
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)):
        reply = http("POST", f"{server.url}{path}", json_body={**body, "logit_bias": bias})
        error = reply.json()["error"]
        assert reply.status == 400 and error["param"] == "logit_bias" and words in error["message"], error


@pytest.mark.parametrize("case", HONOURED, ids=lambda case: case.field)
def test_honoured_field_does_what_it_asks(
    server: RunningServer, engine: LLMEngine, case: Honoured, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _send(server, engine, case.body, case.chat, monkeypatch)
    assert case.check(seen, engine), (seen.prompt, seen.params, seen.reply)


REFUSALS = [(f, v, chat) for f, v in REFUSED_VALUES.items() for chat in (False, True)] + [
    (f, v, chat) for f, (v, chat) in REFUSED_ELSEWHERE.items()
]


@pytest.mark.parametrize("field, value, chat", REFUSALS, ids=lambda x: x if isinstance(x, str) else None)
def test_refused_field_is_a_400_naming_it(server: RunningServer, field: str, value: Any, chat: bool) -> None:
    body = {**(CHAT if chat else COMPLETION), field: value}
    reply = http("POST", f"{server.url}{'/v1/chat/completions' if chat else '/v1/completions'}", json_body=body)
    error = reply.json()["error"]
    assert reply.status == 400 and error["param"] == field and field in error["message"], error


@pytest.mark.parametrize("field", sorted(UNSUPPORTED_FIELDS))
def test_a_refused_fields_nothing_value_is_accepted(server: RunningServer, field: str) -> None:
    """Clients that always send a field, at the value asking for nothing, keep working."""
    nothing = UNSUPPORTED_FIELDS[field][0][-1]
    reply = http("POST", f"{server.url}/v1/completions", json_body={**COMPLETION, field: nothing})
    assert reply.status == 200, reply.body


def test_prompt_logprobs_are_not_streamed_and_chat_template_kwargs_may_not_set_call_arguments(
    server: RunningServer,
) -> None:
    streamed = http(
        "POST", f"{server.url}/v1/completions", json_body={**COMPLETION, "stream": True, "prompt_logprobs": 1}
    )
    assert streamed.status == 400 and streamed.json()["error"]["param"] == "prompt_logprobs"
    body = {**CHAT, "chat_template_kwargs": {"tokenize": True}}
    reserved = http("POST", f"{server.url}/v1/chat/completions", json_body=body)
    assert reserved.status == 400 and reserved.json()["error"]["param"] == "chat_template_kwargs"


def test_null_for_a_field_with_a_default_means_the_default(server: RunningServer) -> None:
    """OpenAI's optional fields are nullable and clients send null for "not set"; ``n``, ``stream``, ``logprobs``,
    ``echo``, ``include_usage`` and the template switches were a 400 ("Input should be a valid integer")."""
    nulls = dict.fromkeys(["n", "logprobs", "echo", "add_generation_prompt", "continue_final_message"])
    chat = http("POST", f"{server.url}/v1/chat/completions", json_body={**CHAT, **nulls, "stream": None})
    assert chat.status == 200 and len(chat.json()["choices"]) == 1 and chat.json()["choices"][0]["logprobs"] is None
    body = {**COMPLETION, "n": None, "echo": None, "add_special_tokens": None, "stream": True}
    streamed = http(
        "POST", f"{server.url}/v1/completions", json_body={**body, "stream_options": {"include_usage": None}}
    )
    assert streamed.status == 200 and b'"usage"' not in streamed.body and streamed.body.endswith(b"data: [DONE]\n\n")
    refused = http("POST", f"{server.url}/v1/completions", json_body={**COMPLETION, "prompt": None})
    assert refused.status == 400 and refused.json()["error"]["param"] == "prompt"  # a required field stays required


def test_empty_stream_options_without_a_stream_are_taken_as_left_out(server: RunningServer) -> None:
    """vLLM refuses stream options without a stream only when the object is non-empty; an empty one (as clients
    built on a shared request type send) was a 400 here. A non-empty one asks for a stream's options: still a 400."""
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)):
        reply = http("POST", f"{server.url}{path}", json_body={**body, "stream_options": {}})
        assert reply.status == 200 and reply.json()["usage"]["completion_tokens"] == 3, reply.body
        refused = http("POST", f"{server.url}{path}", json_body={**body, "stream_options": {"include_usage": False}})
        error = refused.json()["error"]
        assert refused.status == 400 and error["param"] == "stream_options", error
        assert "only allowed when stream is true" in error["message"], error


@pytest.mark.parametrize("variables", [{"tools": 5}, {"documents": 5}, {"documents": [5]}], ids=str)
def test_template_variables_of_the_wrong_type_are_a_400(server: RunningServer, variables: dict) -> None:
    """transformers raises TypeError for tools or documents that are not lists of mappings: it was a 500."""
    body = {**CHAT, "chat_template_kwargs": variables}
    for path in ("/v1/chat/completions", "/tokenize"):
        reply = http("POST", f"{server.url}{path}", json_body=body)
        assert reply.status == 400 and reply.json()["error"]["param"] == "messages", reply.body


def test_usage_in_every_chunk_without_the_usage_chunk_is_refused_not_ignored(server: RunningServer) -> None:
    """vLLM's ``continuous_usage_stats`` applies with ``include_usage`` alone (vLLM ignores it otherwise)."""
    options = {"continuous_usage_stats": True}
    reply = http(
        "POST", f"{server.url}/v1/chat/completions", json_body={**CHAT, "stream": True, "stream_options": options}
    )
    error = reply.json()["error"]
    assert reply.status == 400 and error["param"] == "stream_options" and "continuous_usage_stats" in error["message"]


def _sse(body: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: {")]


@pytest.mark.parametrize("ended_by", ["stop", "stop_token_ids", "length"])
def test_a_streamed_chat_choice_names_its_stop_reason_as_the_whole_reply_does(
    server: RunningServer, engine: LLMEngine, ended_by: str
) -> None:
    """vLLM sends ``stop_reason`` in a streamed choice's finishing chunk (the chunks before leave it out); the
    stream had none, though the unstreamed reply named the stop string or token id that ended it."""
    url = f"{server.url}/v1/chat/completions"
    chat = {**CHAT, "add_special_tokens": True}  # BOS first: the script's tokens are characters of the tokenizer's
    second = http("POST", url, json_body={**chat, "return_token_ids": True}).json()["choices"][0]["token_ids"][1]
    text = engine.tokenizer.decode([second])
    asked, reason = {"stop": ({"stop": text}, text), "stop_token_ids": ({"stop_token_ids": [second]}, second)}.get(
        ended_by, ({}, None)
    )
    body = {**chat, **asked}
    whole = http("POST", url, json_body=body).json()["choices"][0]
    *before, last = [chunk["choices"][0] for chunk in _sse(http("POST", url, json_body={**body, "stream": True}).body)]
    assert text and (whole["finish_reason"], whole["stop_reason"]) == ("length" if reason is None else "stop", reason)
    assert (last["finish_reason"], last["stop_reason"]) == (whole["finish_reason"], reason)
    assert not any("stop_reason" in chunk for chunk in before)


def test_a_prompt_of_token_ids_keeps_its_special_tokens_in_echo_and_detokenize(server: RunningServer) -> None:
    """Echo of ``[1, 7]`` (BOS, "#") gave "#" while its logprobs named "<s>" and "#" at offsets 0 and 3, past the
    text; the same prompt as text echoed "<s>#". ``/detokenize`` dropped them too, so it did not invert
    ``/tokenize`` (vLLM's keeps them)."""
    url = f"{server.url}/v1/completions"
    echo = {**COMPLETION, "echo": True, "logprobs": 0, "max_tokens": 1, "add_special_tokens": False}  # no 2nd BOS
    replies = [http("POST", url, json_body={**echo, "prompt": prompt}) for prompt in ([1, 7], "<s>#")]
    by_ids, by_text = (reply.json()["choices"][0] for reply in replies)
    assert by_ids["text"] == by_text["text"] and by_ids["text"].startswith("<s>#")
    assert by_ids["logprobs"] == by_text["logprobs"] and by_ids["logprobs"]["text_offset"][:3] == [0, 3, 4]
    truncated = {**COMPLETION, "prompt": [1, 7, 1, 7], "truncate_prompt_tokens": 2, "echo": True}
    assert http("POST", url, json_body=truncated).json()["choices"][0]["text"].startswith("<s>#")
    tokens = http("POST", f"{server.url}/tokenize", json_body={"prompt": "#"}).json()["tokens"]
    assert http("POST", f"{server.url}/detokenize", json_body={"tokens": tokens}).json()["prompt"] == "<s>#"


DEEP_JSON = "[" * 3000 + "]" * 3000  # past the standard library parser's recursion limit, inside max_prompt_chars


@pytest.mark.parametrize(
    ("field", "value"),
    [("guided_json", DEEP_JSON), ("structural_tag", DEEP_JSON), ("structured_outputs", {"json": DEEP_JSON})],
)
def test_a_schema_sent_as_json_text_nested_too_deep_is_a_400(server: RunningServer, field: str, value: Any) -> None:
    """JSON text inside a request parses as the body does (its nesting limit): json.loads had raised RecursionError
    past ~1,000 levels, a 500."""
    reply = http("POST", f"{server.url}/v1/completions", json_body={**COMPLETION, field: value})
    error = reply.json()["error"]
    assert reply.status == 400 and error["param"] == field and "recursion limit" in error["message"], reply.body


def test_a_past_calls_arguments_nested_too_deep_are_a_400(server: RunningServer) -> None:
    """The chat template reads a past call's arguments parsed: json.loads raised RecursionError past ~1,000
    levels, a 500 (on the Responses API too, whose function_call items become those calls)."""
    arguments = "[" * 1500 + "]" * 1500  # inside the test model's max_prompt_chars
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c", "content": "x"},
    ]
    items = [
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": arguments},
        {"type": "function_call_output", "call_id": "c", "output": "x"},
    ]
    for path, body, param in [
        ("/v1/chat/completions", {**CHAT, "messages": messages}, "messages"),
        ("/v1/responses", {"model": MODEL, "input": items, "max_output_tokens": 3}, "input"),
    ]:
        reply = http("POST", f"{server.url}{path}", json_body=body)
        error = reply.json()["error"]
        assert reply.status == 400 and error["param"] == param and "are not JSON" in error["message"], reply.body


@pytest.mark.parametrize("chat", [False, True])
def test_the_model_s_generation_config_fills_only_the_fields_a_request_leaves_unset(
    server: RunningServer, engine: LLMEngine, chat: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "repetition_penalty": 1.1, "max_tokens": 3}
    monkeypatch.setattr(engine, "sampling_defaults", defaults)
    body = {"model": MODEL, "temperature": 0.2}
    body |= {"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"}
    params = _send(server, engine, body, chat, monkeypatch).params
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty) == (0.2, 0.95, 20, 1.1)
    # a chat request without max_tokens takes the model's max_new_tokens; a completion keeps OpenAI's 16
    assert params.max_tokens == (3 if chat else 16)
    explicit = _send(server, engine, {**body, "max_tokens": 5}, chat, monkeypatch).params
    assert explicit.max_tokens == 5


def test_a_default_max_tokens_past_the_context_is_capped_by_the_prompt(
    server: RunningServer, engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """generation_config.json's max_new_tokens larger than the context (vLLM caps it in get_max_tokens): a chat
    request that leaves max_tokens unset generates up to the room its prompt leaves; one that asks for more is still
    a 400. (A completion's unset max_tokens is OpenAI's 16, never the model's.)"""
    monkeypatch.setattr(engine, "sampling_defaults", {"max_tokens": 100_000})
    body = {"model": MODEL, "max_tokens": None, "messages": [{"role": "user", "content": "hi"}]}
    seen = _send(server, engine, body, True, monkeypatch)
    assert seen.params.max_tokens == engine.inputs.max_model_len - len(seen.prompt.token_ids)
    refused = http("POST", f"{server.url}/v1/chat/completions", json_body={**body, "max_tokens": 100_000})
    assert refused.status == 400 and "maximum context length" in refused.json()["error"]["message"]


def test_a_requests_chat_template_renders_only_where_the_server_trusts_it(
    server: RunningServer, engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's --trust-request-chat-template: off, a request's template is a 400 naming it (chat and /tokenize);
    on, it renders the messages in place of the model's."""
    template = "{% for m in messages %}<<{{ m.content }}>>{% endfor %}"
    messages = [{"role": "user", "content": "hi"}]
    refused = http("POST", f"{server.url}/tokenize", json_body={"model": MODEL, "messages": messages,
                                                                "chat_template": template})  # fmt: skip
    assert refused.status == 400 and refused.json()["error"]["param"] == "chat_template"
    assert "--trust-request-chat-template" in refused.json()["error"]["message"]
    config = load_config(None, served_model_name=MODEL, trust_request_chat_template=True)
    with RunningServer(engine, config) as trusting:
        seen = _send(trusting, engine, {**CHAT, "chat_template": template}, True, monkeypatch)
        assert seen.prompt.text == "<<hi>>"
        counted = http("POST", f"{trusting.url}/tokenize", json_body={"model": MODEL, "messages": messages,
                                                                      "chat_template": template})  # fmt: skip
        assert counted.json()["tokens"] == engine.tokenizer.encode("<<hi>>", add_special_tokens=False)


def test_default_chat_template_kwargs_render_unless_the_request_sets_them(
    engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's --default-chat-template-kwargs: the template's variables for chat and /tokenize alike; a request's own
    chat_template_kwargs win key by key."""
    monkeypatch.setattr(engine.inputs, "default_template_kwargs", {"greeting": "hey "})  # as built from the key
    with RunningServer(engine, load_config(None, served_model_name=MODEL)) as serving:
        assert _send(serving, engine, CHAT, True, monkeypatch).prompt.text == "hey user: hi\nassistant:"
        own = {**CHAT, "chat_template_kwargs": {"greeting": "yo "}}
        assert _send(serving, engine, own, True, monkeypatch).prompt.text == "yo user: hi\nassistant:"
        counted = http("POST", f"{serving.url}/tokenize", json_body={"model": MODEL, "messages": CHAT["messages"]})
        assert counted.json()["tokens"] == engine.tokenizer.encode("hey user: hi\nassistant:", add_special_tokens=False)


@pytest.mark.parametrize(
    "switches", [{"disable_any_whitespace": "false"}, {"disable_any_whitespace": 0}, {"json_object": "yes"}], ids=str
)
def test_a_structured_outputs_switch_that_is_not_a_boolean_is_a_400(server: RunningServer, switches: dict) -> None:
    """They were read by their truth value: "false" asked for whitespace and got compact JSON, 200."""
    body = {**COMPLETION, "structured_outputs": {"json": {"type": "object"}, **switches}}
    if "json_object" in switches:
        body["structured_outputs"] = switches
    reply = http("POST", f"{server.url}/v1/completions", json_body=body)
    error = reply.json()["error"]
    assert reply.status == 400 and error["param"] == "structured_outputs", error
    assert f"structured_outputs.{next(iter(switches))} must be true or false" in error["message"], error


def test_a_null_structured_outputs_switch_is_its_default(
    server: RunningServer, engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """null read as false, the opposite of the default: JSON with free whitespace."""
    body = {**COMPLETION, "structured_outputs": {"json": {"type": "object"}, "disable_any_whitespace": None}}
    seen = _send(server, engine, body, False, monkeypatch)
    assert seen.params.structured_outputs.disable_any_whitespace is True


def test_documents_a_template_does_not_read_are_a_400_not_dropped(
    server: RunningServer, engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A RAG request's documents reached a template without a word about them and the answer came without them, a
    200 (as reasoning_effort is refused there); the template that reads them is the one the render uses: a trusted
    request's own."""
    documents = [{"title": "doc", "text": "x"}]
    monkeypatch.setattr(engine.tokenizer.hf, "chat_template", "{% for m in messages %}{{ m.content }}{% endfor %}")
    for path in ("/v1/chat/completions", "/tokenize"):
        reply = http("POST", f"{server.url}{path}", json_body={**CHAT, "documents": documents})
        error = reply.json()["error"]
        assert reply.status == 400 and error["param"] == "documents" and "does not read documents" in error["message"]
    assert http("POST", f"{server.url}/v1/chat/completions", json_body={**CHAT, "documents": []}).status == 200
    config = load_config(None, served_model_name=MODEL, trust_request_chat_template=True)
    with RunningServer(engine, config) as trusting:
        own = {**CHAT, "documents": documents, "chat_template": TEMPLATE}
        assert _send(trusting, engine, own, True, monkeypatch).prompt.text == "[doc]user: hi\nassistant:"


def test_tokenize_renders_reasoning_effort_as_chat_does_and_refuses_template_fields_beside_a_prompt(
    server: RunningServer, engine: LLMEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/tokenize of messages with reasoning_effort counted them without it, a 200 (chat renders it, or refuses it
    where the template does not read it); a prompt is encoded as it is, so a template field beside it was dropped."""
    monkeypatch.setattr(engine.tokenizer.hf, "chat_template", "{{ reasoning_effort }}:{{ messages[0].content }}")
    counted = http("POST", f"{server.url}/tokenize", json_body={**CHAT, "reasoning_effort": "high"})
    assert counted.json()["tokens"] == engine.tokenizer.encode("high:hi", add_special_tokens=False)
    monkeypatch.setattr(engine.tokenizer.hf, "chat_template", TEMPLATE)
    refused = http("POST", f"{server.url}/tokenize", json_body={**CHAT, "reasoning_effort": "high"})
    assert refused.status == 400 and refused.json()["error"]["param"] == "reasoning_effort", refused.body
    for field, value in [("reasoning_effort", "low"), ("documents", [{"title": "d"}]), ("tools", [TOOL])]:
        reply = http("POST", f"{server.url}/tokenize", json_body={"model": MODEL, "prompt": "hi", field: value})
        error = reply.json()["error"]
        assert reply.status == 400 and error["param"] == field and "comes with messages" in error["message"], error
    plain = {"model": MODEL, "prompt": "hi", "add_generation_prompt": True, "documents": None}  # their defaults
    assert http("POST", f"{server.url}/tokenize", json_body=plain).status == 200

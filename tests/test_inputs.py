"""The input door: every front end's prompts are encoded and held to the engine's limits here."""

from __future__ import annotations

from pathlib import Path

import pytest

from jllm.errors import ContextLengthError, InputError
from jllm.inputs import InputProcessor, Prompt, check_token_ids
from jllm.sampling import SamplingParams
from jllm.tokenizer import Tokenizer

TINY = Path(__file__).parents[1] / "configs" / "models" / "tiny-llama"  # a 512-token BPE with a chat template


@pytest.fixture(scope="module")
def inputs() -> InputProcessor:
    return InputProcessor(Tokenizer.from_pretrained(TINY), vocab_size=512, max_model_len=64)


def test_text_is_encoded_and_keeps_its_text(inputs: InputProcessor) -> None:
    prompt = inputs.process("hello world", SamplingParams(max_tokens=4))
    assert prompt == Prompt(inputs.tokenizer.encode("hello world"), "hello world")
    assert prompt.token_ids


def test_token_ids_are_checked_and_decoded_only_when_asked(inputs: InputProcessor) -> None:
    ids = inputs.tokenizer.encode("hello", add_special_tokens=False)
    assert inputs.encode(ids) == Prompt(ids, None)
    assert inputs.encode(ids, with_text=True) == Prompt(ids, "hello")
    for bad in ([5, 512], [-1], [2**70]):
        with pytest.raises(InputError, match=r"outside the vocabulary \[0, 512\)") as caught:
            inputs.encode(bad)
        assert caught.value.param == "prompt"


def test_an_empty_prompt_is_refused(inputs: InputProcessor) -> None:
    for empty in ("", []):
        with pytest.raises(InputError, match="prompt is empty") as caught:
            inputs.process(empty, SamplingParams())
        assert caught.value.param == "prompt"


def test_text_holding_a_lone_surrogate_is_refused_naming_it(inputs: InputProcessor) -> None:
    """json.loads and YAML read "\\udcff" as one, Python's argv and stdin hold a byte that is not UTF-8 so."""
    with pytest.raises(InputError, match=r"prompt holds a lone surrogate '\\udcff' at character 1") as caught:
        inputs.process("a\udcff", SamplingParams())
    assert caught.value.param == "prompt"
    with pytest.raises(InputError, match="messages holds a lone surrogate") as caught:
        inputs.render_chat([{"role": "user", "content": "\ud800"}])
    assert caught.value.param == "messages"


def test_prompt_and_max_tokens_must_fit_the_context(inputs: InputProcessor) -> None:
    inputs.check(Prompt([1] * 60), SamplingParams(max_tokens=4))  # exactly 64
    with pytest.raises(ContextLengthError, match="60 in the prompt, 5 for the completion"):
        inputs.check(Prompt([1] * 60), SamplingParams(max_tokens=5))
    with pytest.raises(ContextLengthError, match="maximum context length is 64 tokens") as caught:
        inputs.check(Prompt([1] * 64), SamplingParams(max_tokens=None), param="messages")
    assert caught.value.param == "messages"
    inputs.check(Prompt([1] * 63), SamplingParams(max_tokens=None))  # None: up to the context, one at least


def test_the_offline_door_caps_max_tokens_by_the_room_the_prompt_leaves(inputs: InputProcessor) -> None:
    """vLLM's offline LLM runs such a request until the context is full; its server (``process``) refuses it."""
    prompt, params = inputs.process_offline([1] * 60, SamplingParams(max_tokens=100, min_tokens=10))
    assert (len(prompt.token_ids), params.max_tokens, params.min_tokens) == (60, 4, 4)
    asked = SamplingParams(max_tokens=4, min_tokens=2)
    assert inputs.process_offline([1] * 60, asked)[1] is asked  # room enough: taken as asked
    with pytest.raises(ContextLengthError, match="60 in the prompt, 100 for the completion"):
        inputs.process([1] * 60, SamplingParams(max_tokens=100))
    with pytest.raises(ContextLengthError, match="64 in the prompt"):  # a prompt leaving no room: still refused
        inputs.process_offline([1] * 64, SamplingParams(max_tokens=100))


def test_allowed_token_ids_that_are_all_banned_are_refused(inputs: InputProcessor) -> None:
    """One-token bad words are banned at every step, EOS (2) and stop ids before min_tokens: with nothing else
    allowed the sampler would emit token 0."""
    [a] = inputs.tokenizer.encode("a", add_special_tokens=False)
    for allowed, stops, bad in (([2], [], None), ([2, 9], [9], None), ([2, a], [], ["a"])):
        params = SamplingParams(allowed_token_ids=allowed, stop_token_ids=stops, bad_words=bad, min_tokens=3)
        with pytest.raises(InputError, match=r"are all EOS, stop_token_ids or bad_words, which min_tokens=3 ban"):
            inputs.check(Prompt([5]), params)
    with pytest.raises(InputError, match=rf"allowed_token_ids \[{a}\] are all one-token bad_words") as caught:
        inputs.check(Prompt([5]), SamplingParams(allowed_token_ids=[a], bad_words=["a"]))
    assert caught.value.param == "allowed_token_ids"
    inputs.check(Prompt([5]), SamplingParams(allowed_token_ids=[2]))  # EOS alone, no min_tokens: it ends at once
    inputs.check(Prompt([5]), SamplingParams(allowed_token_ids=[2, 9], min_tokens=3))
    inputs.check(Prompt([5]), SamplingParams(allowed_token_ids=[2, a], bad_words=["a"]))


def test_chat_renders_through_the_template(inputs: InputProcessor) -> None:
    messages = [{"role": "user", "content": "hi"}]
    prompt = inputs.render_chat(messages)
    assert prompt.text == inputs.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.token_ids == inputs.tokenizer.encode(prompt.text, add_special_tokens=False)
    open_ended = inputs.render_chat(messages, add_generation_prompt=False, continue_final_message=True)
    assert open_ended.text is not None and open_ended.text.rstrip().endswith("hi")


def test_a_template_that_rejects_the_messages_is_an_input_error(inputs: InputProcessor) -> None:
    with pytest.raises(InputError, match="chat template rejected") as caught:  # nothing to continue
        inputs.render_chat([], add_generation_prompt=False, continue_final_message=True)
    assert caught.value.param == "messages"


def test_decode_checks_the_ids_first(inputs: InputProcessor) -> None:
    assert inputs.decode(inputs.tokenizer.encode("hello", add_special_tokens=False)) == "hello"
    with pytest.raises(InputError, match="tokens: token id -1") as caught:
        inputs.decode([-1])
    assert caught.value.param == "tokens"
    check_token_ids([0, 511], 512, "prompt")


def test_truncate_prompt_tokens_keeps_the_last_tokens(inputs: InputProcessor) -> None:
    ids = list(range(10, 40))
    kept = inputs.process(ids, SamplingParams(max_tokens=4, truncate_prompt_tokens=5), with_text=True)
    assert kept == Prompt(ids[-5:], inputs.tokenizer.decode(ids[-5:]))
    assert inputs.process(ids, SamplingParams(max_tokens=4, truncate_prompt_tokens=50)).token_ids == ids
    text = "hello world, " * 10  # 130 tokens: over the context of 64 until truncated to it
    truncated = inputs.process(text, SamplingParams(max_tokens=None, truncate_prompt_tokens=63))
    assert truncated.token_ids == inputs.tokenizer.encode(text)[-63:]
    assert truncated.text == inputs.tokenizer.decode(truncated.token_ids)
    with pytest.raises(ContextLengthError):  # -1 keeps the context's worth: no room left for the completion
        inputs.process(text, SamplingParams(max_tokens=None, truncate_prompt_tokens=-1))
    # -1 beside max_tokens keeps what the context leaves for the prompt (vLLM's max_input_tokens): it was the whole
    # context, so the request was refused for want of room
    kept = inputs.process(text, SamplingParams(max_tokens=4, truncate_prompt_tokens=-1))
    assert kept.token_ids == inputs.tokenizer.encode(text)[-60:]
    with pytest.raises(ContextLengthError):  # a max_tokens of the whole context leaves no prompt to keep
        inputs.process(text, SamplingParams(max_tokens=64, truncate_prompt_tokens=-1))
    for keep in (65, 10**9):  # more than the context of 64 could ever keep: refused as vLLM refuses it
        with pytest.raises(InputError, match=rf"truncate_prompt_tokens={keep} is greater than .* max_model_len=64"):
            inputs.process(ids, SamplingParams(max_tokens=4, truncate_prompt_tokens=keep))
        with pytest.raises(InputError, match="truncate_prompt_tokens") as caught:
            inputs.process_whole(ids, truncate_prompt_tokens=keep)
        assert caught.value.param == "truncate_prompt_tokens"


def test_truncation_side_right_keeps_the_first_tokens(inputs: InputProcessor) -> None:
    ids = list(range(10, 40))
    right = SamplingParams(max_tokens=4, truncate_prompt_tokens=5, truncation_side="right")
    assert inputs.process(ids, right, with_text=True) == Prompt(ids[:5], inputs.tokenizer.decode(ids[:5]))
    whole = inputs.process_whole(ids, truncate_prompt_tokens=3, truncation_side="right")
    assert whole.token_ids == ids[:3]
    with pytest.raises(ValueError, match="truncation_side must be 'left' or 'right', got 'middle'"):
        SamplingParams(truncation_side="middle")
    with pytest.raises(InputError, match="truncation_side must be 'left' or 'right'"):
        inputs.process_whole(ids, truncate_prompt_tokens=3, truncation_side="up")


def test_add_special_tokens_false_leaves_out_what_the_tokenizer_adds() -> None:
    from tokenizers.processors import TemplateProcessing

    tokenizer = Tokenizer.from_pretrained(TINY)
    tokenizer.backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    inputs = InputProcessor(tokenizer, vocab_size=512, max_model_len=64)
    plain = tokenizer.encode("hi", add_special_tokens=False)
    assert inputs.process("hi", SamplingParams()).token_ids == [1, *plain]
    assert inputs.process("hi", SamplingParams(), add_special_tokens=False).token_ids == plain
    chat = [{"role": "user", "content": "hi"}]
    assert inputs.render_chat(chat, add_special_tokens=True).token_ids == [1, *inputs.render_chat(chat).token_ids]


def test_vllm_prompt_dicts_are_read_and_bad_ones_named(inputs: InputProcessor) -> None:
    ids = inputs.tokenizer.encode("hello")
    assert inputs.encode({"prompt": "hello"}) == inputs.encode("hello")
    assert inputs.encode({"prompt_token_ids": ids}) == Prompt(ids)
    salted = inputs.truncate(inputs.encode({"prompt": "hello", "cache_salt": "s"}), 1)  # the salt stays
    assert (salted.token_ids, salted.cache_salt) == (ids[-1:], "s")
    # vLLM's TokensPrompt with its text: the ids run, the text is the prompt's (it had been refused); vLLM's
    # multimodal keys asking for nothing are taken
    assert inputs.encode({"prompt_token_ids": ids, "prompt": "hi!"}) == Prompt(ids, "hi!")
    assert inputs.encode({"prompt": "hello", "multi_modal_data": None, "mm_processor_kwargs": None}) == Prompt(
        ids, "hello"
    )
    bad = [
        ({}, r"give 'prompt' or 'prompt_token_ids', got \[\]"),
        ({"prompt_token_ids": [1], "prompt": 5}, "'prompt' must be a string"),
        ({"prompt": "a", "multi_modal_data": {"image": 1}}, "'multi_modal_data' is not supported"),
        ({"prompt": "a", "multi_modal_data": {}}, "'multi_modal_data' is not supported"),
        ({"prompt": 5}, "'prompt' must be a string"),
        ({"prompt_token_ids": "abc"}, "'prompt_token_ids' must be a list"),
        ({"prompt_token_ids": [1, "2"]}, "token ids must be integers"),
        ({"prompt": "a", "cache_salt": ""}, "cache_salt must be a non-empty string"),
        (3.5, "must be a string, a list of token ids, or a dict"),
    ]
    for prompt, message in bad:
        with pytest.raises(InputError, match=message):
            inputs.encode(prompt, param="prompts[3]")


def test_chat_content_parts_template_variables_and_documents(inputs: InputProcessor) -> None:
    as_parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]}]
    assert inputs.render_chat(as_parts) == inputs.render_chat([{"role": "user", "content": "hi\nthere"}])  # vLLM's
    with pytest.raises(InputError, match=r"messages\[0\].content: only text parts"):
        inputs.render_chat([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}])
    tokenizer = Tokenizer.from_pretrained(TINY)
    tokenizer.hf.chat_template = (
        "{{ greeting }}{% for d in documents %}[{{ d.title }}]{% endfor %}{{ messages[0].content }}"
    )
    custom = InputProcessor(tokenizer, vocab_size=512, max_model_len=64)
    prompt = custom.render_chat(
        [{"role": "user", "content": "hi"}], chat_template_kwargs={"greeting": "hey "}, documents=[{"title": "doc"}]
    )
    assert prompt.text == "hey [doc]hi"
    hi = [{"role": "user", "content": "hi"}]
    from_kwargs = inputs.render_chat(hi, chat_template_kwargs={"add_generation_prompt": False})
    assert from_kwargs == inputs.render_chat(hi, add_generation_prompt=False)  # the switch left out: the kwargs'
    # given, the switch wins over the same key in chat_template_kwargs, as vLLM merges them (they had won)
    given = inputs.render_chat(hi, add_generation_prompt=True, chat_template_kwargs={"add_generation_prompt": False})
    assert given == inputs.render_chat(hi) != from_kwargs
    documents = {"documents": [{"title": "kwargs"}]}
    assert custom.render_chat(hi, chat_template_kwargs=documents, documents=[{"title": "doc"}]).text == "[doc]hi"
    assert custom.render_chat(hi, chat_template_kwargs=documents).text == "[kwargs]hi"
    with pytest.raises(InputError, match="chat_template_kwargs may not set 'tokenize'") as caught:
        inputs.render_chat([{"role": "user", "content": "hi"}], chat_template_kwargs={"tokenize": True})
    assert caught.value.param == "chat_template_kwargs"


def test_tool_call_arguments_reach_the_template_as_a_mapping(inputs: InputProcessor) -> None:
    """OpenAI's messages carry a call's arguments as JSON text; templates ``| tojson`` them (Llama 3.1, Qwen2.5), which
    quoted the text a second time offline (the chat route parsed them already)."""
    template = (
        "{% for m in messages %}{% for c in m.tool_calls or [] %}{{ c.function.name }}"
        "({{ c.function.arguments | tojson }}){% endfor %}{% endfor %}"
    )

    def call(arguments: object) -> dict:
        return {"id": "1", "type": "function", "function": {"name": "f", "arguments": arguments}}

    def rendered(*calls: dict) -> str | None:
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": calls}]
        return inputs.render_chat(list(messages), chat_template=template).text

    assert rendered(call('{"city": "Paris"}'), call({"n": 1}), call("")) == 'f({"city": "Paris"})f({"n": 1})f({})'
    with pytest.raises(InputError, match=r"^messages\[1\].tool_calls: arguments '\{city' are not JSON") as caught:
        rendered(call("{city"))
    assert caught.value.param == "messages"
    with pytest.raises(InputError, match=r"^messages\[1\].tool_calls must be a list of"):
        rendered({"name": "f"})

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


def test_prompt_and_max_tokens_must_fit_the_context(inputs: InputProcessor) -> None:
    inputs.check(Prompt([1] * 60), SamplingParams(max_tokens=4))  # exactly 64
    with pytest.raises(ContextLengthError, match="60 in the prompt, 5 for the completion"):
        inputs.check(Prompt([1] * 60), SamplingParams(max_tokens=5))
    with pytest.raises(ContextLengthError, match="maximum context length is 64 tokens") as caught:
        inputs.check(Prompt([1] * 64), SamplingParams(max_tokens=None), param="messages")
    assert caught.value.param == "messages"
    inputs.check(Prompt([1] * 63), SamplingParams(max_tokens=None))  # None: up to the context, one at least


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

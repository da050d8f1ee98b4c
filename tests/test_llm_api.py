"""The offline API's vLLM surface over the scripted engine: prompt forms, chat options, outputs and the tokenizer.

``LLM`` is built around a scripted engine (no model), so only the API's own handling is under test here; the
real-model runs are in tests/test_engine.py.
"""

from __future__ import annotations

import inspect
import itertools
from typing import Any

import pytest
from fake_runner import counting_script, fake_engine
from tokenizers.processors import TemplateProcessing

from jllm import StructuredOutputsParams
from jllm.beam_search import BeamSearchParams
from jllm.config import EngineConfig
from jllm.errors import ContextLengthError, InputError
from jllm.llm import LLM
from jllm.lora.request import LoRARequest
from jllm.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=3)


@pytest.fixture
def llm() -> LLM:
    llm = LLM.__new__(LLM)  # the constructor builds a real engine; the scripted one stands in
    llm.engine = fake_engine()
    llm._ids = itertools.count()
    return llm


def scripted(prompt: list[int], count: int) -> list[int]:
    return [counting_script(prompt, len(prompt) + k) for k in range(count)]


def test_generate_takes_every_vllm_prompt_form(llm: LLM) -> None:
    ids = llm.engine.inputs.encode("hello").token_ids
    forms = ["hello", ids, {"prompt": "hello"}, {"prompt_token_ids": ids}]
    outputs = llm.generate(forms, GREEDY, use_tqdm=False)
    assert [o.prompt_token_ids for o in outputs] == [ids] * 4
    assert all(o.outputs[0].token_ids == scripted(ids, 3) for o in outputs)
    assert [o.prompt for o in outputs] == ["hello", None, "hello", None]
    for single in ("hello", ids, {"prompt": "hello"}):  # one prompt, not a list of them
        [output] = llm.generate(single, GREEDY, use_tqdm=False)
        assert output.prompt_token_ids == ids


@pytest.mark.parametrize(
    "bad, error, message",
    [
        ({"prompt": "a", "multi_modal_data": {}}, InputError, r"^prompts\[1\]: 'multi_modal_data' is not supported"),
        ({"prompt_token_ids": [1, 10**6]}, InputError, r"^prompts\[1\]: token id 1000000 is outside the vocabulary"),
        (None, InputError, r"^prompts\[1\] must be a string, a list of token ids, or a dict"),
        ("", InputError, r"^prompts\[1\] is empty"),
        ([5] * 200, ContextLengthError, r"^prompts\[1\]: This model's maximum context length is 128"),
    ],
)
def test_a_bad_prompt_is_named_by_its_index_and_nothing_runs(llm: LLM, bad: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        llm.generate(["fine", bad], GREEDY, use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()


def test_max_tokens_past_the_context_runs_until_the_context_is_full(llm: LLM) -> None:
    """vLLM's offline LLM.generate lets such a request run and stops it at max_model_len (finish_reason "length");
    jllm had raised a context-length error for the whole batch."""
    ids = llm.engine.inputs.encode("hello").token_ids
    room = llm.engine.inputs.max_model_len - len(ids)
    params = [SamplingParams(temperature=0, max_tokens=10_000, min_tokens=500), GREEDY]
    long, short = llm.generate(["hello", "hello"], params, use_tqdm=False)
    assert long.outputs[0].token_ids == scripted(ids, room) and long.outputs[0].finish_reason == "length"
    assert short.outputs[0].token_ids == scripted(ids, 3)


def test_a_prompt_as_long_as_the_context_is_refused_and_one_token_shorter_gets_one_token(llm: LLM) -> None:
    """vLLM V1's input processor refuses a generation prompt of exactly max_model_len tokens ("plus the number of
    requested output tokens (at least 1) is longer than the maximum model length"); one token shorter, the request
    runs and stops at max_model_len after one token (finish_reason "length")."""
    full = [5] * llm.engine.inputs.max_model_len
    with pytest.raises(ContextLengthError, match="maximum context length"):
        llm.generate([{"prompt_token_ids": full}], GREEDY, use_tqdm=False)
    [out] = llm.generate([{"prompt_token_ids": full[1:]}], GREEDY, use_tqdm=False)
    assert (len(out.outputs[0].token_ids), out.outputs[0].finish_reason) == (1, "length")
    assert not llm.engine.has_unfinished_requests()


def test_a_prompt_the_kv_pool_cannot_hold_raises_before_any_runs() -> None:
    """The scheduler rejects such a request (it could never be admitted); offline that had come back as an empty
    output finished by "abort", with only a log line, and the other prompts of the batch ran."""
    llm = LLM.__new__(LLM)
    llm.engine = fake_engine(num_pages=4, page_size=4)  # 3 usable pages: 12 tokens
    llm._ids = itertools.count()
    with pytest.raises(
        InputError, match=r"^prompts\[1\]: prompt of 10 tokens plus max_tokens=3 needs KV cache for 13 "
    ) as e:
        llm.generate([[5] * 4, [5] * 10], GREEDY, use_tqdm=False)
    assert e.value.param == "prompts[1]" and "the pool holds 3 pages (12 tokens)" in str(e.value)
    assert not llm.engine.has_unfinished_requests()
    [output] = llm.generate([[5] * 4], GREEDY, use_tqdm=False)
    assert output.outputs[0].finish_reason == "length" and len(output.outputs[0].token_ids) == 3


def test_chat_takes_vllm_s_arguments_in_vllm_s_order(llm: LLM) -> None:
    """vLLM's LLM.chat(messages, sampling_params, use_tqdm, lora_request, chat_template, ...): a positional call had
    bound lora_request to chat_template; the content format and mm_processor_kwargs had been a TypeError. The content
    format is vLLM's: "openai", and "auto" for a template that loops over a message's parts, give it the parts."""
    vllm_order = [
        "messages", "sampling_params", "use_tqdm", "lora_request", "chat_template", "chat_template_content_format",
        "add_generation_prompt", "continue_final_message", "tools", "chat_template_kwargs", "tokenization_kwargs",
        "mm_processor_kwargs",
    ]  # fmt: skip
    assert list(inspect.signature(LLM.chat).parameters)[1:] == vllm_order
    hi = [{"role": "user", "content": "hi"}]
    [plain] = llm.chat(hi, GREEDY, False, None)
    for taken in ("auto", "string"):
        [out] = llm.chat(hi, GREEDY, False, None, None, taken, mm_processor_kwargs={})
        assert out.prompt_token_ids == plain.prompt_token_ids
    parts = "<{% for m in messages %}{% for p in m.content %}{{ p.text }}{% endfor %}{% endfor %}>"
    for given, prompt in [("auto", "<hi>"), ("openai", "<hi>"), ("string", "<>")]:  # a string's characters: no text
        [out] = llm.chat(hi, GREEDY, False, None, parts, given)
        assert out.prompt == prompt, given
    with pytest.raises(InputError, match="^chat_template_content_format must be 'auto', 'string' or 'openai'") as e:
        llm.chat(hi, GREEDY, use_tqdm=False, chat_template_content_format="text")
    assert e.value.param == "chat_template_content_format"
    with pytest.raises(InputError, match="^mm_processor_kwargs is not supported"):
        llm.chat(hi, GREEDY, use_tqdm=False, mm_processor_kwargs={"num_crops": 4})
    assert not llm.engine.has_unfinished_requests()


def test_beam_search_takes_vllm_s_concurrency_limit_and_an_adapter_per_prompt(
    llm: LLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both had been a TypeError (a list of adapters a ValueError two steps in, once the beams outnumbered them)."""
    params, prompts = BeamSearchParams(beam_width=2, max_tokens=3), ["a", "b c", "d e f"]
    together = [[b.tokens for b in out.sequences] for out in llm.beam_search(prompts, params)]
    for limit in (1, 2):
        batched = llm.beam_search(prompts, params, concurrency_limit=limit)
        assert [[b.tokens for b in out.sequences] for out in batched] == together
    with pytest.raises(ValueError, match="^concurrency_limit must be a positive integer or None, got 0"):
        llm.beam_search(prompts, params, concurrency_limit=0)
    first, second = LoRARequest("first", 1, "/first"), LoRARequest("second", 2, "/second")
    asked, real = [], LLM.generate

    def generate(self: LLM, beams: list, step: SamplingParams, use_tqdm: bool, lora_request: list) -> list:
        asked.append(lora_request)
        return real(self, beams, step, use_tqdm=use_tqdm)  # the scripted engine serves no adapter

    monkeypatch.setattr(LLM, "generate", generate)
    llm.beam_search(prompts[:2], params, lora_request=[first, second])
    assert asked[0] == [first, second] and len(asked) == 3
    assert all(loras == [first] * (len(loras) // 2) + [second] * (len(loras) // 2) for loras in asked[1:])


def test_beam_search_text_keeps_special_tokens_as_vllm_s(llm: LLM) -> None:
    """vLLM's LLM.beam_search decodes each beam's tokens with its tokenizer's decode, special tokens kept (a
    prompt's BOS, an ending EOS); jllm's text had left them out."""
    [out] = llm.beam_search([{"prompt_token_ids": [1, 70, 71]}], BeamSearchParams(beam_width=2, max_tokens=2))
    decode = llm.engine.inputs.tokenizer.decode
    assert all(b.text == decode(b.tokens, skip_special_tokens=False) for b in out.sequences)
    assert all(b.text.startswith("<s>") for b in out.sequences)


def test_tokenization_kwargs_are_taken_or_refused_by_name(llm: LLM) -> None:
    """vLLM's generate / chat(tokenization_kwargs=...) had been a TypeError: add_special_tokens and truncation are
    taken as vLLM takes them, the keys jllm does not do are refused by name, never dropped."""
    door = llm.engine.inputs
    door.tokenizer.backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    text = "hello there, how are you"
    ids, plain = door.encode(text).token_ids, door.encode(text, add_special_tokens=False).token_ids
    assert ids == [1, *plain]
    [out] = llm.generate(text, GREEDY, use_tqdm=False, tokenization_kwargs={"add_special_tokens": False})
    assert out.prompt_token_ids == plain
    [out] = llm.generate(text, GREEDY, use_tqdm=False, tokenization_kwargs={"truncation": True, "max_length": 4})
    assert out.prompt_token_ids == ids[-4:]
    [out] = llm.generate(text, GREEDY, use_tqdm=False, tokenization_kwargs={"truncate_prompt_tokens": 5})
    assert out.prompt_token_ids == ids[-5:]
    own = SamplingParams(temperature=0, max_tokens=3, truncate_prompt_tokens=3)  # the params' own wins, as vLLM's
    [out] = llm.generate(text, own, use_tqdm=False, tokenization_kwargs={"truncate_prompt_tokens": 5})
    assert out.prompt_token_ids == ids[-3:]
    hi = [{"role": "user", "content": "hi"}]
    [chat] = llm.chat(hi, GREEDY, use_tqdm=False)
    [special] = llm.chat(hi, GREEDY, use_tqdm=False, tokenization_kwargs={"add_special_tokens": True})
    assert special.prompt_token_ids == [1, *chat.prompt_token_ids]
    [cut] = llm.chat(hi, GREEDY, use_tqdm=False, tokenization_kwargs={"truncate_prompt_tokens": 2})
    assert cut.prompt_token_ids == chat.prompt_token_ids[-2:]
    for bad, message in (
        ({"padding": "max_length"}, r"tokenization_kwargs \['padding'\] not supported"),
        ({"max_length": 4}, r"tokenization_kwargs \['max_length'\] not supported"),
        ({"truncation": "only_second"}, r"tokenization_kwargs\['truncation'\] must be True or False"),
    ):
        with pytest.raises(ValueError, match=message):
            llm.generate(text, GREEDY, use_tqdm=False, tokenization_kwargs=bad)
    with pytest.raises(TypeError, match=r"tokenization_kwargs\['add_special_tokens'\] must be True or False"):
        llm.chat(hi, GREEDY, use_tqdm=False, tokenization_kwargs={"add_special_tokens": "no"})
    assert not llm.engine.has_unfinished_requests()


def test_chat_arguments_win_over_chat_template_kwargs_as_vllm_s(llm: LLM) -> None:
    """vLLM's LLM.chat merges add_generation_prompt, continue_final_message and tools over chat_template_kwargs (the
    kwargs had won); a switch left out takes the kwargs' key."""
    hi = [{"role": "user", "content": "hi"}]
    [plain] = llm.chat(hi, GREEDY, use_tqdm=False)
    [closed] = llm.chat(hi, GREEDY, use_tqdm=False, add_generation_prompt=False)
    off = {"add_generation_prompt": False}
    [given] = llm.chat(hi, GREEDY, use_tqdm=False, add_generation_prompt=True, chat_template_kwargs=off)
    [left_out] = llm.chat(hi, GREEDY, use_tqdm=False, chat_template_kwargs=off)
    assert given.prompt_token_ids == plain.prompt_token_ids != closed.prompt_token_ids == left_out.prompt_token_ids
    names = "{% for t in tools %}{{ t.function.name }};{% endfor %}{{ messages[0].content }}"
    tool = {"type": "function", "function": {"name": "argument", "parameters": {"type": "object"}}}
    other = {"tools": [{"type": "function", "function": {"name": "kwargs", "parameters": {"type": "object"}}}]}
    [out] = llm.chat(hi, GREEDY, use_tqdm=False, chat_template=names, tools=[tool], chat_template_kwargs=other)
    assert out.prompt == "argument;hi"


@pytest.mark.parametrize("switch", ["add_generation_prompt", "continue_final_message"])
@pytest.mark.parametrize("value", ["no", 0])  # None: left out (chat_template_kwargs' key, else the default)
def test_chat_switches_must_be_booleans(llm: LLM, switch: str, value: object) -> None:
    """A string or 0 would be read by its truth value: "no" the opposite of what was meant (as embed's normalize)."""
    with pytest.raises(TypeError, match=f"^{switch} must be True or False, got {value!r}"):
        llm.chat([{"role": "user", "content": "hi"}], GREEDY, use_tqdm=False, **{switch: value})
    assert not llm.engine.has_unfinished_requests()
    [output] = llm.chat([{"role": "user", "content": "hi"}], GREEDY, use_tqdm=False)
    assert len(output.outputs[0].token_ids) == 3


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda llm: llm.generate(5, GREEDY), "^prompts must be a prompt .* got int"),
        (lambda llm: llm.generate(None, GREEDY), "^prompts must be a prompt .* got NoneType"),
        (lambda llm: llm.encode(7), "^prompts must be a prompt .* got int"),
        (lambda llm: llm.chat(None, GREEDY), "^messages must be a list of messages .* got NoneType"),
        (lambda llm: llm.chat("hi", GREEDY), "^messages must be a list of messages .* got str"),
        (lambda llm: llm.chat([None], GREEDY), r"^messages\[0\] must be a message .* got NoneType"),
        (lambda llm: llm.score("hello", None), "^continuations must be a text, token ids or a list of them"),
    ],
)
def test_arguments_that_are_no_prompts_raise_input_errors_naming_them(llm: LLM, call: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        call(llm)
    assert not llm.engine.has_unfinished_requests()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sampling_params": {"temperature": 0}}, "^sampling_params must be a SamplingParams or a list of them"),
        ({"sampling_params": "greedy"}, "^sampling_params must be a SamplingParams or a list of them"),
        ({"sampling_params": [GREEDY, {"temperature": 0}]}, "^sampling_params must be a SamplingParams or a list"),
        ({"lora_request": "adapter"}, "^lora_request must be a LoRARequest, None, or a list of them"),
        ({"lora_request": [None, "adapter"]}, "^lora_request must be a LoRARequest, None, or a list of them"),
        ({"priority": 0}, "^priority must be a list of integers, one per prompt, got 0"),
    ],
)
def test_options_of_the_wrong_type_raise_type_errors_naming_them(llm: LLM, kwargs: dict, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        llm.generate(["a", "b"], **{"sampling_params": GREEDY, **kwargs}, use_tqdm=False)
    with pytest.raises(TypeError, match="^params must be a BeamSearchParams"):
        llm.beam_search(["a"], {"beam_width": 2, "max_tokens": 3})  # type: ignore[arg-type]
    assert not llm.engine.has_unfinished_requests()


def test_chat_takes_text_parts_template_switches_and_variables(llm: LLM) -> None:
    inputs = llm.engine.inputs
    plain = [{"role": "user", "content": "hi there"}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]}]
    [a, b] = llm.chat([plain, parts], GREEDY, use_tqdm=False)
    assert a.prompt_token_ids == inputs.render_chat(plain).token_ids
    assert b.prompt_token_ids == inputs.render_chat([{"role": "user", "content": "hi\nthere"}]).token_ids  # vLLM's
    opened = [*plain, {"role": "assistant", "content": "Bon"}]
    [c] = llm.chat(opened, GREEDY, use_tqdm=False, add_generation_prompt=False, continue_final_message=True)
    assert c.prompt.endswith("assistant: Bon")
    template = "{{ greeting }}{% for m in messages %}{{ m.content }}{% endfor %}"
    [d] = llm.chat(plain, GREEDY, use_tqdm=False, chat_template=template, chat_template_kwargs={"greeting": "hey "})
    assert d.prompt == "hey hi there"
    with pytest.raises(InputError, match=r"^conversation 1: messages\[0\].content: only text parts"):
        llm.chat([plain, [{"role": "user", "content": [{"type": "image_url"}]}]], GREEDY, use_tqdm=False)
    with pytest.raises(InputError, match="continue_final_message needs add_generation_prompt set to false"):
        llm.chat(opened, GREEDY, use_tqdm=False, continue_final_message=True)


def test_completion_output_finished_is_a_method_and_greedy_n_samples_are_equal(llm: LLM) -> None:
    [output] = llm.generate([7, 8], SamplingParams(n=2, temperature=0, max_tokens=3), use_tqdm=False)
    assert output.finished is True  # RequestOutput: an attribute, as vLLM's
    assert output.lora_request is None  # the base model ran it (vLLM's field; it had been missing)
    assert all(c.finished() for c in output.outputs)
    assert output.outputs[0].token_ids == output.outputs[1].token_ids == scripted([7, 8], 3)


def test_get_tokenizer_has_the_transformers_surface(llm: LLM) -> None:
    tokenizer = llm.get_tokenizer()
    ids = tokenizer.encode("hello world")
    assert ids == llm.engine.tokenizer.encode("hello world") and tokenizer.decode(ids) == "hello world"
    assert tokenizer("hello world")["input_ids"] == ids
    assert len(tokenizer) == llm.engine.tokenizer.vocab_size and tokenizer.eos_token_id == 2
    assert tokenizer.convert_ids_to_tokens([ids[0]]) == [tokenizer.convert_ids_to_tokens(ids[0])]
    assert tokenizer.get_vocab()["</s>"] == 2
    messages = [{"role": "user", "content": "hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == llm.engine.inputs.render_chat(messages).text
    tokenized = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if hasattr(tokenized, "keys"):  # transformers 5 returns a BatchEncoding unless return_dict=False
        tokenized = tokenized["input_ids"]
    assert tokenized == tokenizer.encode(text, add_special_tokens=False)


def test_sampling_params_refuse_vllm_arguments_by_name(llm: LLM) -> None:
    with pytest.raises(ValueError, match="^logprob_token_ids is not supported by jllm yet"):
        llm.generate("hello", SamplingParams(logprob_token_ids=[3]), use_tqdm=False)
    with pytest.raises(InputError, match=r"allowed_token_ids: token id 600 is outside the vocabulary \[0, 512\)"):
        llm.generate("hello", SamplingParams(allowed_token_ids=[5, 600]), use_tqdm=False)


def test_structured_outputs_offline_as_vllm_and_tools_reach_the_template(llm: LLM) -> None:
    """vLLM's ``SamplingParams(structured_outputs=StructuredOutputsParams(...))``, or a dict of its keys."""
    choices = ["hello world", "bye"]
    for structured in (StructuredOutputsParams(choice=choices), {"choice": choices}):
        params = SamplingParams(max_tokens=30, structured_outputs=structured)
        [output] = llm.generate("hello", params, use_tqdm=False)
        assert output.outputs[0].text in choices and output.outputs[0].finish_reason == "stop"
    template = (
        "{% for t in tools %}{{ t.function.name }};{% endfor %}{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    tools = [{"type": "function", "function": {"name": "lookup"}}]
    [chat] = llm.chat([{"role": "user", "content": "hi"}], GREEDY, use_tqdm=False, chat_template=template, tools=tools)
    assert chat.prompt == "lookup;hi"
    with pytest.raises(InputError, match="^tools: the chat template does not read tools") as caught:
        llm.chat([{"role": "user", "content": "hi"}], GREEDY, use_tqdm=False, tools=tools)  # the model's template
    assert caught.value.param == "tools"


def test_generate_without_params_samples_as_the_model_s_generation_config_says(llm: LLM) -> None:
    llm.engine.sampling_defaults = {"temperature": 0.0, "top_k": 20, "max_tokens": 2}
    assert llm.get_default_sampling_params() == SamplingParams(temperature=0.0, top_k=20, max_tokens=2)
    [out] = llm.generate("hello")
    assert len(out.outputs[0].token_ids) == 2
    [out] = llm.generate("hello", SamplingParams(temperature=0, max_tokens=3))  # given params are taken whole
    assert len(out.outputs[0].token_ids) == 3
    llm.engine.sampling_defaults = {"temperature": 0.0, "max_tokens": 100_000}  # past the context: capped (vLLM's)
    [out] = llm.generate("hello")
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == llm.engine.inputs.max_model_len
    assert llm.get_default_sampling_params().max_tokens == 100_000  # vLLM's method still says the model's value


def test_a_switch_that_is_not_a_bool_is_a_type_error_naming_it(llm: LLM) -> None:
    """``normalize`` and ``use_activation`` read as their truth value would turn "no" or "false" into True."""
    with pytest.raises(TypeError, match="^normalize must be True or False, got 'no'"):
        llm.embed("hello", normalize="no")
    with pytest.raises(TypeError, match="^use_activation must be True or False, got 0"):
        llm.score_pairs("a", "b", use_activation=0)


def test_use_tqdm_takes_a_bool_or_the_callable_that_makes_the_bar(llm: LLM) -> None:
    """vLLM's ``use_tqdm``: a callable (``functools.partial(tqdm, leave=False)``) makes the bar; it had been read by
    its truth value (a default bar), as "no" was. A bad value is refused before any request is added."""
    from tqdm import tqdm

    made: list[dict[str, Any]] = []

    def bar(**kwargs: Any) -> tqdm:
        made.append(kwargs)
        return tqdm(disable=True, **kwargs)

    [out] = llm.generate("hello", GREEDY, use_tqdm=bar)
    assert len(out.outputs[0].token_ids) == 3
    assert made == [{"total": 1, "desc": "generating"}]
    for bad in ("no", 0, None):
        with pytest.raises(TypeError, match="^use_tqdm must be True, False or a callable that makes a tqdm bar"):
            llm.generate(["a", "b"], GREEDY, use_tqdm=bad)  # type: ignore[arg-type]
        assert not llm.engine.has_unfinished_requests()
    with pytest.raises(TypeError, match="^use_tqdm must be True, False or a callable"):
        llm.embed("hello", use_tqdm="no")  # type: ignore[arg-type]


def test_detokenize_false_returns_token_ids_without_text_as_vllm(llm: LLM) -> None:
    """vLLM's ``detokenize=False``: the same tokens, no text and no decoded tokens in the logprobs; stop strings,
    matched in the text, are refused. It had been an unexpected keyword argument."""
    params = dict(temperature=0, max_tokens=3, logprobs=1, prompt_logprobs=1)
    prompt = {"prompt_token_ids": [1, 2]}  # its scripted continuation decodes to text
    [text] = llm.generate(prompt, SamplingParams(**params), use_tqdm=False)
    [ids] = llm.generate(prompt, SamplingParams(**params, detokenize=False), use_tqdm=False)
    assert text.outputs[0].text and ids.outputs[0].text == ""
    assert ids.outputs[0].token_ids == text.outputs[0].token_ids
    assert ids.outputs[0].logprobs is not None and ids.prompt_logprobs is not None
    assert [{t: lp.logprob for t, lp in e.items()} for e in ids.outputs[0].logprobs] == [
        {t: lp.logprob for t, lp in e.items()} for e in text.outputs[0].logprobs
    ]
    entries = [*ids.outputs[0].logprobs, *ids.prompt_logprobs[1:]]
    assert entries and all(lp.decoded_token is None for e in entries for lp in e.values())
    with pytest.raises(ValueError, match=r"^stop strings need the text: stop=\['x'\] with detokenize=False"):
        SamplingParams(stop="x", detokenize=False)
    with pytest.raises(ValueError, match="^detokenize must be true or false, got 'no'"):
        SamplingParams(detokenize="no")


def test_vllm_s_engine_keywords_fold_into_jllm_s_or_are_refused_naming_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """``LLM(model, trust_remote_code=True, block_size=16)`` as a vLLM script writes it: they had been unknown keys,
    while ``jllm serve`` took the same options (``jllm.vllm_flags``)."""
    import jllm.llm

    class Loaded(Exception):
        pass

    def load_config(path: object, **overrides: Any) -> None:
        raise Loaded(overrides)

    monkeypatch.setattr(jllm.llm, "load_config", load_config)
    with pytest.raises(Loaded) as loaded:
        LLM("m", block_size=8, trust_remote_code=True, enable_chunked_prefill=True, swap_space=0, max_model_len=64)
    assert loaded.value.args[0] == {"model": "m", "page_size": 8, "max_model_len": 64}
    for keywords, message in (
        ({"enforce_eager": True}, r"^enforce_eager=True cannot be honoured: .*compile_at_start=False compiles each"),
        ({"enable_chunked_prefill": False}, r"^enable_chunked_prefill=False cannot be honoured: jllm always prefills"),
        ({"swap_space": 4}, r"^swap_space=4 cannot be honoured: jllm recomputes a preempted request's KV"),
        ({"block_size": 8, "page_size": 16}, r"^block_size=8 and page_size=16: give one \(the same\)"),
        ({"trust_remote_code": "yes"}, r"^trust_remote_code must be true or false, got 'yes'"),
    ):
        with pytest.raises(ValueError, match=message):
            LLM("m", **keywords)
    with pytest.raises(ValueError, match=r"^api_key, port: a server setting \(jllm serve\); the offline LLM serves"):
        LLM("m", port=8001, api_key="k")  # they had been taken and changed nothing


def test_a_vllm_style_score_call_points_at_score_pairs(llm: LLM) -> None:
    """vLLM's ``LLM.score(text_1, [texts])`` scores pairs; jllm's ``score`` is a continuation's logprob, so the same
    call must say where vLLM's is (it had said only "give one each")."""
    with pytest.raises(ValueError, match=r"^got 2 continuations for 1 prompts; give one each \(.*LLM\.score_pairs\)$"):
        llm.score("what is a cat?", ["a small feline", "the tax code"], use_tqdm=False)


def test_numpy_token_ids_are_token_ids(llm: LLM) -> None:
    """Ids from NumPy (``np.int64``) had been refused ("token ids must be integers, got np.int64(70)")."""
    import numpy as np

    ids = [70, 71]
    as_numpy = [np.int64(i) for i in ids]
    outputs = llm.generate([as_numpy, {"prompt_token_ids": as_numpy}, ids], GREEDY, use_tqdm=False)
    [single] = llm.generate(as_numpy, GREEDY, use_tqdm=False)  # one prompt of ids, as a list of Python ints is
    for out in [*outputs, single]:
        assert out.prompt_token_ids == ids and all(type(t) is int for t in out.prompt_token_ids)
        assert out.outputs[0].token_ids == scripted(ids, 3)
    with pytest.raises(InputError, match=r"^prompts\[0\]: token ids must be integers, got np.True_"):
        llm.generate([[np.True_, 71]], GREEDY, use_tqdm=False)


def test_reset_prefix_cache_is_vllm_s(llm: LLM) -> None:
    """vLLM's ``LLM.reset_prefix_cache`` (benchmarks' cold runs) had been an AttributeError."""
    prompt = {"prompt_token_ids": list(range(70, 82))}
    llm.generate(prompt, GREEDY, use_tqdm=False)
    [warm] = llm.generate(prompt, GREEDY, use_tqdm=False)
    assert warm.num_cached_tokens > 0
    assert llm.reset_prefix_cache() is True
    [cold] = llm.generate(prompt, GREEDY, use_tqdm=False)
    assert cold.num_cached_tokens == 0 and cold.outputs[0].token_ids == warm.outputs[0].token_ids
    llm.generate(prompt, GREEDY, use_tqdm=False)  # vLLM's arguments (a TypeError before): nothing runs, no connector
    assert llm.reset_prefix_cache(reset_running_requests=True, reset_connector=True) is True
    assert llm.generate(prompt, GREEDY, use_tqdm=False)[0].num_cached_tokens == 0
    with pytest.raises(TypeError, match="^reset_running_requests must be True or False"):
        llm.reset_prefix_cache("yes")


def test_world_size_and_mm_cache_reset_are_vllm_s(llm: LLM) -> None:
    """vLLM's LLM.get_world_size and reset_mm_cache had been AttributeErrors."""
    llm.config = EngineConfig.from_flat({"tensor_parallel_size": 2})
    assert llm.get_world_size() == llm.get_world_size(include_dp=False) == 2
    assert llm.reset_mm_cache() is None  # text only: nothing cached


def test_wake_up_takes_vllm_s_tags_for_the_whole_engine_only(llm: LLM) -> None:
    """vLLM's wake_up(tags) had been a TypeError; jllm wakes weights and KV cache together, so one alone is refused."""
    llm.wake_up(tags=["kv_cache", "weights"])  # awake already: nothing to do, as vLLM's
    with pytest.raises(ValueError, match=r"^wake_up\(tags=\['weights'\]\) is not supported"):
        llm.wake_up(["weights"])
    with pytest.raises(ValueError, match="^tags must be a list of"):
        llm.wake_up(["kv"])


def test_an_interrupted_generate_leaves_no_request_running(llm: LLM) -> None:
    """Ctrl-C (here: the progress bar's) had left the call's requests in the engine: the next call stepped them to
    their end, and load_weights or sleep refused the busy engine."""
    from tqdm import tqdm

    class Interrupting(tqdm):
        def update(self, n: float | None = 1) -> bool | None:
            raise KeyboardInterrupt

    long = SamplingParams(temperature=0, max_tokens=20)
    with pytest.raises(KeyboardInterrupt):
        llm.generate([{"prompt_token_ids": [70]}, "hello there"], [GREEDY, long], use_tqdm=Interrupting)
    assert not llm.engine.has_unfinished_requests()
    [out] = llm.generate("hello", GREEDY, use_tqdm=False)
    assert out.outputs[0].token_ids == scripted(llm.engine.inputs.encode("hello").token_ids, 3)


def test_vllm_s_prompt_types_are_importable_and_taken(llm: LLM) -> None:
    """``from vllm import TokensPrompt, TextPrompt`` had no jllm counterpart (ImportError)."""
    from jllm import TextPrompt, TokensPrompt

    ids = llm.engine.inputs.encode("hello").token_ids
    outputs = llm.generate([TextPrompt(prompt="hello"), TokensPrompt(prompt_token_ids=ids)], GREEDY, use_tqdm=False)
    assert [o.prompt_token_ids for o in outputs] == [ids, ids] and [o.prompt for o in outputs] == ["hello", None]

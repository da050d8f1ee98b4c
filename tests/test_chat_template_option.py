"""vLLM's ``--chat-template`` (``chat_template``): a Jinja file or the template itself renders chats in place of the
model's, in the engine's tokenizer and in transformers' one that ``LLM.get_tokenizer`` returns; a value that is
neither is refused naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from server_utils import ENGINE_ARGS

from jllm.config import load_config
from jllm.config_base import ConfigError
from jllm.inputs import InputProcessor
from jllm.tokenizer import Tokenizer

TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<bot>{% endif %}"
)
MESSAGES = [{"role": "user", "content": "hi"}]


def test_a_template_in_place_of_the_models_renders_before_and_after_transformers_loads(tiny_model: Path) -> None:
    tokenizer = Tokenizer.from_pretrained(tiny_model)
    model_text = tokenizer.apply_chat_template(MESSAGES)
    tokenizer.use_chat_template(TEMPLATE)
    inputs = InputProcessor(tokenizer, vocab_size=tokenizer.vocab_size, max_model_len=256)
    assert inputs.render_chat(MESSAGES).text == "<user>hi<bot>" != model_text
    assert tokenizer.hf.chat_template == TEMPLATE
    fresh = Tokenizer.from_pretrained(tiny_model)
    assert fresh.hf.chat_template != TEMPLATE  # transformers' tokenizer loaded first, the template put in place after
    fresh.use_chat_template(TEMPLATE)
    assert fresh.apply_chat_template(MESSAGES, add_generation_prompt=False) == "<user>hi"


@pytest.mark.slow
def test_the_engine_renders_with_the_configured_template_file_and_default_variables(
    tiny_model: Path, tmp_path: Path
) -> None:
    from jllm.llm import LLM
    from jllm.sampling import SamplingParams

    path = tmp_path / "template.jinja"
    path.write_text(TEMPLATE.replace("<bot>", "{{ opening or '<bot>' }}"))
    llm = LLM(str(tiny_model), chat_template=str(path), default_chat_template_kwargs={"opening": "<me>"}, **ENGINE_ARGS)
    assert llm.get_tokenizer().chat_template == path.read_text()
    params = SamplingParams(max_tokens=1)
    (default,) = llm.chat(MESSAGES, params, use_tqdm=False)
    (asked,) = llm.chat(MESSAGES, params, use_tqdm=False, chat_template_kwargs={"opening": "<you>"})
    assert (default.prompt, asked.prompt) == ("<user>hi<me>", "<user>hi<you>")


def test_a_value_that_is_neither_file_nor_template_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="chat_template=.* is neither a file nor a Jinja template"):
        load_config(None, chat_template=str(tmp_path / "absent.jinja"))
    assert load_config(None, chat_template=TEMPLATE).model.chat_template == TEMPLATE


def test_a_template_file_that_cannot_be_read_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jinja"
    path.write_bytes("{{ 'caf\xe9' }}".encode("latin-1"))
    with pytest.raises(ConfigError, match="chat_template=.*latin1.jinja' cannot be read: 'utf-8' codec can't decode"):
        load_config(None, chat_template=str(path))


def test_a_template_jinja_cannot_parse_is_refused_naming_it(tmp_path: Path) -> None:
    """At start-up, not at every chat request (whose error would blame the messages); transformers' own tags parse."""
    with pytest.raises(ConfigError, match=r"chat_template=.* Jinja can parse: unexpected end of template.*\(line 1\)"):
        load_config(None, chat_template="{{ messages[0].content ")
    path = tmp_path / "broken.jinja"
    path.write_text("{% for m in messages %}{{ m.content }}")
    with pytest.raises(ConfigError, match=r"Jinja can parse: Unexpected end of template.*'endfor'"):
        load_config(None, chat_template=str(path))
    tags = "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% break %}{% endfor %}"
    assert load_config(None, chat_template=tags).model.chat_template == tags

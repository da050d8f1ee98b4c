"""Tool-call formats, one module per family of formats, chosen by vLLM's ``--tool-call-parser`` names: JSON
objects behind a marker (``json_formats``), Python calls (``pythonic``), tagged arguments typed by the tool's
schema (``xml_formats``), the model's special tokens (``special_tokens``), Gemma 4's own argument syntax
(``gemma4``), gpt-oss's harmony messages (``harmony``). ``jllm.tool_calls`` streams them.

Where this package sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from jllm.tool_parsers.base import ToolCall, ToolParser
from jllm.tool_parsers.gemma4 import Gemma4Parser
from jllm.tool_parsers.harmony import OpenAIParser
from jllm.tool_parsers.json_formats import (
    GraniteParser,
    HermesParser,
    InternLMParser,
    JambaParser,
    Llama3JsonParser,
    MistralParser,
    Phi4MiniJsonParser,
)
from jllm.tool_parsers.pythonic import Llama4PythonicParser, Olmo3Parser, PythonicParser
from jllm.tool_parsers.special_tokens import DeepSeekV3Parser, DeepSeekV31Parser, KimiK2Parser
from jllm.tool_parsers.xml_formats import DeepSeekV32Parser, Glm45Parser, MinimaxM2Parser, Qwen3CoderParser

_PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesParser,
    "llama3_json": Llama3JsonParser,
    "mistral": MistralParser,
    "pythonic": PythonicParser,
    "llama4_pythonic": Llama4PythonicParser,
    "qwen3_coder": Qwen3CoderParser,
    "granite": GraniteParser,
    "phi4_mini_json": Phi4MiniJsonParser,
    "internlm": InternLMParser,
    "deepseek_v3": DeepSeekV3Parser,
    "kimi_k2": KimiK2Parser,
    "glm45": Glm45Parser,
    "jamba": JambaParser,
    "openai": OpenAIParser,
    "gemma4": Gemma4Parser,
    "deepseek_v31": DeepSeekV31Parser,
    "deepseek_v32": DeepSeekV32Parser,
    "minimax_m2": MinimaxM2Parser,
    "olmo3": Olmo3Parser,
    "ernie45": HermesParser,  # ERNIE 4.5 writes hermes' <tool_call>{...}</tool_call>
    "qwen3_xml": Qwen3CoderParser,  # vLLM's second reader of qwen3_coder's format (streamed by an XML parser)
}
PARSERS = tuple(_PARSERS)


def make_parser(name: str, tools: list[dict[str, Any]] | None = None) -> ToolParser:
    """The named format's parser for one request (``tools``: its tools, which some formats type arguments by)."""
    if name not in _PARSERS:
        raise ValueError(f"tool_call_parser must be one of {', '.join(PARSERS)}, got {name!r}")
    return _PARSERS[name](tools)


__all__ = ["PARSERS", "ToolCall", "ToolParser", "make_parser"]

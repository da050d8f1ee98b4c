"""The formats whose calls are tags around each argument's text, typed by the tool's JSON schema as vLLM's parsers
of the same names type them (``vllm/tool_parsers/``):

- ``qwen3_coder`` (Qwen3-Coder, Qwen3.5): ``<tool_call>\\n<function=NAME>\\n<parameter=P>\\nVALUE\\n</parameter>\\n
  </function>\\n</tool_call>`` (a bare ``<function=...>`` too); a value is text, converted by its schema type
  (integer, number, boolean, object / array as JSON or a Python literal, null for "null"), a parameter the schema
  does not name stays text;
- ``glm45`` (GLM-4.5 / 4.6): ``<tool_call>NAME\\n<arg_key>K</arg_key>\\n<arg_value>V</arg_value>...</tool_call>``;
  a value stays text where the schema says string, else it is read as JSON or a Python literal if it is one.
Calls stream argument by argument (``partial``: a qwen3_coder parameter once a tag after it has come, a glm45 value
once closed; an argument given twice keeps its first value, so what was sent stays a prefix of the call).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any

from jllm.tool_parsers.base import ToolCall, ToolParser, arguments_json

_STRING_TYPES = ("string", "str", "text", "varchar", "char", "enum")


def _schema_type(schema: Any) -> tuple[str, bool]:
    """(the first non-null type the schema names, "string" if none; whether it admits null)."""
    if not isinstance(schema, dict):
        return "string", False
    options = schema.get("type")
    if options is None and isinstance(schema.get("anyOf"), list):
        options = [o.get("type") for o in schema["anyOf"] if isinstance(o, dict) and "type" in o]
    if not isinstance(options, list):
        options = [options] if options is not None else []
    names = [str(o).strip().lower() for o in options]
    typed = [n for n in names if n != "null"]
    return (typed[0] if typed else "null" if names else "string"), "null" in names


def _literal(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def _number(value: str, integer: bool) -> Any:
    """An integer or number parameter's value (a whole number as an int, as vLLM sends it); else its text."""
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        return value
    if isinstance(number, float) and not math.isfinite(number):
        return value
    return int(number) if isinstance(number, float) and number.is_integer() else number


def typed_value(value: str, schema: Any) -> Any:
    """A parameter's text as its schema's type, vLLM's ``qwen3_coder`` rules: text that does not convert stays
    text (a boolean that is not ``true`` is false)."""
    kind, nullable = _schema_type(schema)
    if value.lower() in ("null", "none") and (nullable or kind not in _STRING_TYPES):
        return None
    if kind in _STRING_TYPES:
        return value
    if kind.startswith(("int", "uint", "long", "short", "unsigned", "num", "float")):
        return _number(value, integer=not kind.startswith(("num", "float")))
    if kind in ("boolean", "bool", "binary"):
        return value.lower() == "true"
    if kind in ("object", "array", "arr") or kind.startswith(("dict", "list")):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            pass
    return _literal(value)


class Qwen3CoderParser(ToolParser):
    starts = ("<tool_call>", "<function=")
    keep_special_tokens = True
    _blocks = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*?)$", re.DOTALL)
    _closed = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
    _functions = re.compile(r"<function=(.*?)</function>|<function=(.*)$", re.DOTALL)
    _parameters = re.compile(r"<parameter=(.*?)(?:</parameter>|(?=<parameter=)|(?=</function>)|\Z)", re.DOTALL)

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        if text.startswith("<tool_call>"):  # at the end an unclosed block counts, as vLLM reads it
            complete = [a or b for a, b in self._blocks.findall(text)] if final else self._closed.findall(text)
        else:  # a bare <function=...>, vLLM's fallback
            complete = [text] if final else re.findall(r"<function=.*?</function>", text, re.DOTALL)
        calls = []
        for body in complete:
            for closed, unclosed in self._functions.findall(body):
                call = self._call(closed or unclosed)
                if call is not None:
                    calls.append(call)
        return calls if calls or not final else None

    def partial(self, text: str) -> tuple[str, str] | None:
        """The unfinished call: its name once ``<function=NAME>`` is whole, its arguments up to the last parameter
        something has ended (a parameter's value is settled once a tag after it has come)."""
        end_tag = "</tool_call>" if text.startswith("<tool_call>") else "</function>"
        tail = text[text.rfind(end_tag) + len(end_tag) :] if end_tag in text else text
        if end_tag == "</tool_call>" and "<tool_call>" not in tail:
            return None
        head = re.search(r"<function=([^>]*)>", tail)
        if head is None or not head.group(1).strip():
            return None
        body = tail[head.end() :]
        if "</function>" in body:
            body = body[: body.index("</function>") + len("</function>")]
        settled = [
            m.group(1)
            for m in self._parameters.finditer(body)
            if m.group(0).endswith("</parameter>") or m.end() < len(body)  # not ended by the text's end alone
        ]
        arguments = arguments_json(self._arguments(head.group(1).strip(), settled))
        return None if arguments is None else (head.group(1).strip(), arguments[:-1])

    def _call(self, function: str) -> ToolCall | None:
        name, sep, body = function.partition(">")
        if not sep or not name.strip():
            return None
        arguments = arguments_json(self._arguments(name.strip(), self._parameters.findall(body)))
        return None if arguments is None else ToolCall(name.strip(), arguments)

    def _arguments(self, name: str, parameters: list[str]) -> dict[str, Any]:
        """Each ``P>\\nVALUE\\n`` typed by the tool's schema (a parameter given twice keeps its first value, so the
        arguments streamed so far stay a prefix of the whole call's)."""
        properties, args = self.properties(name), {}
        for parameter in parameters:
            key, sep, value = parameter.partition(">")
            key, value = key.strip(), value.removeprefix("\n").removesuffix("\n")
            if sep and key not in args:
                args[key] = typed_value(value, properties[key]) if key in properties else value
        return args


class Glm45Parser(ToolParser):
    starts = ("<tool_call>",)
    keep_special_tokens = True
    _block = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
    _detail = re.compile(r"(.*?)(?:\\n|\n)(.*)", re.DOTALL)
    _arg = re.compile(r"<arg_key>(.*?)</arg_key>(?:\\n|\s)*<arg_value>(.*?)</arg_value>", re.DOTALL)

    def calls(self, text: str, final: bool) -> list[ToolCall] | None:
        calls = []
        for block in self._block.findall(text):
            detail = self._detail.fullmatch(block)
            name, body = (detail.group(1).strip(), detail.group(2)) if detail else (block.strip(), "")
            arguments = arguments_json(self._arguments(name, body))
            if name and arguments is not None:
                calls.append(ToolCall(name, arguments))
        return calls if calls or not final else None

    def partial(self, text: str) -> tuple[str, str] | None:
        """The open block's call once its name's line has ended, its arguments up to the last whole value."""
        tail = text[text.rfind("</tool_call>") + len("</tool_call>") :] if "</tool_call>" in text else text
        detail = self._detail.fullmatch(tail[tail.index("<tool_call>") + 11 :]) if "<tool_call>" in tail else None
        if detail is None or not detail.group(1).strip():
            return None
        arguments = arguments_json(self._arguments(detail.group(1).strip(), detail.group(2)))
        return None if arguments is None else (detail.group(1).strip(), arguments[:-1])

    def _arguments(self, name: str, body: str) -> dict[str, Any]:
        """Each whole key and value: text where the tool's schema says string, else JSON or a Python literal if it
        is one (a key given twice keeps its first value, so what was streamed stays a prefix of the call)."""
        properties, args = self.properties(name), {}
        for key, value in self._arg.findall(body):
            schema, key, value = properties.get(key.strip()), key.strip(), value.strip()
            if key not in args:
                is_string = isinstance(schema, dict) and schema.get("type") == "string"
                args[key] = value if is_string else self._value(value)
        return args

    @staticmethod
    def _value(value: str) -> Any:
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return _literal(value)

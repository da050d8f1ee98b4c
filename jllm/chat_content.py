"""How a message's content reaches a chat template: vLLM's ``chat_template_content_format``.

"string": the content as one string (text parts joined on a newline; null as empty), for templates that print
``message['content']``. "openai": a list of ``{"type": "text", "text": ...}`` parts (a string is one part, null
none), for templates that loop over the parts, as Gemma 3's and Llama 4's do (``{% for item in message['content']
%}`` with ``item['type'] == 'text'``): given a string, such a loop runs over its characters. "auto" (the default)
reads the template's Jinja syntax tree as vLLM's ``_detect_content_format`` does: "openai" where some ``for`` loop
runs over a message's content, a message being the target of a loop over ``messages`` (or over a variable set from
them, a slice or filter of them included), else "string". As vLLM, a tool message's content reaches the template
as one string in either format (its parts are all text).

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, get_args

from jllm.config import ChatTemplateContentFormat

CONTENT_FORMATS = get_args(ChatTemplateContentFormat)
# vLLM's text part types, each read as its text: the key holding it
TEXT_KEYS = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal", "thinking": "thinking"}
TEXT_PART_TYPES = tuple(TEXT_KEYS)


def check_content_format(value: object, param: str = "chat_template_content_format") -> str:
    """``value`` if it is one of vLLM's three, else a ``ValueError`` naming them."""
    if value not in CONTENT_FORMATS:
        raise ValueError(f"{param} must be 'auto', 'string' or 'openai', got {value!r:.100}")
    return str(value)


def resolve_content_format(given: str, template: str | None) -> str:
    """The format a render uses: ``given`` unless "auto", else the one ``template`` reads ("string" without one)."""
    if given != "auto":
        return given
    return "string" if template is None else detect_content_format(template)


@functools.lru_cache(maxsize=32)
def detect_content_format(template: str) -> str:
    """ "openai" where the template loops over a message's content, else "string" (also where Jinja cannot parse
    it: the render then names the error)."""
    import jinja2

    try:
        tree = _environment().parse(template)
        return "openai" if next(_content_loops(tree), None) is not None else "string"
    except (jinja2.TemplateSyntaxError, TypeError):  # TypeError: a loop target that is not a plain name
        return "string"


def content_for_template(role: str, content: Any, content_format: str) -> Any:
    """A message's content (a string, None, or a list of text parts) in ``content_format``; a ``ValueError`` for
    any other content."""
    texts = _texts(content)
    if texts is None:
        raise ValueError("content must be a string or a list of text parts")
    if content_format == "openai" and role != "tool":
        return [{"type": "text", "text": text} for text in texts]
    return "\n".join(texts)


def _texts(content: Any) -> list[str] | None:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return None
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str) or kind not in TEXT_KEYS:
            return None
        text = part.get(TEXT_KEYS[kind])
        if not (text is None or isinstance(text, str)):
            return None
        if text is not None:  # a null text: the part skipped, as vLLM's parser skips it
            texts.append(text)
    return texts


@functools.cache
def _environment() -> Any:
    """Jinja as transformers compiles chat templates (loop controls, and its ``{% generation %}`` tag)."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes

    class GenerationTag(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    return jinja2.Environment(extensions=["jinja2.ext.loopcontrols", GenerationTag])


def _content_loops(tree: Any) -> Iterator[Any]:
    """The ``for`` loops over a message's content (``message['content']`` or ``message.content``, perhaps
    filtered, tested or sliced)."""
    import jinja2.nodes as nodes

    messages = _loop_targets(tree, _names_set_from(tree, "messages"))
    for loop in tree.find_all(nodes.For):
        if any(_reads(loop.iter, name, "content") for name in messages):
            if not isinstance(loop.target, nodes.Name):
                raise TypeError("a loop over a message's content with a target that is not a name")
            yield loop


def _names_set_from(tree: Any, name: str) -> list[str]:
    """``name`` and every variable ``{% set %}`` from it (or from one set from it, ...), its slices and filters."""
    import jinja2.nodes as nodes

    found, queue = [name], [name]
    while queue:
        source = queue.pop(0)
        for assign in tree.find_all(nodes.Assign):
            if isinstance(assign.target, nodes.Name) and _reads(assign.node, source):
                if assign.target.name not in found:
                    found.append(assign.target.name)
                    queue.append(assign.target.name)
    return found


def _loop_targets(tree: Any, sources: list[str]) -> list[str]:
    """The names of loops' targets over any of ``sources`` (a message each)."""
    import jinja2.nodes as nodes

    targets = []
    for loop in tree.find_all(nodes.For):
        if any(_reads(loop.iter, name) for name in sources):
            if not isinstance(loop.target, nodes.Name):
                raise TypeError("a loop over the messages with a target that is not a name")
            targets.append(loop.target.name)
    return targets


def _reads(node: Any, name: str, key: str | None = None) -> bool:
    """Whether ``node`` is the variable ``name`` (with ``key``: its item or attribute ``key``), perhaps under
    filters, tests or a slice."""
    import jinja2.nodes as nodes

    if isinstance(node, nodes.Filter | nodes.Test):
        return node.node is not None and _reads(node.node, name, key)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Slice):
        return _reads(node.node, name, key)
    if key is None:
        return _is_name(node, name)
    if isinstance(node, nodes.Getitem):
        return isinstance(node.arg, nodes.Const) and node.arg.value == key and _is_name(node.node, name)
    if isinstance(node, nodes.Getattr):
        return node.attr == key and _is_name(node.node, name)
    return False


def _is_name(node: Any, name: str) -> bool:
    import jinja2.nodes as nodes

    return isinstance(node, nodes.Name) and node.ctx == "load" and node.name == name

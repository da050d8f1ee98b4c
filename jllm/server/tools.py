"""Tool calling on ``/v1/chat/completions``: what a request's ``tools`` / ``tool_choice`` ask of generation, and the
calls its output holds, as OpenAI's ``message.tool_calls`` or streamed ``tool_calls`` deltas.

``tool_choice`` (vLLM's rules): every choice but "none" needs ``tools`` (a 400 without them: the request's check);
"none" generates text (the template still sees the tools); "auto" (the default with tools) generates freely and
parses calls with the server's ``--tool-call-parser``, which needs ``--enable-auto-tool-choice``; "required" and a
named function are forced: the output is generated under a JSON schema (``jllm.tool_calls.forced_call_schema``), so
it always parses. A reply with calls ends with finish reason "tool_calls", but a named function's with its
output's ("stop"), and its content is "" beside forced calls, as OpenAI and vLLM answer.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jllm.config import ServerConfig
from jllm.server.chat_schemas import (
    AssistantMessage,
    ChatCompletionRequest,
    DeltaFunction,
    DeltaToolCall,
    FunctionCallOut,
    NamedToolChoice,
    ToolCallOut,
    tools_for_template,
)
from jllm.server.errors import bad_request
from jllm.tool_calls import (
    CallPart,
    ForcedCallStream,
    ToolCall,
    ToolCallStream,
    ToolParser,
    cut_short_calls,
    cut_short_inside,
    forced_call_schema,
    forced_calls,
    make_parser,
    parse_tool_calls,
)


@dataclass(frozen=True)
class ToolPlan:
    """One request's tool handling."""

    tools: list[dict[str, Any]] | None  # for the chat template (OpenAI's tool objects)
    parser: ToolParser | None  # tool_choice "auto": the family's format
    forced: bool  # "required" or a named function: generated under forced_call_schema
    forced_name: str | None  # the named function
    parallel: bool

    @classmethod
    def of(cls, body: ChatCompletionRequest, server: ServerConfig) -> ToolPlan:
        choice = body.effective_tool_choice
        tools = tools_for_template(body.tools)
        parallel = body.parallel_tool_calls is not False
        if choice == "auto" and tools:
            if not server.enable_auto_tool_choice or server.tool_call_parser is None:
                raise bad_request(
                    'tool_choice "auto" (the default with tools) requires the server flags --enable-auto-tool-choice '
                    "and --tool-call-parser (vLLM's rule); or send tool_choice 'none', 'required' or a named function",
                    param="tool_choice",
                )
            return cls(tools, make_parser(server.tool_call_parser, tools), False, None, parallel)
        if choice == "none":  # any other choice comes with tools (the request's check)
            return cls(tools, None, False, None, parallel)
        name = choice.function.name if isinstance(choice, NamedToolChoice) else None
        return cls(tools, None, True, name, parallel)

    @property
    def calls_tools(self) -> bool:
        return self.parser is not None or self.forced

    @property
    def keep_special_tokens(self) -> bool:
        """A call marker may be a special token (Mistral's, some Hermes models'), which the parser must see."""
        return self.parser is not None and self.parser.keep_special_tokens

    def forced_schema(self) -> dict[str, Any] | None:
        if not self.forced:
            return None
        assert self.tools is not None
        return forced_call_schema(self.tools, self.forced_name, self.parallel)

    def message(self, text: str) -> AssistantMessage:
        """A whole reply as OpenAI's assistant message: its content and its calls. A forced call cut short by
        max_tokens comes with the arguments generated so far, as its stream sent them and as vLLM returns a named
        call (its finish reason stays "length": ``calls_cut_short``); so does an "auto" reply that ended inside a
        call, with the calls its stream sent (``tool_calls.cut_short_inside``)."""
        content, calls, cut_short = self._parse(text)
        return AssistantMessage(content=content, tool_calls=[_out(c) for c in calls], calls_cut_short=cut_short)

    def _parse(self, text: str) -> tuple[str | None, list[ToolCall], bool]:
        if self.forced:  # content "" beside the calls, not null, as vLLM answers a forced choice
            calls = forced_calls(text, self.forced_name)  # None only when cut short by max_tokens
            if calls is None:
                content, calls = cut_short_calls(text, self.forced_name)
                return content or "", calls, True
            return "", calls, False
        if self.parser is None:
            return text, [], False
        content, calls = parse_tool_calls(self.parser, text)
        return content, calls if self.parallel else calls[:1], cut_short_inside(self.parser, text)

    def stream(self) -> ToolDeltas:
        return ToolDeltas(self)

    def finish_reason(self, called: bool, reason: str | None) -> str | None:
        """OpenAI's finish reason for a choice that ended by ``reason``: "tool_calls" where it made calls, but a
        named function's call ends as its output did ("stop"), as OpenAI and vLLM finish it."""
        return "tool_calls" if reason is not None and called and self.forced_name is None else reason


def _out(call: ToolCall) -> ToolCallOut:
    return ToolCallOut(id=call.id, function=FunctionCallOut(name=call.name, arguments=call.arguments))


class ToolDeltas:
    """One choice's stream: its text deltas in, content and ``tool_calls`` deltas out, each call's id and name
    first. Forced calls stream their arguments as they come; "auto" sends them as the format settles them (the
    JSON formats' and deepseek_v3's / deepseek_v31's as written, the tagged formats' (qwen3_coder, glm45, minimax_m2,
    deepseek_v32), pythonic's / olmo3's and gemma4's argument by argument (a gemma4 string as written), kimi_k2's
    once complete)."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.num_calls = 0
        self.cut_short = False  # a forced call's output ended before its JSON did (max_tokens): finish "length"
        self._text = ""
        self._auto = ToolCallStream(plan.parser) if plan.parser is not None else None
        self._required = ForcedCallStream() if plan.forced and plan.forced_name is None else None

    def feed(self, text: str, finished: bool) -> tuple[str | None, list[DeltaToolCall]]:
        """(content to send or None, tool call deltas) for one text delta; ``finished`` on the choice's last."""
        if self.plan.forced_name is not None:
            self._text += text
            self.cut_short = finished and forced_calls(self._text, self.plan.forced_name) is None
            return None, self._named(text)
        if self._required is not None:
            parts = self._required.feed(text)
            content = None
            if finished:
                content, more = self._required.finish()  # content: cut short before any call began
                self.cut_short, parts = not self._required.complete, parts + more
            return content, self._part_deltas(parts)
        if self._auto is None:
            return text, []
        content, parts = self._auto.feed(text)
        if finished:
            rest, more = self._auto.finish()
            content, parts = content + rest, parts + more
        return content or None, self._part_deltas(parts)

    @property
    def called(self) -> bool:
        """Whether the choice made calls (its finish reason is then "tool_calls")."""
        auto_unfinished = self._auto is not None and (self._auto.broken or self._auto.cut_short)
        return self.num_calls > 0 and not self.cut_short and not auto_unfinished

    def _named(self, text: str) -> list[DeltaToolCall]:
        """The named function's arguments stream as generated: the first delta names the call."""
        first = self.num_calls == 0
        self.num_calls = 1
        if first:
            call = ToolCall(self.plan.forced_name or "", "")
            return [DeltaToolCall(index=0, id=call.id, type="function", function=DeltaFunction(name=call.name))] + (
                [DeltaToolCall(index=0, function=DeltaFunction(arguments=text))] if text else []
            )
        return [DeltaToolCall(index=0, function=DeltaFunction(arguments=text))] if text else []

    def _part_deltas(self, parts: list[CallPart]) -> list[DeltaToolCall]:
        """Call parts as deltas: a call's id and name, then fragments of its arguments (calls past the first dropped
        without ``parallel_tool_calls``)."""
        out = []
        for index, call, arguments in parts:
            if index > 0 and not self.plan.parallel:
                continue
            if call is not None:
                self.num_calls = index + 1
                function = DeltaFunction(name=call.name, arguments="")
                out.append(DeltaToolCall(index=index, id=call.id, type="function", function=function))
            elif arguments:
                out.append(DeltaToolCall(index=index, function=DeltaFunction(arguments=arguments)))
        return out

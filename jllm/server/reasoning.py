"""A chat reply's parts with the served model's ``reasoning_parser``: its reasoning told apart first
(``jllm.reasoning_parsers``), then the tool calls read from the answer after it (``jllm.server.tools``), so a marker
or a call the model writes while reasoning is reasoning; ``finish_reason`` "tool_calls" follows the answer's calls.

The reasoning comes back as ``reasoning`` and ``reasoning_content`` (``chat_schemas``), unless the request sends vLLM's
``include_reasoning: false``. A structured-output constraint (``response_format``, ``structured_outputs``,
``guided_*``, a forced ``tool_choice``) holds the answer only, as in vLLM: its grammar waits behind a
``ReasoningGate`` until the reasoning ends. That needs a format whose reasoning opens with the reply (``implicit``:
deepseek_r1, deepseek_v3, qwen3, seed_oss, minimax_m2, olmo3, ernie45; openai_gptoss, whose grammar holds the final
message's body alone); where the model may or may not open reasoning (glm45, granite, mistral, gemma4) the grammar
would have to know before the first token, so the request is refused (thinking switched off through
``chat_template_kwargs`` leaves no format in force, and the constraint applies from the first token as usual).

gpt-oss's harmony format (``openai_gptoss``) keeps its calls as harmony messages in the answer when the ``openai``
tool parser reads them (``HarmonyFormat.calls``), else it gives their arguments as content, as vLLM does.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from jllm.config import ServerConfig
from jllm.reasoning_parsers import HarmonyFormat, ReasoningFormat, ReasoningGate, reasoning_format
from jllm.server.chat_schemas import AssistantMessage, ChatCompletionRequest, DeltaToolCall
from jllm.server.errors import bad_request
from jllm.server.tools import ToolDeltas, ToolPlan
from jllm.thinking_budget import ThinkingBudget
from jllm.tokenizer import Tokenizer
from jllm.tool_parsers.harmony import OpenAIParser


@dataclass(frozen=True)
class ReplyPlan:
    """One request's reading of its reply: the reasoning format in force (None: none) and its tool handling."""

    tools: ToolPlan
    reasoning: ReasoningFormat | None
    include_reasoning: bool
    thinking_budget: int | None = None  # thinking_token_budget: the reasoning's tokens before its end is forced

    @classmethod
    def of(cls, body: ChatCompletionRequest, server: ServerConfig, parser: str | None) -> ReplyPlan:
        """``parser``: the served model's ``reasoning_parser``. Refuses what this server cannot do beside it."""
        tools = ToolPlan.of(body, server)
        fmt = None if parser is None else reasoning_format(parser, body.chat_template_kwargs)
        budget = None if body.thinking_token_budget in (None, -1) else body.thinking_token_budget
        if budget is not None and fmt is None:
            why = "is served without a reasoning_parser" if parser is None else "has its thinking switched off"
            raise bad_request(
                f"thinking_token_budget: the model {why}, so no reasoning is read to budget; leave it out",
                param="thinking_token_budget",
            )
        if isinstance(fmt, HarmonyFormat):  # calls kept as harmony messages for the openai parser, else content
            fmt = dataclasses.replace(fmt, calls=isinstance(tools.parser, OpenAIParser))
        if fmt is not None:
            field = body.constraint_field(tools.forced_schema())
            if field is not None and not fmt.implicit:
                switch = f'send chat_template_kwargs {{"{fmt.switch}": false}} to answer without reasoning, or '
                raise bad_request(
                    f"{field}: with the model's reasoning_parser {parser!r} a reply may open with reasoning or "
                    "not, and the grammar would have to know which before the first token (it constrains only the "
                    f"answer); {switch if fmt.switch else ''}leave {field} out",
                    param=field,
                )
            if isinstance(fmt, HarmonyFormat) and budget is not None:
                raise bad_request(
                    f"thinking_token_budget: the reasoning_parser {parser!r} ends reasoning by opening a final "
                    "message, which a forced marker cannot write; leave thinking_token_budget out",
                    param="thinking_token_budget",
                )
            if body.logprobs and not body.include_reasoning:
                raise bad_request(
                    "logprobs: with include_reasoning false the reasoning's tokens would still show in logprobs; "
                    "ask for one or the other",
                    param="logprobs",
                )
        return cls(tools, fmt, body.include_reasoning, budget)

    @property
    def keep_special_tokens(self) -> bool:
        """A marker may be a special token (Mistral's ``[THINK]``, a call marker), which the parsers must see."""
        return self.tools.keep_special_tokens or (self.reasoning is not None and self.reasoning.keep_special_tokens)

    def reasoning_gate(self, tokenizer: Tokenizer) -> ReasoningGate | None:
        """What the request's grammar waits for, and what counts a reply's reasoning tokens: the reasoning's end
        (None: no reasoning format in force)."""
        return None if self.reasoning is None else ReasoningGate(self.reasoning, tokenizer.token_bytes)

    def thinking(self, tokenizer: Tokenizer) -> ThinkingBudget | None:
        """The reply's thinking budget (None: none asked for): its reasoning format's first closing marker forced
        once the reasoning has taken ``thinking_budget`` tokens."""
        if self.thinking_budget is None or self.reasoning is None:
            return None
        end_ids = tokenizer.encode(self.reasoning.ends[0], add_special_tokens=False)
        return ThinkingBudget(ReasoningGate(self.reasoning, tokenizer.token_bytes), self.thinking_budget, end_ids)

    def reasoning_tokens(self, token_ids: list[int], tokenizer: Tokenizer) -> int | None:
        """A whole reply's reasoning tokens (None: no reasoning format in force)."""
        gate = self.reasoning_gate(tokenizer)
        return None if gate is None else gate.count(token_ids)

    def message(self, text: str) -> AssistantMessage:
        """A whole reply as OpenAI's assistant message: its reasoning, content and calls."""
        if self.reasoning is None:
            return self.tools.message(text)
        reasoning, content = self.reasoning.split(text)
        message = self.tools.message(content or "")
        if content is None and not message.tool_calls:
            message.content = None  # all reasoning (cut short), as vLLM returns it
        message.reasoning = reasoning if self.include_reasoning else None
        return message

    def stream(self, tokenizer: Tokenizer) -> ReplyDeltas:
        return ReplyDeltas(self, self.reasoning_gate(tokenizer))


class ReplyDeltas:
    """One choice's stream: text deltas in; reasoning, content and ``tool_calls`` deltas out; the reasoning's
    tokens counted (``reasoning_tokens``)."""

    def __init__(self, plan: ReplyPlan, counter: ReasoningGate | None) -> None:
        self.plan = plan
        self.tools: ToolDeltas = plan.tools.stream()
        self._reasoning = plan.reasoning.stream() if plan.reasoning is not None else None
        self._counter = counter

    @property
    def reasoning_tokens(self) -> int | None:
        """The reasoning's tokens so far (None: no reasoning format in force)."""
        return None if self._counter is None else self._counter.tokens

    def feed(
        self, text: str, token_ids: list[int], finished: bool
    ) -> tuple[str | None, str | None, list[DeltaToolCall]]:
        """(reasoning or None, content or None, call deltas) for one delta; ``finished`` on the choice's last."""
        if self._reasoning is None or self._counter is None:
            return None, *self.tools.feed(text, finished)
        self._counter.count(token_ids)
        reasoning, answer = self._reasoning.feed(text)
        if finished:
            more_reasoning, more_answer = self._reasoning.finish()
            reasoning, answer = reasoning + more_reasoning, answer + more_answer
        content, calls = self.tools.feed(answer, finished) if answer or finished else (None, [])
        return (reasoning or None) if self.plan.include_reasoning else None, content, calls

    @property
    def called(self) -> bool:
        """Whether the choice made calls (its finish reason is then "tool_calls")."""
        return self.tools.called

"""What the routes that run prompts once over share (``embeddings``, ``classify``, ``scores``): the request fields
vLLM's pooling requests have in common, those refused by name (the chat form among them), the names of a classifier
head's activation switch, routing to a base model (a LoRA adapter's name is a 400: pooling runs the base), and the
encoder's work on the model's engine thread in groups of ``max_num_seqs`` prompts, so a long list of inputs lets
generation steps run between the groups.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field, model_validator

from jllm.engine import LLMEngine
from jllm.inputs import InputProcessor, Prompt
from jllm.server.errors import bad_request
from jllm.server.registry import ServedModel
from jllm.server.schemas import _NOTHING, _Request, prompt_list, refuse_unsupported
from jllm.server.state import ServerState

# Fields of vLLM's pooling requests this server cannot honour: (the values that ask for nothing, why more is refused)
UNSUPPORTED_POOLING_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "priority": ((None, 0), "is not supported on this route: chat and completions requests take it"),
    "padding": ((None, "do_not_pad"), "is not supported: inputs are run unpadded"),
    "mm_processor_kwargs": (_NOTHING, "is not supported: the served models take text only"),
}


def chat_form_fields(task: str) -> dict[str, tuple[tuple[Any, ...], str]]:
    """vLLM's chat form of an embeddings or classification request (``messages`` and the template's switches), which
    this server does not take: each refused by name, since ignoring it would run the input as it is."""
    why = f"not supported for {task}: send the text (or token ids) as input"
    return {
        "messages": (_NOTHING, f"are {why}"),
        "chat_template": ((None,), f"is {why}"),
        "chat_template_kwargs": (_NOTHING, f"is {why}"),
        "add_generation_prompt": ((None, False), f"is {why}"),
        "continue_final_message": ((None, False), f"is {why}"),
        "media_io_kwargs": (_NOTHING, f"is {why}"),
    }


class PoolingRequest(_Request):
    """vLLM's ``PoolingBasicRequestMixin`` and its ``use_activation``."""

    model: str | None = None
    user: str | None = None  # OpenAI's end-user id for abuse monitoring: accepted, unused (as vLLM)
    request_id: str | None = None  # the response's id when no X-Request-Id header names one
    truncate_prompt_tokens: int | None = None  # keep the last k tokens of each prompt (-1: the context length)
    truncation_side: Literal["left", "right"] = "left"  # vLLM's: "right" keeps each prompt's first k instead
    use_activation: bool | None = None  # None: true
    cache_salt: str | None = Field(None, min_length=1, max_length=1024)  # these never read the prefix cache

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported_pooling(cls, data: Any) -> Any:
        return refuse_unsupported(data, UNSUPPORTED_POOLING_FIELDS)


class ActivatedRequest(PoolingRequest):
    """A request through a classifier's head (classify, score, rerank): ``softmax`` and ``activation`` are vLLM's
    older names of ``use_activation``."""

    softmax: bool | None = None
    activation: bool | None = None

    @model_validator(mode="after")
    def _one_activation(self) -> ActivatedRequest:
        given = {n: v for n in ("use_activation", "activation", "softmax") if (v := getattr(self, n)) is not None}
        if len(set(given.values())) > 1:
            raise bad_request(f"{' and '.join(given)} disagree; give one of them", param=next(iter(given)))
        return self

    @property
    def activated(self) -> bool:
        return False not in (self.use_activation, self.activation, self.softmax)


def pooling_model(state: ServerState, model: str | None) -> ServedModel:
    """The served model a pooling request names; a LoRA adapter's name is a 400 naming the base model."""
    served = state.route(model)
    if state.registry.lora_for(model) is not None:
        raise bad_request(
            f"model `{model}` is a LoRA adapter; embeddings, classes and scores are the base model's: name "
            f"`{served.name}`",
            param="model",
        )
    return served


def input_prompts(
    inputs: InputProcessor,
    value: str | list[str] | list[int] | list[list[int]],
    add_special_tokens: bool,
    truncate_prompt_tokens: int | None,
    truncation_side: str = "left",
) -> list[Prompt]:
    """An ``input`` field's prompts through the input door (run on ``HostWork``: long inputs take a while to
    encode); a bad one is a 400 naming ``input`` or its index."""
    entries = prompt_list(value, "input")
    return [
        inputs.process_whole(
            entry,
            add_special_tokens=add_special_tokens,
            truncate_prompt_tokens=truncate_prompt_tokens,
            truncation_side=truncation_side,
            param="input" if len(entries) == 1 else f"input[{i}]",
        )
        for i, entry in enumerate(entries)
    ]


async def in_groups[T](
    served: ServedModel, prompts: Sequence[Sequence[int]], work: Callable[[LLMEngine, list[Sequence[int]]], list[T]]
) -> list[T]:
    """``work(engine, group)`` on the engine thread for each group of at most ``max_num_seqs`` prompts, in order."""
    group = served.entry.config.scheduler.max_num_seqs
    results: list[T] = []
    for start in range(0, len(prompts), group):
        chunk = list(prompts[start : start + group])
        results += await served.engine.call(lambda engine, chunk=chunk: work(engine, chunk))
    return results

"""The offline API, vLLM's shape: ``LLM(model).generate(prompts, SamplingParams(...))``.

Prompts come as vLLM takes them (text, token ids, ``{"prompt": ...}`` / ``{"prompt_token_ids": ...}``, one or a
list); chats as OpenAI messages (text parts included) with vLLM's template switches; ``get_tokenizer`` returns the
model's transformers tokenizer, as vLLM's does.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import numbers
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Sequence as Seq
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from jllm import distributed, scoring
from jllm.beam_search import BeamSearch, BeamSearchOutput, BeamSearchParams
from jllm.build import build_engine, build_worker, reload_weights
from jllm.classify import require_classifier
from jllm.config import ConfigError, Pooling, engine_keys, load_config
from jllm.errors import InputError
from jllm.inputs import Prompt, PromptInput
from jllm.lora.request import LoRARequest
from jllm.outputs import (
    ClassificationOutput,
    ClassificationRequestOutput,
    ContinuationScore,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    PoolingOutput,
    PoolingRequestOutput,
    RequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from jllm.pooling import resolve_layers
from jllm.sampling import RequestOutputKind, SamplingParams
from jllm.speculative import refuse_beam_search
from jllm.vllm_flags import apply_vllm_keywords

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, Any]  # {"role": ..., "content": a string or OpenAI text parts}
WAKE_UP_TAGS = ("weights", "kv_cache")  # vLLM's wake_up tags
UseTqdm = bool | Callable[..., tqdm]  # vLLM's: show a bar or not, or what makes it (functools.partial(tqdm, ...))


class LLM:
    """Loads a model once and generates for batches of prompts with continuous batching.

    ``model`` is a model directory, a ``.gguf`` file, an alias, or None for the embedded default model;
    ``config`` a YAML file of engine keys; ``overrides`` any engine key (``max_model_len=2048``, ``seed=1`` ...).

    Under ``jax.distributed`` (``distributed_coordinator``) the same script runs on every process, and only the
    lead's (process 0) goes past this constructor: on a follower it runs the lead's steps, then exits the process.
    """

    def __init__(self, model: str | None = None, config: str | Path | None = None, **overrides: Any):
        server = engine_keys("server")  # a server setting would change nothing here (a flat config's defaults do not)
        if served := sorted(k for k in overrides.keys() & server.keys() if overrides[k] != _default(server[k])):
            raise ConfigError(
                f"{', '.join(served)}: a server setting (jllm serve); the offline LLM serves nothing: leave it out"
            )
        overrides = apply_vllm_keywords(overrides, model)  # vLLM's block_size, trust_remote_code ... (vllm_flags)
        self.config = load_config(config, **({} if model is None else {"model": model}), **overrides)
        distributed.initialize(self.config.parallel)
        if not distributed.is_lead():
            distributed.run_follower(build_worker(self.config).runner)
            raise SystemExit(0)
        self.engine = build_engine(self.config)
        self._ids = itertools.count()

    def get_world_size(self, include_dp: bool = True) -> int:
        """vLLM's: the devices the model runs on, ``tensor_parallel_size`` (jllm has no pipeline or data parallelism
        inside one LLM, so ``include_dp`` changes nothing)."""
        _check_switch(include_dp, "include_dp")
        return self.config.parallel.tensor_parallel_size

    def reset_mm_cache(self) -> None:
        """vLLM's: clears the multimodal inputs' caches; jllm's models take text only, so none holds anything."""

    def get_tokenizer(self) -> PreTrainedTokenizerBase:
        """The model's transformers tokenizer (``encode``, ``decode``, ``apply_chat_template`` ...), as vLLM's
        ``LLM.get_tokenizer``; the engine decodes with its Rust backend (``self.engine.tokenizer``)."""
        return self.engine.tokenizer.hf

    def generate(
        self,
        prompts: PromptInput | Seq[PromptInput],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: UseTqdm = True,
        lora_request: LoRARequest | Seq[LoRARequest | None] | None = None,
        priority: Seq[int] | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """Completes every prompt; outputs come back in input order. A bad prompt (one the KV pool cannot hold
        included, or one as long as the context) raises a ValueError naming its index before any runs; a
        ``max_tokens`` past the room a prompt leaves does not (vLLM's offline ``LLM``): that request stops when the
        context is full, finish_reason "length". ``lora_request``: the LoRA adapter every
        prompt runs with, or one per prompt (None: the base model), as vLLM's (needs ``enable_lora``). ``priority``:
        one per prompt, lower first, as vLLM's (needs ``scheduling_policy: priority``). ``tokenization_kwargs``:
        vLLM's overrides of how text prompts are encoded (``Tokenization``)."""
        if self.engine.classifier is not None:
            raise self.engine.classifier.cannot("generate text", self._model_name, offline=True)
        bar = progress_bar(use_tqdm)  # every argument checked before any request is added
        tokenization = Tokenization.of(tokenization_kwargs)
        prompts = _prompt_list(prompts)
        params = [tokenization.truncating(p) for p in self._per_prompt_params(sampling_params, len(prompts))]
        loras = _per_prompt_loras(lora_request, len(prompts))
        if priority is not None and not isinstance(priority, list | tuple):
            raise TypeError(f"priority must be a list of integers, one per prompt, got {priority!r:.200}")
        priorities = [0] * len(prompts) if priority is None else list(priority)
        if len(priorities) != len(prompts):
            raise ValueError(f"priority has {len(priorities)} entries for {len(prompts)} prompts: give one per prompt")
        for value in priorities:
            self.engine.check_priority(value)
        # each max_tokens (as asked, or the model's default) capped by the room its prompt leaves
        ready = [
            self._to_run(i, prompt, p, tokenization.add_special_tokens)
            for i, (prompt, p) in enumerate(zip(prompts, params, strict=True))
        ]
        checked, params = [prompt for prompt, _ in ready], [p for _, p in ready]
        for i, (prompt, p) in enumerate(zip(checked, params, strict=True)):
            if (reason := self.engine.scheduler.rejection_reason(len(prompt.token_ids), p.max_tokens)) is not None:
                raise InputError(f"prompts[{i}]: {reason}", param=f"prompts[{i}]")
        request_ids = [f"req-{next(self._ids)}" for _ in prompts]
        for lora in dict.fromkeys(lora for lora in loras if lora is not None):  # every adapter read before any runs
            self.engine.add_lora(lora)
        for rid, prompt, p, lora, urgency in zip(request_ids, checked, params, loras, priorities, strict=True):
            self.engine.add_request(rid, prompt, p, lora_request=lora, priority=urgency)
        return self._run(request_ids, bar)

    def beam_search(
        self,
        prompts: PromptInput | Seq[PromptInput],
        params: BeamSearchParams,
        lora_request: LoRARequest | Seq[LoRARequest | None] | None = None,
        use_tqdm: UseTqdm = False,
        concurrency_limit: int | None = None,
    ) -> list[BeamSearchOutput]:
        """vLLM's ``LLM.beam_search``: each prompt's ``params.beam_width`` best sequences (``jllm.beam_search``),
        each step one ``generate`` call of one-token requests, a beam each, whose earlier tokens the prefix cache
        serves. ``lora_request``: one adapter for every prompt or one per prompt, as vLLM's; ``concurrency_limit``:
        how many prompts are searched at once (None: all), the next ones after them, as vLLM's. A prompt too long
        to grow by ``max_tokens`` raises before any runs."""
        if self.engine.classifier is not None:
            raise self.engine.classifier.cannot("generate text", self._model_name, offline=True)
        if self.engine.inputs.speculative:
            raise refuse_beam_search()
        if not isinstance(params, BeamSearchParams):
            raise TypeError(f"params must be a BeamSearchParams, got {params!r:.200}")
        if concurrency_limit is not None and (
            isinstance(concurrency_limit, bool) or not isinstance(concurrency_limit, int) or concurrency_limit < 1
        ):
            raise ValueError(f"concurrency_limit must be a positive integer or None, got {concurrency_limit!r:.100}")
        bar = progress_bar(use_tqdm)
        prompts = _prompt_list(prompts)
        loras = _per_prompt_loras(lora_request, len(prompts))
        whole = SamplingParams(max_tokens=params.max_tokens)  # the longest beam checked against the context
        checked = [self._checked(i, prompt, whole).token_ids for i, prompt in enumerate(prompts)]
        limit = concurrency_limit or max(len(prompts), 1)
        starts = range(0, len(prompts), limit)
        results = []
        with bar(total=params.max_tokens * len(starts), desc="beam search") as steps:
            for start in starts:
                results += self._beam_search(
                    checked[start : start + limit], params, loras[start : start + limit], steps
                )
        return results

    def _beam_search(
        self, prompts: list[list[int]], params: BeamSearchParams, loras: list[LoRARequest | None], steps: tqdm
    ) -> list[BeamSearchOutput]:
        """One batch of prompts searched together, each beam with its prompt's adapter."""
        tokenizer = self.engine.inputs.tokenizer
        search = BeamSearch(prompts, params, set(tokenizer.eos_token_ids))
        step = params.step_params()
        while not search.finished:
            beams = [Prompt(tokens) for tokens in search.step_prompts()]
            per_beam = [lora for lora, live in zip(loras, search.beams, strict=True) for _ in live]
            outputs = self.generate(beams, step, use_tqdm=False, lora_request=per_beam)
            search.advance([output.outputs[0].logprobs[0] for output in outputs])
            steps.update(1)
        # vLLM's text: its tokenizer's decode of every token, special ones kept (a prompt's BOS, an ending EOS)
        return search.results(functools.partial(tokenizer.decode, skip_special_tokens=False))

    def load_weights(self, model: str | Path | None) -> None:
        """Runs another checkpoint of the same model from now on, without a new start (``jllm.weight_swap``: the
        step programs run the new weights as compiled; the prefix cache is emptied). ``model``: a directory, GGUF
        file or alias (None: the default model), as the constructor's. Between requests only; a checkpoint of
        another model, tokenizer, chat template or generation config raises ``WeightsMismatch`` before anything
        changes. The new weights are read before the old ones are freed, so the device holds both for a moment."""
        self.config = reload_weights(self.engine, self.config, None if model is None else str(model))

    def sleep(self, level: int = 1) -> None:
        """vLLM's sleep mode, between requests: the KV pool's and the weights' device memory freed (to JAX's
        allocator in this process: a colocated trainer's arrays can use it), the compiled programs kept. Level 1
        keeps the weights on the host, level 2 discards them (``load_weights`` after ``wake_up`` brings the next
        ones: an RL loop's update). Requests are refused while asleep."""
        self.engine.sleep(level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Back from ``sleep``: the weights (level 1) and an empty KV pool on the devices again. vLLM's ``tags``
        (None: all) may name both, "weights" and "kv_cache"; waking one without the other is refused."""
        if tags is not None:
            if not isinstance(tags, list | tuple | set) or not set(tags) <= set(WAKE_UP_TAGS):
                raise ValueError(f"tags must be a list of {WAKE_UP_TAGS} or None, got {tags!r:.100}")
            if set(tags) != set(WAKE_UP_TAGS):
                raise ValueError(
                    f"wake_up(tags={list(tags)}) is not supported: jllm wakes the weights and the KV cache together; "
                    "leave tags out"
                )
        self.engine.wake_up()

    def is_sleeping(self) -> bool:
        return self.engine.sleep_level is not None

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        """vLLM's: the prefix cache forgets its pages (between calls no request holds one, so vLLM's
        ``reset_running_requests`` has none to preempt; jllm has no KV connector for ``reset_connector`` to reset),
        so the next prompts compute every token (a benchmark's cold runs); True, as vLLM's when it was reset."""
        _check_switch(reset_running_requests, "reset_running_requests")
        _check_switch(reset_connector, "reset_connector")
        self.engine.block_manager.reset_prefix_cache()
        return True

    def encode(
        self,
        prompts: PromptInput | Seq[PromptInput],
        layers: Seq[int] = (-1,),
        use_tqdm: UseTqdm = True,
        truncate_prompt_tokens: int | None = None,
    ) -> list[PoolingRequestOutput]:
        """Hidden states of ``layers`` for every prompt, gathered to the host whatever the tensor-parallel size:
        ``outputs.data`` is ``[len(layers), num_tokens, hidden]`` float32 (``hidden_states[layer]`` one of them).

        Indices are transformers' ``output_hidden_states``: 0 the embeddings, ``i`` the output of layer ``i``,
        ``num_layers`` (or -1) the last layer's after the final norm. ``truncate_prompt_tokens`` keeps each
        prompt's last k tokens (-1: the context length). A bad prompt or index raises before any runs.
        """
        bar = progress_bar(use_tqdm)
        checked = self._whole_prompts(prompts, truncate_prompt_tokens)
        resolved = resolve_layers(layers, self.engine.encoder.num_layers)
        states = self.engine.encoder.hidden_states([p.token_ids for p in checked], resolved, bar)
        return [
            PoolingRequestOutput(f"encode-{next(self._ids)}", p.token_ids, PoolingOutput(data), list(layers))
            for p, data in zip(checked, states, strict=True)
        ]

    def embed(
        self,
        prompts: PromptInput | Seq[PromptInput],
        pooling: Pooling | None = None,
        normalize: bool = True,
        use_tqdm: UseTqdm = True,
        truncate_prompt_tokens: int | None = None,
    ) -> list[EmbeddingRequestOutput]:
        """One vector per prompt (``outputs.embedding``), vLLM's ``LLM.embed``: the final normed hidden states
        pooled as ``pooling`` says ("last" token or "mean"; None: the model's ``pooling`` key), unit L2 norm with
        ``normalize``. A sequence classifier gives none (vLLM's neither): an InputError naming what it does."""
        if self.engine.classifier is not None:
            raise self.engine.classifier.cannot("embed text", self._model_name, offline=True)
        _check_switch(normalize, "normalize")
        bar = progress_bar(use_tqdm)
        checked = self._whole_prompts(prompts, truncate_prompt_tokens)
        how = pooling or self.config.model.pooling
        vectors = self.engine.encoder.embed([p.token_ids for p in checked], how, normalize, bar)
        return [
            EmbeddingRequestOutput(f"embd-{next(self._ids)}", p.token_ids, EmbeddingOutput(vector.tolist()))
            for p, vector in zip(checked, vectors, strict=True)
        ]

    def classify(
        self,
        prompts: PromptInput | Seq[PromptInput],
        use_activation: bool = True,
        use_tqdm: UseTqdm = True,
        truncate_prompt_tokens: int | None = None,
    ) -> list[ClassificationRequestOutput]:
        """A sequence classifier's label probabilities per prompt (``outputs.probs``), vLLM's ``LLM.classify``: the
        score head on the last token's final normed state, through the head's activation (softmax over two or more
        labels, a sigmoid over one, or as config.json says; the logits without ``use_activation``)."""
        head = require_classifier(self.engine.classifier, self._model_name)
        _check_switch(use_activation, "use_activation")
        bar = progress_bar(use_tqdm)
        checked = self._whole_prompts(prompts, truncate_prompt_tokens)
        logits = head.logits(self.engine.encoder, [p.token_ids for p in checked], bar)
        return [
            ClassificationRequestOutput(f"classify-{next(self._ids)}", p.token_ids, ClassificationOutput(row.tolist()))
            for p, row in zip(checked, head.activate(logits, use_activation), strict=True)
        ]

    def score_pairs(
        self,
        text_1: str | Seq[str],
        text_2: str | Seq[str],
        use_activation: bool = True,
        use_tqdm: UseTqdm = True,
        truncate_prompt_tokens: int | None = None,
    ) -> list[ScoringRequestOutput]:
        """Each pair's score (``outputs.score``), vLLM's ``LLM.score`` (jllm's ``score`` is a continuation's
        log-probability): one ``text_1`` for any number of ``text_2``, or as many of each. A cross-encoder (a
        classifier of one label) scores the pair encoded as its tokenizer encodes a text pair, through its activation
        (a sigmoid by default; the logit without ``use_activation``); another model the cosine similarity of the
        two texts' embeddings (``jllm.scoring``)."""
        _check_switch(use_activation, "use_activation")
        bar = progress_bar(use_tqdm)
        firsts, seconds = scoring.pair_lists(text_1, text_2)
        head = scoring.cross_encoder(self.engine.classifier, self._model_name)
        inputs, encoder = self.engine.inputs, self.engine.encoder
        if head is not None:
            prompts = scoring.pair_prompts(inputs, head, firsts, seconds, truncate_prompt_tokens)
            logits = head.logits(encoder, [p.token_ids for p in prompts], bar)
            scores = head.activate(logits, use_activation)[:, 0].tolist()
            token_ids = [p.token_ids for p in prompts]
        else:
            left = scoring.text_prompts(inputs, firsts, "text_1", truncate_prompt_tokens)
            right = scoring.text_prompts(inputs, seconds, "text_2", truncate_prompt_tokens)
            how = self.config.model.pooling
            vectors = encoder.embed([p.token_ids for p in left + right], how, use_activation, bar)
            scores = scoring.cosine_scores(vectors[: len(left)], vectors[len(left) :])
            left = left * len(right) if len(left) == 1 else left
            token_ids = [a.token_ids + b.token_ids for a, b in zip(left, right, strict=True)]
        return [
            ScoringRequestOutput(f"score-{next(self._ids)}", ids, ScoringOutput(score))
            for ids, score in zip(token_ids, scores, strict=True)
        ]

    @property
    def _model_name(self) -> str:
        return self.config.model.model or "default"

    def score(
        self,
        prompts: PromptInput | Seq[PromptInput],
        continuations: str | list[int] | Seq[str | list[int]],
        use_tqdm: UseTqdm = True,
    ) -> list[ContinuationScore]:
        """Log-probabilities of each continuation's tokens given its prompt (one continuation per prompt): exact
        float32 values of the raw logits, from the engine's prompt-logprobs path (no prefix cache there).

        A text continuation is encoded on its own without special tokens and appended to the prompt's tokens; give
        token ids to control the split (lm-evaluation-harness style). Prompt and continuation together must leave one
        token of the context free: the engine samples one token after them, which is dropped."""
        prompts = _prompt_list(prompts)
        if not isinstance(continuations, str | list | tuple):
            raise InputError(
                f"continuations must be a text, token ids or a list of them, got {type(continuations).__name__}",
                param="continuations",
            )
        if isinstance(continuations, str) or (continuations and isinstance(continuations[0], int)):
            continuations = [continuations]  # type: ignore[list-item]
        if len(continuations) != len(prompts):
            raise ValueError(
                f"got {len(continuations)} continuations for {len(prompts)} prompts; give one each (to score text "
                "pairs, one text against many as vLLM's LLM.score does, call LLM.score_pairs)"
            )
        pairs = [self._score_pair(i, p, c) for i, (p, c) in enumerate(zip(prompts, continuations, strict=True))]
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
        outputs = self.generate([Prompt(p + c) for p, c in pairs], params, use_tqdm)
        return [_continuation_score(p, c, out) for (p, c), out in zip(pairs, outputs, strict=True)]

    def _score_pair(
        self, index: int, prompt: PromptInput, continuation: str | list[int]
    ) -> tuple[list[int], list[int]]:
        param = f"continuations[{index}]"
        tokens = self.engine.inputs.encode(continuation, add_special_tokens=False, param=param).token_ids
        if not tokens:
            raise InputError(f"{param} is empty: give at least one token to score", param=param)
        return self._checked(index, prompt).token_ids, tokens

    def _whole_prompts(self, prompts: PromptInput | Seq[PromptInput], truncate: int | None) -> list[Prompt]:
        return [self._checked(i, prompt, truncate=truncate) for i, prompt in enumerate(_prompt_list(prompts))]

    def _checked(
        self, index: int, prompt: PromptInput, params: SamplingParams | None = None, truncate: int | None = None
    ) -> Prompt:
        """The prompt through the input door: for generation with ``params``, else to be run over whole (its
        last ``truncate`` tokens kept, if given)."""
        param = f"prompts[{index}]"
        with _named(param):
            if params is None:
                return self.engine.inputs.process_whole(prompt, truncate_prompt_tokens=truncate, param=param)
            return self.engine.inputs.process(prompt, params, param=param)

    def _to_run(
        self, index: int, prompt: PromptInput, params: SamplingParams, add_special_tokens: bool
    ) -> tuple[Prompt, SamplingParams]:
        """The prompt through the input door as vLLM's offline ``LLM`` takes it, with ``params`` whose
        ``max_tokens`` it caps by the room the prompt leaves (``InputProcessor.process_offline``)."""
        param = f"prompts[{index}]"
        with _named(param):
            door = self.engine.inputs
            return door.process_offline(prompt, params, add_special_tokens=add_special_tokens, param=param)

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: UseTqdm = True,
        lora_request: LoRARequest | Seq[LoRARequest | None] | None = None,
        chat_template: str | None = None,
        chat_template_content_format: str = "auto",
        add_generation_prompt: bool | None = None,
        continue_final_message: bool | None = None,
        tools: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """Applies the model's chat template (or ``chat_template``) to one conversation or a list of them, then
        generates; the arguments in vLLM's order. ``chat_template_kwargs`` (over ``default_chat_template_kwargs``)
        reach the template as variables and ``tools`` (OpenAI's tool objects) reach it as ``tools``, as in vLLM
        (refused where the template does not read them: offline they would change nothing); calls in the output are
        not parsed offline (vLLM's ``chat`` neither). Message content reaches the template in vLLM's
        ``chat_template_content_format``: "string" (text parts joined), "openai" (a list of text parts), "auto" the
        one the template reads (``jllm.chat_content``). ``mm_processor_kwargs`` is refused (text only).
        ``tokenization_kwargs`` as
        ``generate``'s (``add_special_tokens``: the tokenizer's on top of the template's, off by default).
        ``add_generation_prompt``, ``continue_final_message`` and ``tools`` given win over the same keys in
        ``chat_template_kwargs``, as vLLM's ``LLM.chat`` merges them; a switch left None takes
        ``chat_template_kwargs``' key, else its default (True / False: vLLM's defaults, which there always win)."""
        _check_optional_switch(add_generation_prompt, "add_generation_prompt")
        _check_optional_switch(continue_final_message, "continue_final_message")
        tokenization = Tokenization.of(tokenization_kwargs)
        if mm_processor_kwargs:
            raise InputError(
                "mm_processor_kwargs is not supported: jllm's models take text only; leave it out",
                param="mm_processor_kwargs",
            )
        if not isinstance(messages, list | tuple):
            raise InputError(
                f"messages must be a list of messages or a list of conversations, got {type(messages).__name__}",
                param="messages",
            )
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        template_kwargs = self.engine.inputs.template_kwargs(chat_template_kwargs)
        if tools is not None and template_kwargs:  # the argument wins over a tools variable (vLLM's)
            template_kwargs = {k: v for k, v in template_kwargs.items() if k != "tools"}
        options: dict[str, Any] = {
            "add_generation_prompt": add_generation_prompt,
            "continue_final_message": continue_final_message,
            "chat_template_kwargs": template_kwargs,
            "add_special_tokens": tokenization.add_special_tokens_in_chat,
            "content_format": chat_template_content_format,
        }
        if chat_template is not None:
            options["chat_template"] = chat_template
        if tools:
            self.engine.inputs.check_template_reads(
                "tools",
                chat_template,
                "tools: the chat template does not read tools, so they would not reach the model; leave them out, or "
                "give a chat_template that renders them",
            )
            options["tools"] = tools
        prompts = []
        for i, conversation in enumerate(conversations):
            if not isinstance(conversation, list | tuple):
                raise InputError(
                    f"messages[{i}] must be a message (a dict) or a conversation (a list of them), got "
                    f"{type(conversation).__name__}",
                    param="messages",
                )
            try:
                prompts.append(self.engine.inputs.render_chat(conversation, **options))
            except InputError as e:
                where = f"conversation {i}: " if len(conversations) > 1 else ""
                raise type(e)(f"{where}{e}", param=e.param) from e
        return self.generate(prompts, sampling_params, use_tqdm, lora_request, tokenization_kwargs=tokenization_kwargs)

    def get_default_sampling_params(self) -> SamplingParams:
        """What ``generate`` and ``chat`` sample with when given no SamplingParams (vLLM's method): the model's
        generation_config.json's temperature, top_p, top_k, min_p, repetition_penalty and max_new_tokens, where it
        sets them (engine key ``generation_config``), else SamplingParams' own defaults."""
        return SamplingParams(**self.engine.sampling_defaults)

    def _per_prompt_params(
        self, sampling_params: SamplingParams | Seq[SamplingParams] | None, count: int
    ) -> list[SamplingParams]:
        """One SamplingParams per prompt, each asking for its final output only (nothing here streams)."""
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()  # its max_tokens capped by each prompt's room
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * count
        if not isinstance(sampling_params, list | tuple) or not all(
            isinstance(p, SamplingParams) for p in sampling_params
        ):
            raise TypeError(
                "sampling_params must be a SamplingParams or a list of them, one per prompt, got "
                f"{sampling_params!r:.200}"
            )
        if len(sampling_params) != count:
            raise ValueError(f"got {len(sampling_params)} sampling_params for {count} prompts; give one or one each")
        final = {id(p): dataclasses.replace(p, output_kind=RequestOutputKind.FINAL_ONLY) for p in sampling_params}
        return [final[id(p)] for p in sampling_params]

    def _run(self, request_ids: list[str], progress: Callable[..., tqdm]) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        wanted = set(request_ids)
        try:
            with progress(total=len(request_ids), desc="generating") as bar:
                while len(finished) < len(request_ids):
                    for output in self.engine.step():
                        if output.finished and output.request_id in wanted:
                            finished[output.request_id] = output
                            bar.update(1)
        except BaseException:  # Ctrl-C in a notebook, an error: nothing of this call keeps running behind it
            for rid in wanted - finished.keys():
                self.engine.abort_request(rid)
            raise
        return [finished[rid] for rid in request_ids]


def _default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def progress_bar(use_tqdm: UseTqdm) -> Callable[..., tqdm]:
    """What makes a call's progress bar from vLLM's ``use_tqdm``: True a tqdm bar, False none, a callable itself
    (vLLM calls it with ``total`` and ``desc``). Anything else is refused: "no" would show a bar by its truth value."""
    if callable(use_tqdm):
        return use_tqdm
    if not isinstance(use_tqdm, bool):
        raise TypeError(f"use_tqdm must be True, False or a callable that makes a tqdm bar, got {use_tqdm!r:.200}")
    return functools.partial(tqdm, disable=not use_tqdm)


def _check_switch(value: object, name: str) -> None:
    """A switch is true or false: "no" or 0 would be read by their truth value, the opposite of what was meant."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r:.200}")


def _check_optional_switch(value: object, name: str) -> None:
    """None: left out (the template's kwargs or the default decide); else a switch."""
    if value is not None:
        _check_switch(value, name)


def _per_prompt_loras(
    lora_request: LoRARequest | Seq[LoRARequest | None] | None, count: int
) -> list[LoRARequest | None]:
    if lora_request is None or isinstance(lora_request, LoRARequest):
        return [lora_request] * count
    if not isinstance(lora_request, list | tuple) or not all(
        lora is None or isinstance(lora, LoRARequest) for lora in lora_request
    ):
        raise TypeError(
            f"lora_request must be a LoRARequest, None, or a list of them, one per prompt, got {lora_request!r:.200}"
        )
    loras = list(lora_request)
    if len(loras) != count:
        raise ValueError(f"got {len(loras)} lora_request for {count} prompts; give one or one each")
    return loras


@contextlib.contextmanager
def _named(param: str) -> Iterator[None]:
    """An input error raised inside, with the prompt's place in the batch leading its message."""
    try:
        yield
    except InputError as e:
        message = str(e) if str(e).startswith(param) else f"{param}: {e}"
        raise type(e)(message, param=param) from e


@dataclasses.dataclass(frozen=True)
class Tokenization:
    """vLLM's ``tokenization_kwargs`` of ``LLM.generate`` / ``chat``, the keys jllm honours: ``add_special_tokens``,
    ``truncate_prompt_tokens`` (-1: the context), and transformers' ``truncation`` (True: to ``max_length``, else
    the context). A SamplingParams' own ``truncate_prompt_tokens`` wins, as in vLLM. Other keys (``padding``,
    ``do_lower_case``, ``max_length`` without truncation ...) are refused by name, where vLLM warns and drops some."""

    special_tokens: bool | None = None  # add_special_tokens as given (None: each door's default)
    truncate_prompt_tokens: int | None = None

    @classmethod
    def of(cls, kwargs: dict[str, Any] | None) -> Tokenization:
        if kwargs is None:
            return cls()
        if not isinstance(kwargs, dict):
            raise TypeError(f"tokenization_kwargs must be a dict, got {kwargs!r:.200}")
        rest = dict(kwargs)
        add = rest.pop("add_special_tokens", None)
        if add is not None:
            _check_switch(add, "tokenization_kwargs['add_special_tokens']")
        keep = rest.pop("truncate_prompt_tokens", None)
        truncation, max_length = rest.pop("truncation", None), rest.pop("max_length", None)
        if truncation in (True, "longest_first"):
            keep = -1 if max_length is None else max_length
        elif truncation not in (None, False, "do_not_truncate"):
            raise ValueError(f"tokenization_kwargs['truncation'] must be True or False, got {truncation!r:.100}")
        elif max_length is not None:
            rest["max_length"] = max_length  # a length limit without truncation: not taken
        if rest:
            raise ValueError(
                f"tokenization_kwargs {sorted(rest)} not supported: jllm takes add_special_tokens, "
                "truncate_prompt_tokens, and truncation (with max_length); leave the others out"
            )
        return cls(add, keep)

    def truncating(self, params: SamplingParams) -> SamplingParams:
        """``params`` with this truncation, unless they ask for their own (validated as the field is)."""
        if self.truncate_prompt_tokens is None or params.truncate_prompt_tokens is not None:
            return params
        return dataclasses.replace(params, truncate_prompt_tokens=self.truncate_prompt_tokens)

    @property
    def add_special_tokens(self) -> bool:
        """A text prompt's: the tokenizer's special tokens unless asked not to (vLLM's default)."""
        return self.special_tokens is not False

    @property
    def add_special_tokens_in_chat(self) -> bool:
        """A rendered chat's: the template's own alone unless asked for the tokenizer's too (vLLM's default)."""
        return self.special_tokens is True


def _prompt_list(prompts: PromptInput | Seq[PromptInput]) -> list[PromptInput]:
    """One prompt (text, token ids, a dict, a ``Prompt``) or a list of them, as a list."""
    if isinstance(prompts, str | dict | Prompt) or (
        isinstance(prompts, list) and prompts and isinstance(prompts[0], numbers.Integral)
    ):
        return [prompts]
    if not isinstance(prompts, Iterable) or isinstance(prompts, bytes):
        raise InputError(
            f"prompts must be a prompt (text, token ids, a dict) or a list of them, got {type(prompts).__name__}",
            param="prompts",
        )
    return list(prompts)


def _continuation_score(prompt: list[int], continuation: list[int], output: RequestOutput) -> ContinuationScore:
    """The continuation's entries of the prompt logprobs (``prompt_logprobs=1``: the top token has rank 1)."""
    assert output.prompt_logprobs is not None
    entries = [output.prompt_logprobs[len(prompt) + i] for i in range(len(continuation))]
    picked = [entry[token] for entry, token in zip(entries, continuation, strict=True)]  # type: ignore[index]
    logprobs = [lp.logprob for lp in picked]
    return ContinuationScore(prompt, continuation, logprobs, float(sum(logprobs)), all(lp.rank == 1 for lp in picked))

"""A scripted runner: the engine loop, abort, async pipelining, preemption and the server tested in milliseconds.

No model and no device: the token a sequence samples at position ``p`` is ``script(prompt, p)``, a pure function,
so every output is known in advance however steps are batched, chunked, pipelined or preempted, and a test can
compare what the engine did against it. Pages are still allocated by the real block manager and scheduler.
Where a row's token mask (structured output, ``allowed_token_ids``) forbids the scripted token, the row samples the
lowest allowed id instead, as a greedy sampler over constant logits would.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers

from jllm.block_manager import BlockManager
from jllm.config import LimitsConfig
from jllm.engine import LLMEngine
from jllm.inputs import InputProcessor, Prompt
from jllm.outputs import RequestOutput
from jllm.sampler import build_constraints
from jllm.sampling import SamplingParams
from jllm.scheduler import Scheduler
from jllm.sequence import SchedulerOutput
from jllm.step_results import PromptTokenLogprob, SampledToken, StepResult
from jllm.tokenizer import Tokenizer

TINY_TOKENIZER = Path(__file__).parents[1] / "configs" / "models" / "tiny-llama"  # 512 ids, EOS 2, chat template
VOCAB_SIZE = 512
Script = Callable[[Sequence[int], int], int]  # (prompt token ids, position of the sampled token) -> token id


def counting_script(prompt: Sequence[int], position: int) -> int:
    """Ids 100, 101, ... after the prompt (offset by its first token): never EOS (2), always decodable."""
    return 100 + (prompt[0] + position) % 300


def scripted_prompt_logprobs(start: int, end: int, prompt: Sequence[int], k: int | None) -> list[PromptTokenLogprob]:
    """Prompt token p+1 given the tokens before it: logprob -1.0, rank 2 behind id ``(t + 1) % 512`` at -0.5 (so a
    top 1 leaves the prompt's own token out, as a real model often does)."""
    if k is None:
        return []
    entries = []
    for pos in range(start, min(end, len(prompt) - 1)):
        token = prompt[pos + 1]
        entries.append(PromptTokenLogprob(pos + 1, token, -1.0, 2, [(token + 1) % 512, token][:k], [-0.5, -1.0][:k]))
    return entries


@dataclass
class FakeLaunch:
    output: SchedulerOutput
    result: StepResult
    done_at: float = 0.0  # time.monotonic() when the fake device finishes this step


@dataclass
class ScriptedRunner:
    """``launch`` computes the step's tokens at once (the fake device knows every token it sampled, pending ones
    included, because the script needs only the position); ``collect`` hands them over once the fake device has
    spent ``step_seconds`` on the step. Like a device, it runs steps one after another from their launch: a step
    launched while the one before is still running starts when that one ends, so the host's work between launch and
    collect overlaps the device's as it does on a GPU."""

    script: Script = counting_script
    step_seconds: float = 0.0
    launched: list[SchedulerOutput] = field(default_factory=list)
    device_free_at: float = 0.0  # time.monotonic() when the fake device finishes the last launched step
    released: bool = False  # set by release(): tests read it to see that an unload got this far
    num_compilations: int = 0  # nothing is compiled; the counter the server's metrics read

    def plan(self, output: SchedulerOutput, *, constraints_later: bool = False) -> SchedulerOutput:
        return output

    def launch(
        self, output: SchedulerOutput, plan: SchedulerOutput, before_sampling: Callable[[], None] | None = None
    ) -> FakeLaunch:
        self.launched.append(output)
        if before_sampling is not None:  # the real runner's forward is queued by now
            before_sampling()
        tokens, prompt_logprobs = [], []
        constraints = build_constraints([s.seq for s in output.scheduled], len(output.scheduled), VOCAB_SIZE)
        for row, s in enumerate(output.scheduled):
            seq, end = s.seq, s.start + s.num_new_tokens
            prompt = seq.prompt_token_ids
            token = None
            if s.samples_token:
                token_id = self.script(prompt, end)
                token_id = _allowed(constraints.bitmask[row], token_id)
                top = [token_id, (token_id + 1) % 512][: seq.sampling_params.logprobs or 0]
                token = SampledToken(token_id, -0.5, 1, top, [-0.5, -1.5][: len(top)])
            tokens.append(token)
            prompt_logprobs.append(scripted_prompt_logprobs(s.start, end, prompt, seq.sampling_params.prompt_logprobs))
        self.device_free_at = max(time.monotonic(), self.device_free_at) + self.step_seconds
        return FakeLaunch(output, StepResult(tokens, prompt_logprobs), self.device_free_at)

    def collect(self, launched: FakeLaunch) -> StepResult:
        time.sleep(max(0.0, launched.done_at - time.monotonic()))
        return launched.result

    def release(self) -> None:
        self.released = True  # no device memory to free


def _allowed(mask_row: np.ndarray, token_id: int) -> int:
    """``token_id`` if the packed mask row allows it, else the lowest id it allows."""
    allowed = np.unpackbits(mask_row.view(np.uint8), bitorder="little")
    return token_id if allowed[token_id] else int(np.flatnonzero(allowed)[0])


def fake_engine(
    *,
    script: Script = counting_script,
    num_pages: int = 64,
    page_size: int = 4,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 32,
    max_model_len: int = 128,
    async_scheduling: bool = True,
    step_seconds: float = 0.0,
    limits: LimitsConfig | None = None,
    tokenizer_dir: Path = TINY_TOKENIZER,
    scheduling_policy: str = "fcfs",
) -> LLMEngine:
    """An ``LLMEngine`` over the scripted runner, the tiny tokenizer (or another of at most 512 ids) and a real
    scheduler and block manager."""
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    scheduler = Scheduler(
        BlockManager(num_pages, page_size),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len,
        eos_token_ids=tokenizer.eos_token_ids,
        policy=scheduling_policy,
    )
    inputs = InputProcessor(tokenizer, vocab_size=VOCAB_SIZE, max_model_len=max_model_len, limits=limits)
    runner = ScriptedRunner(script, step_seconds)
    return LLMEngine(scheduler, runner, inputs, async_scheduling=async_scheduling, seed=0)


def run_requests(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]]) -> dict[str, RequestOutput]:
    """Adds each request (id -> prompt ids, params) and steps the engine until all finish; their final outputs."""
    for request_id, (prompt, params) in requests.items():
        engine.add_request(request_id, Prompt(prompt), params)
    done = {}
    while engine.has_unfinished_requests():
        done |= {o.request_id: o for o in engine.step() if o.finished}
    return done


def repeating_text_engine(text: str, tokenizer_dir: Path, **engine_args: Any) -> LLMEngine:
    """``fake_engine`` whose every sample is ``text``'s tokens again and again (from position 0 after the prompt)."""
    ids = BackendTokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).encode(text).ids

    def script(prompt: Sequence[int], position: int) -> int:
        return ids[(position - len(prompt)) % len(ids)]

    return fake_engine(script=script, tokenizer_dir=tokenizer_dir, **engine_args)


# A chat template that shows what reaches it: each message, an assistant's calls with their ids, a tool message's id
CALLS_TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: {{ m.content }}"
    "{% for c in m.tool_calls or [] %}[{{ c.id }} {{ c.function.name }}({{ c.function.arguments | tojson }})]"
    "{% endfor %}{% if m.tool_call_id %} <- {{ m.tool_call_id }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
REPEATED_TEXT = "猫 😺, é!"  # multi-byte characters, a stop string's "!" at its end


def repeating_calls_engine(tokenizer_root: Path) -> LLMEngine:
    """REPEATED_TEXT again and again over a byte-level tokenizer, chats rendered by CALLS_TEMPLATE: what the routes
    that stand for a chat request (Responses, Messages) are tested on."""
    engine = repeating_text_engine(
        REPEATED_TEXT, byte_level_tokenizer(tokenizer_root), step_seconds=0.002, max_model_len=256, num_pages=80
    )
    engine.tokenizer.hf.chat_template = CALLS_TEMPLATE
    return engine


def byte_level_tokenizer(out: Path) -> Path:
    """The tiny tokenizer's specials and chat template over GPT-2's byte-level alphabet, no merges (259 ids)."""
    out.mkdir(parents=True, exist_ok=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab |= {c: 3 + i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = BackendTokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<unk>", "<s>", "</s>"])
    backend.save(str(out / "tokenizer.json"))
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(TINY_TOKENIZER / name, out / name)
    return out

"""A vLLM offline script runs on jllm with only its import line changed (issue 17): vLLM's quick-start generate loop,
``chat`` with content parts, prompt-token-id dicts, the tokenizer's transformers surface, logprobs and
``CompletionOutput.finished()`` — in a fresh process, on the tests' tiny chat model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from server_utils import tiny_chat_model

pytestmark = pytest.mark.slow  # builds an engine in a subprocess

VLLM_SCRIPT = """\
import sys

from vllm import LLM, SamplingParams

prompts = ["Hello, my name is", "The president of the United States is", "The capital of France is"]
sampling_params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=8, seed=0)
llm = LLM(model=sys.argv[1], dtype="float32", max_model_len=256, max_num_seqs=4, max_num_batched_tokens=32)
outputs = llm.generate(prompts, sampling_params)
for output in outputs:
    print(f"Prompt: {output.prompt!r}, Generated text: {output.outputs[0].text!r}")

conversation = [
    {"role": "system", "content": "You are a helpful assistant"},
    {"role": "user", "content": [{"type": "text", "text": "Write an essay about the importance of higher education."}]},
]
outputs = llm.chat(conversation, SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
print("chat", len(outputs[0].outputs[0].token_ids), outputs[0].outputs[0].finish_reason)

tokenizer = llm.get_tokenizer()
text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
ids = tokenizer(text, add_special_tokens=False)["input_ids"]
greedy = SamplingParams(temperature=0, max_tokens=4, logprobs=2)
[by_ids] = llm.generate([{"prompt_token_ids": ids}], greedy)
[by_text] = llm.generate(text, greedy)
assert by_ids.outputs[0].token_ids == by_text.outputs[0].token_ids
assert by_ids.outputs[0].finished() and len(by_ids.outputs[0].logprobs) == 4
assert tokenizer.eos_token_id is not None and len(tokenizer) > 0
print("tokens", tokenizer.convert_ids_to_tokens(list(by_ids.outputs[0].token_ids)))
"""


def test_a_vllm_offline_script_runs_with_only_its_import_changed(
    default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    script = VLLM_SCRIPT.replace("from vllm import", "from jllm import")
    assert sum(a != b for a, b in zip(script.splitlines(), VLLM_SCRIPT.splitlines(), strict=True)) == 1
    (tmp_path / "offline.py").write_text(script)
    model_dir = tiny_chat_model(tmp_path_factory.getbasetemp(), default_model_dir)
    run = subprocess.run(
        [sys.executable, str(tmp_path / "offline.py"), str(model_dir)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert [line.split(",")[0] for line in lines[:3]] == [
        "Prompt: 'Hello",
        "Prompt: 'The president of the United States is'",
        "Prompt: 'The capital of France is'",
    ]
    assert lines[3] == "chat 8 length" and lines[4].startswith("tokens [")

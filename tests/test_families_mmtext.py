"""The text models of the newer multimodal checkpoints against transformers, and the ones refused by name.

Each served family: full-sequence float32 logits within ``LOGITS_RTOL`` of transformers' PyTorch forward (an
image-text checkpoint against transformers' image-text model on text) and, where its decoder runs something no other
greedy row does, greedy ``LLM.generate`` equal to transformers' ``generate``. Rows live here, not in
``tests/test_families.py``'s ``FAMILIES`` (whose rows are seeded by their position).
"""

from __future__ import annotations

import json

import pytest
from model_utils import TINY_CONFIG

from jllm.loader import load_model
from jllm.parallel import make_mesh


@pytest.mark.parametrize(
    "arch, message",
    [
        ("DeepseekV4ForCausalLM", "'DeepseekV4ForCausalLM' is not supported: DeepSeek-V4 keeps compressed KV caches"),
        ("Gemma4AssistantForCausalLM", "'Gemma4AssistantForCausalLM' is not supported: .* drafter for speculative"),
        ("Dots3NoteForCausalLM", "'Dots3NoteForCausalLM' is not supported: dots3-note's .*per_layer_config"),
        ("Dots3NoteForConditionalGeneration", "'Dots3NoteForConditionalGeneration' is not supported: dots3-note"),
        ("InklingForCausalLM", "'InklingForCausalLM' is not supported: Inkling's attention has no rotary"),
        ("InklingForConditionalGeneration", "'InklingForConditionalGeneration' is not supported: Inkling's"),
        ("Inkling2ForCausalLM", "'Inkling2ForCausalLM' is not supported: Inkling 2 keeps .* block attention"),
        ("Inkling2ForConditionalGeneration", "'Inkling2ForConditionalGeneration' is not supported: Inkling 2 "),
        ("Inkling2LoopForCausalLM", "'Inkling2LoopForCausalLM' is not supported: .* loop_num_passes times"),
        ("Inkling2LoopForConditionalGeneration", "'Inkling2LoopForConditionalGeneration' is not supported: Inkling"),
    ],
)
def test_architecture_jllm_cannot_serve_is_refused_at_load_naming_what_it_needs(tmp_path, arch, message):
    (tmp_path / "config.json").write_text(json.dumps({**TINY_CONFIG, "architectures": [arch]}))
    with pytest.raises(ValueError, match=message):
        load_model(tmp_path, mesh=make_mesh(1), load_format="dummy")

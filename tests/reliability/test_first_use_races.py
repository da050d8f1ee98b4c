"""What a server loads on first use, loaded by two requests at once: both get what they asked for.

transformers' lazy top-level module is not thread-safe. A chat request's renderer (``Tokenizer.hf``) and a structured
request's llguidance tokenizer (``GrammarCompiler.tokenizer``, whose ``llguidance.hf`` imports transformers) are each
built on a worker thread; the first of each kind at once had broken the other's import, a 500 to its client. Each
case runs in a fresh interpreter, where transformers is not imported yet.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from fake_runner import TINY_TOKENIZER, VOCAB_SIZE

pytestmark = pytest.mark.slow  # a fresh interpreter importing transformers: ~4 s

RACE = """
import threading
from jllm.structured_output import GrammarCompiler
from jllm.tokenizer import Tokenizer

renderer, grammars = Tokenizer.from_pretrained({path!r}), Tokenizer.from_pretrained({path!r})
compiler = GrammarCompiler(grammars, {vocab}, [2])
errors = []

def build(load):
    try:
        load()
    except Exception as e:
        errors.append(repr(e))

threads = [threading.Thread(target=build, args=(f,)) for f in (lambda: renderer.hf, lambda: compiler.tokenizer)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(errors)
"""


def test_a_chat_renderer_and_a_grammar_tokenizer_built_at_once_both_load() -> None:
    """Before: AttributeError "module 'transformers' has no attribute 'PreTrainedTokenizerFast'" in 6 runs of 6."""
    script = textwrap.dedent(RACE).format(path=str(TINY_TOKENIZER), vocab=VOCAB_SIZE)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"

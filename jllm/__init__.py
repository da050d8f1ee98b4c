"""jllm: a JAX/XLA inference engine for large language models.

``from jllm import LLM, SamplingParams`` mirrors vLLM. The names load lazily so ``import jllm`` (the CLI's argument
parsing, the server's schemas) does not pay for importing JAX. Importing the package first points Python's bytecode
cache into jllm's own where the environment keeps none (``jllm.bytecode_cache``), before JAX is imported.

Where this module sits: docs/architecture.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jllm import bytecode_cache

bytecode_cache.enable()

if TYPE_CHECKING:
    from jllm.inputs import TextPrompt, TokensPrompt
    from jllm.llm import LLM
    from jllm.lora.request import LoRARequest
    from jllm.outputs import (
        CompletionOutput,
        ContinuationScore,
        EmbeddingRequestOutput,
        PoolingRequestOutput,
        RequestOutput,
    )
    from jllm.repetition import RepetitionDetectionParams
    from jllm.sampling import SamplingParams
    from jllm.structured_output import StructuredOutputsParams

_EXPORTS = {
    "LLM": "jllm.llm",
    "SamplingParams": "jllm.sampling",
    "StructuredOutputsParams": "jllm.structured_output",
    "RepetitionDetectionParams": "jllm.repetition",
    "RequestOutput": "jllm.outputs",
    "CompletionOutput": "jllm.outputs",
    "PoolingRequestOutput": "jllm.outputs",
    "EmbeddingRequestOutput": "jllm.outputs",
    "ContinuationScore": "jllm.outputs",
    "LoRARequest": "jllm.lora.request",
    "TextPrompt": "jllm.inputs",
    "TokensPrompt": "jllm.inputs",
}
__all__ = [
    "LLM",
    "SamplingParams",
    "StructuredOutputsParams",
    "RepetitionDetectionParams",
    "RequestOutput",
    "CompletionOutput",
    "PoolingRequestOutput",
    "EmbeddingRequestOutput",
    "ContinuationScore",
    "LoRARequest",
    "TextPrompt",
    "TokensPrompt",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":  # vLLM's ``vllm.__version__``: the installed distribution's, read on first use
        return _version()
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jllm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)


def _version() -> str:
    """The installed distribution's version; run from a checkout that was never installed (the GPU image, with the
    tree on PYTHONPATH), the version its pyproject.toml names: ``jllm serve`` builds ``--version`` at start-up."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jllm")
    except PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"]

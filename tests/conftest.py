"""Shared fixtures."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled default model (SmolLM2-135M-Instruct), converted once per test session into a temporary cache."""
    from jllm.model_source import resolve_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JLLM_CACHE", str(tmp_path_factory.mktemp("jllm_cache")))
        return resolve_model(None)

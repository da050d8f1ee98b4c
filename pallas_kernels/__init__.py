"""PagedAttention kernels and their pure-jnp references (see docs/architecture.md, "Attention paths").

Where this module sits: docs/architecture.md.
"""

from pallas_kernels.ragged_paged_attention import KernelConfig, default_config, ragged_paged_attention
from pallas_kernels.reference import PADDING_SLOT, ref_ragged_paged_attention, write_kv

__all__ = [
    "PADDING_SLOT", "KernelConfig", "default_config", "has_jax_triton", "ragged_paged_attention",
    "ref_ragged_paged_attention", "write_kv",
]  # fmt: skip


def has_jax_triton() -> bool:
    """Whether the jax-triton kernels (``triton_prefill``, ``fp8_gemv``) can be launched: the package is installed
    (the ``gpu`` extra); they compile for CUDA devices only."""
    try:
        import jax_triton  # noqa: F401
    except ImportError:
        return False
    return True

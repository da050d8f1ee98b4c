"""PagedAttention kernels and their pure-jnp references (see docs/architecture.md, "Attention paths").

Where this module sits: docs/architecture.md.
"""

from pallas_kernels.ragged_paged_attention import KernelConfig, default_config, ragged_paged_attention
from pallas_kernels.reference import ref_ragged_paged_attention, write_kv

__all__ = ["KernelConfig", "default_config", "ragged_paged_attention", "ref_ragged_paged_attention", "write_kv"]

"""PagedAttention kernels and their pure-jnp references (see ARCHITECTURE.md, "Attention paths")."""

from pallas_kernels.reference import ref_ragged_paged_attention, write_kv

__all__ = ["ref_ragged_paged_attention", "write_kv"]

"""``LoRARequest``: which adapter a request runs with, as vLLM names it."""

from __future__ import annotations

import dataclasses
import hashlib


@dataclasses.dataclass(frozen=True)
class LoRARequest:
    """vLLM's ``LoRARequest(lora_name, lora_int_id, lora_path)``: ``lora_int_id`` (>= 1) is the adapter's identity
    in the engine, ``lora_path`` a PEFT folder (adapter_config.json + adapter_model.safetensors)."""

    lora_name: str
    lora_int_id: int
    lora_path: str

    def __post_init__(self) -> None:
        if not isinstance(self.lora_int_id, int) or isinstance(self.lora_int_id, bool) or self.lora_int_id < 1:
            raise ValueError(f"lora_int_id={self.lora_int_id!r} must be an integer >= 1 (0 means no adapter)")
        if not self.lora_name:
            raise ValueError("lora_name must be non-empty")

    @property
    def prefix_hash_root(self) -> bytes:
        """What the prefix cache chains this adapter's page hashes from: K/V computed under one adapter never serve
        another (nor the base model)."""
        key = f"lora\0{self.lora_int_id}\0{self.lora_name}\0{self.lora_path}"
        return hashlib.sha256(key.encode()).digest()

"""Multi-LoRA serving: PEFT adapters applied per request beside the base weights (vLLM's ``enable_lora``).

``request`` (``LoRARequest``, vLLM's), ``peft_files`` (a PEFT folder read into the fused projections' layout),
``slots`` (which adapter sits in which device slot, plain Python), ``manager`` (the adapters known, their slots and
the device arrays the step programs take). The maths is ``jllm.models.lora``.

Where this package sits: docs/architecture.md.
"""

from jllm.lora.request import LoRARequest

__all__ = ["LoRARequest"]

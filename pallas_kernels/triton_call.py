"""``jax_triton.triton_call``, lowered as the XLA FFI call that command buffers capture.

jax-triton 0.3.1 lowers every kernel as the legacy custom call ``triton_kernel_call`` (``api_version=2``). XLA's
command buffers (the CUDA graphs a compiled step runs as) do not take legacy calls, so each of a step's Triton calls
splits its graph into pieces launched from the host. The CUDA plugin of jax >= 0.10.1 also registers
``triton_kernel_call_ffi``: the same kernel-call proto, passed as the ``opaque`` attribute of a typed FFI call, which
command buffers record by tracing the call (again whenever its buffers move; jax-triton's own main branch lowers to
it). ``triton_call`` here lowers through jax-triton as before, then swaps its legacy op for that FFI call. On an H200
(2026-12-04, docs/benchmarks.md) the FP8 decode step ran no faster either way: its host launch cost stayed 1.2-2.7 ms.
The FFI handler checks that every pointer is 16-byte aligned, as jax-triton compiles kernels to assume.

While jax-triton compiles, Triton's active driver is a stand-in that names the CUDA target of JAX's first GPU
(``set_triton_target``): Triton's code generator asks the active driver for the target (``current_target``), and
Triton 3.6 makes its real driver by asking each backend whether its device is active, which CUDA's and AMD's answer
by importing torch, then building CUDA's driver, which imports torch again. A cold Llama-3-8B start on an H100 spent
6.8 s of its main thread importing torch there (2026-12-05, profile_startup.py --main-thread-profile), where nothing
of jllm's uses it. Anything else asked of the stand-in is passed on to Triton's real driver, made then.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.interpreters import mlir
from jaxlib.mlir import ir

LEGACY_TARGET = "triton_kernel_call"
FFI_TARGET = "triton_kernel_call_ffi"


def triton_call(*args: Any, **kwargs: Any) -> Any:
    """``jax_triton.triton_call`` with the FFI lowering installed and Triton's target set (see the module's
    docstring)."""
    import jax_triton

    _use_jax_gpu_target()
    _install_ffi_lowering()
    return jax_triton.triton_call(*args, **kwargs)


class TargetDriver:
    """Triton's active driver as far as compiling goes: the target; every other attribute is the real driver's."""

    def __init__(self, capability: int, real_driver: Callable[[], Any]) -> None:
        self.capability = capability
        self._real_driver = real_driver

    def get_current_target(self) -> Any:
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", self.capability, 32)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real_driver(), name)


def set_triton_target(compute_capability: str) -> None:
    """Makes a ``TargetDriver`` of ``compute_capability`` (JAX's form, "9.0") Triton's active driver."""
    from triton.runtime import driver

    major, minor = compute_capability.split(".")
    driver.set_active(TargetDriver(10 * int(major) + int(minor), lambda: driver.default))


@functools.cache
def _use_jax_gpu_target() -> None:
    """``set_triton_target`` for JAX's first GPU, once per process; nothing without one (the CPU's tests)."""
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if gpus:
        set_triton_target(gpus[0].compute_capability)


@functools.cache
def _install_ffi_lowering() -> None:
    """Replaces jax-triton's CUDA lowering rule of its primitive, once per process."""
    from jax_triton import triton_lib

    legacy = functools.partial(triton_lib.triton_kernel_call_lowering, triton_lib.get_cuda_backend)
    mlir.register_lowering(triton_lib.triton_kernel_call_p, functools.partial(lower_as_ffi, legacy), platform="cuda")


def lower_as_ffi(
    legacy_rule: Callable[..., Sequence[ir.Value]], ctx: mlir.LoweringRuleContext, *args: ir.Value, **params: Any
) -> Sequence[ir.Value]:
    """Lowers with ``legacy_rule`` (which compiles the kernel and emits the legacy custom call), then emits the FFI
    call with the legacy op's kernel-call proto and the same operands and aliases, and erases the legacy op."""
    legacy_results = legacy_rule(ctx, *args, **params)
    op = legacy_results[0].owner.operation
    target = ir.StringAttr(op.attributes["call_target_name"]).value
    if target != LEGACY_TARGET:
        raise ValueError(f"expected jax-triton to emit the custom call {LEGACY_TARGET!r}, got {target!r}")
    opaque = ir.StringAttr(op.attributes["backend_config"]).value_bytes
    aliases = dict(params.get("input_output_aliases") or ())
    results = jax.ffi.ffi_lowering(FFI_TARGET, operand_output_aliases=aliases or None)(ctx, *args, opaque=opaque)
    op.erase()
    return results

"""``jax_triton.triton_call``, lowered as the XLA FFI call that command buffers capture.

jax-triton 0.3.1 lowers every kernel as the legacy custom call ``triton_kernel_call`` (``api_version=2``). XLA's
command buffers (the CUDA graphs a compiled step runs as) do not take legacy calls, so each of a step's Triton calls
splits its graph into pieces launched from the host. The CUDA plugin of jax >= 0.10.1 also registers
``triton_kernel_call_ffi``: the same kernel-call proto, passed as the ``opaque`` attribute of a typed FFI call, which
command buffers record by tracing the call (again whenever its buffers move; jax-triton's own main branch lowers to
it). ``triton_call`` here lowers through jax-triton as before, then swaps its legacy op for that FFI call. On an H200
(2026-12-04, docs/benchmarks.md) the FP8 decode step ran no faster either way: its host launch cost stayed 1.2-2.7 ms.
The FFI handler checks that every pointer is 16-byte aligned, as jax-triton compiles kernels to assume.

Triton's argument specializer (``native_specialize_impl``, which jax-triton calls before compiling a kernel) imports
torch the first time it runs in Triton 3.6, to recognise torch tensors: a cold Llama-3-8B start on an H100 spent 6.8 s
of its main thread there (2026-12-05, profile_startup.py --main-thread-profile), where nothing of jllm's uses torch.
``triton_call`` first runs it once with torch's import refused (``init_specializer_without_torch``): it then goes on
without torch's tensor type, which jax-triton's arguments (stand-ins with ``data_ptr``) never need, and torch stays
importable. Triton 3.8 no longer imports torch there.
"""

from __future__ import annotations

import functools
import importlib.abc
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.interpreters import mlir
from jaxlib.mlir import ir

LEGACY_TARGET = "triton_kernel_call"
FFI_TARGET = "triton_kernel_call_ffi"


def triton_call(*args: Any, **kwargs: Any) -> Any:
    """``jax_triton.triton_call`` with the FFI lowering installed and Triton's specializer initialised without torch
    (see the module's docstring)."""
    import jax_triton

    init_specializer_without_torch()
    _install_ffi_lowering()
    return jax_triton.triton_call(*args, **kwargs)


class _NoTorch(importlib.abc.MetaPathFinder):
    """An import finder that refuses torch (Triton 3.6's specializer clears the ImportError and goes on)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torch":
            raise ImportError("torch is kept out of Triton's argument specializer (pallas_kernels.triton_call)")


@functools.cache
def init_specializer_without_torch() -> None:
    """Runs Triton's argument specializer once with torch's import refused, unless torch is imported already (see the
    module's docstring); torch is importable again after."""
    if "torch" in sys.modules:
        return
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    finder = _NoTorch()
    sys.meta_path.insert(0, finder)
    try:
        native_specialize_impl(BaseBackend, 1, False, True, True)
    finally:
        sys.meta_path.remove(finder)


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

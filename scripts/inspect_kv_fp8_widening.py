"""What Triton makes of an FP8 KV tile widened to bf16 or to f16 before the attention's dots, compiled ahead of time
for sm_90 (no GPU needed): a decode-shaped toy of the Pallas kernel's inner loop (16 query rows, 128-key tiles of
head width 128, QK^T, exp2, PV), its PTX's converts, MMA instructions and instruction count per widening.

Why: over an FP8 pool the Pallas decode kernel took longer than over a bf16 one (H200, 2026-12-05, 64 x 8k Llama-3-8B
decode step: 13.6 against 10.3 ms of attention a step) though it reads half the bytes; ``pallas_kernels.
ragged_paged_attention.FP8_COMPUTE_DTYPE`` is the widening this compares.

    python scripts/inspect_kv_fp8_widening.py
"""

from __future__ import annotations

import collections
import re

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

ROWS, KEYS, WIDTH, BLOCKS = 16, 128, 128, 8


@triton.jit
def _tile_loop(
    q_ptr, k_ptr, o_ptr, F16: tl.constexpr, R: tl.constexpr, KV: tl.constexpr, D: tl.constexpr, N: tl.constexpr
):
    rows = tl.arange(0, R)[:, None] * D + tl.arange(0, D)[None, :]
    q = tl.load(q_ptr + rows)
    if F16:
        q = q.to(tl.float16)
    keys = tl.arange(0, KV)[:, None] * D + tl.arange(0, D)[None, :]
    acc = tl.zeros((R, D), tl.float32)
    for i in range(N):
        k = tl.load(k_ptr + i * KV * D + keys).to(q.dtype)
        p = tl.exp2(tl.dot(q, tl.trans(k)))
        acc += tl.dot(p.to(k.dtype), k)
    tl.store(o_ptr + rows, acc)


def ptx(f16: bool) -> str:
    signature = {"q_ptr": "*bf16", "k_ptr": "*fp8e4nv", "o_ptr": "*fp32"}
    constants = {"F16": f16, "R": ROWS, "KV": KEYS, "D": WIDTH, "N": BLOCKS}
    signature.update(dict.fromkeys(constants, "constexpr"))
    aligned = {(i,): [["tt.divisibility", 16]] for i in range(3)}
    source = ASTSource(fn=_tile_loop, signature=signature, constexprs=constants, attrs=aligned)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]


def main() -> None:
    print(f"triton {triton.__version__}, sm_90, {ROWS} rows x {KEYS} keys x {WIDTH}, {BLOCKS} tiles")
    for name, f16 in (("bf16", False), ("f16", True)):
        text = ptx(f16)
        body = [
            s
            for s in (line.strip() for line in text.splitlines())
            if s and not s.startswith((".", "//", "$", "{", "}"))
        ]
        converts = collections.Counter(re.findall(r"\bcvt\.[\w.]+", text))
        mma = collections.Counter(re.findall(r"\b(?:wgmma|mma)\.[\w.]+", text))
        print(f"widened to {name}: {len(body)} instructions; converts {dict(converts)}; MMA {dict(mma)}")


if __name__ == "__main__":
    main()

"""What Triton makes of the FP8-weight kernel's tilings: each compiled for a CUDA GPU ahead of time (no GPU needed;
on a GPU machine its own compute capability), summarised from the PTX and the cubin.

Per Llama-3-8B shape, row count and kernel variant of ``scripts/bench_fp8_gemv.py --check`` (the widening default,
W8A8 swapped and not, ``[K, N]`` and ``[N, K]`` weights, 64-row tiles): the MMA instructions (``wgmma`` with e4m3
operands is Hopper's FP8 tensor-core path; ``mma.sync`` on f16 means the e4m3 operands were widened), how many
e4m3 -> f16 widening and f32 -> e4m3 quantizing converts the PTX holds, asynchronous copies (the pipelined loads),
byte permutes (a tile transposed in registers), shared memory and registers. Triton's version is the machine's: run
it where the kernel runs (or put that version first on PYTHONPATH: only ``triton`` itself is needed).

    python scripts/inspect_fp8_gemv.py --rows 1,32 --shapes gate_up,down --json $OUT/inspect.json
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import triton
from bench_fp8_gemv import SHAPES, check_variants, describe

from pallas_kernels.fp8_gemv import compile_for_cuda

PTX_COUNTS = {  # what each count means: PTX instruction patterns
    "widen": r"cvt\.rn\.f16x2\.e4m3x2",  # e4m3 -> f16, two at a time
    "quantize": r"cvt\.rn\.satfinite\.e4m3x2\.f32",  # f32 -> e4m3, two at a time
    "cp_async": r"cp\.async\.(?:ca|cg)|cp\.async\.bulk",  # loads copied asynchronously into shared memory
    "permute": r"\bprmt\.b32",  # byte permutes: e4m3 tiles transposed in registers on their way to shared memory
}


def summarise(compiled: Any) -> dict[str, Any]:
    ptx = compiled.asm["ptx"]
    mmas = collections.Counter(re.findall(r"\b(wgmma\.mma_async\.[\w.]+|mma\.sync\.[\w.]+)", ptx))
    out: dict[str, Any] = {"mma": sorted(mmas), "shared": compiled.metadata.shared}
    out.update({name: len(re.findall(pattern, ptx)) for name, pattern in PTX_COUNTS.items()})
    out["registers"] = registers(compiled.asm["cubin"])
    return out


def registers(cubin: bytes) -> int | None:
    """Registers per thread, from the cubin by the cuobjdump that Triton ships (None where it is missing)."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+)", usage)
    return int(found.group(1)) if found else None


def capability() -> int:
    """The local GPU's compute capability as Triton numbers it (90 for an H200), or 90 without a GPU."""
    import jax

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        return 90
    major, minor = str(gpus[0].compute_capability).split(".")
    return int(major) * 10 + int(minor)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="1,32", help="activation rows")
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"of {', '.join(SHAPES)}")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if unknown := set(args.shapes.split(",")) - set(SHAPES):
        p.error(f"--shapes: unknown {sorted(unknown)}; choose from {', '.join(SHAPES)}")
    cc = capability()
    print(f"# triton {triton.__version__}, compiled for sm_{cc}")
    rows = []
    for name in args.shapes.split(","):
        k, n = SHAPES[name]
        for m in (int(r) for r in args.rows.split(",")):
            for v in check_variants(m, k, n):
                if v.config is None:
                    continue
                row = dict(shape=name, rows=m, variant=v.name, tiling=describe(dataclasses.asdict(v.config)))
                try:
                    row.update(summarise(compile_for_cuda(m, k, n, v.config, v.weights == "fp8_t", cc)))
                except Exception as e:  # noqa: BLE001 - a tiling Triton cannot compile is a row of the report
                    row["error"] = str(e)[:300]
                print_row(row)
                rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


def print_row(r: dict[str, Any]) -> None:
    head = f"  {r['shape']:8} M={r['rows']:<3} {r['variant']:28} {r['tiling']:32}"
    if "error" in r:
        print(f"{head} ERROR {r['error'][:120]}", flush=True)
        return
    print(
        f"{head} {','.join(r['mma']) or 'no MMA'}; widen {r['widen']} quantize {r['quantize']} cp.async "
        f"{r['cp_async']} prmt {r['permute']}; shared {r['shared']} B, {r['registers']} regs",
        flush=True,
    )


if __name__ == "__main__":
    main()

"""Generates the Python gRPC stubs of proto/jllm/v1/*.proto into jllm/v1/ (messages, type stubs, service).

The stubs are checked in, so installing jllm needs no protoc; tests/test_grpc_api.py regenerates them into a
temporary directory and fails if they differ from the checked-in files. Run this after editing a .proto:

    python scripts/generate_grpc_stubs.py            (writes jllm/v1/)
    python scripts/generate_grpc_stubs.py --out DIR  (writes DIR/jllm/v1/)

The proto package ``jllm.v1`` is the Python package ``jllm.v1``: the generated ``from jllm.v1 import ...`` lines
then import as they are, with no path rewriting.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "jllm" / "v1").glob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Writes the stubs under ``out`` (``out/jllm/v1/...``); returns the files written."""
    from grpc_tools import protoc  # a test/dev dependency: only regenerating needs it

    out.mkdir(parents=True, exist_ok=True)
    protos = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    if protoc.main([*args, *protos]) != 0:
        raise SystemExit(f"protoc failed on {', '.join(protos)}")
    return sorted(p for p in (out / "jllm" / "v1").iterdir() if p.name != "__init__.py")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="root to write jllm/v1/ under (default: the repo)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)


if __name__ == "__main__":
    main()

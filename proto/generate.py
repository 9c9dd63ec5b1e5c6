"""Regenerate the Python code for proto/: `python proto/generate.py [OUT_DIR]`.

The output lands in the package itself (`singleton/v1/*_pb2.py`), because the proto package
`singleton.v1` maps onto the Python package `singleton.v1`. A test regenerates into a temp dir
and fails on any difference, so the committed code always matches the .proto files.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    # protoc finds the mypy-protobuf plugin on PATH; it sits beside this interpreter in a venv.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")

    sources = sorted(PROTO_DIR.glob("singleton/v1/*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        *[str(s) for s in sources],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_dir / "singleton" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(target):
        print(path)

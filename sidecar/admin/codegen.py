"""Generate the admin API's Python code: `python -m sidecar.admin.codegen [--out DIR]` (`make protos`).

The proto lives at ``protos/sidecar/v1/admin.proto`` (package ``sidecar.v1``) but its Python modules
must be importable as ``sidecar.admin.v1``. protoc derives both the output path and the import in
the generated gRPC module (``from <dir> import admin_pb2``) from the proto's path *as protoc sees
it*, so instead of rewriting imports afterwards the include flag maps the directory:

    -Isidecar/admin/v1=protos/sidecar/v1

protoc then knows the file as ``sidecar/admin/v1/admin.proto``, writes
``<out>/sidecar/admin/v1/admin_pb2.py``, ``admin_pb2.pyi`` and ``admin_pb2_grpc.py``, and the gRPC
module imports ``from sidecar.admin.v1 import admin_pb2``: no post-processing, nothing to drift.
The package name (``sidecar.v1``, so the service is ``/sidecar.v1.Admin/...``) is unaffected.

``--out`` defaults to the project root, overwriting the committed code; the freshness test
(tests/unit/test_protos_fresh.py) generates into a temporary directory and compares.

The generated code checks at import time that the installed protobuf and grpcio are at least
the versions of the grpcio-tools that generated it; pyproject.toml's floors follow that.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
PROTO = ROOT / "protos" / "sidecar" / "v1" / "admin.proto"
PACKAGE_DIR = Path("sidecar") / "admin" / "v1"  # where the modules go, relative to the output root
GENERATED = ("admin_pb2.py", "admin_pb2.pyi", "admin_pb2_grpc.py")


def protoc_args(out: Path) -> list[str]:
    well_known = resources.files("grpc_tools") / "_proto"
    return [
        "grpc_tools.protoc",
        f"-I{PACKAGE_DIR.as_posix()}={PROTO.parent}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO),
    ]


def generate(out: Path) -> list[Path]:
    """Run protoc; return the generated files (under `out`/sidecar/admin/v1)."""
    from grpc_tools import protoc

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    code = protoc.main(protoc_args(out))
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    return [out / PACKAGE_DIR / name for name in GENERATED]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidecar.admin.codegen", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the project root)")
    args = parser.parse_args(argv)
    try:
        for path in generate(args.out):
            print(path)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

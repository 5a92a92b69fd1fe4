"""The committed admin API code (sidecar/admin/v1) is what `make protos` generates from protos/."""

from __future__ import annotations

import re
from pathlib import Path

from sidecar.admin import codegen

# Version stamps that follow the installed grpcio-tools, not the proto: a newer grpcio-tools with
# the same output otherwise is not "stale" (pyproject's floors say which versions run the code).
_VERSION_STAMPS = (
    re.compile(r"^# Protobuf Python Version: .*$", re.MULTILINE),
    re.compile(r"_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)", re.DOTALL),
    re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.MULTILINE),
)


def _normalised(text: str) -> str:
    for pattern in _VERSION_STAMPS:
        text = pattern.sub("<version>", text)
    return text


def test_committed_code_matches_the_proto(tmp_path: Path) -> None:
    generated = codegen.generate(tmp_path)
    committed_dir = codegen.ROOT / codegen.PACKAGE_DIR
    stale = []
    for path in generated:
        committed = committed_dir / path.name
        if not committed.exists():
            stale.append(f"{committed} is missing")
        elif _normalised(committed.read_text()) != _normalised(path.read_text()):
            stale.append(f"{committed} differs from what protoc generates")
    assert not stale, "stale generated code, run `make protos`:\n" + "\n".join(stale)


def test_generated_modules_import_as_sidecar_admin_v1() -> None:
    from sidecar.admin.v1 import admin_pb2, admin_pb2_grpc

    assert admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name == "sidecar.v1.Admin"
    assert hasattr(admin_pb2_grpc, "AdminStub")
    grpc_source = (codegen.ROOT / codegen.PACKAGE_DIR / "admin_pb2_grpc.py").read_text()
    assert "from sidecar.admin.v1 import admin_pb2" in grpc_source

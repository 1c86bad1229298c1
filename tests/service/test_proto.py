"""The committed gRPC code is exactly what the schema in proto/ generates."""

from __future__ import annotations

from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "src" / "secagg" / "service" / "v1"
FILES = ("coordinator_pb2.py", "coordinator_pb2.pyi", "coordinator_pb2_grpc.py")


def test_regenerating_the_grpc_code_changes_nothing(tmp_path: Path) -> None:
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(ROOT / "proto" / "secagg" / "service" / "v1" / "coordinator.proto"),
        ]
    )
    assert status == 0
    for name in FILES:
        fresh = (tmp_path / "secagg" / "service" / "v1" / name).read_text()
        assert fresh == (GENERATED / name).read_text(), f"{name} is stale: run make proto"

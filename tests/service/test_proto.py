"""The committed gRPC code is exactly what the schema in proto/ generates."""

from __future__ import annotations

from pathlib import Path

from grpc_tools import protoc

from secagg.service.v1 import coordinator_pb2 as pb

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


def test_the_frames_before_sessions_keep_their_bytes() -> None:
    """Sessions added a frame (``SessionTask``); every frame there was before is the same
    bytes, so a client or coordinator of before reads them as it did (the bytes are those
    the schema before sessions wrote)."""
    frames = [
        pb.ServerFrame(task=pb.Task(round_id=7, round_config=b"cfg", model=b"\0\1\2\3", step=2)),
        pb.ServerFrame(protocol=b"SA\x01\x07xyz"),
        pb.ServerFrame(
            round_end=pb.RoundEnd(round_id=7, completed=True, included=True, reason="r")
        ),
        pb.ServerFrame(queued=pb.Queued(round_id=7, position=3, window=2)),
        pb.ServerFrame(welcome=pb.Welcome(client_id=4, max_message_bytes=99)),
        pb.ClientFrame(abort=pb.ClientAbort(round_id=7, reason="x", detail="y")),
    ]
    assert [f.SerializeToString().hex() for f in frames] == [
        "1a0f08071a036366672204000102032802",
        "22075341010778797a",
        "2a09080710011801220172",
        "3a06080710031802",
        "120408041063",
        "1a0808071201781a0179",
    ]
    session = pb.ServerFrame(
        session_task=pb.SessionTask(round_id=7, round_task=b"t", model=b"m", step=2)
    )
    assert session.WhichOneof("body") == "session_task"

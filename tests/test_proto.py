"""The generated code in singleton/v1 is exactly what proto/ generates (grpcio-tools + mypy-protobuf)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_reproducible(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    generated = module.generate(tmp_path)
    assert {p.name for p in generated} >= {"leader_pb2.py", "leader_pb2.pyi", "admin_pb2.py", "admin_pb2_grpc.py"}
    for path in generated:
        committed = ROOT / "singleton" / "v1" / path.name
        assert committed.exists(), f"{path.name} is generated but not committed: run python proto/generate.py"
        assert committed.read_text() == path.read_text(), f"{path.name} differs: run python proto/generate.py"
    committed_names = {p.name for p in (ROOT / "singleton" / "v1").glob("*_pb2*.py*")}
    assert committed_names == {p.name for p in generated}, "a committed file has no .proto any more"


def test_leader_record_round_trip() -> None:
    from singleton.core.records import decode_leader, leader_record

    record = decode_leader(leader_record("pod-1", 0xABC, 1700000000.5))
    assert record is not None and record.replica_id == "pod-1" and record.lease_id == 0xABC
    assert decode_leader(b"\xff\xff\xff") is None
    assert sys.modules["singleton.v1.leader_pb2"].LeaderRecord.DESCRIPTOR.full_name == "singleton.v1.LeaderRecord"

"""The values stored in etcd: protobuf messages from proto/singleton/v1/leader.proto."""
from __future__ import annotations

import os
import socket

from google.protobuf.message import DecodeError

from singleton.v1.leader_pb2 import Handover, LeaderRecord

__all__ = ["Handover", "LeaderRecord", "leader_record", "decode_leader", "decode_handover"]


def leader_record(replica_id: str, lease_id: int, elected_at_unix_s: float) -> bytes:
    return LeaderRecord(replica_id=replica_id, host=socket.gethostname(), pid=os.getpid(),
                        elected_at_unix_s=elected_at_unix_s, lease_id=lease_id).SerializeToString()


def decode_leader(data: bytes) -> LeaderRecord | None:
    """None for a value this version cannot read (someone else's key, or garbage)."""
    try:
        return LeaderRecord.FromString(data)
    except DecodeError:
        return None


def decode_handover(data: bytes) -> Handover | None:
    try:
        return Handover.FromString(data)
    except DecodeError:
        return None

"""The values stored in etcd: protobuf messages from proto/singleton/v1/ (leader.proto, run.proto)."""
from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from singleton.v1.leader_pb2 import Handover, LeaderRecord
from singleton.v1.run_pb2 import RunEntry, RunRecord

__all__ = ["Handover", "LeaderRecord", "RunEntry", "RunRecord", "leader_record", "decode_leader", "decode_handover",
           "decode_run", "decode_entry"]

M = TypeVar("M", bound=Message)


def leader_record(replica_id: str, lease_id: int, elected_at_unix_s: float, sense_address: str = "",
                  sense_nonce: str = "", jobs: Sequence[str] = ()) -> bytes:
    """`sense_address` empty: standbys cannot sense this leader's death (fast failover off); a record written by a
    version without it decodes the same way. `jobs`: the named jobs this replica runs (for job control's checks)."""
    return LeaderRecord(replica_id=replica_id, host=socket.gethostname(), pid=os.getpid(),
                        elected_at_unix_s=elected_at_unix_s, lease_id=lease_id, sense_address=sense_address,
                        sense_nonce=sense_nonce, jobs=jobs).SerializeToString()


def _decode(message: type[M], data: bytes) -> M | None:
    """None for a value this version cannot read (someone else's key, or garbage)."""
    try:
        return message.FromString(data)
    except DecodeError:
        return None


def decode_leader(data: bytes) -> LeaderRecord | None:
    return _decode(LeaderRecord, data)


def decode_handover(data: bytes) -> Handover | None:
    return _decode(Handover, data)


def decode_run(data: bytes) -> RunRecord | None:
    return _decode(RunRecord, data)


def decode_entry(data: bytes) -> RunEntry | None:
    return _decode(RunEntry, data)

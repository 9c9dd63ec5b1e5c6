"""`python -m singleton.chaos.broken run ...`: a deliberately broken replica that ignores its lease.

It never steps down on its own (no remaining-TTL check, no failed-renewal count), and it claims no run in etcd
(`--run-record off`): the claim's compare on the leader key would refuse a cut-off or thawed leader's next slot
and so hide its broken lease handling. It exists only to prove that the chaos invariants can fail: a cut-off or
paused leader of this kind goes on ticking while a standby takes over, the ledger shows the overlap, and the
run-record check finds ticks that etcd's history never heard of.
"""
from __future__ import annotations

import os
import sys

# Set to 1 to keep the run record on: then etcd refuses the broken replica's claims once its term is over,
# which is what the record is for (the default, off, is the replica as it was before the record existed).
KEEP_RECORD_ENV = "SINGLETON_CHAOS_BROKEN_KEEPS_RECORD"


def main() -> int:
    from singleton.core.lease import LeaseKeeper

    LeaseKeeper.step_down_reason = lambda self, now: None  # type: ignore[method-assign]
    from singleton.ops.cli import main as cli_main

    args = sys.argv[1:]
    if os.environ.get(KEEP_RECORD_ENV) != "1":
        args += ["--run-record", "off"]  # the last flag wins
    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())

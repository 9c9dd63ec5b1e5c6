"""`python -m singleton.chaos.clockstep run ...`: `singleton run` whose wall clock can be stepped from outside.

The harness writes an offset in seconds to the file named by $SINGLETON_CHAOS_CLOCK_FILE; from then on
every wall-clock read of singleton (its Clock, and the ledger job) is off by that much, as after an NTP
step or a manual `date -s`. The monotonic clock is left alone, as a real wall-clock step leaves it.

Why not libfaketime: with its monotonic clock left real, its 0.9.10 build makes every sleep fail with
EINVAL; faking both clocks would test an impossible case (a monotonic clock that goes back). Why not
patch `time.time` for the whole process: gRPC's Python layer turns timeouts into deadlines with
`time.time()` while its C core reads the real clock, so every call would time out at once, which no
real clock step does (both read the same clock then).
"""
from __future__ import annotations

import os
import sys
import threading
import time

CLOCK_FILE_ENV = "SINGLETON_CHAOS_CLOCK_FILE"


class _SteppedTime:
    """The `time` module as singleton's modules see it: all real, but for a stepped `time()`."""

    def __init__(self, offset: list[float]) -> None:
        self._offset = offset

    def time(self) -> float:
        return time.time() + self._offset[0]

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def install(path: str) -> None:
    from singleton.core import clock
    from singleton.dev import ledger

    offset = [0.0]

    def read() -> None:
        try:
            offset[0] = float(open(path).read().strip() or 0)
        except (OSError, ValueError):
            pass

    def poll() -> None:
        while True:
            read()
            time.sleep(0.05)

    read()  # a replica started on a skewed host is skewed from its first clock read on

    threading.Thread(target=poll, daemon=True, name="chaos-clock").start()
    stepped = _SteppedTime(offset)
    clock.time = stepped  # type: ignore[assignment]
    ledger.time = stepped  # type: ignore[assignment]


def main() -> int:
    install(os.environ[CLOCK_FILE_ENV])
    from singleton.ops.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())

"""Starting child processes for tests."""
from __future__ import annotations

import signal


def default_sigint() -> None:
    """`preexec_fn` for a child a test sends SIGINT: a shell starts background jobs (`cmd &`, as CI runners and
    nohup'ed scripts do) with SIGINT ignored, children inherit that, and Python then never sees Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

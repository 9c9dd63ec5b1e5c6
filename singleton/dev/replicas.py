"""Real `singleton run` processes writing to a tick ledger: for the process tests, the demo and chaos."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from singleton.dev.ledger import HOLD_ENV, LEDGER_ENV, Tick, read_ledger

LEDGER_JOB = "singleton.dev.ledger:record_tick"


class ReplicaSet:
    def __init__(self, workdir: Path, endpoints: str, name: str, extra_args: list[str] | None = None,
                 hold_s: float = 0.05) -> None:
        self.workdir, self.endpoints, self.name = workdir, endpoints, name
        self.ledger = workdir / "ledger.jsonl"
        self.extra_args = extra_args or []
        self.hold_s = hold_s
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, replica: str, endpoints: str | None = None, extra_args: list[str] | None = None,
              job: str = LEDGER_JOB, module: str = "singleton", env: dict[str, str] | None = None,
              new_session: bool = False, jobs_file: str = "") -> subprocess.Popen[bytes]:
        """`module` may be a wrapper of the CLI (the chaos harness's clock-stepping or broken replicas);
        `jobs_file`: run every job of that file (`--jobs`) instead of `job`."""
        env = {**os.environ, LEDGER_ENV: str(self.ledger), HOLD_ENV: str(self.hold_s), **(env or {})}
        # --http-port 0: many replicas share this machine; a test that wants the server passes its own port.
        # The fast-failover listener on loopback, a free port.
        cmd = [sys.executable, "-m", module, "run", "--endpoints", endpoints or self.endpoints,
               "--name", self.name,
               *(["--jobs", jobs_file] if jobs_file else ["--job", job]), "--id", replica, "--http-port", "0", "--sense-host", "127.0.0.1",
               *self.extra_args,
               *(extra_args or [])]
        with open(self.workdir / f"{replica}.log", "ab") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=new_session)  # its own process group, to kill as one
        self.procs[replica] = proc
        return proc

    def ticks(self) -> list[Tick]:
        return read_ledger(self.ledger)

    def current_leader(self) -> str | None:
        """The replica that ticked last (from the ledger, never from the replicas' own claims)."""
        ticks = self.ticks()
        return ticks[-1].replica if ticks else None

    def wait_ticks(self, n: int, timeout_s: float, replica: str | None = None, after: float = 0.0) -> list[Tick]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = [t for t in self.ticks() if t.start_mono > after and (replica is None or t.replica == replica)]
            if len(found) >= n:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{n} ticks{' by ' + replica if replica else ''} not seen in {timeout_s} s; "
                                     f"logs in {self.workdir}")
            time.sleep(0.05)

    def quiet_moment(self, timeout_s: float = 5.0, window: tuple[float, float] = (0.45, 0.6),
                     recent_s: float | None = None) -> Tick:
        """Wait for a moment inside `window` of a wall second with the last tick finished, and return that
        tick. Faults are sent then: one that lands inside a running job lets that job finish after its lease
        is gone (the documented case the fencing token exists for), which is not what a test is after."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ticks = self.ticks()
            if (ticks and ticks[-1].finished and window[0] <= time.time() % 1.0 <= window[1]
                    and (recent_s is None or time.monotonic() - ticks[-1].start_mono < recent_s)):
                return ticks[-1]
            time.sleep(0.01)
        raise TimeoutError(f"no quiet moment between ticks within {timeout_s:g} s; logs in {self.workdir}")

    def first_tick_after(self, after_mono: float, timeout_s: float, exclude: str | None = None) -> Tick | None:
        """The first tick that started after `after_mono` by a replica other than `exclude`, or None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            fresh = [t for t in self.ticks() if t.start_mono > after_mono and t.replica != exclude]
            if fresh:
                return fresh[0]
            time.sleep(0.02)
        return None

    def signal(self, replica: str, sig: int) -> None:
        self.procs[replica].send_signal(sig)

    def log(self, replica: str) -> str:
        return (self.workdir / f"{replica}.log").read_text(errors="replace")

    def stop_all(self, timeout_s: float = 15.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

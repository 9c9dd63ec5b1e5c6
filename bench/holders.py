"""Lock holders for the failover and scale benches: singleton replicas or a peer's, each in its own process group
and behind its own cuttable proxy (so a partition cuts one holder from etcd), all writing one tick ledger."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import singleton
from singleton.dev.ledger import LEDGER_ENV, Tick, read_ledger
from singleton.testing.proxy import CuttableProxy

HERE = Path(__file__).resolve().parent
PEERS = {
    "singleton": "singleton (default timings 10/3/2)",
    "etcdctl": "`etcdctl lock --ttl 10`",
    "etcd3": "python3-etcd3 `Lock` (TTL 10 s, refresh 3 s)",
    "tooz": "tooz etcd3gw lock (TTL 10 s, heartbeat 3 s)",
}


def etcdctl() -> str:
    from singleton.dev.embedded import etcd_binary
    return str(etcd_binary("etcdctl"))


class Holders:
    def __init__(self, peer: str, target: str, work: Path, name: str, proxied: bool = True,
                 endpoints: str | None = None) -> None:
        """`endpoints` (unproxied only): every member, comma-separated, instead of `target` alone."""
        self.peer, self.target, self.work, self.name, self.proxied = peer, target, work, name, proxied
        self.endpoints = endpoints
        self.ledger = work / f"{peer}-ledger.jsonl"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.proxies: dict[str, CuttableProxy] = {}
        self.started_at: dict[str, float] = {}  # monotonic Popen time of each holder
        self._n = 0

    def _command(self, endpoint: str, replica: str) -> list[str]:
        worker = [sys.executable, str(HERE / "lock_worker.py")]
        if self.peer == "singleton":
            return [sys.executable, "-m", "singleton", "run", "--endpoints", endpoint, "--name", self.name,
                    "--job", "singleton.dev.ledger:record_tick", "--id", replica, "--http-port", "0",
                    "--sense-host", "127.0.0.1"]
        if self.peer == "etcdctl":
            return [etcdctl(), f"--endpoints={endpoint}", "lock", "--ttl", "10", self.name,
                    *worker, "tick", endpoint, self.name, replica, str(self.ledger)]
        return [*worker, self.peer, endpoint, self.name, replica, str(self.ledger)]

    def start(self) -> str:
        replica = f"{self.peer}-{self._n}"
        self._n += 1
        endpoint = self.endpoints or f"http://{self.target}"
        if self.proxied:
            host, port = self.target.rsplit(":", 1)
            proxy = self.proxies[replica] = CuttableProxy(host, int(port))
            endpoint = proxy.endpoint
        # The replicas run the very code this bench imported (not whatever `-m` finds in the working directory).
        code = str(Path(singleton.__file__).resolve().parent.parent)
        env = {**os.environ, LEDGER_ENV: str(self.ledger),
               "PYTHONPATH": os.pathsep.join(filter(None, [code, os.environ.get("PYTHONPATH")]))}
        with open(self.work / f"{replica}.log", "ab") as log:
            self.procs[replica] = subprocess.Popen(self._command(endpoint, replica), env=env, stdout=log,
                                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                   start_new_session=True, cwd=self.work)
        self.started_at[replica] = time.monotonic()
        return replica

    def log(self, replica: str) -> str:
        try:
            return (self.work / f"{replica}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ready(self, replica: str, leader: str) -> bool:
        """`replica` would take over from `leader` at once: a singleton standby senses it (its log says so), a peer's
        holder waits on the lock (lock_worker says so; etcdctl says nothing, so its process has lived 1 s). A
        holder still starting (an interpreter start takes 1-2.5 s on a busy machine) is nobody's standby yet: a
        fault then costs a second (graceful) or the lease (crash) because no one stands by, not because of the
        handover or the sensing."""
        if self.peer == "singleton":
            return f"sensing leader {leader} at " in self.log(replica)
        if self.peer == "etcdctl":
            return time.monotonic() - self.started_at[replica] >= 1.0
        return "waiting for the lock" in self.log(replica)

    def ticks(self) -> list[Tick]:
        return read_ledger(self.ledger)

    def signal(self, replica: str, sig: int) -> None:
        try:
            os.killpg(self.procs[replica].pid, sig)  # the group: etcdctl's command dies with it
        except ProcessLookupError:
            pass

    def remove(self, replica: str) -> None:
        self.signal(replica, signal.SIGCONT)
        self.signal(replica, signal.SIGKILL)
        self.procs.pop(replica).wait(30)
        self.started_at.pop(replica, None)
        proxy = self.proxies.pop(replica, None)
        if proxy is not None:
            proxy.close()

    def wait_ticking(self, timeout_s: float, standbys: bool = False) -> Tick:
        """A moment mid-second, with the last tick recent and finished: returns that tick. `standbys`: and every
        other holder ready to take over from the one that ticked (see `ready`)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ticks = self.ticks()
            frac = time.time() % 1
            # Only a live holder's tick: a peer without self-fencing (python-etcd3's Lock) may still tick once
            # from the holder the previous round paused, between its SIGCONT and its removal.
            live = [t for t in ticks if t.replica in self.procs]
            if live and live[-1].finished and time.monotonic() - live[-1].start_mono < 1.0 and 0.45 < frac < 0.6:
                last = live[-1]
                if not standbys or all(self.ready(r, last.replica) for r in self.procs if r != last.replica):
                    return last
            time.sleep(0.02)
        what = "nobody ticking" + (" with every other holder standing by" if standbys else "")
        raise SystemExit(f"{self.peer}: {what} within {timeout_s:g} s; logs in {self.work}")

    def first_tick_after(self, after_mono: float, exclude: str, timeout_s: float) -> Tick | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for t in self.ticks():
                if t.start_mono > after_mono and t.replica != exclude:
                    return t
            time.sleep(0.02)
        return None

    def stop_all(self) -> None:
        for replica in list(self.procs):
            self.signal(replica, signal.SIGCONT)
            self.signal(replica, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for replica, proc in list(self.procs.items()):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self.remove(replica)


def slot_of(wall: float) -> int:
    return math.floor(wall)

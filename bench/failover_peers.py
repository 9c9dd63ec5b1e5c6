"""Handover and failover, singleton beside the lock recipes users would otherwise pick, on one etcd.

    python bench/failover_peers.py [--rounds 20] [--peers singleton,etcdctl,etcd3,tooz]
                                   [--faults graceful,crash,pause,partition] [--out docs/bench/failover.md]

Each peer keeps 3 holders of "one holder runs a 1 s job at whole seconds" (singleton: `singleton run` at the
default timings 10/3/2; etcdctl lock --ttl 10; python3-etcd3's Lock with TTL 10 s refreshed every 3 s; tooz's
etcd3gw lock, TTL 10 s), each holder behind its own cuttable TCP proxy. A round: at a quiet moment mid-second, once
every other holder stands by (a singleton standby senses the leader), fault the holder that ticked last, then time
until another holder's first tick. Faults: graceful (SIGTERM), crash (SIGKILL), pause (SIGSTOP, resumed after the
takeover), partition (its proxy cut, healed after the takeover). The faulted holder is then removed and a fresh one
started. "Two at once" counts ticks of different holders that overlapped or shared a second, over the whole run.
Figures, never pass/fail.
"""
from __future__ import annotations

import argparse
import signal
import threading
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine, median, require  # noqa: E402
from holders import PEERS, Holders  # noqa: E402

from singleton.backends.etcd import EtcdBackend  # noqa: E402
from singleton.dev.embedded import EtcdCluster  # noqa: E402
from singleton.dev.ledger import duplicate_slots, overlaps  # noqa: E402

TTL_S = 10.0
FAULTS = ("graceful", "crash", "pause", "partition")


class KeyDeletes:
    """Wall times at which etcd deleted the singleton leader key (seen by a watch in this process)."""

    def __init__(self, backend: EtcdBackend, key: str) -> None:
        self.walls: list[float] = []
        self._stop = threading.Event()
        threading.Thread(target=self._run, args=(backend, key), daemon=True).start()

    def _run(self, backend: EtcdBackend, key: str) -> None:
        _, revision = backend.get(key, 2.0)
        for event in backend.watch(key, revision + 1, self._stop):
            if event.deleted:
                self.walls.append(time.time())

    def first_after(self, wall: float) -> float | None:
        return next((w for w in self.walls if w > wall), None)

    def close(self) -> None:
        self._stop.set()


def lease_left(backend: EtcdBackend, name: str) -> float | None:
    """Seconds left on the singleton leader's lease (read just before a fault), for explaining the crash figure."""
    try:
        kv, _ = backend.get(f"/singleton/{name}/leader", 2.0)
        return backend.lease_remaining_s(kv.lease_id, 2.0) if kv is not None else None
    except Exception:  # noqa: BLE001 - a figure we can do without
        return None


def one_round(h: Holders, fault: str, backend: EtcdBackend | None, deletes: KeyDeletes | None
              ) -> dict[str, float]:
    # Every other holder stands by (a singleton standby senses the leader): a fault while the replacement started
    # by the previous round is still starting would measure that start, not the handover or the failover.
    old = h.wait_ticking(TTL_S * 3 + 30, standbys=True)
    left = lease_left(backend, h.name) if backend is not None and fault != "graceful" else None
    sent = time.monotonic()
    wall_sent = time.time()
    if fault == "partition":
        h.proxies[old.replica].cut()
    else:
        h.signal(old.replica, {"graceful": signal.SIGTERM, "crash": signal.SIGKILL, "pause": signal.SIGSTOP}[fault])
    new = h.first_tick_after(sent, old.replica, TTL_S * 3 + 30)
    if new is None:
        raise SystemExit(f"{h.peer} {fault}: no takeover within {TTL_S * 3 + 30:g} s; logs in {h.work}")
    out = {"takeover_s": new.start_mono - sent}
    if fault == "graceful":
        last_old = max((t for t in h.ticks() if t.replica == old.replica and t.start_mono < new.start_mono),
                       key=lambda t: t.start_mono, default=old)
        out["gap_s"] = new.start_mono - last_old.start_mono
        out["missed"] = new.slot - last_old.slot - 1
    if left is not None and left > 0:
        out["lease_left_s"] = left  # etcd's whole seconds
    deleted = deletes.first_after(wall_sent) if deletes is not None and fault != "graceful" else None
    if deleted is not None:
        # etcd deletes the key when it finds the lease expired; a standby can tick at the next whole second.
        out["deleted_after_s"] = deleted - wall_sent
        out["deleted_frac"] = deleted % 1  # where in its second etcd deleted the key (seen by our watch)
        out["excess_s"] = new.start_wall - (int(deleted) + 1)
    if fault in ("pause", "partition"):
        if fault == "partition":
            h.proxies[old.replica].heal()
        else:
            h.signal(old.replica, signal.SIGCONT)
        time.sleep(3)  # does the old holder tick beside the new one once it is back?
    h.remove(old.replica)
    h.start()
    return out


def figures(values: list[float], unit: str = "s") -> str:
    if not values:
        return "–"
    return f"{median(values):.2f} / {max(values):.2f} {unit}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds per fault and peer (20 for the record)")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    peers, faults = args.peers.split(","), args.faults.split(",")
    for bad in [p for p in peers if p not in PEERS] + [f for f in faults if f not in FAULTS]:
        parser.error(f"unknown peer or fault {bad!r}")
    require(*{"etcd3": ["etcd3"], "tooz": ["tooz", "etcd3gw"]}.get("tooz" if "tooz" in peers else "", []),
            *(["etcd3"] if "etcd3" in peers else []))
    lines = [machine() + f" at start; {args.rounds} round(s) per fault and peer, 3 holders each, one-member etcd "
             "on loopback, each holder behind its own TCP proxy.", "",
             "Time from the fault to the next holder's first tick, p50 / max; graceful also the gap between the "
             "last tick of the old holder and the first of the new, and the seconds missed.", "",
             "| peer | graceful: takeover | gap | missed s | crash (SIGKILL) | pause (SIGSTOP) | partition "
             "| two at once |",
             "|---|---|---|---|---|---|---|---|"]
    explain: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="singleton-bench-") as tmp, EtcdCluster(1, Path(tmp) / "etcd") as c:
        target = c.endpoints[0].target
        probe = EtcdBackend(c.endpoints)
        for peer in peers:
            work = Path(tmp) / peer
            work.mkdir()
            h = Holders(peer, target, work, f"bench-{peer}")
            deletes = KeyDeletes(probe, f"/singleton/{h.name}/leader") if peer == "singleton" else None
            results: dict[str, list[dict[str, float]]] = {f: [] for f in faults}
            try:
                for _ in range(3):
                    h.start()
                for fault in faults:
                    for i in range(args.rounds):
                        r = one_round(h, fault, probe if peer == "singleton" else None, deletes)
                        results[fault].append(r)
                        print(f"{peer} {fault} {i + 1}/{args.rounds}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()),
                              flush=True)
            finally:
                h.stop_all()
                if deletes is not None:
                    deletes.close()
            ticks = h.ticks()
            twice = len(overlaps(ticks)) + len(duplicate_slots(ticks))
            for a, b in overlaps(ticks):  # the ledger goes with the temporary directory: say what was seen
                print(f"{peer} two at once: {a} overlaps {b}", flush=True)
            for slot in duplicate_slots(ticks):
                print(f"{peer} slot {slot} twice: {[t for t in ticks if t.slot == slot]}", flush=True)
            g = results.get("graceful", [])
            col = {f: figures([r["takeover_s"] for r in results.get(f, [])]) for f in FAULTS}
            lines.append(f"| {PEERS[peer]} | {col['graceful']} | {figures([r['gap_s'] for r in g])} "
                         f"| {sum(int(r['missed']) for r in g) if g else '–'} | {col['crash']} | {col['pause']} "
                         f"| {col['partition']} | {twice} in {len(ticks)} ticks |")
            if peer == "singleton":
                for fault in ("crash", "pause", "partition"):
                    rs = [r for r in results.get(fault, []) if "excess_s" in r]
                    if rs:
                        excess = [r["excess_s"] for r in rs]
                        gone = [r["deleted_after_s"] - r["lease_left_s"] for r in rs if "lease_left_s" in r]
                        lapse = (f"deletion minus lease left p50 {median(gone) * 1e3:.0f} ms" if median(gone) > -1
                                 else "deleted long before: a standby sensed the death and revoked the lease")
                        explain.append(
                            f"- {fault} ({len(rs)} rounds): fault → etcd deletes the key p50 "
                            f"{median([r['deleted_after_s'] for r in rs]):.2f} s (lease left at the fault, etcd's "
                            f"whole seconds, p50 {median([r.get('lease_left_s', 0) for r in rs]):.0f} s; {lapse}); "
                            f"first tick elsewhere minus the "
                            f"first whole second after the delete (negative: the second the key went in still "
                            f"ran, late, as the run record showed nobody had claimed it): p50 "
                            f"{median(excess) * 1e3:.0f} ms, min "
                            f"{min(excess) * 1e3:.0f} ms, max {max(excess) * 1e3:.0f} ms; a second later than that "
                            f"in {sum(e > 0.5 for e in excess)} rounds, whose deletes came at "
                            + (", ".join(f".{int(r['deleted_frac'] * 1000):03d}" for r in rs if r['excess_s'] > 0.5)
                               or "–") + " of their second (the others at "
                            + (", ".join(f".{int(r['deleted_frac'] * 1000):03d}" for r in rs if r['excess_s'] <= 0.5)
                               or "–") + ")")
        probe.close()
    lines += ["", f"Singleton against its lease (goal: the second the lease went in if still unclaimed and in time, "
              f"else the first whole second after it, nothing later; {time.monotonic() - started:.0f} s in all):",
              "", *explain]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

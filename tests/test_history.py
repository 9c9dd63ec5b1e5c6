"""`singleton history` shows the real runs of a job, read back from etcd after a replica ran it."""
from __future__ import annotations

import json

import pytest

from singleton import Config, Singleton, TickContext
from singleton.core.timings import FAST
from singleton.dev.embedded import EtcdCluster
from singleton.ops.cli import main
from singleton.testing.recorder import wait_for


def test_history_lists_the_runs_with_their_outcomes_newest_first(etcd: EtcdCluster, name: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    slots: list[int] = []

    def job(ctx: TickContext) -> None:
        slots.append(ctx.slot)
        if len(slots) == 2:
            raise RuntimeError("the second run fails")

    app = Singleton(Config(endpoints=etcd.endpoints, name=name, replica_id="h1", **FAST.config_kwargs()), job)
    with app:
        wait_for(lambda: len(slots) >= 4, 10, "four runs")
    endpoints = ",".join(map(str, etcd.endpoints))
    # A graceful stop writes the last runs' outcomes in its handover transaction.
    assert main(["history", "--endpoints", endpoints, "--name", name, "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    runs = history["runs"]
    assert [r["slot"] for r in runs] == sorted(slots, reverse=True)
    by_slot = {r["slot"]: r for r in runs}
    assert by_slot[slots[1]]["outcome"] == "failed" and "second run fails" in by_slot[slots[1]]["error"]
    assert all(by_slot[s]["outcome"] == "ok" for s in slots if s != slots[1])
    assert {r["replica_id"] for r in runs} == {"h1"} and history["last_claim"]["slot"] == slots[-1]
    assert main(["history", "--endpoints", endpoints, "--name", name, "--limit", "2"]) == 0
    text = capsys.readouterr().out
    lines = text.strip().splitlines()
    assert f"last claim slot {slots[-1]}" in lines[0] and "outcome" in lines[1]
    assert [int(line.split()[1]) for line in lines[2:]] == sorted(slots, reverse=True)[:2]
    assert main(["history", "--endpoints", endpoints, "--name", name, "--limit", "0"]) == 2


def test_status_shows_the_last_run_and_the_next_slot(etcd: EtcdCluster, name: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    slots: list[int] = []
    endpoints = ",".join(map(str, etcd.endpoints))
    app = Singleton(Config(endpoints=etcd.endpoints, name=name, replica_id="s1", **FAST.config_kwargs()),
                    lambda ctx: slots.append(ctx.slot))
    with app:
        wait_for(lambda: len(slots) >= 3, 10, "three runs")
        assert main(["status", "--endpoints", endpoints, "--name", name, "--json"]) == 0
        runs = json.loads(capsys.readouterr().out)["runs"]
        assert runs["next_slot"] == runs["last_claimed_slot"] + 1 and runs["last_claimed_slot"] >= slots[1]
        assert runs["last_run"]["outcome"] == "ok" and runs["last_run"]["replica_id"] == "s1"
    assert main(["status", "--endpoints", endpoints, "--name", name]) == 0
    text = capsys.readouterr().out
    assert f"last claimed slot {slots[-1]}" in text and f"slot {slots[-1]} ok on s1" in text and "next slot" not in text

"""The operator side of sharding on real etcd, with three in-process sharded replicas: `status` shows the members and
each group's leader, `resign --group` moves one group, the job control verbs reach a job's group leader, and the
per-group gauges say who leads what (ops/groups.py, ops/control.py, runtime/shard/metrics.py)."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from singleton import Config, Singleton, TickContext
from singleton.core.placement import placement
from singleton.core.timings import DEFAULT
from singleton.dev.embedded import EtcdCluster
from singleton.ops.cli import main
from singleton.runtime.shard.metrics import led_and_offered
from singleton.testing.recorder import wait_for

Runs = list[tuple[str, str, int]]  # (replica, job, slot); a manual run's slot is negative
GROUPS = {"a", "b", "c", "g", "h"}  # jobs a, b, c, h each their own group; d and e together in g
# The design's lease timings, not the short ones: nothing here waits for a lease to lapse, and a starved test machine
# must not make a member lease look in trouble (its groups would move while a test reads them).


def replica(etcd: EtcdCluster, name: str, rid: str, runs: Runs) -> Singleton:
    app = Singleton(Config(endpoints=etcd.endpoints, name=name, replica_id=rid, shard=True,
                           shard_campaign_delay_s=0.2, rebalance_interval_s=0.3, **DEFAULT.config_kwargs()))
    for job, group, every in (("a", None, 0.25), ("b", None, 0.25), ("c", None, 0.25), ("d", "g", 0.25),
                              ("e", "g", 0.25), ("h", None, 3600)):  # h: only triggered runs in a test's time
        def run(ctx: TickContext, job: str = job) -> None:
            runs.append((rid, job, ctx.slot))
        app.job(run, name=job, every=every, group=group)
    return app


def leaders(apps: list[Singleton]) -> dict[str, str]:
    """Group -> the replica that leads it, as the replicas themselves say; a group two replicas list (the one handing
    it over still ends its term) is left out, as not settled."""
    said = [(g, app.replica_id) for app in apps for g in led_and_offered(app)[0]]
    return {g: r for g, r in said if [g2 for g2, _ in said].count(g) == 1}


def quiet(apps: list[Singleton], settled: dict[str, str]) -> bool:
    """The fixed point after the joins: every group led by its preferred member, every replica's view holding every
    member (a view behind would compute another placement and move a group), and no handover requested."""
    members = {a.replica_id for a in apps}
    for app in apps:
        run = app._sharded
        if run is None or set(run.view.snapshot()[1]) != members:
            return False
        with run._lock:
            if any(t.resign.is_set() for t in run.terms.values()):
                return False
    return leaders(apps) == settled


@contextmanager
def sharded(etcd: EtcdCluster, name: str, runs: Runs, n: int = 3) -> Iterator[list[Singleton]]:
    apps = [replica(etcd, name, f"r{i}", runs) for i in range(n)]
    for app in apps:
        app.start()
    try:
        settled = placement({a.replica_id: GROUPS for a in apps})
        wait_for(lambda: quiet(apps, settled), 30, "every group led by its preferred member, nothing moving")
        yield apps
    finally:
        for app in apps:
            app.stop()


def cli(etcd: EtcdCluster, name: str, *args: str) -> list[str]:
    return ["--endpoints", ",".join(map(str, etcd.endpoints)), "--name", name, *args]


def out(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 0) -> str:
    capsys.readouterr()
    assert main(argv) == code
    return capsys.readouterr().out


def error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int) -> str:
    capsys.readouterr()
    assert main(argv) == code
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    return captured.err.strip()


def test_status_shows_members_and_each_groups_leader_and_resign_group_moves_one(
        etcd: EtcdCluster, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    runs: Runs = []
    with sharded(etcd, name, runs) as apps:
        led = leaders(apps)
        wait_for(lambda: {j for _r, j, _s in runs} >= {"a", "b", "c", "d", "e"}, 10, "every job ran (its record)")
        status = json.loads(out(capsys, ["status", *cli(etcd, name, "--json")]))
        assert status["leader"] is None  # the name's own key: sharding leaves it vacant
        shard = status["shard"]
        assert [m["replica_id"] for m in shard["members"]] == ["r0", "r1", "r2"]
        assert all(m["groups"] == sorted(GROUPS) and 0 < m["lease_remaining_s"] <= DEFAULT.lease_ttl_s
                   for m in shard["members"])
        by_group = {g["group"]: g for g in shard["groups"]}
        assert set(by_group) == GROUPS and shard["vacant"] == [] and shard["led"] == 5
        for group, info in by_group.items():
            assert info["leader"]["replica_id"] == led[group]
            assert info["leader"]["fencing_token"] == led_and_offered(
                next(a for a in apps if a.replica_id == led[group]))[0][group]
            member = next(m for m in shard["members"] if m["replica_id"] == led[group])
            assert info["leader"]["lease_id"] == member["lease_id"]  # one lease per replica backs its groups
        assert by_group["g"]["jobs"] == ["d", "e"] and by_group["a"]["jobs"] == ["a"]

        text = out(capsys, ["status", *cli(etcd, name)])
        assert f"{name}: sharded: 3 member(s), 5 group(s), 5 led, 0 vacant" in text
        assert f"{name} member r0 (host " in text and "offers 5 group(s): a, b, c, g, h" in text
        assert f"{name} group g: leader {led['g']} (host " in text and "; jobs d, e" in text
        assert "no replica has registered" not in text
        assert f"{name}: job d: group g, led by {led['g']}; not in the jobs file; " in text  # every job with a record
        jobs = {j["name"]: j for j in status.get("jobs", [])}
        assert [(jobs[j]["group"], jobs[j]["group_leader"]) for j in ("a", "e")] == [("a", led["a"]), ("g", led["g"])]

        before = by_group["g"]["leader"]
        said = json.loads(out(capsys, ["resign", *cli(etcd, name, "--group", "g", "--json")]))
        assert said["group"] == "g" and said["resigned"]["leader"] == led["g"]
        assert said["new_leader"]["leader"] != led["g"]
        assert said["new_leader"]["fencing_token"] > before["fencing_token"]
        wait_for(lambda: leaders(apps).get("g") == said["new_leader"]["leader"], 10, "the new leader of g runs it")

        assert "did you mean g?" not in error(capsys, ["resign", *cli(etcd, name, "--group", "zz")], 2)
        assert error(capsys, ["resign", *cli(etcd, name, "--group", "aa")], 2) == (
            f"singleton: error: unknown group 'aa' of {name} (did you mean a?)")
        err = error(capsys, ["resign", *cli(etcd, name)], 2)
        assert f"{name} is sharded: each group has its own leader; resign one with --group G (groups: a, b, c, g, h)" in err
    # Stopped: each group left its handover record, and no member offers it any more.
    text = out(capsys, ["status", *cli(etcd, name)])
    assert f"{name}: sharded: 0 member(s), 5 group(s), 0 led, 0 vacant" in text
    assert f"{name} group g: no leader (no member offers it)" in text
    assert error(capsys, ["resign", *cli(etcd, name, "--group", "g")], 1) == (
        f"singleton: {name} group g: no leader right now (vacant)")


def test_resign_group_on_a_name_that_is_not_sharded(etcd: EtcdCluster, name: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert error(capsys, ["resign", *cli(etcd, name, "--group", "g")], 2) == (
        f"singleton: error: {name} is not sharded: nothing under /singleton/{name}/members/ or "
        f"/singleton/{name}/groups/ (resign without --group resigns its one leader)")


def test_pause_resume_and_trigger_reach_the_jobs_group_leader(etcd: EtcdCluster, name: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    runs: Runs = []

    def count(job: str) -> int:
        return sum(1 for _r, j, slot in runs if j == job and slot >= 0)

    with sharded(etcd, name, runs) as apps:
        led = leaders(apps)
        wait_for(lambda: count("d") >= 2 and count("a") >= 2, 10, "d and a run")
        said = json.loads(out(capsys, ["pause", *cli(etcd, name, "--job", "d", "--by", "ops@test", "--json")]))
        assert said["group"] == "g" and said["leader"] == led["g"]
        leader = next(a for a in apps if a.replica_id == led["g"])
        paused_at = leader.stats.job_missed["d", "paused"]
        wait_for(lambda: leader.stats.job_missed["d", "paused"] >= paused_at + 3, 10, "three paused slots of d")
        held, others = count("d"), count("e")
        wait_for(lambda: count("e") >= others + 3, 10, "e, in the same group, goes on")
        assert count("d") <= held + 1  # at most the slot claimed before the pause's revision
        text = out(capsys, ["resume", *cli(etcd, name, "--job", "d", "--by", "ops@test")])
        assert text.startswith(f"{name} job d (group g, leader {led['g']}): resumed")
        wait_for(lambda: count("d") >= held + 3, 10, "d runs again")

        # h: no scheduled run in the test's time, so the trigger is never refused as overlapping a running one.
        text = out(capsys, ["trigger", *cli(etcd, name, "--job", "h", "--by", "ops@test")])
        assert f"{name} job h (group h, leader {led['h']}): trigger " in text and "claimed as run" in text
        wait_for(lambda: any(j == "h" and slot < 0 for _r, j, slot in runs), 10, "the manual run of h")
        assert [r for r, j, slot in runs if j == "h" and slot < 0] == [led["h"]]

        err = error(capsys, ["pause", *cli(etcd, name, "--job", "dd")], 2)
        assert err == f"singleton: error: unknown job 'dd' of {name}: the group leaders run a, b, c, d, e, h (did you mean d?)"
        err = error(capsys, ["pause", *cli(etcd, name, "--job", "g")], 2)  # a group's name is not a job's
        assert err.startswith(f"singleton: error: unknown job 'g' of {name}: the group leaders run a, b, c, d, e, h")


class Adds:
    """Stands in for the group-wins counter: what was added, with which labels."""

    def __init__(self) -> None:
        self.adds: list[tuple[int, dict[str, str]]] = []

    def add(self, amount: int, attributes: dict[str, str]) -> None:
        self.adds.append((amount, attributes))


def test_group_gauges_say_who_leads_what(etcd: EtcdCluster, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from singleton.runtime.shard import metrics as shard_metrics

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("test")
    # The module's instruments live on the global meter; the same callbacks on our own provider read the same sources.
    meter.create_observable_gauge("groups_led", [shard_metrics._groups_led])
    meter.create_observable_gauge("group_leader", [shard_metrics._group_leader])
    wins = Adds()
    monkeypatch.setattr(shard_metrics, "_group_elections_won", wins)
    runs: Runs = []
    with sharded(etcd, name, runs) as apps:
        led = leaders(apps)
        data = reader.get_metrics_data()
        points = {m.name: [(dict(p.attributes), p.value) for p in m.data.data_points]
                  for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        ours = {r.replica_id for r in apps}
        led_by = {a["replica_id"]: v for a, v in points["groups_led"] if a["replica_id"] in ours}
        assert led_by == {r: sum(1 for g in led.values() if g == r) for r in ours}
        leader = {(a["replica_id"], a["group"]): v for a, v in points["group_leader"] if a["replica_id"] in ours}
        assert leader == {(r, g): int(led[g] == r) for r in ours for g in GROUPS}
        # Each group: exactly one replica says 1 (what the SingletonGroupNoLeader alert sums).
        assert all(sum(leader[r, g] for r in ours) == 1 for g in GROUPS)
        # Every series born at 0, each replica x group; each leader counted its win of the group it leads now.
        assert {(a["replica_id"], a["group"]) for n, a in wins.adds if n == 0} == {(r, g) for r in ours for g in GROUPS}
        wait_for(lambda: all((1, {"replica_id": r, "group": g}) in wins.adds for g, r in led.items()), 5,
                 "each current leader's win counted (on_elected runs on the listeners' thread)")
    provider.shutdown()


def resign_group(etcd: EtcdCluster, name: str, group: str, token: int) -> None:
    """What `singleton resign --group` writes, without waiting for the handover."""
    from singleton.backends.etcd import EtcdBackend

    backend = EtcdBackend(etcd.endpoints)
    try:
        assert backend.guarded_put(f"/singleton/{name}/groups/{group}/leader", token,
                                   f"/singleton/{name}/groups/{group}/resign", str(token).encode(), 3.0)
    finally:
        backend.close()


def test_status_watch_follows_every_groups_leader(etcd: EtcdCluster, name: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from singleton.backends.etcd import EtcdBackend
    from singleton.ops.groups import watch_groups

    runs: Runs = []
    lines: list[dict] = []

    def read() -> list[dict]:  # only the watch prints meanwhile
        lines.extend(json.loads(line) for line in capsys.readouterr().out.splitlines())
        return lines

    with sharded(etcd, name, runs) as apps:
        led = leaders(apps)
        capsys.readouterr()
        # The CLI: a sharded name is detected, each group's leader printed, then a line per change (of any group).
        codes: list[int] = []
        watcher = threading.Thread(target=lambda: codes.append(main(["status", *cli(
            etcd, name, "--watch", "--json", "--max-events", "1")])), daemon=True)
        watcher.start()
        wait_for(lambda: len(read()) >= 5, 10, "each group's leader now")
        assert {(e["group"], e["leader"]) for e in lines} == set(led.items())
        resign_group(etcd, name, "a", next(e["fencing_token"] for e in lines if e["group"] == "a"))
        watcher.join(15)
        assert codes == [0] and len(read()) == 6 and lines[5]["group"] in GROUPS
        # a's old leader withdrew from a for 30 s: the balance settles again without it there.
        settled = placement({r.replica_id: GROUPS - ({"a"} if r.replica_id == led["a"] else set()) for r in apps})
        wait_for(lambda: quiet(apps, settled), 30, "the groups settled again")

        # Following g through a resign: vacant, then a new leader; other groups may move meanwhile (the member that
        # resigned g offers one group less, so the balance changes) and are left out here.
        lines.clear()
        stop = threading.Event()
        backend = EtcdBackend(etcd.endpoints)
        follower = threading.Thread(target=watch_groups, args=(backend, backend_config(etcd, name), stop),
                                    kwargs={"as_json": True, "max_events": 0, "timeout_s": 3.0}, daemon=True)
        follower.start()
        try:
            wait_for(lambda: {e["group"] for e in read()} == GROUPS, 10, "each group's leader now")
            token = next(e["fencing_token"] for e in lines if e["group"] == "g")
            before = next(e["leader"] for e in lines if e["group"] == "g")
            resign_group(etcd, name, "g", token)
            wait_for(lambda: [e["leader"] is None for e in read() if e["group"] == "g"][-2:] == [True, False], 15,
                     "g vacant, then led again")
        finally:
            stop.set()
            follower.join(5)
            backend.close()
        g = [e for e in lines if e["group"] == "g"]
        assert [e["leader"] for e in g[:2]] == [before, None] and g[2]["leader"] not in (None, before)
        assert g[2]["fencing_token"] > token and g[2]["since_last_change_s"] is not None


def backend_config(etcd: EtcdCluster, name: str) -> Config:
    return Config(endpoints=etcd.endpoints, name=name)

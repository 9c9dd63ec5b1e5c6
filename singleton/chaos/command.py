"""`singleton chaos`: run the scenarios, print a progress line each, write report.md and timeline.png."""
from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

from singleton.core.config import Config, parse_endpoints
from singleton.core.errors import ConfigError
from singleton.core.security import load_credentials
from singleton.chaos.harness import EtcdAccess, Harness
from singleton.dev.embedded import etcd_binary
from singleton.core.timings import DEFAULT, FAST
from singleton.chaos.report import NO_PICTURE, write_report, write_timeline
from singleton.chaos.scenarios import run_all, select


def chaos_access(args: Any) -> EtcdAccess:
    """`singleton chaos`'s TLS and auth options, read and checked as `singleton run` checks them."""
    credentials = load_credentials(args.cacert, args.cert, args.key, args.user, args.password_file)
    if credentials is not None and credentials.tls and args.endpoints and \
            not all(e.secure for e in parse_endpoints(args.endpoints)):
        raise ConfigError("TLS options were given but an endpoint is http://: use https:// endpoints")
    return EtcdAccess(credentials, args.cacert, args.cert, args.key, args.user, args.password_file)


def run_chaos(*, endpoints: str, replicas: int, scenarios: str, rounds: int, out: str, fast: bool,
              members: int, broken: bool = False, job: str = "", access: EtcdAccess | None = None,
              jobs: str = "", sharded: bool = False, groups: int = 12) -> int:
    """`job`: the user's `module:callable`, run by the replicas and judged from etcd's run record alone;
    `jobs`: a jobs file, every job of it run by the replicas and judged from its own record; `sharded`: sharded
    replicas leading `groups` groups between them, each group judged on its own (chaos/sharded.py)."""
    if sharded:
        return run_sharded_chaos(endpoints=endpoints, replicas=replicas, scenarios=scenarios, rounds=rounds, out=out,
                                 fast=fast, members=members, groups=groups, other=bool(job or jobs or broken or
                                                                                        (access and access.run_args())))
    if job and jobs:
        raise ConfigError("--job and --jobs exclude each other: one callable, or a jobs file")
    try:
        names = select(scenarios, user_job=bool(job or jobs))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    specs = []
    if job:
        from singleton.ops.cli import load_job

        load_job(job)  # a job that does not import is one line now, not N replicas failing to start
    if jobs:
        from singleton.ops.jobsfile import load_jobs_file

        # Checked as `singleton run --jobs` checks it (callables imported), before any etcd or replica starts.
        specs = [spec for spec, _fn in load_jobs_file(jobs)]
        jobs = str(Path(jobs).resolve())  # the replicas are given the file; they run from this directory too
    if access is not None and access.run_args() and not endpoints:
        raise ConfigError("TLS and auth options need --endpoints (the embedded etcd has neither)")
    if access is not None and access.run_args():
        # A refused certificate or password: one line now, not N replicas exiting and a scenario timing out.
        from singleton.chaos.harness import PREFIX
        from singleton.ops.cli import preflight

        preflight(Config(endpoints=parse_endpoints(endpoints), name="preflight", prefix=PREFIX, cacert=access.cacert or None,
                         cert=access.cert or None, key=access.key or None, user=access.user or None,
                         password_file=access.password_file or None))
    if replicas < 2 or rounds < 1 or members not in (1, 3, 5):
        raise ConfigError("--replicas must be >= 2, --rounds >= 1, --members 1, 3 or 5")
    etcd_binary("etcdctl")  # every scenario asks etcd which leases are left: say so now, not after the first
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = FAST if fast else DEFAULT
    harness = Harness(out_dir, endpoints=list(parse_endpoints(endpoints)) if endpoints else None, members=members,
                      replicas=replicas, timings=timings, job=job or None, access=access, jobs_file=jobs or None,
                      jobs=specs)
    cluster = endpoints or f"embedded, {members} member(s)"
    running = f"{job} (judged from the run record)" if job else \
        f"the {len(specs)} jobs of {jobs} (each judged from its own run record; history ring " \
        f"{harness.history_size} runs a job)" if jobs else "the ledger job"
    print(f"singleton chaos: {len(names)} scenario(s) x {rounds} round(s) on {cluster}, {replicas} replicas "
          f"running {running}, timings: {timings}", flush=True)
    # The harness's own etcd clients (its key watcher) would log member losses it injected itself.
    logging.getLogger("singleton").setLevel(logging.ERROR)
    started = time.monotonic()

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # so the finally below stops every process and etcd member we started

    signal.signal(signal.SIGTERM, interrupted)
    harness.start()
    try:
        results = run_all(harness, names, rounds, lambda line: print(line, flush=True), broken=broken)
    finally:
        harness.close()
    report = write_report(out_dir, results, timings, cluster, time.monotonic() - started)  # type: ignore[arg-type]
    timeline = write_timeline(out_dir, results)  # type: ignore[arg-type]
    held = all(v.held for v, _ in results)
    print(f"{'every invariant held' if held else 'INVARIANTS VIOLATED'}; report: {report}; "
          f"{f'timeline: {timeline}' if timeline else NO_PICTURE}")
    return 0 if held else 1


def run_sharded_chaos(*, endpoints: str, replicas: int, scenarios: str, rounds: int, out: str, fast: bool,
                      members: int, groups: int, other: bool = False) -> int:
    """`singleton chaos --sharded`: partition, SIGSTOP and SIGKILL of the replica leading the most groups."""
    from singleton.chaos.sharded import ShardHarness
    from singleton.chaos.shardfaults import run_all_sharded, select_sharded

    if other:
        raise ConfigError("--sharded runs its own every-second jobs: no --job, --jobs, TLS or auth options")
    try:
        names = select_sharded(scenarios)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if replicas < 2 or rounds < 1 or members not in (1, 3, 5) or not 1 <= groups <= 1000:
        raise ConfigError("--replicas must be >= 2, --rounds >= 1, --members 1, 3 or 5, --groups 1 to 1000")
    etcd_binary("etcdctl")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = FAST if fast else DEFAULT
    harness = ShardHarness(out_dir, endpoints=list(parse_endpoints(endpoints)) if endpoints else None,
                           members=members, replicas=replicas, timings=timings, groups=groups)
    cluster = endpoints or f"embedded, {members} member(s)"
    print(f"singleton chaos --sharded: {len(names)} scenario(s) x {rounds} round(s) on {cluster}, {replicas} "
          f"sharded replicas leading {groups} groups (one every-second job each), timings: {timings}", flush=True)
    logging.getLogger("singleton").setLevel(logging.ERROR)
    started = time.monotonic()

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    harness.start()
    try:
        results = run_all_sharded(harness, names, rounds, lambda line: print(line, flush=True))
    finally:
        harness.close()
    report = write_report(out_dir, results, timings, f"{cluster}; sharded, {groups} groups (rows by job = by group)",
                          time.monotonic() - started)
    timeline = write_timeline(out_dir, results)
    held = all(v.held for v, _ in results)
    print(f"{'every invariant held' if held else 'INVARIANTS VIOLATED'}; report: {report}; "
          f"{f'timeline: {timeline}' if timeline else NO_PICTURE}")
    return 0 if held else 1

"""The `singleton` command: run, status, next, resign, history, chaos, demo, dev-etcd. Every option of run, status and resign can
also come from SINGLETON_<OPTION> (ops/cliargs.py)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from singleton.core.config import Config, SettingError
from singleton.core.errors import AuthError, ConfigError, SingletonError
from singleton.ops.cliargs import (CONTROL_VERBS, ENV_PREFIX, UsageError, build_parser, check_environment, check_password_flag,
                                   check_required, describe_setting_error, env_name, given_flags)
from singleton.ops.jobsfile import load_job  # `--job M:F`; here too for those who import it from the CLI
from singleton.ops.logs import setup_logging

__all__ = ["ENV_PREFIX", "build_parser", "env_name", "load_job", "main"]  # the parser lives in cliargs.py

if TYPE_CHECKING:
    from singleton.ops.http import HttpServer
    from singleton.runtime.runner import Singleton

def _config(args: argparse.Namespace, **extra: Any) -> Config:
    return Config(endpoints=args.endpoints, name=args.name, prefix=args.prefix, cacert=args.cacert or None,
                  cert=args.cert or None, key=args.key or None, user=args.user or None,
                  password_file=args.password_file or None, **extra)


def preflight(config: Config, timeout_s: float = 5.0) -> None:
    """One authenticated, permission-checked call that changes nothing. A refused CA, certificate, password
    or permission does not fix itself: fail now, in one line (exit 2). etcd merely being unreachable may:
    log it and let the replica's own loop retry with backoff."""
    from singleton.core.errors import AuthError, BackendError
    from singleton.backends.etcd import EtcdBackend

    backend = EtcdBackend.from_config(config)
    try:
        backend.check_write_access(config.leader_key, timeout_s)
    except AuthError as err:
        raise ConfigError(f"etcd refused our credentials: {err}") from err
    except BackendError as err:
        logging.getLogger("singleton").warning("etcd not reachable yet (%s); will keep trying", err)
    finally:
        backend.close()


def _read_token(path: str) -> str | None:
    if not path:
        return None
    try:
        token = open(path, encoding="utf-8").read().strip()
    except OSError as err:
        raise ConfigError(f"cannot read admin token file {path}: {err.strerror}") from None
    if not token:
        raise ConfigError(f"admin token file {path} is empty")
    return token


def _serve_http(host: str, port: int, singleton: Singleton) -> HttpServer:
    from singleton.ops.http import HttpServer, bind_failure

    try:
        http = HttpServer(host, port, singleton.health, singleton.readiness)
    except OSError as err:
        why = bind_failure(err)
        remedy = ("give this replica another --http-port (or 0 to turn it off)" if why == "address already in use"
                  else "check --http-host and --http-port")
        raise ConfigError(f"cannot serve /metrics and health on {host}:{port}: {why}; {remedy}") from None
    logging.getLogger("singleton").info("http server on %s:%d (/metrics /healthz /readyz)", host, http.port)
    return http.start()


def _on_off(flag: str, value: str) -> bool:
    if value not in ("on", "off"):
        raise ConfigError(f"{flag} must be on or off (got {value!r})")
    return value == "on"


def cmd_history(args: argparse.Namespace) -> int:
    from singleton.backends.etcd import EtcdBackend
    from singleton.ops.history import show_history

    if args.limit < 1:
        raise ConfigError(f"--limit must be at least 1 (got {args.limit})")
    config = _config(args)
    backend = EtcdBackend.from_config(config)
    try:
        return show_history(backend, config, as_json=args.json, limit=args.limit, job=args.job)
    finally:
        backend.close()


def cmd_control(args: argparse.Namespace) -> int:
    from singleton.backends.etcd import EtcdBackend
    from singleton.ops.control import control_command

    config = _config(args)
    backend = EtcdBackend.from_config(config)
    try:
        return control_command(backend, config, args.command, args.job, by=args.by, reason=args.reason,
                               for_text=getattr(args, "for_", None), as_json=args.json, force=args.force,
                               wait_s=getattr(args, "wait", 0.0))
    finally:
        backend.close()


def cmd_run(args: argparse.Namespace, given: set[str]) -> int:
    """`given`: the options set on the command line or by their variable (the others are defaults)."""
    extra: dict[str, Any] = {}
    if args.id:
        extra["replica_id"] = args.id
    if args.renewal_timeout is not None:
        extra["renewal_timeout_s"] = args.renewal_timeout
    extra = {"fast_failover": args.fast_failover, **extra, **_shard_settings(args, given)}
    try:
        config = _config(args, lease_ttl_s=args.lease_ttl, keepalive_interval_s=args.keepalive_interval,
                         min_remaining_ttl_s=args.min_remaining_ttl, max_failed_renewals=args.max_failed_renewals,
                         stop_timeout_s=args.stop_timeout, job_timeout_s=args.job_timeout,
                         job_cancel_grace_s=args.job_cancel_grace,
                         run_record=_on_off("--run-record", args.run_record), catch_up=args.catch_up,
                         catch_up_window_s=args.catch_up_window, history_size=args.history_size,
                         workers=args.workers, sense_host=args.sense_host,
                         sense_port=args.sense_port, advertise_host=args.advertise_host, **extra)
    except SettingError as err:
        raise ConfigError(describe_setting_error(err, given)) from None
    # All checked before anything touches etcd: the one job, or every job of the file (callables imported).
    jobs = _jobs_from_file(args.jobs, given) if args.jobs else None
    job = None if jobs is not None else load_job(args.job)
    setup_logging(args.log_level, args.log_format, config.replica_id)
    token = _read_token(args.admin_token_file)
    if args.admin_address:
        from singleton.ops.admin import check_admin_exposure, parse_address

        check_admin_exposure(parse_address(args.admin_address)[0], token)
    if not 0 <= args.http_port <= 65535:
        raise ConfigError(f"bad --http-port {args.http_port}")
    from singleton.ops.http import setup_telemetry
    from singleton.runtime.runner import Singleton

    setup_telemetry(config.replica_id, prometheus=bool(args.http_port))  # no reader, no SDK: see setup_telemetry
    singleton = Singleton(config, job)  # its etcd channels open on first use, not here
    for spec, fn in jobs or ():
        singleton.add_job(spec, fn)
    closers: list[Callable[[], object]] = []
    try:
        # Our ports before etcd: a second replica on this host with the same port stops here, having
        # touched nothing.
        if args.http_port:
            closers.append(_serve_http(args.http_host, args.http_port, singleton).close)
        if args.admin_address:
            from singleton.ops.admin import serve_admin

            server, _ = serve_admin(singleton, args.admin_address, token)
            closers.append(lambda: server.stop(1.0))
        preflight(config)
        singleton.run()
    finally:
        for close in reversed(closers):
            close()
    return 0


_SHARD_FLAGS = ("--shard-campaign-delay", "--rebalance-interval")


def _shard_settings(args: argparse.Namespace, given: set[str]) -> dict[str, Any]:
    """`--shard` and its timings; checked before the Config so that a misplaced flag is named first."""
    if not args.shard:
        for flag in _SHARD_FLAGS:
            if flag in given:
                raise ConfigError(f"{flag} ({env_name(flag)}) applies with --shard only")
        return {}
    if not args.jobs:
        raise ConfigError("--shard spreads the jobs of a jobs file across the replicas: give --jobs FILE (one "
                          "--job is one group, led by one replica as without --shard)")
    if "--fast-failover" in given and args.fast_failover:
        raise ConfigError(f"--fast-failover ({env_name('--fast-failover')}) is not available with --shard in this "
                          f"version: a crashed replica's groups are taken over when its lease lapses")
    return {"shard": True, "fast_failover": False,  # not yet with sharding: Config would only ignore it
            "shard_campaign_delay_s": args.shard_campaign_delay,
            "rebalance_interval_s": args.rebalance_interval}


# `singleton run` options that set the single --job's policies; with --jobs each job sets its own in the file.
_SINGLE_JOB_FLAGS = {"--job-timeout": "timeout", "--catch-up": "catch_up", "--catch-up-window": "catch_up_window"}


def _jobs_from_file(path: str, given: set[str]) -> list[tuple[Any, Any]]:
    from singleton.ops.jobsfile import load_jobs_file

    for flag, key in _SINGLE_JOB_FLAGS.items():
        if flag in given:
            raise ConfigError(f"{flag} ({env_name(flag)}) applies to --job; with --jobs set {key} = ... "
                              f"for each [[job]] in {path}")
    return load_jobs_file(path)


def cmd_next(args: argparse.Namespace) -> int:
    import time

    from singleton.ops.jobsview import load_jobs, parse_at, show_next

    wall = parse_at(args.at) if args.at else time.time()
    return show_next(load_jobs(args.jobs, args.job), wall, args.count, as_json=args.json)


def _add_jobs_status(config: Config, specs: list[Any], status: dict[str, Any]) -> None:
    """`status` with a jobs file, or with jobs recorded in etcd: a line per job (its last run, next instants)."""
    from singleton.backends.etcd import EtcdBackend
    from singleton.ops.jobsview import jobs_status

    backend = EtcdBackend.from_config(config)
    try:
        status["jobs"] = jobs_status(backend, config, specs)
    except SingletonError:
        if specs:
            raise
        status["jobs"] = []  # no jobs file, and the per-job records cannot be read: nothing more to say
    finally:
        backend.close()


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        from singleton.ops.commands import watch_leader

        return watch_leader(_config(args), as_json=args.json, max_events=args.max_events)
    from singleton.ops.commands import describe_runs, describe_vacancy, leader_status

    from singleton.ops.jobsview import describe_job_status, load_jobs

    config = _config(args)
    # A bad jobs file is a usage error before we ask etcd anything.
    specs = [spec for spec, _fn in load_jobs(args.jobs, None)] if args.jobs else []
    status = leader_status(config, job=args.job)
    _add_jobs_status(config, specs, status)
    if not status["jobs"]:
        del status["jobs"]
    elif status.get("shard") is not None:  # each job's group and its leader now
        from singleton.ops.groups import job_groups

        for job in status["jobs"]:
            job["group"], job["group_leader"] = job_groups(status["shard"], job["name"])
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    leader, shard = status["leader"], status.get("shard")
    if leader is None and shard is None:
        print(describe_vacancy(config, status))
    elif leader is not None:
        print(f"{args.name}: leader {leader['replica_id']} (host {leader['host']}, pid {leader['pid']}), "
              f"token {leader['fencing_token']}, leading for {leader['leading_for_s']:.1f} s, "
              f"lease {leader['lease_id']} with {leader['lease_remaining_s']:.0f} s left")
        if shard is not None:
            print(f"{args.name}: WARNING: sharded group leaders too: replicas of this name run with and without "
                  f"--shard (run them all the same way)")
    if shard is not None:
        from singleton.ops.groups import describe_shards

        print("\n".join(describe_shards(args.name, shard)))
    if status.get("runs") is not None:  # a name that never ran has nothing more to say
        print(f"{args.name}: {describe_runs(status['runs'])}")
    from singleton.ops.control import describe_line

    for state in status.get("control") or []:  # paused jobs, pending skips and triggers
        print(describe_line(args.name, state))
    for job in status.get("jobs", []):
        print(f"{args.name}: {describe_job_status(job)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC's C core would print its own lines (TLS handshake failures) to stderr; we report errors ourselves.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        check_password_flag(argv)
        check_environment(parser, os.environ)
    except UsageError as err:
        print(f"singleton: error: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command is None:  # bare `singleton`: what there is to run (a usage error: exit 2)
        parser.print_help(sys.stderr)
        return 2
    try:
        check_required(parser, args)
        if args.command == "run":
            return cmd_run(args, given_flags(parser, "run", argv))
        if args.command == "status":
            return cmd_status(args)
        if args.command == "resign":
            from singleton.ops.commands import resign_leader

            return resign_leader(_config(args), as_json=args.json, timeout_s=args.timeout, group=args.group)
        if args.command == "history":
            return cmd_history(args)
        if args.command in CONTROL_VERBS:
            return cmd_control(args)
        if args.command == "next":
            return cmd_next(args)
        if args.command == "chaos":
            from singleton.chaos.command import chaos_access, run_chaos

            return run_chaos(endpoints=args.endpoints, replicas=args.replicas, scenarios=args.scenarios,
                             rounds=args.rounds, out=args.out, fast=args.fast, members=args.members,
                             broken=args.broken_replicas, job=args.job, access=chaos_access(args),
                             jobs=args.jobs, sharded=args.sharded, groups=args.groups)
        if args.command == "dev-etcd":
            from singleton.dev.devetcd import run_dev_etcd

            return run_dev_etcd(port=args.port, members=args.members)
        from singleton.dev.demo import run_demo

        return run_demo(replicas=args.replicas, phase_s=args.seconds)
    except UsageError as err:
        print(f"singleton: error: {err}", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(f"singleton: error: {err}", file=sys.stderr)
        return 2
    except AuthError as err:  # status/resign: a refused credential is the caller's configuration
        print(f"singleton: error: etcd refused our credentials: {err}", file=sys.stderr)
        return 2
    except SingletonError as err:
        print(f"singleton: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"singleton: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `singleton` command: run, status, demo. Every option can also come from SINGLETON_<OPTION>."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from singleton.core.config import Config
from singleton.core.timings import DEFAULT, FAST
from singleton.core.errors import AuthError, ConfigError, SingletonError
from singleton.runtime.jobs import JobFn
from singleton.ops.logs import setup_logging

if TYPE_CHECKING:
    from singleton.ops.http import HttpServer
    from singleton.runtime.runner import Singleton

ENV_PREFIX = "SINGLETON_"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # one clear line, exit 2, no usage dump
        self.exit(2, f"singleton: error: {message}\n")


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def _option(parser: argparse.ArgumentParser, flag: str, *, type: Callable[[str], Any] = str,
            default: Any = None, required: bool = False, help: str = "") -> None:
    """An option whose default comes from its environment variable, if set."""
    env = env_name(flag)
    if env in os.environ:
        try:
            default = type(os.environ[env])
        except ValueError:
            parser.error(f"{env}={os.environ[env]!r} is not a valid {type.__name__}")
        required = False
    parser.add_argument(flag, type=type, default=default, required=required, help=f"{help} [env {env}]")


def _add_connection(parser: argparse.ArgumentParser) -> None:
    _option(parser, "--endpoints", required=True, help="etcd endpoints, comma-separated http://HOST:PORT")
    _option(parser, "--name", required=True, help="the job's name: replicas with the same name share one leader")
    _option(parser, "--prefix", default="/singleton", help="key prefix")
    _option(parser, "--cacert", default="", help="CA bundle (PEM) that signed the etcd server certificates")
    _option(parser, "--cert", default="", help="client certificate (PEM), for etcd --client-cert-auth")
    _option(parser, "--key", default="", help="the client certificate's private key (PEM)")
    _option(parser, "--user", default="", help="etcd user (password from --password-file or SINGLETON_PASSWORD)")
    _option(parser, "--password-file", default="", help="file holding the etcd user's password")


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: `--password x` must not be taken as `--password-file x`.
    parser = _Parser(prog="singleton", description="Run one job once per second on exactly one replica.",
                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run one replica")
    _add_connection(run)
    _option(run, "--job", required=True, help="package.module:callable taking the tick context")
    _option(run, "--id", help="replica id (default: host-pid-random)")
    _option(run, "--lease-ttl", type=float, default=DEFAULT.lease_ttl_s, help="lease TTL, whole seconds")
    _option(run, "--keepalive-interval", type=float, default=DEFAULT.keepalive_interval_s,
            help="seconds between renewals")
    _option(run, "--renewal-timeout", type=float,
            help="deadline of one renewal (default: 1 s, or half the keepalive interval if shorter)")
    _option(run, "--min-remaining-ttl", type=float, default=DEFAULT.min_remaining_ttl_s,
            help="step down below this much lease left")
    _option(run, "--max-failed-renewals", type=int, default=DEFAULT.max_failed_renewals,
            help="step down after this many failures in a row")
    _option(run, "--stop-timeout", type=float, default=5.0, help="how long a graceful stop waits for the tick")
    _option(run, "--job-timeout", type=float, help="cancel a run longer than this many seconds (default: none)")
    _option(run, "--run-record", default="on", help="on: claim every run in etcd before it starts (no slot twice "
            "whatever the clocks say); off: slots rest on the leader's clock alone")
    _option(run, "--catch-up", default="skip", help="after a crash takeover: skip (count the missed slots) or "
            "coalesce (one run at once for them)")
    _option(run, "--catch-up-window", type=float, default=60.0, help="coalesce only the missed slots this recent")
    _option(run, "--history-size", type=int, default=100, help="runs kept in etcd for `singleton history`")
    _option(run, "--job-cancel-grace", type=float, default=2.0, help="a run still going this long after its cancel "
            "is hung: step down without releasing the lease, fail /healthz until it ends")
    _option(run, "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    _option(run, "--log-format", default="text", help="text, or json (one object per line)")
    _option(run, "--http-host", default="0.0.0.0", help="address of the /metrics, /healthz, /readyz server")
    _option(run, "--http-port", type=int, default=9464, help="its port; 0 turns it off")
    _option(run, "--admin-address", default="", help="[HOST:]PORT of the Admin gRPC API (off when empty; "
            "a bare port binds 127.0.0.1)")
    _option(run, "--admin-token-file", default="", help="file holding the bearer token the Admin API requires "
            "(required beyond loopback)")

    status = sub.add_parser("status", help="who leads now")
    _add_connection(status)
    status.add_argument("--json", action="store_true", help="machine-readable output (JSON lines with --watch)")
    status.add_argument("--watch", action="store_true", help="follow leader changes live (an etcd watch)")
    status.add_argument("--max-events", type=int, default=0, help="with --watch: stop after this many changes")

    resign = sub.add_parser("resign", help="ask the current leader to step down gracefully")
    _add_connection(resign)
    resign.add_argument("--json", action="store_true", help="machine-readable output")
    resign.add_argument("--timeout", type=float, default=15.0, help="how long to wait for the handover")

    history = sub.add_parser("history", help="the last runs of the job, from the run record in etcd")
    _add_connection(history)
    history.add_argument("--json", action="store_true", help="machine-readable output")
    history.add_argument("--limit", type=int, default=20, help="how many runs, newest first")

    chaos = sub.add_parser("chaos", help="failover chaos scenarios with a report and a timeline picture")
    chaos.add_argument("--endpoints", default="", help="your etcd (keys go under /singleton-chaos/); "
                       "default: an embedded etcd")
    chaos.add_argument("--members", type=int, default=3, help="members of the embedded etcd (1 or 3)")
    chaos.add_argument("--replicas", type=int, default=3)
    chaos.add_argument("--scenarios", default="all", help="all, or names separated by commas")
    chaos.add_argument("--rounds", type=int, default=1)
    chaos.add_argument("--out", default="chaos-out", help="where report.md and timeline.png go")
    chaos.add_argument("--fast", action="store_true", help=f"timings {FAST} instead of the defaults ({DEFAULT})")
    chaos.add_argument("--broken-replicas", action="store_true", help=argparse.SUPPRESS)  # proves checks can fail

    demo = sub.add_parser("demo", help="3 replicas on an embedded local etcd, with a live failover")
    demo.add_argument("--replicas", type=int, default=3)
    demo.add_argument("--seconds", type=float, default=8.0, help="how long each phase runs")
    return parser


def load_job(path: str) -> JobFn:
    """`package.module:callable` (the current directory is importable, as with `python -m`)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"bad job {path!r}: expected package.module:callable")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's config error
        raise ConfigError(f"cannot import job module {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"job {path!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"job {path!r} is not callable")
    return obj  # type: ignore[no-any-return]


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


def cmd_run(args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {}
    if args.id:
        extra["replica_id"] = args.id
    if args.renewal_timeout is not None:
        extra["renewal_timeout_s"] = args.renewal_timeout
    config = _config(args, lease_ttl_s=args.lease_ttl, keepalive_interval_s=args.keepalive_interval,
                     min_remaining_ttl_s=args.min_remaining_ttl, max_failed_renewals=args.max_failed_renewals,
                     stop_timeout_s=args.stop_timeout, job_timeout_s=args.job_timeout,
                     job_cancel_grace_s=args.job_cancel_grace, run_record=_on_off("--run-record", args.run_record),
                     catch_up=args.catch_up, catch_up_window_s=args.catch_up_window,
                     history_size=args.history_size, **extra)
    job = load_job(args.job)  # all checked before anything touches etcd
    setup_logging(args.log_level, args.log_format, config.replica_id)
    token = _read_token(args.admin_token_file)
    if args.admin_address:
        from singleton.ops.admin import check_admin_exposure, parse_address

        check_admin_exposure(parse_address(args.admin_address)[0], token)
    if not 0 <= args.http_port <= 65535:
        raise ConfigError(f"bad --http-port {args.http_port}")
    from singleton.ops.http import setup_telemetry
    from singleton.runtime.runner import Singleton

    setup_telemetry(config.replica_id)
    singleton = Singleton(config, job)  # its etcd channels open on first use, not here
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


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        from singleton.ops.commands import watch_leader

        return watch_leader(_config(args), as_json=args.json, max_events=args.max_events)
    from singleton.ops.commands import leader_status

    status = leader_status(_config(args))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    leader = status["leader"]
    if leader is None:
        print(f"{args.name}: no leader (key {status['key']} is vacant)")
    else:
        print(f"{args.name}: leader {leader['replica_id']} (host {leader['host']}, pid {leader['pid']}), "
              f"token {leader['fencing_token']}, leading for {leader['leading_for_s']:.1f} s, "
              f"lease {leader['lease_id']} with {leader['lease_remaining_s']:.0f} s left")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # gRPC's C core would print its own lines (TLS handshake failures) to stderr; we report errors ourselves.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "resign":
            from singleton.ops.commands import resign_leader

            return resign_leader(_config(args), as_json=args.json, timeout_s=args.timeout)
        if args.command == "history":
            from singleton.backends.etcd import EtcdBackend
            from singleton.ops.history import show_history

            if args.limit < 1:
                raise ConfigError(f"--limit must be at least 1 (got {args.limit})")
            backend = EtcdBackend.from_config(_config(args))
            try:
                return show_history(backend, _config(args), as_json=args.json, limit=args.limit)
            finally:
                backend.close()
        if args.command == "chaos":
            from singleton.chaos.command import run_chaos

            return run_chaos(endpoints=args.endpoints, replicas=args.replicas, scenarios=args.scenarios,
                             rounds=args.rounds, out=args.out, fast=args.fast, members=args.members,
                             broken=args.broken_replicas)
        from singleton.dev.demo import run_demo

        return run_demo(replicas=args.replicas, phase_s=args.seconds)
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

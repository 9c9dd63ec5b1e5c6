"""The `singleton` command's options: the parser, their SINGLETON_<OPTION> variables, and the checks that
argparse cannot make (required options that an environment variable may give, misspelt variables, a
password on the command line)."""
from __future__ import annotations

import argparse
import textwrap
import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from singleton import __version__
from singleton.core.config import SettingError
from singleton.core.timings import DEFAULT, FAST

ENV_PREFIX = "SINGLETON_"
# SINGLETON_* variables that are not options: the password (never a flag), and the test/chaos jobs' own.
# tests/test_cli.py checks that every SINGLETON_* name in the package is an option or listed here.
OTHER_ENV = ("SINGLETON_PASSWORD", "SINGLETON_LEDGER", "SINGLETON_LEDGER_HOLD_S", "SINGLETON_LEDGER_FAIL_EVERY",
             "SINGLETON_LEDGER_HANG_FILE", "SINGLETON_CHAOS_CLOCK_FILE", "SINGLETON_CHAOS_ON_ELECTED_S",
             "SINGLETON_CHAOS_ON_STEPPED_DOWN_S", "SINGLETON_CHAOS_BROKEN_KEEPS_RECORD", "SINGLETON_LEDGER_CRASH_FILE")
# `singleton chaos --scenarios`; tests/test_cli.py checks it against singleton.chaos.scenarios.SCENARIOS
# (importing that here would load the whole chaos harness for every command).
CHAOS_SCENARIOS = ("sigkill-leader", "sigterm-leader", "sigstop-leader", "partition-leader", "kill-leader-member",
                   "kill-raft-leader", "quorum-loss", "cluster-restart", "slow-job", "slow-job-past-lease",
                   "raising-job", "clock-step", "herd", "revoke-live-leader", "rolling-restart", "handover-clock-ahead",
                   "hung-job", "slow-callback-partition", "skewed-clocks")


class UsageError(Exception):
    """Bad command-line input found after parsing: one line, exit 2."""


class _Formatter(argparse.HelpFormatter):
    """Every option's default in its help, before its `[env ...]` tag; none for flags and empty defaults."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default in (None, False, "", argparse.SUPPRESS) or "default" in text
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        note = f" (default: {shown})".replace("%", "%%")
        head, tag, tail = text.partition(" [env ")
        return f"{head}{note}{tag}{tail}"

    def _split_lines(self, text: str, width: int) -> list[str]:
        # Never inside a name: scenario names and flags have hyphens.
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False  # `--password x` must not be taken as `--password-file x`
        kwargs["formatter_class"] = _Formatter
        super().__init__(*args, **kwargs)
        self.env_options: dict[str, str] = {}  # SINGLETON_X -> --x, for the options that read one
        self.required_options: list[tuple[str, str]] = []  # (dest, flag) that neither argv nor env gave
        self.one_of_options: list[tuple[str, ...]] = []  # flags of which exactly one must be given (argv or env)

    def error(self, message: str) -> NoReturn:  # one clear line, exit 2, no usage dump
        self.exit(2, f"singleton: error: {message}\n")


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def _option(parser: _Parser, flag: str, *, type: Callable[[str], Any] = str, default: Any = None,
            required: bool = False, help: str) -> None:
    """An option whose default comes from its environment variable, if set. A required one is checked
    after parsing (`check_required`), so that the message can name the variable too."""
    env = env_name(flag)
    parser.env_options[env] = flag
    if env in os.environ:
        try:
            default = type(os.environ[env])
        except ValueError:
            parser.error(f"{env}={os.environ[env]!r} is not a valid {type.__name__}")
        required = False
    if required:
        parser.required_options.append((flag.lstrip("-").replace("-", "_"), flag))
    parser.add_argument(flag, type=type, default=default, help=f"{help}{' (required)' if required else ''} "
                        f"[env {env}]")


def _switch(parser: _Parser, flag: str, *, default: bool, help: str) -> None:
    """`--x/--no-x`, whose default its variable may set (on/off, true/false, 1/0)."""
    env = env_name(flag)
    parser.env_options[env] = flag
    if env in os.environ:
        value = os.environ[env].strip().lower()
        if value not in ("on", "off", "true", "false", "1", "0", "yes", "no"):
            parser.error(f"{env}={os.environ[env]!r} must be on or off")
        default = value in ("on", "true", "1", "yes")
    parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                        help=f"{help} (default: {'on' if default else 'off'}) [env {env}]")


def _add_connection(parser: _Parser) -> None:
    _option(parser, "--endpoints", required=True, help="etcd endpoints, comma-separated http://HOST:PORT")
    _option(parser, "--name", required=True, help="the job's name: replicas with the same name share one leader")
    _option(parser, "--prefix", default="/singleton", help="key prefix")
    _add_credentials(parser)


def _add_credentials(parser: _Parser) -> None:
    """TLS and auth for etcd: the same options (and variables) for run, status, resign, history and chaos."""
    _option(parser, "--cacert", default="", help="CA bundle (PEM) that signed the etcd server certificates")
    _option(parser, "--cert", default="", help="client certificate (PEM), for etcd --client-cert-auth")
    _option(parser, "--key", default="", help="the client certificate's private key (PEM)")
    _option(parser, "--user", default="", help="etcd user (password from --password-file or SINGLETON_PASSWORD)")
    _option(parser, "--password-file", default="", help="file holding the etcd user's password")


def _add_job_source(parser: _Parser, *, required: bool) -> None:
    """`--job M:F` (one job, every second) or `--jobs FILE` (a jobs.toml): exactly one, for `run`."""
    _option(parser, "--job", help="package.module:callable taking the tick context, run every second "
            "(or --jobs)")
    _option(parser, "--jobs", help="a jobs.toml file: many jobs, each with its callable, schedule (every / cron), "
            "tz and policies (see the README; or --job)")
    if required:
        parser.one_of_options.append(("--job", "--jobs"))


def _add_run(run: _Parser) -> None:
    _add_connection(run)
    _add_job_source(run, required=True)
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
    _option(run, "--job-cancel-grace", type=float, default=2.0, help="a run still going this long after its cancel "
            "is hung: step down without releasing the lease, fail /healthz until it ends")
    _option(run, "--run-record", default="on", help="on: claim every run in etcd before it starts (no slot twice "
            "whatever the clocks say); off: slots rest on the leader's clock alone")
    _option(run, "--catch-up", default="skip", help="after a crash takeover: skip (count the missed slots) or "
            "coalesce (one run at once for them)")
    _option(run, "--catch-up-window", type=float, default=60.0, help="coalesce only the missed slots this recent")
    _option(run, "--history-size", type=int, default=100, help="runs kept in etcd for `singleton history`")
    _option(run, "--workers", type=int, default=8, help="pre-started threads that run sync jobs; a slot due while "
            "all are busy is skipped and counted (pool_full), never queued")
    _switch(run, "--fast-failover", default=True, help="standbys sense the leader's death (its sensing socket "
            "closes and its port refuses) and revoke its lease: a crash costs about a second, not the lease")
    _switch(run, "--shard", default=False, help="spread the groups of jobs (each job its own group unless the "
            "jobs file sets group) across the replicas, each group with its own leader; needs --jobs, and turns "
            "fast failover off (a crash costs the member lease)")
    _option(run, "--shard-campaign-delay", type=float, default=0.5, help="with --shard: how long a replica that "
            "is not a vacant group's preferred owner waits before campaigning for it, seconds")
    _option(run, "--rebalance-interval", type=float, default=1.0, help="with --shard: a leader hands a tenth of its "
            "groups (at least one) per this many seconds to the replicas now preferred for them")
    _option(run, "--sense-host", default="0.0.0.0", help="address the fast-failover sensing listener binds")
    _option(run, "--sense-port", type=int, default=0, help="its port (0: a free one; the leader record says which)")
    _option(run, "--advertise-host", default="", help="host or IP the other replicas reach this one at "
            "(default: $POD_IP, else --sense-host unless 0.0.0.0, else this host's name resolved)")
    _option(run, "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    _option(run, "--log-format", default="text", help="text, or json (one object per line)")
    _option(run, "--http-host", default="0.0.0.0", help="address of the /metrics, /healthz, /readyz server")
    _option(run, "--http-port", type=int, default=9464, help="its port; 0 turns it off")
    _option(run, "--admin-address", default="", help="[HOST:]PORT of the Admin gRPC API (off when empty; "
            "a bare port binds 127.0.0.1)")
    _option(run, "--admin-token-file", default="", help="file holding the bearer token the Admin API requires "
            "(required beyond loopback)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="singleton", description="Run one job once per second on exactly one replica.")
    parser.add_argument("--version", action="version", version=f"singleton {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_run(sub.add_parser("run", help="run one replica"))

    status = sub.add_parser("status", help="who leads now (with sharding: the members and each group's leader)")
    _add_connection(status)
    status.add_argument("--json", action="store_true", help="machine-readable output (JSON lines with --watch)")
    status.add_argument("--watch", action="store_true", help="follow leader changes live (an etcd watch)")
    status.add_argument("--max-events", type=int, default=0, help="with --watch: stop after this many changes "
                        "(0: never)")
    # No SINGLETON_JOB variable here: in a replica's pod that names the callable of `run --job`.
    status.add_argument("--job", default=None, help="the runs of this named job (default: the single job of "
                        "`run --job`)")

    _option(status, "--jobs", help="a jobs.toml file: list each job's last run and next instants")

    upcoming = sub.add_parser("next", help="each job's next instants, in UTC and in its zone (no etcd needed; "
                              "the same on every replica)")
    _add_job_source(upcoming, required=True)
    upcoming.add_argument("--count", type=int, default=5, help="how many instants per job")
    upcoming.add_argument("--at", default="", help="from this time instead of now: ISO 8601, e.g. "
                          "2026-03-29T00:00:00Z (no offset: UTC)")
    upcoming.add_argument("--json", action="store_true", help="machine-readable output")

    resign = sub.add_parser("resign", help="ask the current leader to step down gracefully")
    _add_connection(resign)
    resign.add_argument("--json", action="store_true", help="machine-readable output")
    resign.add_argument("--timeout", type=float, default=15.0, help="how long to wait for the handover, seconds")
    resign.add_argument("--group", default=None, help="with sharding (run --shard): resign this group's leader; it "
                        "hands the group over and does not take it back for 30 s")

    history = sub.add_parser("history", help="the last runs of the job, from the run record in etcd")
    _add_connection(history)
    history.add_argument("--json", action="store_true", help="machine-readable output")
    history.add_argument("--limit", type=int, default=20, help="how many runs, newest first")
    history.add_argument("--job", default=None, help="the runs of this named job (default: the single job of "
                         "`run --job`)")

    _add_control(sub)

    chaos = sub.add_parser("chaos", help="failover chaos scenarios with a report and a timeline picture")
    chaos.add_argument("--endpoints", default="", help="your etcd (keys go under /singleton-chaos/); "
                       "default: an embedded etcd")
    chaos.add_argument("--members", type=int, default=3, help="members of the embedded etcd (1 or 3)")
    chaos.add_argument("--replicas", type=int, default=3, help="replicas of `singleton run` per scenario")
    chaos.add_argument("--scenarios", default="all", help=f"all, or names separated by commas: "
                       f"{', '.join(CHAOS_SCENARIOS)}")
    chaos.add_argument("--rounds", type=int, default=1, help="how many times to run each scenario")
    chaos.add_argument("--out", default="chaos-out", help="where report.md and timeline.png go")
    chaos.add_argument("--fast", action="store_true", help=f"timings {FAST} instead of the defaults ({DEFAULT})")
    chaos.add_argument("--broken-replicas", action="store_true", help=argparse.SUPPRESS)  # proves checks can fail
    chaos.add_argument("--job", default="", help="your own job, package.module:callable: the replicas run it and "
                       "the verdict comes from etcd's run record and history (no ledger); offers the scenarios "
                       "that do not shape the job or the clocks")
    chaos.add_argument("--sharded", action="store_true", help="sharded replicas (Config(shard=True)), each group "
                       "judged on its own; scenarios: partition, sigstop, sigkill (of the busiest member), "
                       "partition-then-sigstop")
    chaos.add_argument("--groups", type=int, default=12, help="with --sharded: groups (one every-second job each)")
    chaos.add_argument("--jobs", default="", help="your jobs file (as `run --jobs`): the replicas run every job of "
                       "it and each job is judged from its own run record, at its own schedule (not with --job)")
    _add_credentials(chaos)

    demo = sub.add_parser("demo", help="3 replicas on an embedded local etcd, with a live failover")
    demo.add_argument("--replicas", type=int, default=3, help="how many replicas of `singleton run`")
    demo.add_argument("--seconds", type=float, default=8.0, help="how long each phase runs")

    dev_etcd = sub.add_parser("dev-etcd", help="a throwaway local etcd for trying singleton by hand "
                              "(Ctrl-C stops it and deletes its data)")
    dev_etcd.add_argument("--port", type=int, default=2379, help="client port of the first member (0: a free one)")
    dev_etcd.add_argument("--members", type=int, default=1, help="how many etcd members (1 or 3)")
    return parser


CONTROL_VERBS = {"pause": "stop claiming the job's slots (until resumed, or --for)",
                 "resume": "end a pause",
                 "skip-next": "the job's next slot not yet claimed is not run",
                 "trigger": "one run of the job now, through the run record (refused while it runs, if its "
                            "overlap policy allows no second run)"}


def _add_control(sub: Any) -> None:
    """Job control (ops.control): written to etcd, so every replica agrees and it outlives leader changes."""
    for verb, what in CONTROL_VERBS.items():
        parser = sub.add_parser(verb, help=what)
        _add_connection(parser)
        parser.add_argument("--job", default=None, help="a named job (default: the single job of `run --job`)")
        parser.add_argument("--reason", default="", help="why (recorded with who and when in the job's events)")
        parser.add_argument("--by", default=None, help="who (default: user@host)")
        parser.add_argument("--json", action="store_true", help="machine-readable output")
        parser.add_argument("--force", action="store_true", help="a job that has left no record yet (never ran)")
        if verb == "pause":
            parser.add_argument("--for", dest="for_", default=None, metavar="DURATION",
                                help="end the pause by itself after this long (90s, 15m, 2h, 1d; judged by the "
                                     "leader's wall clock)")
        if verb == "trigger":
            parser.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the leader's answer "
                                "(0: return once written)")


def subparsers(parser: argparse.ArgumentParser) -> dict[str, _Parser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def check_password_flag(argv: Sequence[str]) -> None:
    """`--password` would put the password in the process list; say what to use, never echo the value."""
    if any(arg == "--password" or arg.startswith("--password=") for arg in argv):
        raise UsageError("there is no --password (a password on the command line shows in the process list): "
                         "put it in a file and pass --password-file FILE, or set SINGLETON_PASSWORD")


def check_environment(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """A SINGLETON_* variable that matches no option (of any command: a pod's variables serve `run` and also
    `status` run inside it) is a typo that would otherwise be silently ignored."""
    known = {env for sp in subparsers(parser).values() for env in sp.env_options} | set(OTHER_ENV)
    unknown = sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known)
    if unknown:
        parts = []
        for name in unknown:
            # Compared without the shared prefix, which would make every name look close.
            close = closest(name[len(ENV_PREFIX):], [k[len(ENV_PREFIX):] for k in sorted(known)])
            parts.append(f"{name} (did you mean {ENV_PREFIX}{close}?)" if close else name)
        verb = "matches no option" if len(unknown) == 1 else "match no option"
        raise UsageError(f"environment variable {', '.join(parts)} {verb}: fix or unset it")


def closest(word: str, candidates: Sequence[str], cutoff: float = 0.75) -> str | None:
    """The one probably meant (a misspelt variable, a jobs file's misspelt key), or None."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return close[0] if close else None


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def check_required(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    sp = subparsers(parser)[args.command]
    missing = [f"{flag} (or {env_name(flag)})" for dest, flag in sp.required_options if getattr(args, dest) is None]
    for flags in sp.one_of_options:
        given = [flag for flag in flags if getattr(args, _dest(flag))]
        if not given:
            missing.append("either " + " or ".join(f"{flag} (or {env_name(flag)})" for flag in flags))
        elif len(given) > 1:
            raise UsageError(f"{' and '.join(given)} exclude each other (set on the command line or by "
                             f"{' / '.join(env_name(f) for f in given)}): give one")
    if missing:
        raise UsageError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")


def given_flags(parser: argparse.ArgumentParser, command: str, argv: Sequence[str]) -> set[str]:
    """The options of `command` set on the command line or by their variable (the rest are defaults)."""
    options = subparsers(parser)[command].env_options
    return {flag for env, flag in options.items() if env in os.environ
            or any(arg == flag or arg.startswith(flag + "=") for arg in argv)}


# Config fields as `singleton run` spells them.
FIELD_FLAGS = {"lease_ttl_s": "--lease-ttl", "keepalive_interval_s": "--keepalive-interval",
               "min_remaining_ttl_s": "--min-remaining-ttl", "renewal_timeout_s": "--renewal-timeout",
               "max_failed_renewals": "--max-failed-renewals", "stop_timeout_s": "--stop-timeout",
               "job_timeout_s": "--job-timeout", "job_cancel_grace_s": "--job-cancel-grace",
               "catch_up_window_s": "--catch-up-window", "history_size": "--history-size", "workers": "--workers",
               "shard_campaign_delay_s": "--shard-campaign-delay", "rebalance_interval_s": "--rebalance-interval"}


def describe_setting_error(err: SettingError, given: set[str]) -> str:
    """The rule in the flags' words; a value the user did not set is called a default, and the settings to
    change along with the one they did set are named: `--lease-ttl 3` alone breaks the default interval."""
    def unit(field: str) -> str:
        return " s" if field.endswith("_s") else ""

    def setting(field: str, value: float) -> str:
        flag = FIELD_FLAGS.get(field, field)
        return f"{flag} {value:g}" if flag in given else f"{flag} (default {value:g}{unit(field)})"

    text = err.template.format(**{field: setting(field, value) for field, value in err.values.items()})
    flags = [FIELD_FLAGS.get(f, f) for f in dict.fromkeys([*err.values, *(err.example or {})])]
    defaulted = [flag for flag in map(FIELD_FLAGS.get, err.example or {}) if flag and flag not in given]
    if defaulted and any(flag in given for flag in flags):
        text += f": set {' and '.join(defaulted)} too"
    if err.example:
        text += f" (e.g. {' '.join(f'{FIELD_FLAGS.get(f, f)} {v:g}' for f, v in err.example.items())})"
    return text

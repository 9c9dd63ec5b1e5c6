"""The `singleton` command's messages for a newcomer: what is wrong, in the flags' words, and what to do.
All in-process and offline (nothing here reaches etcd)."""
from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import pytest

import singleton
from singleton import Config
from singleton.core.config import SettingError, suggested_timings
from singleton.ops.cli import main
from singleton.ops.cliargs import (CHAOS_SCENARIOS, OTHER_ENV, UsageError, build_parser, check_environment,
                                   subparsers)

ROOT = Path(__file__).resolve().parent.parent
RUN = ["run", "--endpoints", "http://127.0.0.1:1", "--name", "n", "--job", "os:getcwd"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("SINGLETON_")]:
        monkeypatch.delenv(name)


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one stderr line of a usage/config error (exit 2)."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def test_a_lease_ttl_alone_says_which_defaults_break_the_rule_and_what_to_set(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert fails([*RUN, "--lease-ttl", "3"], capsys) == (
        "singleton: error: --keepalive-interval (default 3 s) must be > 0 and below --lease-ttl 3 minus "
        "--min-remaining-ttl (default 2 s) = 1 s: set --keepalive-interval and --min-remaining-ttl too "
        "(e.g. --lease-ttl 3 --keepalive-interval 1 --min-remaining-ttl 0.6)")


def test_a_setting_from_its_variable_counts_as_set(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SINGLETON_LEASE_TTL", "3")
    monkeypatch.setenv("SINGLETON_MIN_REMAINING_TTL", "0.6")
    err = fails(RUN, capsys)
    assert "--lease-ttl 3 minus --min-remaining-ttl 0.6 = 2.4 s" in err
    assert ": set --keepalive-interval too (e.g." in err


@pytest.mark.parametrize(("args", "flag"), [
    (["--lease-ttl", "2.5"], "--lease-ttl 2.5"), (["--renewal-timeout", "5"], "--renewal-timeout 5"),
    (["--max-failed-renewals", "0"], "--max-failed-renewals 0"), (["--stop-timeout", "0"], "--stop-timeout 0"),
    (["--job-timeout", "-1"], "--job-timeout -1"), (["--job-cancel-grace", "0"], "--job-cancel-grace 0"),
    (["--lease-ttl", "2", "--keepalive-interval", "0.5"], "--min-remaining-ttl (default 2 s)"),
])
def test_every_timing_error_speaks_of_flags_not_config_fields(args: list[str], flag: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    err = fails([*RUN, *args], capsys)
    assert err.startswith(f"singleton: error: {flag} must be")
    assert not re.search(r"\b[a-z]+(_[a-z]+)+\b", err), err  # no lease_ttl_s or the like left


@pytest.mark.parametrize("ttl", [2, 3, 5, 10, 30, 600])
def test_the_suggested_timings_pass_and_the_library_message_names_config_fields(ttl: int) -> None:
    Config(endpoints="127.0.0.1:1", name="n", **suggested_timings(ttl))  # type: ignore[arg-type]
    with pytest.raises(SettingError, match=rf"keepalive_interval_s=3 must be > 0 and below lease_ttl_s={ttl} minus"):
        Config(endpoints="127.0.0.1:1", name="n", lease_ttl_s=ttl, keepalive_interval_s=3,  # type: ignore[arg-type]
               min_remaining_ttl_s=ttl - 1)


@pytest.mark.parametrize(("job", "hint"), [
    ("./myjob.py:tick", "a module path, not a file: use myjob:tick (run from its directory)"),
    ("jobs/myjob.py", "a module path, not a file: use myjob:FUNCTION (run from jobs/, its directory)"),
])
def test_a_job_given_as_a_file_says_how_to_name_the_module(job: str, hint: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert fails([*RUN[:-1], job], capsys) == f"singleton: error: bad job {job!r}: {hint}"


@pytest.mark.parametrize("password", [["--password", "s3cret-pw"], ["--password=s3cret-pw"]])
def test_a_password_flag_points_to_the_file_and_is_not_echoed(password: list[str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    err = fails([*RUN, *password], capsys)
    assert "--password-file FILE" in err and "s3cret-pw" not in err


def test_a_misspelt_variable_is_named_with_the_one_meant(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SINGLETON_LEASETTL", "3")
    monkeypatch.setenv("SINGLETON_ZZZ", "1")  # nothing close
    assert fails(RUN, capsys) == ("singleton: error: environment variable SINGLETON_LEASETTL (did you mean "
                                  "SINGLETON_LEASE_TTL?), SINGLETON_ZZZ match no option: fix or unset it")


def test_variables_of_any_command_and_the_non_option_ones_are_known() -> None:
    parser = build_parser()
    check_environment(parser, {"SINGLETON_JOB": "m:f", "SINGLETON_HTTP_PORT": "1", "SINGLETON_NAME": "n",
                               **{name: "x" for name in OTHER_ENV}})  # a pod's `run` variables, for `status`
    check_environment(parser, {"SINGLETON_JOBS": "jobs.toml"})  # `run --jobs`
    with pytest.raises(UsageError, match="SINGLETON_JOBZ"):
        check_environment(parser, {"SINGLETON_JOBZ": "m:f"})


def test_every_singleton_variable_the_package_reads_is_known() -> None:
    parser = build_parser()
    known = {env for sp in subparsers(parser).values() for env in sp.env_options} | set(OTHER_ENV)
    used = {m for p in (ROOT / "singleton").rglob("*.py") for m in re.findall(r'"(SINGLETON_[A-Z0-9_]*[A-Z0-9])"',
                                                                             p.read_text())}
    assert used and used <= known, used - known


def test_a_missing_required_option_names_its_variable(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert fails(["run", "--name", "n"], capsys) == ("singleton: error: --endpoints (or SINGLETON_ENDPOINTS) "
                                                     "and either --job (or SINGLETON_JOB) or --jobs (or "
                                                     "SINGLETON_JOBS) are required")
    monkeypatch.setenv("SINGLETON_JOB", "m:f")
    monkeypatch.setenv("SINGLETON_NAME", "n")
    assert fails(["status"], capsys) == "singleton: error: --endpoints (or SINGLETON_ENDPOINTS) is required"


def _help_text(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())


def test_every_option_has_help_and_shows_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # no line breaks inside a default
    for command, sp in subparsers(build_parser()).items():
        text = _help_text(sp)
        for action in sp._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{command} {action.option_strings}: no help"
            if action.default not in (None, False, ""):
                shown = f"{action.default:g}" if isinstance(action.default, float) else str(action.default)
                assert f"(default: {shown})" in text or "default" in action.help, (command, action.option_strings)
    run = _help_text(subparsers(build_parser())["run"])
    assert "lease TTL, whole seconds (default: 10) [env SINGLETON_LEASE_TTL]" in run
    assert "(required) [env SINGLETON_ENDPOINTS]" in run


def test_the_chaos_help_lists_the_real_scenarios() -> None:
    from singleton.chaos.scenarios import SCENARIOS

    assert CHAOS_SCENARIOS == tuple(SCENARIOS)
    assert ", ".join(CHAOS_SCENARIOS) in _help_text(subparsers(build_parser())["chaos"])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"singleton {singleton.__version__}\n"
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == singleton.__version__


def test_bare_singleton_prints_the_commands_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: singleton") and all(c in err for c in ("run", "status", "demo", "dev-etcd"))

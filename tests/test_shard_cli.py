"""`singleton run --shard` and the jobs file's `group`: what they set, and each mistake as one line, exit 2, before
anything touches etcd (nothing listens at port 1: a check that passed would go on and not exit 2)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from singleton import Config
from singleton.ops.cli import main
from singleton.ops.jobsfile import load_jobs_file

CONNECT = ["--endpoints", "http://127.0.0.1:1", "--name", "n"]
HELLO = 'callable = "singleton.examples:hello"'


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("SINGLETON_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def offline_run(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """`run` in-process up to the replica's loop: no etcd at port 1, no global logging or telemetry changed."""
    from singleton.runtime.runner import Singleton

    seen: list[Config] = []
    monkeypatch.setattr(Singleton, "run", lambda self, **_: seen.append(self.config))
    monkeypatch.setattr("singleton.ops.cli.preflight", lambda config: None)
    monkeypatch.setattr("singleton.ops.cli.setup_logging", lambda *args: None)
    monkeypatch.setattr("singleton.ops.http.setup_telemetry", lambda *args, **kwargs: None)
    return seen


@pytest.fixture
def jobs(tmp_path: Path) -> str:
    path = tmp_path / "jobs.toml"
    path.write_text(f'[[job]]\nname = "a"\n{HELLO}\ngroup = "g"\n\n[[job]]\nname = "b"\n{HELLO}\n')
    return str(path)


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert len(captured.err.splitlines()) == 1 and "Traceback" not in captured.err, captured.err
    return captured.err.strip()


def test_the_jobs_file_sets_a_group_per_job(jobs: str) -> None:
    specs = {spec.name: spec for spec, _fn in load_jobs_file(jobs)}
    assert (specs["a"].group, specs["a"].group_name) == ("g", "g")
    assert (specs["b"].group, specs["b"].group_name) == (None, "b")  # its own group by default


@pytest.mark.parametrize(("line", "expected"), [
    ("group = 5", "job 'a' (#1): group: must be a string (got an integer 5)"),
    ('group = "a b"', "job 'a' (#1): group: must be 1-128 characters of letters, digits and . _ : -"),
    ('groups = "g"', "job 'a' (#1): groups: unknown key (did you mean 'group'?)"),
])
def test_a_bad_group_is_one_line(tmp_path: Path, line: str, expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "jobs.toml"
    path.write_text(f'[[job]]\nname = "a"\n{HELLO}\n{line}\n')
    assert fails(["run", *CONNECT, "--jobs", str(path), "--shard"], capsys).startswith(
        f"singleton: error: {path}: {expected}")


@pytest.mark.parametrize(("args", "expected"), [
    (["--job", "singleton.examples:hello", "--shard"], "--shard spreads the jobs of a jobs file across the replicas: "
                                                       "give --jobs FILE"),
    (["--jobs", "{jobs}", "--rebalance-interval", "2"], "--rebalance-interval (SINGLETON_REBALANCE_INTERVAL) applies "
                                                        "with --shard only"),
    (["--jobs", "{jobs}", "--shard-campaign-delay", "1"], "--shard-campaign-delay (SINGLETON_SHARD_CAMPAIGN_DELAY) "
                                                          "applies with --shard only"),
    (["--jobs", "{jobs}", "--shard", "--fast-failover"], "--fast-failover (SINGLETON_FAST_FAILOVER) is not available "
                                                         "with --shard in this version"),
    (["--jobs", "{jobs}", "--shard", "--rebalance-interval", "0"], "--rebalance-interval 0 must be > 0"),
    (["--jobs", "{jobs}", "--shard", "--shard-campaign-delay", "-1"], "--shard-campaign-delay -1 must be > 0"),
])
def test_shard_flags_misused_are_one_line(jobs: str, args: list[str], expected: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(["run", *CONNECT, *[a.format(jobs=jobs) for a in args]], capsys)
    assert err.startswith(f"singleton: error: {expected}"), err


def test_a_bad_shard_variable_is_one_line(jobs: str, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SINGLETON_SHARD", "maybe")
    with pytest.raises(SystemExit) as exit_:
        main(["run", *CONNECT, "--jobs", jobs])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == "singleton: error: SINGLETON_SHARD='maybe' must be on or off"


@pytest.mark.parametrize("how", ["flag", "variables"])
def test_shard_reaches_the_config_and_turns_fast_failover_off(jobs: str, how: str, offline_run: list[Config],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["run", *CONNECT, "--jobs", jobs, "--http-port", "0"]
    if how == "flag":
        argv += ["--shard", "--shard-campaign-delay", "0.7", "--rebalance-interval", "3"]
    else:
        monkeypatch.setenv("SINGLETON_SHARD", "on")
        monkeypatch.setenv("SINGLETON_SHARD_CAMPAIGN_DELAY", "0.7")
        monkeypatch.setenv("SINGLETON_REBALANCE_INTERVAL", "3")
    assert main(argv) == 0
    config = offline_run[0]
    assert config.shard and not config.fast_failover
    assert (config.shard_campaign_delay_s, config.rebalance_interval_s) == (0.7, 3.0)


def test_without_shard_nothing_changes(jobs: str, offline_run: list[Config]) -> None:
    assert main(["run", *CONNECT, "--jobs", jobs, "--http-port", "0"]) == 0
    assert not offline_run[0].shard and offline_run[0].fast_failover
    assert offline_run[0].leader_key == "/singleton/n/leader"

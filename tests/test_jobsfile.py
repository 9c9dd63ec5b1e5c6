"""`singleton run --jobs jobs.toml` and `singleton next`: every mistake in a jobs file is one line naming the file,
the job and the field (exit 2, before anything touches etcd); `next` prints the same instants on every run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from singleton.core.schedule import Cron, Interval
from singleton.dev.embedded import EtcdCluster
from singleton.ops.cli import main
from singleton.ops.jobsfile import load_jobs_file

ROOT = Path(__file__).resolve().parent.parent
# Port 1: nothing listens there. A check that passes would go on to etcd and fail otherwise (not with exit 2).
CONNECT = ["--endpoints", "http://127.0.0.1:1", "--name", "n"]
HELLO = 'callable = "singleton.examples:hello"'


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("SINGLETON_")]:
        monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "jobs.toml"
    path.write_text(text)
    return str(path)


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one stderr line of a usage/config error (exit 2)."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert len(captured.err.splitlines()) == 1 and "Traceback" not in captured.err, captured.err
    assert captured.out == ""
    return captured.err.strip()


@pytest.mark.parametrize(("text", "expected"), [
    # TOML syntax: tomllib's own message, with the line and column.
    (f'[[job]]\n{HELLO}\nevery = = 2\n', "not valid TOML: Invalid value (at line 3, column 9)"),
    (f'[[job]]\n{HELLO}\njiter = 2\n', "job #1: jiter: unknown key (did you mean 'jitter'?) (known: name, callable"),
    (f'[[job]]\nname = "r"\n{HELLO}\ncatchup = "skip"\n', "job 'r' (#1): catchup: unknown key (did you mean "
                                                          "'catch_up'?)"),
    (f'[[jobs]]\n{HELLO}\n', "unknown top-level key 'jobs' (did you mean 'job'?); jobs are [[job]] tables"),
    ('title = "x"\n', "unknown top-level key 'title'; jobs are [[job]] tables"),
    ('', "no jobs: add at least one [[job]] table with a callable"),
    (f'[job]\n{HELLO}\n', "job: each job is a [[job]] table (double brackets), not [job] or job = ..."),
    ('job = ["singleton.examples:hello"]\n', "job: each job is a [[job]] table (double brackets)"),
    (f'[[job]]\n{HELLO}\nevery = "5"\n', "job #1: every: must be a number (got a string '5')"),
    (f'[[job]]\n{HELLO}\ntimeout = true\n', "job #1: timeout: must be a number (got a boolean True)"),
    (f'[[job]]\n{HELLO}\nmax_instances = 1.5\n', "job #1: max_instances: must be a whole number (got a float 1.5)"),
    (f'[[job]]\nname = "r"\n{HELLO}\ncron = "0 61 * * * *"\n', "job 'r' (#1): cron: cron '0 61 * * * *' is not a "
                                                              "valid expression"),
    (f'[[job]]\nname = "r"\n{HELLO}\ncron = "*/5 * * * *"\n', "job 'r' (#1): cron: cron '*/5 * * * *' must have 6 "
                                                             "fields, seconds first"),
    (f'[[job]]\nname = "r"\n{HELLO}\ncron = "0 0 2 * * *"\ntz = "Europe/Berlinn"\n',
     "job 'r' (#1): tz: unknown time zone 'Europe/Berlinn' (expected an IANA name like Europe/Berlin)"),
    (f'[[job]]\nname = "r"\n{HELLO}\nevery = 5\ntz = "UTC"\n', "job 'r' (#1): tz: tz applies to cron schedules only"),
    (f'[[job]]\nname = "fast"\n{HELLO}\nevery = 0.05\n', "job 'fast' (#1): every: every must be at least 0.1 s "
                                                         "(got 0.05)"),
    (f'[[job]]\nname = "r"\n{HELLO}\nevery = 1\ncron = "* * * * * *"\n', "job 'r' (#1): cron: give either every "
                                                                          "or cron, not both"),
    (f'[[job]]\nname = "r"\n{HELLO}\noverlap = "queue"\n', "job 'r' (#1): overlap: must be one of skip, allow"),
    (f'[[job]]\nname = "r"\n{HELLO}\nmax_instances = 3\n', "job 'r' (#1): max_instances: needs overlap = \"allow\""),
    (f'[[job]]\n{HELLO}\n\n[[job]]\n{HELLO}\nevery = 5\n', "job 'hello' (#2): name: already used by job #1 (names "
                                                           "must be unique; set name = \"...\")"),
    (f'[[job]]\nname = "a b"\n{HELLO}\n', "job 'a b' (#1): name: must be 1-128 characters"),
    ('[[job]]\nevery = 5\n', "job #1: callable: missing (package.module:callable)"),
    ('[[job]]\ncallable = "no_such_module_xyz:fn"\n', "job #1: callable: cannot import job module "
                                                     "'no_such_module_xyz': ModuleNotFoundError"),
    ('[[job]]\ncallable = "singleton.examples:nope"\n', "job #1: callable: job 'singleton.examples:nope': "
                                                       "'singleton.examples' has no attribute 'nope'"),
    ('[[job]]\nname = "s"\ncallable = "os:sep"\n', "job 's' (#1): callable: job 'os:sep' is not callable"),
    ('[[job]]\ncallable = "jobs/report.py:run"\n', "job #1: callable: bad job 'jobs/report.py:run': a module path, "
                                                  "not a file: use report:run"),
])
def test_a_bad_jobs_file_is_one_line_naming_file_job_and_field(tmp_path: Path, text: str, expected: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, text)
    err = fails(["run", *CONNECT, "--jobs", path], capsys)
    assert err.startswith(f"singleton: error: {path}: {expected}"), err
    assert fails(["next", "--jobs", path], capsys) == err  # `next` checks the file the same way


def test_a_missing_or_undecodable_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.toml")
    assert fails(["run", *CONNECT, "--jobs", missing], capsys) == (
        f"singleton: error: cannot read jobs file {missing}: No such file or directory")
    (tmp_path / "bad.toml").write_bytes(b"[[job]]\nname = \"\xff\"\n")
    assert "not UTF-8 text" in fails(["next", "--jobs", str(tmp_path / "bad.toml")], capsys)


def test_job_and_jobs_exclude_each_other_and_one_is_required(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, f"[[job]]\n{HELLO}\n")
    assert fails(["run", *CONNECT, "--job", "singleton.examples:hello", "--jobs", path], capsys) == (
        "singleton: error: --job and --jobs exclude each other (set on the command line or by SINGLETON_JOB / "
        "SINGLETON_JOBS): give one")
    assert fails(["run", *CONNECT], capsys) == (
        "singleton: error: either --job (or SINGLETON_JOB) or --jobs (or SINGLETON_JOBS) is required")
    monkeypatch.setenv("SINGLETON_JOB", "singleton.examples:hello")  # a pod's default, plus a --jobs flag
    assert "exclude each other" in fails(["run", *CONNECT, "--jobs", path], capsys)


@pytest.mark.parametrize("flag", [["--catch-up", "coalesce"], ["--job-timeout", "5"], ["--catch-up-window", "9"]])
def test_single_job_policy_flags_are_refused_with_a_jobs_file(tmp_path: Path, flag: list[str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f"[[job]]\n{HELLO}\n")
    err = fails(["run", *CONNECT, "--jobs", path, *flag], capsys)
    assert err.startswith(f"singleton: error: {flag[0]} (SINGLETON_") and f"for each [[job]] in {path}" in err


def test_every_field_of_the_documented_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = load_jobs_file(ROOT / "examples" / "jobs.toml")
    specs = {spec.name: spec for spec, _fn in jobs}
    assert len(specs) == len(jobs) >= 3 and all(callable(fn) for _spec, fn in jobs)
    text = (ROOT / "examples" / "jobs.toml").read_text()
    from singleton.ops.jobsfile import FIELDS

    assert all(f"\n{key} = " in text or f"\n# {key} = " in text for key in FIELDS), "every field is shown"
    assert any(isinstance(s.schedule, Cron) and s.schedule.tz != "UTC" for s in specs.values())
    assert any(isinstance(s.schedule, Interval) and s.schedule.period_ms < 1000 for s in specs.values())
    assert any(s.overlap == "allow" and s.max_instances > 1 for s in specs.values())
    assert any(s.catch_up == "coalesce" and s.timeout_s for s in specs.values())


# --- singleton next ------------------------------------------------------------------------------------------
BERLIN_JOBS = f"""
[[job]]
name = "nightly"
{HELLO}
cron = "0 30 2 * * *"
tz = "Europe/Berlin"
jitter = 2

[[job]]
name = "quarter"
{HELLO}
every = 0.25
"""


def test_next_shows_the_spring_forward_rule_in_utc_and_in_the_zone(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BERLIN_JOBS)
    assert main(["next", "--jobs", path, "--at", "2026-03-28T12:00:00Z", "--count", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "next instants after 2026-03-28T12:00:00Z"
    assert lines[1] == ("nightly: cron '0 30 2 * * *' (Europe/Berlin), jitter up to 2 s -> "
                        "singleton.examples:hello")
    # 02:30 does not exist on 29 March in Berlin: the run is at the transition, 03:00 CEST, once.
    assert lines[2].startswith("  2026-03-29T01:00:00Z  2026-03-29 03:00:00 CEST (+0200)  +")
    assert lines[2].endswith("[clocks go from 02:00 to 03:00 here: a local time they skip runs at this instant, "
                             "once]")
    assert lines[3].startswith("  2026-03-30T00:30:00Z  2026-03-30 02:30:00 CEST (+0200)  +")
    assert lines[4:] == ["quarter: every 0.25 s -> singleton.examples:hello",
                         "  2026-03-28T12:00:00.250Z", "  2026-03-28T12:00:00.500Z"]


def test_next_shows_the_fall_back_rule_the_repeated_time_runs_once(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, f'[[job]]\nname = "often"\n{HELLO}\ncron = "0 */20 * * * *"\ntz = "Europe/Berlin"\n')
    assert main(["next", "--jobs", path, "--at", "2026-10-25T00:10:00+00:00", "--count", "4", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["after"] == "2026-10-25T00:10:00Z"
    runs = listing["jobs"][0]["next"]
    # 02:20 and 02:40 CEST run; the second 02:00, 02:20, 02:40 (CET) do not; then 03:00 CET.
    assert [r["local"] for r in runs] == ["2026-10-25 02:20:00 CEST (+0200)", "2026-10-25 02:40:00 CEST (+0200)",
                                          "2026-10-25 03:00:00 CET (+0100)", "2026-10-25 03:20:00 CET (+0100)"]
    assert [r["utc"] for r in runs] == ["2026-10-25T00:20:00Z", "2026-10-25T00:40:00Z", "2026-10-25T02:00:00Z",
                                        "2026-10-25T02:20:00Z"]
    assert "happens twice today" in runs[0]["dst"] and "dst" not in runs[2]
    assert [r["slot"] for r in runs] == [int(r["unix_s"]) for r in runs]


def test_next_is_the_same_from_any_process_at_the_same_time(tmp_path: Path) -> None:
    """What every replica computes: two separate processes, same file and time, byte-identical output."""
    path = write(tmp_path, BERLIN_JOBS)
    argv = [sys.executable, "-m", "singleton", "next", "--jobs", path, "--at", "2026-03-29T00:59:58Z",
            "--count", "3"]
    outputs = [subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path) for _ in range(2)]
    assert all(o.returncode == 0 and o.stderr == "" for o in outputs), outputs
    assert outputs[0].stdout == outputs[1].stdout and "2026-03-29T01:00:00Z" in outputs[0].stdout


def test_next_with_a_single_job_is_every_second(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SINGLETON_JOB", "singleton.examples:hello")  # as in a pod of the default configuration
    assert main(["next", "--at", "2026-01-01 00:00:00", "--count", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == ["next instants after 2026-01-01T00:00:00Z",
                                                    "hello: every 1 s -> singleton.examples:hello",
                                                    "  2026-01-01T00:00:01Z", "  2026-01-01T00:00:02Z"]


@pytest.mark.parametrize(("args", "expected"), [
    (["--at", "tomorrow"], "--at 'tomorrow' is not an ISO 8601 time (e.g. 2026-03-29T00:00:00Z)"),
    (["--count", "0"], "--count must be from 1 to 1000 (got 0)"),
])
def test_next_bad_arguments(tmp_path: Path, args: list[str], expected: str,
                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BERLIN_JOBS)
    assert fails(["next", "--jobs", path, *args], capsys) == f"singleton: error: {expected}"


# --- singleton status with jobs -------------------------------------------------------------------------------
def test_status_lists_each_job_of_the_file_with_its_next_instants(etcd: EtcdCluster, name: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BERLIN_JOBS)
    endpoints = ",".join(map(str, etcd.endpoints))
    assert main(["status", "--endpoints", endpoints, "--name", name, "--jobs", path, "--json"]) == 0
    jobs = json.loads(capsys.readouterr().out)["jobs"]
    assert [j["name"] for j in jobs] == ["nightly", "quarter"]
    assert all(j["in_jobs_file"] and j["last_claimed_slot"] is None and len(j["next"]) == 3 for j in jobs)
    assert jobs[1]["next"][1]["unix_s"] - jobs[1]["next"][0]["unix_s"] == pytest.approx(0.25)
    assert main(["status", "--endpoints", endpoints, "--name", name, "--jobs", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{name}: no replica has registered this name")
    assert lines[1].startswith(f"{name}: job nightly: cron '0 30 2 * * *' (Europe/Berlin), jitter up to 2 s; "
                               f"no run recorded; next 20")
    assert lines[2].startswith(f"{name}: job quarter: every 0.25 s; no run recorded; next ")
    # A bad file is a usage error before etcd is asked (port 1: nothing listens).
    bad = write(tmp_path, f"[[job]]\n{HELLO}\nevery = 0.01\n")
    assert fails(["status", *CONNECT, "--jobs", bad], capsys).startswith(f"singleton: error: {bad}: job 'hello'")


def test_status_reads_each_jobs_own_record_and_lists_jobs_only_etcd_knows() -> None:
    """The per-job records (`<prefix>/<name>/jobs/<job>/run` and `.../history/`), written under a real term."""
    from singleton import Config, MemoryBackend
    from singleton.core.jobspec import build_job_spec
    from singleton.ops.jobsview import job_history_prefix, job_run_key, jobs_status
    from singleton.v1.run_pb2 import RunEntry, RunRecord

    backend = MemoryBackend()
    config = Config(endpoints="127.0.0.1:2379", name="svc")  # type: ignore[arg-type]
    lease = backend.grant_lease(10, 1.0)
    token = backend.campaign(config.leader_key, b"", lease.lease_id, 1.0).fencing_token
    record = RunRecord(seq=7, slot=6_000_000, fencing_token=token, replica_id="r1")  # every 300 s: 1.8e9 s
    entry = RunEntry(seq=6, slot=5_999_999, fencing_token=token, replica_id="r1", started_at_unix_s=1.0,
                     duration_s=0.5, outcome="ok")
    for key, value in ((job_run_key(config, "report"), record), (job_history_prefix(config, "report") + "6", entry),
                       (job_run_key(config, "gone"), record)):
        assert backend.guarded_put(config.leader_key, token, key, value.SerializeToString(), 1.0)
    specs = [build_job_spec("report", every=300), build_job_spec("fresh", every=0.5)]
    jobs = {j["name"]: j for j in jobs_status(backend, config, specs, now=1_800_000_000.0)}
    assert list(jobs) == ["report", "fresh", "gone"]  # the file's, then those only etcd knows
    assert jobs["report"]["last_claimed_slot"] == 6_000_000  # slot k of every 300 s: 300 k s after the epoch
    assert jobs["report"]["last_claimed_utc"] == "2027-01-15T08:00:00Z" and jobs["gone"]["last_claimed_utc"] is None
    assert jobs["report"]["last_run"] == {"slot": 5_999_999, "outcome": "ok", "replica_id": "r1", "duration_s": 0.5}
    # A record from another schedule than the file's now may name no date at all: shown without one.
    assert jobs_status(backend, config, [build_job_spec("gone", every=1e6)])[0]["last_claimed_utc"] is None
    assert [i["utc"] for i in jobs["report"]["next"]] == ["2027-01-15T08:05:00Z", "2027-01-15T08:10:00Z",
                                                          "2027-01-15T08:15:00Z"]
    assert jobs["fresh"]["last_claimed_slot"] is None and len(jobs["fresh"]["next"]) == 3
    assert not jobs["gone"]["in_jobs_file"] and jobs["gone"]["next"] == [] and jobs["gone"]["last_run"] is None


LEDGER_JOBS = '''
import os


def _record(job, ctx):
    with open(os.environ["JOBS_LEDGER"], "a") as ledger:
        ledger.write(f"{job} {ctx.fencing_token} {ctx.slot}\\n")


def fast(ctx):
    _record("fast", ctx)


def slow(ctx):
    _record("even", ctx)
'''


@pytest.mark.skipif(not hasattr(__import__("singleton").Singleton, "add_job"),
                    reason="needs Singleton.add_job (runtime branch): runs by itself once merged")
def test_run_with_a_jobs_file_runs_each_job_on_its_own_schedule(etcd: EtcdCluster, name: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    from singleton.core.timings import FAST
    from singleton.testing.recorder import wait_for

    (tmp_path / "ledgerjobs.py").write_text(LEDGER_JOBS)
    path = write(tmp_path, '[[job]]\ncallable = "ledgerjobs:fast"\nevery = 0.5\n\n'
                           '[[job]]\nname = "even"\ncallable = "ledgerjobs:slow"\ncron = "*/2 * * * * *"\n')
    ledger = tmp_path / "ledger.log"
    endpoints = ",".join(map(str, etcd.endpoints))
    argv = [sys.executable, "-m", "singleton", "run", "--jobs", path, "--endpoints", endpoints, "--name", name,
            "--id", "r1", "--http-port", "0", *FAST.cli_args()]

    def runs(job: str) -> list[int]:
        lines = ledger.read_text().splitlines() if ledger.exists() else []
        return [int(line.split()[2]) for line in lines if line.split()[0] == job]

    with open(tmp_path / "out.log", "wb") as out:  # the job modules import from cwd, as with --job
        proc = subprocess.Popen(argv, cwd=tmp_path, env={**os.environ, "JOBS_LEDGER": str(ledger)}, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: len(runs("fast")) >= 4 and len(runs("even")) >= 2, 30, "runs of both jobs")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
    assert code == 0, (tmp_path / "out.log").read_text()
    fast, even = runs("fast"), runs("even")
    assert fast == sorted(set(fast)) and even == sorted(set(even))  # no slot twice, in order
    # Interval slots count half-seconds since the epoch; cron slots are Unix seconds (both as core/schedule.py).
    assert abs(fast[0] * 0.5 - even[0]) < 10
    assert all(slot % 2 == 0 for slot in even)  # "*/2" in the seconds field: even seconds only
    monkeypatch.syspath_prepend(str(tmp_path))  # `status --jobs` checks the file, callables included
    assert main(["status", "--endpoints", endpoints, "--name", name, "--jobs", path, "--json"]) == 0
    jobs = {j["name"]: j for j in json.loads(capsys.readouterr().out)["jobs"]}
    # Each job's own record (a claim may be one slot ahead of the last run, if the stop came in between).
    assert jobs["fast"]["last_claimed_slot"] >= fast[-1] and jobs["even"]["last_claimed_slot"] >= even[-1]

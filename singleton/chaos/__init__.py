"""The failover chaos harness behind `singleton chaos`: real replicas, named faults, verdicts from evidence.

Every verdict comes from the tick ledger (written by the job, not by the replicas' election code) and
from etcd itself, never from what the replicas log or claim.
"""

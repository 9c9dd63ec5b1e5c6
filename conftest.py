"""Fixtures shared by tests/ and integration/: real etcd on free loopback ports."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from singleton.dev.embedded import EtcdCluster

# Every server a test starts listens on 127.0.0.1: the fast-failover listener too (it binds all interfaces by
# default, for standbys on other hosts). Config and the CLI both read this variable.
os.environ.setdefault("SINGLETON_SENSE_HOST", "127.0.0.1")


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdCluster]:
    """One real etcd member on a free loopback port, for the whole session."""
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture
def etcd3() -> Iterator[EtcdCluster]:
    """A fresh real 3-member etcd cluster (tests kill its members)."""
    with EtcdCluster(3) as cluster:
        yield cluster


@pytest.fixture
def name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"

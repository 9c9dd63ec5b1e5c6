"""Fixtures shared by tests/ and integration/: real etcd on free loopback ports."""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from singleton.dev.embedded import EtcdCluster


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

"""singleton: run one job once per second on exactly one replica of a cluster, coordinated through etcd."""
from __future__ import annotations

from singleton.backends.abc import Backend, CampaignResult, KeyValue, Lease, WatchEvent
from singleton.core.clock import Clock, FakeClock, SystemClock
from singleton.core.config import Config, Endpoint, parse_endpoints
from singleton.core.election import Election, Role
from singleton.core.errors import (AuthError, BackendError, BackendTimeout, BackendUnavailable, ConfigError, IllegalTransition,
                     LeaseNotFound, SingletonError, WatchCompacted)
from singleton.runtime.jobs import TickContext
from singleton.core.lease import LeaseKeeper, StepDownReason
from singleton.backends.memory import MemoryBackend
from singleton.runtime.runner import Singleton

__all__ = [
    "AuthError", "Backend", "BackendError", "BackendTimeout", "BackendUnavailable", "CampaignResult", "Clock",
    "Config", "ConfigError", "Election", "Endpoint", "FakeClock", "IllegalTransition", "KeyValue", "Lease",
    "LeaseKeeper", "LeaseNotFound", "MemoryBackend", "Role", "Singleton", "SingletonError", "StepDownReason",
    "SystemClock", "TickContext", "WatchCompacted", "WatchEvent", "parse_endpoints",
]
__version__ = "0.1.0"

"""singleton: run one job once per second on exactly one replica of a cluster, coordinated through etcd."""
from __future__ import annotations

from .abc import Backend, CampaignResult, KeyValue, Lease, WatchEvent
from .clock import Clock, FakeClock, SystemClock
from .config import Config, Endpoint, parse_endpoints
from .election import Election, Role
from .errors import (AuthError, BackendError, BackendTimeout, BackendUnavailable, ConfigError, IllegalTransition,
                     LeaseNotFound, SingletonError, WatchCompacted)
from .jobs import TickContext
from .lease import LeaseKeeper, StepDownReason
from .memory import MemoryBackend
from .runner import Singleton

__all__ = [
    "AuthError", "Backend", "BackendError", "BackendTimeout", "BackendUnavailable", "CampaignResult", "Clock",
    "Config", "ConfigError", "Election", "Endpoint", "FakeClock", "IllegalTransition", "KeyValue", "Lease",
    "LeaseKeeper", "LeaseNotFound", "MemoryBackend", "Role", "Singleton", "SingletonError", "StepDownReason",
    "SystemClock", "TickContext", "WatchCompacted", "WatchEvent", "parse_endpoints",
]
__version__ = "0.1.0"

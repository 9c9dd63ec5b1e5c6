"""Configuration and its safety rules, checked before anything touches etcd."""
from __future__ import annotations

import copy
import os
import re
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from singleton.core.errors import ConfigError
from singleton.core.security import Credentials, load_credentials

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_GROUP_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:-]{0,127}$")  # a job's name is its group's by default


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    secure: bool = False

    @property
    def target(self) -> str:
        """The gRPC target string (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.target}"


def parse_endpoint(text: str) -> Endpoint:
    """`http://host:port`, `https://host:port` or `host:port`."""
    raw = text.strip()
    parts = urlsplit(raw if "://" in raw else f"http://{raw}")
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"bad endpoint {text!r}: scheme must be http or https")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"bad endpoint {text!r}: port is not a number from 1 to 65535") from None
    if not parts.hostname or port is None or parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"bad endpoint {text!r}: expected http://HOST:PORT")
    return Endpoint(parts.hostname, port, parts.scheme == "https")


def parse_endpoints(text: str | Sequence[str | Endpoint]) -> tuple[Endpoint, ...]:
    items = text.split(",") if isinstance(text, str) else list(text)
    endpoints = tuple(item if isinstance(item, Endpoint) else parse_endpoint(item) for item in items
                      if isinstance(item, Endpoint) or item.strip())
    if not endpoints:
        raise ConfigError("no etcd endpoints given")
    return endpoints


def default_renewal_timeout_s(keepalive_interval_s: float) -> float:
    """The deadline of one renewal when none is given: 1 s, or half the keepalive interval if that is shorter
    (a renewal that hangs must give up well before the next one is due)."""
    return min(1.0, keepalive_interval_s / 2)


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Config:
    """Timings are float seconds. The defaults are the design's: 10 s lease, renew every 3 s, step down below 2 s."""

    endpoints: tuple[Endpoint, ...]
    name: str
    replica_id: str = field(default_factory=default_replica_id)
    prefix: str = "/singleton"
    lease_ttl_s: float = 10.0
    keepalive_interval_s: float = 3.0
    renewal_timeout_s: float | None = None  # None: default_renewal_timeout_s(keepalive_interval_s)
    min_remaining_ttl_s: float = 2.0
    max_failed_renewals: int = 2
    call_timeout_s: float = 2.0
    stop_timeout_s: float = 5.0
    campaign_backoff_max_s: float = 2.0
    # On a vacancy each standby waits its turn, a delay in [0, this) from a hash of (its id, the ended term), still
    # watching the key: the first campaigns, the rest see its put and do not (core/stagger.py). 0: all at once.
    campaign_stagger_max_s: float = 0.15
    # A run longer than this is told to cancel (None: no limit). One still running `job_cancel_grace_s` after a
    # cancel is hung: the replica steps down without releasing its lease, and /healthz fails until it ends.
    job_timeout_s: float | None = None
    job_cancel_grace_s: float = 2.0
    # The run record: each run is claimed in etcd before it starts (False: slots rest on the leader's clock alone).
    run_record: bool = True
    # After a takeover that was not a handover: "skip" counts and logs the slots nobody claimed; "coalesce" makes
    # one run at once stand in for those within the window.
    catch_up: str = "skip"
    catch_up_window_s: float = 60.0
    history_size: int = 100  # runs kept in etcd (a ring: etcd never grows)
    # Pre-started threads that run sync jobs (async jobs run on an event loop and take none). A slot due while every
    # worker is busy is skipped and counted (pool_full), never queued. 8: a few slow jobs cannot starve the rest, and
    # idle threads cost ~8 MB of address space each, little real memory.
    workers: int = 8
    # Fast failover: standbys hold a TCP connection to the leader's sensing listener and revoke its lease when the
    # process is gone (runtime/sensing.py). The listener binds sense_host:sense_port (0: a free port); standbys
    # dial advertise_host ("": $POD_IP, else sense_host unless a wildcard, else this host's name resolved).
    fast_failover: bool = True
    # All interfaces, so standbys on other hosts reach it; SINGLETON_SENSE_HOST (the CLI's variable) narrows it
    # for a library user too (the test suite sets 127.0.0.1).
    sense_host: str = field(default_factory=lambda: os.environ.get("SINGLETON_SENSE_HOST", "0.0.0.0"))
    sense_port: int = 0
    advertise_host: str = ""
    # Sharding (runtime/shard/): each job belongs to a group (its own name unless given), each group has its own
    # leader key, term, fencing token and run records, all backed by this replica's one lease. Off: one leader
    # for everything, exactly as before. `group` is set only on the per-group view of a Config (for_group).
    shard: bool = False
    group: str | None = None
    # A member that is not the preferred owner of a vacant group waits this long before campaigning for it
    # (the preferred one goes at once); a leader hands at most a tenth of its groups (at least one) per
    # rebalance_interval_s to the members now preferred for them, so a rolling restart never moves all at once.
    shard_campaign_delay_s: float = 0.5
    rebalance_interval_s: float = 1.0
    # TLS files (paths) and etcd auth; the password itself never comes from a flag.
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password_file: str | None = None
    password: str | None = field(default=None, repr=False)
    credentials: Credentials | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not all(isinstance(e, Endpoint) for e in self.endpoints) or not isinstance(self.endpoints, tuple):
            object.__setattr__(self, "endpoints", parse_endpoints(self.endpoints))
        if self.renewal_timeout_s is None:
            object.__setattr__(self, "renewal_timeout_s", default_renewal_timeout_s(self.keepalive_interval_s))
        self.validate()
        credentials = load_credentials(self.cacert, self.cert, self.key, self.user, self.password_file, self.password)
        if credentials and credentials.tls and not all(e.secure for e in self.endpoints):
            raise ConfigError("TLS options were given but an endpoint is http://: use https:// endpoints")
        object.__setattr__(self, "credentials", credentials)

    @property
    def renewal_deadline_s(self) -> float:
        assert self.renewal_timeout_s is not None
        return self.renewal_timeout_s

    @property
    def _term_root(self) -> str:
        """Where a term's keys live: the name's, or with sharding the group's (`<prefix>/<name>/groups/<g>`)."""
        base = f"{self.prefix}/{self.name}"
        return base if self.group is None else f"{base}/groups/{self.group}"

    @property
    def leader_key(self) -> str:
        return f"{self._term_root}/leader"

    @property
    def handover_key(self) -> str:
        return f"{self._term_root}/handover"

    @property
    def members_prefix(self) -> str:
        """Sharding: live replicas register under this, each with its lease."""
        return f"{self.prefix}/{self.name}/members/"

    def member_key(self, replica_id: str | None = None) -> str:
        return self.members_prefix + (replica_id or self.replica_id)

    @property
    def groups_prefix(self) -> str:
        """Sharding: `<groups_prefix><group>/leader`, `/handover`, `/resign`."""
        return f"{self.prefix}/{self.name}/groups/"

    def for_group(self, group: str) -> Config:
        """The view of this Config that one group's term uses: its keys under `groups/<group>/`. Job run records
        and controls stay per job (`jobs/<job>/...`), so job commands work the same with sharding on or off."""
        if not _GROUP_RE.match(group):
            raise ConfigError(f"bad group {group!r}: use letters, digits and . _ : -")
        view = copy.copy(self)  # not replace(): that would load the TLS files and password again, per group
        object.__setattr__(view, "group", group)
        return view

    @property
    def run_key(self) -> str:
        return f"{self.prefix}/{self.name}/run"

    @property
    def history_prefix(self) -> str:
        return f"{self.prefix}/{self.name}/history/"

    def job_run_key(self, job: str | None) -> str:
        """Where a job's run record lives. `None` is the legacy job (one job registered without a name through
        `job=` / `--job` / a bare `@app.job`): it keeps `<prefix>/<name>/run`, so a rolling upgrade reads the old
        leader's record. Every named job: `<prefix>/<name>/jobs/<job>/run`."""
        return self.run_key if job is None else f"{self.prefix}/{self.name}/jobs/{job}/run"

    def job_history_prefix(self, job: str | None) -> str:
        """The job's history ring (same rule as `job_run_key`)."""
        return self.history_prefix if job is None else f"{self.prefix}/{self.name}/jobs/{job}/history/"

    @property
    def resign_key(self) -> str:
        return f"{self._term_root}/resign"

    def validate(self) -> None:
        ttl, margin, every = self.lease_ttl_s, self.min_remaining_ttl_s, self.keepalive_interval_s
        if not self.endpoints:
            raise ConfigError("no etcd endpoints given")
        if not _NAME_RE.match(self.name):
            raise ConfigError(f"bad name {self.name!r}: use letters, digits, '.', '_' or '-'")
        if not self.replica_id or "\n" in self.replica_id:
            raise ConfigError("replica id must be a non-empty single line")
        if not self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise ConfigError(f"bad prefix {self.prefix!r}: must start with '/' and not end with it")
        timings = {"lease_ttl_s": ttl, "keepalive_interval_s": every, "min_remaining_ttl_s": margin}
        if ttl < 2 or ttl != int(ttl):
            raise SettingError("{lease_ttl_s} must be a whole number of seconds >= 2", timings)
        if not 0 < margin < ttl:
            raise SettingError("{min_remaining_ttl_s} must be > 0 and below {lease_ttl_s}", timings,
                               suggested_timings(ttl))
        if not 0 < every < ttl - margin:
            raise SettingError(f"{{keepalive_interval_s}} must be > 0 and below {{lease_ttl_s}} minus "
                               f"{{min_remaining_ttl_s}} = {ttl - margin:g} s", timings, suggested_timings(ttl))
        if not 0 < self.renewal_deadline_s <= every:
            raise SettingError("{renewal_timeout_s} must be > 0 and at most {keepalive_interval_s}",
                               {"renewal_timeout_s": self.renewal_deadline_s, "keepalive_interval_s": every},
                               {"renewal_timeout_s": default_renewal_timeout_s(every)} if every > 0 else None)
        if self.max_failed_renewals < 1:
            raise SettingError("{max_failed_renewals} must be >= 1", {"max_failed_renewals": self.max_failed_renewals})
        if self.catch_up not in ("skip", "coalesce"):
            raise ConfigError(f"catch-up policy must be skip or coalesce (got {self.catch_up!r})")
        if not 1 <= self.history_size <= 10_000:
            raise SettingError("{history_size} must be from 1 to 10000 runs", {"history_size": self.history_size})
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or not 1 <= self.workers <= 1024:
            raise SettingError("{workers} must be a whole number from 1 to 1024", {"workers": self.workers})
        if not 0 <= self.sense_port <= 65535:
            raise ConfigError(f"sensing port must be from 0 to 65535 (got {self.sense_port})")
        if self.job_timeout_s is not None and self.job_timeout_s <= 0:
            raise SettingError("{job_timeout_s} must be > 0 seconds, or unset for none",
                               {"job_timeout_s": self.job_timeout_s})
        if self.group is not None and not _GROUP_RE.match(self.group):
            raise ConfigError(f"bad group {self.group!r}: use letters, digits and . _ : -")
        if not 0 <= self.campaign_stagger_max_s <= 0.5:
            # A takeover waits for the first turn: beyond half a second it would cost a handover its next second.
            raise SettingError("{campaign_stagger_max_s} must be from 0 (off) to 0.5 s",
                               {"campaign_stagger_max_s": self.campaign_stagger_max_s})
        for label in ("call_timeout_s", "stop_timeout_s", "campaign_backoff_max_s", "job_cancel_grace_s",
                      "catch_up_window_s", "shard_campaign_delay_s", "rebalance_interval_s"):
            value = getattr(self, label)
            if value <= 0:
                raise SettingError(f"{{{label}}} must be > 0", {label: value})


class SettingError(ConfigError):
    """A setting, or a rule between settings, broken. `template` names each setting as `{field}`, so that
    str() can speak of Config fields and the CLI of its flags (`render`); `example` is a combination that
    passes."""

    def __init__(self, template: str, values: dict[str, float], example: dict[str, float] | None = None) -> None:
        self.template, self.values, self.example = template, values, example
        super().__init__(self.render(lambda field, value: f"{field}={value:g}",
                                     lambda fields: ", ".join(f"{f}={v:g}" for f, v in fields.items())))

    def render(self, setting: Callable[[str, float], str], example: Callable[[dict[str, float]], str]) -> str:
        text = self.template.format(**{field: setting(field, value) for field, value in self.values.items()})
        return f"{text} (e.g. {example(self.example)})" if self.example else text


def suggested_timings(lease_ttl_s: float) -> dict[str, float]:
    """A keepalive interval and margin that pass with this TTL (a third and a fifth of it: 3 -> 1, 0.6)."""
    return {"lease_ttl_s": lease_ttl_s, "keepalive_interval_s": round(lease_ttl_s / 3, 1),
            "min_remaining_ttl_s": round(lease_ttl_s / 5, 1)}

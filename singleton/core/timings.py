"""Named sets of the four timings that decide failover, for tests, chaos runs and the demo: one place, handed
to a Config (`config_kwargs()`) or to `singleton run` (`cli_args()`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from singleton.core.config import default_renewal_timeout_s


@dataclass(frozen=True)
class Timings:
    lease_ttl_s: float = 10.0
    keepalive_interval_s: float = 3.0
    min_remaining_ttl_s: float = 2.0
    max_failed_renewals: int = 2

    @property
    def renewal_timeout_s(self) -> float:
        return default_renewal_timeout_s(self.keepalive_interval_s)

    @property
    def partition_stop_bound_s(self) -> float:
        """A cut-off leader stops within this long of the cut: two renewals, or the margin, whichever first."""
        return min(self.max_failed_renewals * self.keepalive_interval_s + self.renewal_timeout_s,
                   self.lease_ttl_s - self.min_remaining_ttl_s)

    def config_kwargs(self) -> dict[str, Any]:
        return {"lease_ttl_s": self.lease_ttl_s, "keepalive_interval_s": self.keepalive_interval_s,
                "min_remaining_ttl_s": self.min_remaining_ttl_s, "max_failed_renewals": self.max_failed_renewals}

    def cli_args(self) -> list[str]:
        return ["--lease-ttl", f"{self.lease_ttl_s:g}", "--keepalive-interval", f"{self.keepalive_interval_s:g}",
                "--min-remaining-ttl", f"{self.min_remaining_ttl_s:g}",
                "--max-failed-renewals", str(self.max_failed_renewals)]

    def __str__(self) -> str:
        return (f"lease {self.lease_ttl_s:g} s, renew every {self.keepalive_interval_s:g} s, "
                f"step down below {self.min_remaining_ttl_s:g} s")


DEFAULT = Timings()  # the design's, and Config's defaults
FAST = Timings(3, 1.0, 0.6)  # tests and `singleton chaos --fast`: failovers in seconds
DEMO = Timings(5, 1.5, 1.0)  # `singleton demo`: a crash failover short enough to watch

"""Each step-down rule at its exact boundary, driven by a fake clock (no sleeping)."""
import pytest

from singleton.core.clock import FakeClock
from singleton.core.lease import LeaseKeeper, StepDownReason


def make(clock: FakeClock, ttl: float = 10.0, margin: float = 2.0, max_failed: int = 2) -> LeaseKeeper:
    return LeaseKeeper(0xABC, ttl, clock.monotonic(), min_remaining_ttl_s=margin, max_failed_renewals=max_failed)


def test_remaining_counts_from_the_send_time_not_the_receive_time():
    clock = FakeClock()
    k = make(clock)
    sent = clock.monotonic()
    clock.advance(0.8)  # a slow round trip
    k.renewal_succeeded(sent, 10.0)
    assert k.remaining_s(clock.monotonic()) == pytest.approx(9.2)


def test_remaining_ttl_boundary_is_strictly_below_the_margin():
    clock = FakeClock()
    k = make(clock)
    clock.advance(8.0)  # exactly 2.0 s left: still safe
    assert k.remaining_s(clock.monotonic()) == 2.0
    assert k.step_down_reason(clock.monotonic()) is None
    clock.advance(0.001)  # 1.999 s left
    assert k.step_down_reason(clock.monotonic()) is StepDownReason.LEASE_EXPIRING


def test_two_failures_in_a_row_step_down():
    clock = FakeClock()
    k = make(clock)
    assert k.renewal_failed() == 1
    assert k.step_down_reason(clock.monotonic()) is None
    assert k.renewal_failed() == 2
    assert k.step_down_reason(clock.monotonic()) is StepDownReason.RENEWALS_FAILED


def test_one_failure_then_a_success_resets_the_count():
    clock = FakeClock()
    k = make(clock)
    k.renewal_failed()
    clock.advance(3.0)
    k.renewal_succeeded(clock.monotonic(), 10.0)
    assert k.failures_in_a_row == 0
    k.renewal_failed()  # one more failure is again only the first in a row
    assert k.step_down_reason(clock.monotonic()) is None


def test_a_pause_past_the_lease_is_seen_at_the_next_check():
    clock = FakeClock()
    k = make(clock)
    clock.advance(3.0)
    k.renewal_succeeded(clock.monotonic(), 10.0)
    clock.advance(30.0)  # SIGSTOP / GC / VM freeze: no renewals, no checks meanwhile
    assert k.remaining_s(clock.monotonic()) < 0
    assert k.step_down_reason(clock.monotonic()) is StepDownReason.LEASE_EXPIRING


def test_ttl_zero_means_the_lease_is_gone():
    clock = FakeClock()
    k = make(clock)
    k.renewal_succeeded(clock.monotonic(), 0)
    assert k.step_down_reason(clock.monotonic()) is StepDownReason.LEASE_LOST


def test_a_late_answer_to_an_older_renewal_never_shortens_the_lease():
    clock = FakeClock()
    k = make(clock)
    clock.advance(3.0)
    k.renewal_succeeded(clock.monotonic(), 10.0)
    k.renewal_succeeded(clock.monotonic() - 3.0, 10.0)
    assert k.remaining_s(clock.monotonic()) == 10.0


def test_max_failed_renewals_is_configurable():
    clock = FakeClock()
    k = make(clock, max_failed=3)
    k.renewal_failed()
    k.renewal_failed()
    assert k.step_down_reason(clock.monotonic()) is None
    k.renewal_failed()
    assert k.step_down_reason(clock.monotonic()) is StepDownReason.RENEWALS_FAILED

"""Schedule arithmetic: intervals anchored to the epoch, 6-field cron with seconds, time zones and DST, jitter."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from singleton.core.errors import ConfigError
from singleton.core.jobspec import JobSpecError, build_job_spec, check_unique, default_job_name
from singleton.core.schedule import (Cron, Interval, due_at, jitter_offset_s, max_lateness_s, next_instants,
                                     parse_cron, parse_interval, parse_schedule)

T0 = 1_700_000_000.0
BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")


def local(zone: ZoneInfo, *args: int, fold: int = 0) -> float:
    return datetime(*args, tzinfo=zone, fold=fold).timestamp()


def local_times(slots: list[int], zone: ZoneInfo) -> list[str]:
    return [datetime.fromtimestamp(s, tz=zone).strftime("%H:%M:%S%z") for s in slots]


# --- intervals ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("every, expected_gap", [(0.1, 0.1), (1, 1.0), (7, 7.0), (0.25, 0.25)])
def test_interval_instants_are_multiples_of_the_period_since_the_epoch(every, expected_gap):
    schedule = parse_interval(every)
    slots = next_instants(schedule, T0 + 0.05, 5)
    instants = [schedule.instant(s) for s in slots]
    assert instants[0] > T0 + 0.05
    assert instants[0] - expected_gap <= T0 + 0.05
    for a, b in zip(instants, instants[1:]):
        assert b - a == pytest.approx(expected_gap, abs=1e-6)  # a float near 1.7e9 s has ~0.2 us steps
    for instant in instants:  # anchored to the epoch: an exact multiple
        assert round(instant * 1000) % round(expected_gap * 1000) == 0


def test_every_second_numbers_slots_as_unix_seconds_like_the_ticker():
    schedule = parse_interval(1)
    assert schedule.first_after(T0 + 0.3) == int(T0) + 1
    assert schedule.first_after(T0) == int(T0) + 1  # strictly after
    assert schedule.last_at_or_before(T0) == int(T0)
    assert schedule.instant(int(T0)) == T0


def test_interval_boundaries_are_exact_at_a_tenth_of_a_second():
    schedule = parse_interval(0.1)
    for k in range(17_000_000_000, 17_000_000_050):  # float rounding at exact multiples
        wall = schedule.instant(k)
        assert schedule.last_at_or_before(wall) == k
        assert schedule.first_after(wall) == k + 1


def test_any_replica_and_a_new_leader_continue_the_same_series():
    a, b = parse_interval(7), parse_interval(7.0)
    first = next_instants(a, T0, 3)
    # A leader that took over 2.9 s later picks up the same instants, not a series of its own.
    later = next_instants(b, T0 + 2.9, 3)
    assert a == b and set(later) <= set(next_instants(a, T0, 6)) and later[0] in first


@pytest.mark.parametrize("every, message", [(0.05, "at least 0.1"), (0, "at least"), (-1, "at least"),
                                            (0.1234, "whole number of milliseconds"), ("1", "number"),
                                            (float("nan"), "number"), (True, "number")])
def test_bad_intervals_are_refused(every, message):
    with pytest.raises(ConfigError, match=message):
        parse_interval(every)


# --- cron -------------------------------------------------------------------------------------------------
def test_cron_has_a_seconds_field_first():
    schedule = parse_cron("*/5 * * * * *")
    start = datetime(2026, 1, 1, 0, 0, 1, tzinfo=ZoneInfo("UTC")).timestamp()
    assert [s - start for s in next_instants(schedule, start, 4)] == [4, 9, 14, 19]


def test_cron_in_a_zone_fires_at_local_times():
    schedule = parse_cron("0 30 9 * * *", "Europe/Berlin")
    slots = next_instants(schedule, local(BERLIN, 2026, 7, 1, 12, 0, 0), 2)
    assert local_times(slots, BERLIN) == ["09:30:00+0200", "09:30:00+0200"]
    assert slots[1] - slots[0] == 86_400


def test_cron_without_a_zone_is_utc_whatever_the_host_says():
    schedule = parse_schedule(cron="0 0 12 * * *")
    assert isinstance(schedule, Cron) and schedule.tz == "UTC"
    slot = schedule.first_after(T0)
    assert datetime.fromtimestamp(slot, tz=ZoneInfo("UTC")).hour == 12


@pytest.mark.parametrize("zone, day", [(BERLIN, (2026, 3, 29)), (NEW_YORK, (2026, 3, 8))])
def test_spring_forward_runs_the_skipped_local_time_once_at_the_transition(zone, day):
    schedule = Cron("0 30 2 * * *", zone.key)
    slots = next_instants(schedule, local(zone, *day, 0, 0, 0) - 86_400, 3)
    # The day before at 02:30, the transition day at 03:00 (02:30 does not exist), then 02:30 again.
    assert [datetime.fromtimestamp(s, tz=zone).strftime("%d %H:%M") for s in slots] == [
        f"{day[2] - 1:02d} 02:30", f"{day[2]:02d} 03:00", f"{day[2] + 1:02d} 02:30"]


@pytest.mark.parametrize("zone, day", [(BERLIN, (2026, 10, 25)), (NEW_YORK, (2026, 11, 1))])
def test_fall_back_runs_a_repeated_local_time_once(zone, day):
    fixed = Cron("0 30 1 * * *" if zone is NEW_YORK else "0 30 2 * * *", zone.key)
    slots = next_instants(fixed, local(zone, *day, 0, 0, 0), 2)
    assert slots[1] - slots[0] == 86_400 + 3600  # the repeat of 01:30 / 02:30 is not run
    every_half_hour = Cron("0 */30 * * * *", zone.key)
    start = local(zone, *day, 0, 50, 0)
    slots = next_instants(every_half_hour, start, 8)
    times = local_times(slots, zone)
    assert len(set(t[:8] for t in times)) == len(times), times  # no local time twice
    assert all(b > a for a, b in zip(slots, slots[1:]))


def test_last_at_or_before_skips_the_second_pass_of_a_fall_back_hour():
    schedule = Cron("0 30 2 * * *", "Europe/Berlin")
    second_pass = local(BERLIN, 2026, 10, 25, 2, 45, 0, fold=1)
    assert schedule.last_at_or_before(second_pass) == int(local(BERLIN, 2026, 10, 25, 2, 30, 0, fold=0))


def test_cron_slot_after_continues_the_series():
    schedule = parse_cron("*/15 * * * * *")
    slot = schedule.first_after(T0)
    assert schedule.slot_after(slot) - slot == 15
    assert schedule.instant(slot) == float(slot)


@pytest.mark.parametrize("expression, tz, message", [
    ("* * * * *", "UTC", "6 fields"),
    ("61 * * * * *", "UTC", "not a valid"),
    ("*/5 * * * * *", "Mars/Olympus", "unknown time zone"),
    ("0 0 0 31 2 *", "UTC", "never fires"),
])
def test_bad_cron_is_refused_with_one_line(expression, tz, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_cron(expression, tz)
    assert "\n" not in str(info.value)


def test_tz_without_cron_is_refused():
    with pytest.raises(ConfigError, match="tz applies to cron"):
        parse_schedule(every=5, tz="Europe/Berlin")


# --- lateness and jitter -------------------------------------------------------------------------------------
def test_a_slot_may_start_late_only_before_the_next_one():
    assert max_lateness_s(Interval(1000), 5) == 1.0
    assert max_lateness_s(Interval(250), 5) == 0.25
    assert max_lateness_s(Interval(7000), 5) == 1.0


def test_jitter_is_bounded_and_the_same_on_every_replica():
    offsets = [jitter_offset_s("report", slot, 2.0) for slot in range(1000)]
    assert all(0.0 <= o < 2.0 for o in offsets)
    assert offsets == [jitter_offset_s("report", slot, 2.0) for slot in range(1000)]
    assert len(set(offsets)) > 900  # spread out, not one fixed delay
    assert jitter_offset_s("report", 7, 0.0) == 0.0
    assert due_at(Interval(10_000), "report", 7, 2.0) == 70.0 + jitter_offset_s("report", 7, 2.0)


# --- job specs -------------------------------------------------------------------------------------------------
def test_a_job_spec_defaults_to_the_every_second_ticker():
    spec = build_job_spec("tick")
    assert spec.every_second and spec.overlap == "skip" and spec.max_instances == 1 and spec.timeout_s is None


@pytest.mark.parametrize("kwargs, field_name", [
    (dict(cron="bad"), "cron"), (dict(cron="*/5 * * * * *", tz="Nowhere/Else"), "tz"),
    (dict(every=0.01), "every"), (dict(overlap="queue"), "overlap"), (dict(max_instances=3), "max_instances"),
    (dict(overlap="allow", max_instances=0), "max_instances"), (dict(timeout=0), "timeout"),
    (dict(catch_up="all"), "catch_up"), (dict(every=1, jitter=1), "jitter"), (dict(jitter=-1), "jitter"),
])
def test_a_bad_job_setting_names_the_job_and_the_field(kwargs, field_name):
    with pytest.raises(JobSpecError) as info:
        build_job_spec("report", **kwargs)
    assert info.value.field_name == field_name
    assert str(info.value).startswith(f"job 'report': {field_name}: ")


def test_job_names_are_checked_and_unique():
    with pytest.raises(JobSpecError, match="name"):
        build_job_spec("has space")
    with pytest.raises(JobSpecError, match="unique"):
        check_unique([build_job_spec("a"), build_job_spec("b"), build_job_spec("a")])


def test_default_job_name_is_the_qualified_name():
    def inner() -> None: ...
    assert default_job_name(test_default_job_name_is_the_qualified_name) == \
        "test_default_job_name_is_the_qualified_name"
    assert default_job_name(inner) == "test_default_job_name_is_the_qualified_name.inner"

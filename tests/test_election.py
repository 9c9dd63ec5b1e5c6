import pytest

from singleton.core.election import _TRANSITIONS, Election, Event, Role
from singleton.core.errors import IllegalTransition
from singleton.core.lease import LeaseKeeper, StepDownReason


def keeper(sent_at: float = 0.0, ttl: float = 10.0) -> LeaseKeeper:
    return LeaseKeeper(1, ttl, sent_at, min_remaining_ttl_s=2.0, max_failed_renewals=2)


def test_full_cycle_follower_candidate_leader_stepping_down_follower():
    e = Election()
    assert e.role is Role.FOLLOWER
    e.campaign()
    assert e.role is Role.CANDIDATE
    term = e.won(7, keeper())
    assert (e.role, term.fencing_token) == (Role.LEADER, 7)
    e.step_down(StepDownReason.LEASE_EXPIRING)
    assert (e.role, e.step_down_reason) == (Role.STEPPING_DOWN, StepDownReason.LEASE_EXPIRING)
    e.stepped_down()
    assert e.role is Role.FOLLOWER and e.term is None


def test_lost_and_failed_campaigns_return_to_follower():
    e = Election()
    e.campaign()
    e.lost()
    assert e.role is Role.FOLLOWER
    e.campaign()
    e.campaign_failed()
    assert e.role is Role.FOLLOWER


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("event", list(Event))
def test_every_event_not_in_the_table_raises(role, event):
    e = Election()
    e.role = role
    call = {
        Event.CAMPAIGN: e.campaign, Event.WON: lambda: e.won(3, keeper()), Event.LOST: e.lost,
        Event.CAMPAIGN_FAILED: e.campaign_failed, Event.STEP_DOWN: lambda: e.step_down(StepDownReason.SHUTDOWN),
        Event.STEPPED_DOWN: e.stepped_down, Event.STOP: e.stop,
    }[event]
    if (role, event) in _TRANSITIONS:
        call()
        assert e.role is _TRANSITIONS[(role, event)]
    else:
        with pytest.raises(IllegalTransition):
            call()
        assert e.role is role


def test_a_leader_cannot_stop_without_stepping_down_first():
    e = Election()
    e.campaign()
    e.won(3, keeper())
    with pytest.raises(IllegalTransition):
        e.stop()
    e.step_down(StepDownReason.SHUTDOWN)
    e.stop()
    assert e.role is Role.STOPPED


def test_token_must_be_positive():
    e = Election()
    e.campaign()
    with pytest.raises(IllegalTransition):
        e.won(0, keeper())


def test_may_tick_only_as_leader_with_a_safe_lease():
    e = Election()
    assert not e.may_tick(0.0)
    e.campaign()
    e.won(5, keeper(sent_at=100.0))
    assert e.may_tick(107.9)  # 2.1 s left
    assert not e.may_tick(108.1)  # 1.9 s left
    with pytest.raises(IllegalTransition):
        Election().check(0.0)

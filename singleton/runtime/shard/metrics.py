"""Sharding's metrics, beside runtime/telemetry.py's and on the same global OpenTelemetry meter (no-ops until a
MeterProvider is installed): how many groups this replica leads, whether it leads each group it can lead, and the
group elections it won.

`singleton_group_leader{group}` is reported 0 or 1 by every replica that can lead the group, so a group nobody leads
still has series, all 0: `sum by (group) (singleton_group_leader) < 1` is a group without a leader (the alert
SingletonGroupNoLeader in deploy/monitoring/), and `> 1` two replicas that each believe they lead it.
"""
from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from singleton.core.election import Role

if TYPE_CHECKING:
    from singleton.runtime.runner import Singleton

meter = metrics.get_meter("singleton")

_group_elections_won = meter.create_counter("singleton.group_elections_won",
                                            description="Sharding: group campaigns this replica won, by group")

_group_step_downs = meter.create_counter("singleton.group_step_downs",
                                         description="Sharding: group terms that ended, by group and reason")

_sources: weakref.WeakSet[Singleton] = weakref.WeakSet()
_lock = threading.Lock()


def led_and_offered(app: Singleton) -> tuple[dict[str, int], list[str]]:
    """(group -> fencing token for the groups `app` leads, every group it can lead); empty before it runs."""
    sharded = app._sharded
    if sharded is None:
        return {}, list(app._registry.groups())
    return sharded.led_groups(), list(sharded.groups)


def _running() -> list[Singleton]:
    """A replica that has stopped reports nothing (a library user may run several, one after another)."""
    return [app for app in list(_sources) if app.election.role is not Role.STOPPED]


def _groups_led(_options: CallbackOptions) -> Iterable[Observation]:
    for app in _running():
        led, _ = led_and_offered(app)
        yield Observation(len(led), {"replica_id": app.replica_id})


def _group_leader(_options: CallbackOptions) -> Iterable[Observation]:
    for app in _running():
        led, offered = led_and_offered(app)
        for group in offered:
            yield Observation(1 if group in led else 0, {"replica_id": app.replica_id, "group": group})


meter.create_observable_gauge("singleton.groups_led", [_groups_led],
                              description="Sharding: how many groups this replica leads now")
meter.create_observable_gauge("singleton.group_leader", [_group_leader],
                              description="Sharding: 1 while this replica leads the group, 0 for each other group "
                                          "it can lead")


def register(app: Singleton) -> None:
    """A sharded replica's gauges; its group wins counted (from 0, so increase() sees the first)."""
    with _lock:
        if app in _sources:
            return
        _sources.add(app)
    for group in app._registry.groups():
        _group_elections_won.add(0, {"replica_id": app.replica_id, "group": group})
    app.on_elected(lambda token: _won(app, token))


def _won(app: Singleton, token: int) -> None:
    """on_elected passes the term's token; with sharding it is one group's (a term that ended before this listener
    ran is not found, and not counted: a loss of a count, never a wrong group)."""
    led, _ = led_and_offered(app)
    group = next((g for g, t in led.items() if t == token), None)
    if group is not None:
        _group_elections_won.add(1, {"replica_id": app.replica_id, "group": group})


def group_stepped_down(replica_id: str, group: str, reason: str) -> None:
    _group_step_downs.add(1, {"replica_id": replica_id, "group": group, "reason": reason})

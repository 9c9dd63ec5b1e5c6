"""One set of timing presets and one set of safety checks serve the CLI, Config, tests, chaos and the demo."""
from __future__ import annotations

import pytest

from singleton import Config
from singleton.core.config import default_renewal_timeout_s
from singleton.core.timings import DEFAULT, FAST, Timings
from singleton.dev.ledger import Tick, safety_violations
from singleton.ops.cli import build_parser
from singleton.testing.recorder import Recorder


def test_config_and_cli_defaults_are_the_default_preset() -> None:
    config = Config(endpoints="127.0.0.1:2379", name="t")  # type: ignore[arg-type]
    assert {k: getattr(config, k) for k in DEFAULT.config_kwargs()} == DEFAULT.config_kwargs()
    args = build_parser().parse_args(["run", "--endpoints", "127.0.0.1:2379", "--name", "t", "--job", "m:f"])
    assert (args.lease_ttl, args.keepalive_interval, args.min_remaining_ttl, args.max_failed_renewals) == \
        tuple(DEFAULT.config_kwargs().values())


@pytest.mark.parametrize("timings", [FAST, Timings(5, 1.5, 1.0, 3)])
def test_cli_args_give_the_config_that_config_kwargs_give(timings: Timings) -> None:
    args = build_parser().parse_args(["run", "--endpoints", "127.0.0.1:2379", "--name", "t", "--job", "m:f",
                                      *timings.cli_args()])
    assert (args.lease_ttl, args.keepalive_interval, args.min_remaining_ttl, args.max_failed_renewals) == \
        tuple(timings.config_kwargs().values())
    config = Config(endpoints="127.0.0.1:2379", name="t", **timings.config_kwargs())  # type: ignore[arg-type]
    assert config.renewal_deadline_s == timings.renewal_timeout_s == default_renewal_timeout_s(
        timings.keepalive_interval_s)


def test_renewal_timeout_default_is_one_second_or_half_the_interval() -> None:
    assert default_renewal_timeout_s(3.0) == 1.0
    assert default_renewal_timeout_s(1.0) == 0.5


def tick(replica: str, token: int, slot: int, start: float, end: float | None) -> Tick:
    return Tick(replica, 1, token, slot, start, start, end)


@pytest.mark.parametrize(("ticks", "problem"), [
    ([tick("a", 5, 1, 0.0, 0.5), tick("b", 9, 2, 0.4, 0.6)], "overlapping ticks"),
    ([tick("a", 5, 1, 0.0, 0.1), tick("b", 9, 1, 0.5, 0.6)], "slots run twice"),
    ([tick("a", 9, 1, 0.0, 0.1), tick("b", 5, 2, 1.0, 1.1)], "larger token"),
])
def test_each_safety_check_fails_the_recorder_and_the_ledger_alike(ticks: list[Tick], problem: str) -> None:
    assert [p for p in safety_violations(ticks) if problem in p]
    rec = Recorder(runs=ticks)
    with pytest.raises(AssertionError, match=problem):
        rec.assert_safe()


def test_a_clean_run_has_no_violations() -> None:
    ticks = [tick("a", 5, 1, 0.0, 0.1), tick("a", 5, 2, 1.0, 1.1), tick("b", 9, 3, 2.0, None)]
    assert safety_violations(ticks) == []
    Recorder(runs=ticks).assert_safe()

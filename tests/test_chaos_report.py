"""`singleton chaos` in the container image (no matplotlib): the report is written without the picture and says
how to get it, instead of crashing after the whole run."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from singleton.chaos.harness import ScenarioRun
from singleton.chaos.report import write_report, write_timeline
from singleton.chaos.verdict import Verdict
from singleton.core.timings import FAST


def results(tmp_path: Path) -> list[tuple[Verdict, ScenarioRun]]:
    return [(Verdict("sigkill-leader", ["sigkill r0"], takeovers_s=[3.7], ticks=12), ScenarioRun(
        "sigkill-leader", tmp_path, "/singleton-chaos/x", 0.0))]


def test_without_matplotlib_the_report_is_written_without_the_picture(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    runs = results(tmp_path)
    report = write_report(tmp_path, runs, FAST, "embedded, 1 member", 10.0)
    assert write_timeline(tmp_path, runs) is None
    text = report.read_text()
    assert "| sigkill-leader | 1 | 1 |" in text
    assert "timeline.png" not in text and "pip install 'singleton[chaos]'" in text
    assert not (tmp_path / "timeline.png").exists()


def test_with_matplotlib_the_report_shows_the_picture(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runs = results(tmp_path)
    assert "![timeline](timeline.png)" in write_report(tmp_path, runs, FAST, "embedded, 1 member", 10.0).read_text()

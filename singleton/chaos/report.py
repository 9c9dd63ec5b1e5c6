"""report.md (a table per scenario) and timeline.png (who ticked each second, faults, lease changes)."""
from __future__ import annotations

import platform
import os
import statistics
from pathlib import Path
from typing import Any

from singleton.chaos.harness import ScenarioRun
from singleton.core.timings import Timings
from singleton.chaos.verdict import Verdict


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _figures(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} / {_pct(values, 99):.2f} / {max(values):.2f}"


def machine() -> str:
    return f"{platform.node()}: {platform.system()} {platform.release()}, {os.cpu_count()} cores, Python {platform.python_version()}"


MAX_PANELS = 40  # a taller picture stops being readable
NO_PICTURE = ("no timeline picture: matplotlib is not installed (the container image has none); "
              "`pip install 'singleton[chaos]'` adds it")


def timeline_available() -> bool:
    """matplotlib is an extra (`singleton[chaos]`): without it the report is written without the picture."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _evidence(results: list[tuple[Verdict, ScenarioRun]]) -> str:
    groups = next((run.sharded_groups for _, run in results if run.sharded_groups), 0)
    if groups:
        return (f"- Evidence (`--sharded`): the ledger of every run of the {groups} groups' jobs (one every-second "
                f"job per group) and the harness's watch of every group's leader key. Each group is judged on its "
                f"own (the rows by job): no slot twice, no two runs at once across replicas, tokens grow; each "
                f"group the faulted replica led is taken over within lease + 1 s + the campaign delay of the "
                f"last-ranked member (+0.5 s slack), not before its lease could lapse; a cut replica stops before "
                f"etcd drops its keys, a thawed one runs nothing on its old terms. Missed slots are counted, not "
                f"judged. (The paragraph below is the plain harness's.)")
    jobs_file = next((run.jobs_file for _, run in results if run.jobs_file), None)
    if jobs_file:
        return (f"- Evidence: the jobs of `{jobs_file}` write no ledger: each job is judged from its own run record "
                f"and history in etcd, at its own schedule — no slot twice, no more runs at once than its overlap "
                f"policy allows, no instant lost at a graceful handover and none due after a crash's takeover "
                f"bound, no failed run — and all their runs together with the harness's watch of the leader key")
    job = next((run.user_job for _, run in results if run.user_job), None)
    if job:
        return (f"- Evidence: your job `{job}` writes no ledger: its runs are etcd's run record and history "
                f"(slot, token, replica, start, duration, outcome of every run), checked with the harness's own "
                f"watch of the leader key; any failed run of the job is a violation")
    return "- Evidence: the tick ledger written by the job, etcd's run history and the harness's watch of the leader key"


def write_report(out: Path, results: list[tuple[Verdict, ScenarioRun]], timings: Timings, cluster: str,
                 duration_s: float) -> Path:
    verdicts = [v for v, _ in results]
    faults = sum(len([f for f in v.faults]) for v in verdicts)

    def by_kind(kind: str) -> list[float]:
        return [t for v in verdicts for t in v.takeovers_by_kind.get(kind, [])]

    lines = [
        "# singleton chaos report", "",
        f"- Verdict: **{'every invariant held' if all(v.held for v in verdicts) else 'INVARIANTS VIOLATED'}**",
        f"- {len(verdicts)} scenario runs, {faults} faults injected, {sum(v.ticks for v in verdicts)} ticks, "
        f"{duration_s / 60:.1f} minutes",
        f"- Timings: {timings}; etcd: {cluster}",
        f"- Takeovers, p50 / p99 / max: graceful {_figures(by_kind('graceful'))} s; crash {_figures(by_kind('crash'))} s; "
        f"pause {_figures(by_kind('pause'))} s; partition {_figures(by_kind('partition'))} s; "
        f"hung job (from its step-down) {_figures(by_kind('hung'))} s",
        f"- Machine: {machine()}",
        _evidence(results), "",
        "Invariants: no two ticks overlap; no slot runs twice; tokens grow with every new leader; a write guarded "
        "by a stale token is refused; graceful takeover on the next second; crash and pause takeover within "
        "lease + 1 s; a graceful successor ticks within 1 s (real time) of the old leader's last tick, whatever the "
        "clocks say; a cut-off leader stops within two renewals or the margin, before its lease can lapse; every "
        "term that stands 2 s ticks (no flapping); a hung job's replica ticks no more, keeps its key until the "
        "lease lapses and is restarted by its liveness probe; "
        "ticking resumes after every fault heals; no lease left in etcd afterwards; etcd's run history has one "
        "entry per tick, with its slot and token (no slot claimed twice, seq growing with slot); a successor logs "
        "the skew of a predecessor whose clock differs.", "",
        "## By scenario", "",
        "| scenario | runs | faults | takeovers p50 / p99 / max (s) | overlaps | duplicate slots | missed seconds | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(v.scenario for v in verdicts):
        group = [v for v in verdicts if v.scenario == name]
        held = sum(v.held for v in group)
        lines.append(f"| {name} | {len(group)} | {sum(len(v.faults) for v in group)} | "
                     f"{_figures([t for v in group for t in v.takeovers_s])} | {sum(v.overlaps for v in group)} | "
                     f"{sum(v.duplicate_slots for v in group)} | {sum(v.missed_seconds for v in group)} | "
                     f"{'held' if held == len(group) else 'FAILED'} ({held}/{len(group)}) |")
    lines += ["", "## Every run", "",
              "| scenario | faults | takeovers p50 / p99 / max (s) | overlaps | duplicate slots | missed seconds "
              "| terms (silent) | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v.scenario} | {', '.join(v.faults)} | {_figures(v.takeovers_s)} | {v.overlaps} | "
                     f"{v.duplicate_slots} | {v.missed_seconds} | {v.terms} ({v.silent_terms}) | "
                     f"{'held' if v.held else 'FAILED'} |")
    lines += _by_job(verdicts)
    failed = [v for v in verdicts if not v.held]
    if failed:
        lines += ["", "## Violations", ""]
        lines += [f"- {v.scenario}: {'; '.join(v.violations)}" for v in failed]
    noted = [v for v in verdicts if v.notes]
    if noted:
        lines += ["", "## Documented windows", ""]
        lines += [f"- {v.scenario}: {note}" for v in noted for note in v.notes]
    lines += ["", "Missed seconds count every second without a tick between a run's first and last tick: crash, "
              "pause and partition takeovers wait for the lease, overrun slots are skipped by design, and etcd "
              "outages stop everyone.", "",
              ("![timeline](timeline.png)" if timeline_available() else f"({NO_PICTURE}.)")
              + ("" if len(results) <= MAX_PANELS else
                 f"\n\nThe timeline shows the first {MAX_PANELS} of {len(results)} runs."),
              ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _by_job(verdicts: list[Verdict]) -> list[str]:
    """`--jobs`: a row per job of every run (missed instants: at the faults' handovers, within their bounds)."""
    if not any(v.jobs for v in verdicts):
        return []
    lines = ["", "## By job", "",
             "| scenario | job | schedule | overlap | runs | duplicate slots | overlaps (most at once) | "
             "missed instants | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        lines += [f"| {v.scenario} | {j.job} | {j.schedule} | {j.policy} | {j.runs} | {j.duplicate_slots} | "
                  f"{j.overlaps} ({j.most_at_once}) | {j.missed_instants} | {'held' if j.held else 'FAILED'} |"
                  for j in v.jobs]
    return lines


def write_timeline(out: Path, results: list[tuple[Verdict, ScenarioRun]],
                   max_panels: int = MAX_PANELS) -> Path | None:
    """timeline.png, or None without matplotlib."""
    if not timeline_available():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = results[:max_panels]
    fig, axes = plt.subplots(len(shown), 1, figsize=(14, 1.6 + 1.25 * len(shown)), squeeze=False)
    for ax, (verdict, run) in zip(axes[:, 0], shown):
        _panel(ax, verdict, run)
    axes[-1, 0].set_xlabel("seconds since the scenario started")
    fig.suptitle("singleton chaos: which replica ticked each second (colour = fencing token)\nred: fault "
                 "(shaded until healed); dotted: leader key deleted (grey) / created (green) in etcd")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / fig.get_figheight()))  # room for the two-line title
    path = out / "timeline.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _panel(ax: Any, verdict: Verdict, run: ScenarioRun) -> None:
    replicas = sorted({t.replica for t in run.ticks}, key=lambda r: int(r.lstrip("r") or 0))
    row = {r: i for i, r in enumerate(replicas)}
    tokens = sorted({t.token for t in run.ticks})
    cmap = __import__("matplotlib").colormaps["tab10"]
    for t in run.ticks:
        end = t.end_mono or (run.kills.get(t.replica) if t.hung else None) or t.start_mono + 0.05  # hung: until killed
        ax.broken_barh([(t.start_mono - run.started_mono, max(end - t.start_mono, 0.08))], (row[t.replica] - 0.35, 0.7),
                       color=cmap(tokens.index(t.token) % 10))
    for at, deleted, _token in run.key_events:  # lease changes, as etcd saw them
        ax.axvline(at - run.started_mono, color="grey" if deleted else "green", linestyle=":", linewidth=0.9)
    for ev in run.events:
        x = ev.at_mono - run.started_mono
        ax.axvline(x, color="red", linewidth=1.2)
        ax.text(x, len(replicas) - 0.4, f" {ev.name}", color="red", fontsize=7, va="bottom")
        if ev.healed_at_mono:
            ax.axvspan(x, ev.healed_at_mono - run.started_mono, color="red", alpha=0.08)
    ax.set_yticks(range(len(replicas)), replicas, fontsize=7)
    ax.set_ylim(-0.6, max(len(replicas), 1) + 0.2)
    ax.set_title(f"{run.name}: {'held' if verdict.held else 'FAILED'}", fontsize=8, loc="left")

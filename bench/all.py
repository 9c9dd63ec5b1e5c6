"""Regenerate docs/BENCHMARKS.md: run every bench script, write its table under docs/bench/, and collect them.

    python bench/all.py [--quick]

Full run (the figures of record): about 2 h on a 2-core machine (failover: 20 rounds x 4 faults x 4 peers
is most of it). --quick: fewer ticks, rounds and replicas, about 20 min; the page says which was run. The
hand-written reading of the figures lives in docs/bench/notes.md and is copied in as it is.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"
OUT = DOCS / "bench"

# (title, script, full args, quick args, output file)
BENCHES = [
    ("Tick precision", "tick_precision.py", ["--ticks", "120"], ["--ticks", "30"], "tick-precision.md"),
    ("Handover and failover", "failover_peers.py", ["--rounds", "20"], ["--rounds", "2"], "failover.md"),
    ("Crash failover with fast failover", "fast_failover.py", ["--rounds", "30", "--peer-rounds", "20"],
     ["--rounds", "6", "--peer-rounds", "3"], "fast-failover.md"),
    ("Footprint", "footprint.py", ["--window-s", "180"], ["--window-s", "30", "--settle-s", "10"], "footprint.md"),
    ("Scale", "scale.py", ["--replicas", "50", "--crashes", "5"], ["--replicas", "10", "--crashes", "2"],
     "scale.md"),
    ("Profile of the tick path", "profile_tick.py", ["--ticks", "120", "--py-spy-s", "120"],
     ["--ticks", "30", "--py-spy-s", "30"], "profile.md"),
    ("Many jobs on one leader", "jobs.py", ["--seconds", "20", "--counts", "1,20,200"],
     ["--seconds", "8", "--counts", "1,20"], "jobs.md"),
    ("What the run record costs", "run_record.py", ["--ticks", "60"], ["--ticks", "20"], "run-record.md"),
    ("Sharding at scale", "shard_scale.py", ["--sizes", "10x100,50x100,10x250,25x250,50x500", "--crashes", "3"],
     ["--sizes", "5x50,10x100", "--crashes", "1", "--window-s", "10", "--settle-cap-s", "60"], "shard-scale.md"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated output files to regenerate (others are kept)")
    parser.add_argument("--collect", action="store_true", help="run nothing: rebuild the page from docs/bench/")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    only = set(filter(None, args.only.split(",")))
    for title, script, full, quick, out in BENCHES:
        if args.collect or (only and out not in only):
            continue
        started = time.monotonic()
        cmd = [sys.executable, str(HERE / script), *(quick if args.quick else full), "--out", str(OUT / out)]
        print(f"== {title}: {' '.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            print(f"{script} failed; its table is left as it was", file=sys.stderr)
            continue
        text = (OUT / out).read_text()
        mode = "quick" if args.quick else "full"
        (OUT / out).write_text(f"<!-- `python bench/{script} {' '.join(quick if args.quick else full)}` ({mode}), "
                               f"{time.monotonic() - started:.0f} s -->\n" + text)
    sections = ["# Benchmarks", "",
                "Figures, never pass/fail, each table on the machine it names (cores, load). `python bench/all.py` "
                "regenerates them all; each is also regenerated alone by the command above it, which says how it "
                "was run.", ""]
    notes = OUT / "notes.md"
    if notes.exists():
        sections += [notes.read_text().strip(), ""]
    for title, script, full, quick, out in BENCHES:
        path = OUT / out
        if not path.exists():
            continue
        body = path.read_text().strip()
        command = body.splitlines()[0].removeprefix("<!-- ").split(" (")[0] if body.startswith("<!--") else \
            f"`python bench/{script}`"
        sections += [f"## {title}", "", command, "", "\n".join(body.splitlines()[1:] if body.startswith("<!--")
                                                              else body.splitlines()), ""]
    listed = {out for *_, out in BENCHES} | {"notes.md"}
    for path in sorted(OUT.glob("*.md")):
        if path.name not in listed:  # a table of a one-off run the notes refer to
            body = path.read_text().strip()
            sections += [f"## More: {path.stem}", "", body.removeprefix("<!-- ").replace(" -->", "\n", 1)
                         if body.startswith("<!--") else body, ""]
    (DOCS / "BENCHMARKS.md").write_text("\n".join(sections))
    print(f"wrote {DOCS / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

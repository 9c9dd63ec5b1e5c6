"""A real Prometheus server for tests and bench scripts: scrapes given targets, evaluates rule files, answers
its HTTP API; started on a free loopback port with a temp data dir, stopped by `close()` / `with`.

No wheel on PyPI ships Prometheus, so the binaries come from $SINGLETON_PROMETHEUS / $SINGLETON_PROMTOOL, else
PATH (Debian's `prometheus` package has both); callers skip when `binary()` finds none.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from singleton.dev.embedded import free_port


def binary(name: str) -> str | None:
    """`prometheus` or `promtool`: from $SINGLETON_<NAME>, else PATH; None when there is none."""
    return os.environ.get(f"SINGLETON_{name.upper()}") or shutil.which(name)


def rules_with_for(source: Path, dest: Path, for_s: str) -> Path:
    """A copy of a rules file with every `for:` set to `for_s`, so a test sees an alert fire in seconds."""
    dest.write_text(re.sub(r"(?m)^(\s+for:\s*)\S+$", lambda m: m.group(1) + for_s, source.read_text()))
    return dest


class Prometheus:
    def __init__(self, workdir: Path, targets: list[str], rule_files: list[Path] | None = None,
                 interval_s: float = 1.0, job: str = "singleton") -> None:
        exe = binary("prometheus")
        if exe is None:
            raise FileNotFoundError("no prometheus binary (set SINGLETON_PROMETHEUS or put it on PATH)")
        self.workdir, self.port = workdir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"global": {"scrape_interval": f"{interval_s:g}s", "evaluation_interval": f"{interval_s:g}s",
                             "scrape_timeout": f"{interval_s:g}s"},
                  "rule_files": [str(p) for p in rule_files or []],
                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}]}
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self._log = open(workdir / "prometheus.log", "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [exe, f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.proc.returncode}); see {self.workdir}/prometheus.log")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready within {timeout_s:g} s; see {self.workdir}/prometheus.log")

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a success answer (raises on an error answer)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            body = json.loads(err.read() or b"{}")
        if body.get("status") != "success":
            raise ValueError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
        return list(self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                             step=f"{step_s:g}")["result"])

    def alerts(self, state: str = "firing") -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["state"] == state]

    def wait_for(self, what: str, check: Any, timeout_s: float, every_s: float = 0.25) -> Any:
        """Poll `check()` until it returns something truthy (and return it), at most `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = check()
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not seen within {timeout_s:g} s (prometheus in {self.workdir})")
            time.sleep(every_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()

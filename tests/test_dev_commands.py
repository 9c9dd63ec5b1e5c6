"""`singleton dev-etcd`, `singleton demo` and `singleton status` on a name nobody uses, as a newcomer meets
them: real processes and a real etcd, each stopped and its files gone afterwards."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from singleton.backends.etcd import EtcdBackend
from singleton.core.config import parse_endpoints
from singleton.core.timings import DEMO
from singleton.testing.processes import default_sigint
from singleton.dev.embedded import EtcdCluster, free_port
from singleton.ops.cli import main


class Output(threading.Thread):
    """Collects a child's stdout; `wait_for` blocks (bounded) until a line matches."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(daemon=True)
        self.stream, self.lines, self.changed = stream, [], threading.Condition()

    def run(self) -> None:
        for line in self.stream:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while True:
                for line in self.lines:
                    if found := re.search(pattern, line):
                        return found
                left = deadline - time.monotonic()
                assert left > 0 and self.is_alive(), f"no {pattern!r} in {''.join(self.lines)!r}"
                self.changed.wait(left)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def start(args: list[str], tmp: Path) -> tuple[subprocess.Popen[str], Output]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SINGLETON_")}, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "singleton", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, preexec_fn=default_sigint)
    out = Output(proc.stdout)  # type: ignore[arg-type]
    out.start()
    return proc, out


def stopped(proc: subprocess.Popen[str], out: Output, timeout_s: float = 120) -> int:
    """The exit code; generous, because stopping three replicas and etcd on a busy machine takes its time."""
    try:
        code = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        out.join(5)
        raise AssertionError(f"no exit within {timeout_s:g} s; output:\n{out.text[-3000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    out.join(5)
    return code


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_dev_etcd_serves_on_the_port_given_and_ctrl_c_stops_it_and_deletes_its_data(tmp_path: Path) -> None:
    port = free_port()
    proc, out = start(["dev-etcd", "--port", str(port)], tmp_path)
    try:
        endpoint = out.wait_for(r"endpoint: (\S+)", 60).group(1)
        assert endpoint == f"http://127.0.0.1:{port}"
        assert f"singleton run --endpoints {endpoint} --name hello --job singleton.examples:hello" in out.text
        assert len(list(tmp_path.iterdir())) == 1  # its data dir, in the temp dir
        backend = EtcdBackend(parse_endpoints(endpoint))
        try:
            assert backend.check_write_access("/try", 5.0) is None
            cluster = EtcdCluster(1)  # only for its etcdctl helper, pointed at the dev etcd
            cluster.members[0].client_port = port
            cluster.etcdctl("put", "/try", "it")
            kv, _ = backend.get("/try", 5.0)
            assert kv is not None and kv.value == b"it"
        finally:
            backend.close()
        proc.send_signal(signal.SIGINT)
        assert stopped(proc, out) == 0, out.text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "etcd stopped" in out.text and "Traceback" not in out.text
    assert list(tmp_path.iterdir()) == []  # the data dir is gone
    assert not port_open(port)


def test_dev_etcd_on_a_taken_port_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["dev-etcd", "--port", str(port)]) == 2
    assert capsys.readouterr().err == (f"singleton: error: port {port} on 127.0.0.1 is in use (another etcd?): "
                                       f"pick another --port, or --port 0 for a free one\n")


def test_the_demo_explains_itself_and_leaves_no_files(tmp_path: Path) -> None:
    proc, out = start(["demo", "--seconds", "2"], tmp_path)
    assert stopped(proc, out, 120) == 0, out.text
    assert "column n is replica-n: '#' ran the tick, '.' stood by" in out.text
    assert "waiting for a standby to sense the death and revoke the dead leader's lease" in out.text
    took = re.findall(r"took over (\d+\.\d+) s after the signal", out.text)  # the SIGTERM's, the SIGKILL's
    # The crash: sensed, not waited out (the lease could not have lapsed that soon).
    assert len(took) == 2 and float(took[1]) < DEMO.lease_ttl_s - DEMO.keepalive_interval_s, out.text
    assert out.text.rstrip().endswith("demo done; etcd and the replicas stopped, temp files removed")
    assert list(tmp_path.iterdir()) == []


def test_a_demo_interrupted_stops_everything_and_does_not_say_done(tmp_path: Path) -> None:
    proc, out = start(["demo", "--seconds", "30"], tmp_path)
    try:
        port = int(out.wait_for(r"etcd at http://127\.0\.0\.1:(\d+)", 60).group(1))
        out.wait_for(r"replica-\d ticks", 60)
        proc.send_signal(signal.SIGINT)
        assert stopped(proc, out) == 130, out.text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert "interrupted: stopping the replicas and etcd" in out.text
    assert "demo done" not in out.text and "Traceback" not in out.text
    assert list(tmp_path.iterdir()) == []
    assert not port_open(port)


def test_status_tells_a_name_never_used_from_one_between_leaders(etcd: EtcdCluster, name: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    prefix = f"/status-{name}"
    base = ["status", "--endpoints", etcd.endpoints_arg, "--prefix", prefix]
    assert main([*base, "--name", name]) == 0
    assert capsys.readouterr().out == (f"{name}: no replica has registered this name: nothing under {prefix}/{name}/ "
                                       f"(no leader now, and none ever handed over); check --name and --prefix\n")
    etcd.etcdctl("put", f"{prefix}/{name}/handover", "x")  # what a graceful stop leaves behind
    assert main([*base, "--name", name]) == 0
    assert capsys.readouterr().out.startswith(f"{name}: no leader right now (key {prefix}/{name}/leader is vacant), "
                                              f"but records of earlier handovers or resigns exist under {prefix}/{name}/")
    assert main([*base, "--name", name + "x"]) == 0
    assert capsys.readouterr().out.endswith(f"check --name and --prefix; did you mean {name}?\n")

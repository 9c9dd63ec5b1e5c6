"""A real etcd with TLS, --client-cert-auth and auth enabled; a role may read-write only the singleton prefix."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from certs import CA
from singleton.core.timings import FAST
from singleton.testing.recorder import Recorder, wait_for
from singleton import Config, Singleton
from singleton.dev.embedded import EtcdCluster
from singleton.core.security import Credentials


@dataclass
class SecureEtcd:
    cluster: EtcdCluster
    ca: Path
    wrong_ca: Path
    client: tuple[Path, Path]
    password_files: dict[str, Path]

    def args(self, user: str | None = "app", ca: Path | None = None, client: bool = True) -> list[str]:
        out = ["--endpoints", self.cluster.endpoints_arg, "--cacert", str(ca or self.ca)]
        if client:
            out += ["--cert", str(self.client[0]), "--key", str(self.client[1])]
        if user:
            out += ["--user", user, "--password-file", str(self.password_files[user])]
        return out


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEtcd]:
    d = tmp_path_factory.mktemp("tls")
    ca, wrong = CA(d, "test-ca"), CA(d, "other-ca")
    server_cert, server_key = ca.issue(d, "etcd-server", server=True)
    client = ca.issue(d, "singleton-client", server=False)
    tls_args = ("--cert-file", str(server_cert), "--key-file", str(server_key), "--trusted-ca-file",
                str(ca.cert_path), "--client-cert-auth")
    creds = Credentials(ca=ca.cert_path.read_bytes(), cert=client[0].read_bytes(), key=client[1].read_bytes())
    cluster = EtcdCluster(1, d / "etcd", scheme="https", extra_args=tls_args, credentials=creds).start()
    ctl = ["--cacert", str(ca.cert_path), "--cert", str(client[0]), "--key", str(client[1])]
    passwords = {"root": "root-pw", "app": "app-pw", "reader": "reader-pw"}
    try:
        for cmd in (["user", "add", "root", "--new-user-password", passwords["root"]],
                    ["user", "grant-role", "root", "root"],
                    ["role", "add", "singleton-rw"],
                    ["role", "grant-permission", "singleton-rw", "readwrite", "/singleton/", "--prefix=true"],
                    ["role", "add", "singleton-ro"],
                    ["role", "grant-permission", "singleton-ro", "read", "/singleton/", "--prefix=true"],
                    ["user", "add", "app", "--new-user-password", passwords["app"]],
                    ["user", "grant-role", "app", "singleton-rw"],
                    ["user", "add", "reader", "--new-user-password", passwords["reader"]],
                    ["user", "grant-role", "reader", "singleton-ro"],
                    ["auth", "enable"]):
            cluster.etcdctl(*ctl, *cmd)
        files = {}
        for user, pw in passwords.items():
            files[user] = d / f"{user}.password"
            files[user].write_text(pw + "\n")
        files["wrong"] = d / "wrong.password"
        files["wrong"].write_text("not-the-password\n")
        yield SecureEtcd(cluster, ca.cert_path, wrong.cert_path, client, files)
    finally:
        cluster.stop()


def run_cli(args: list[str], timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SINGLETON_")}
    return subprocess.run([sys.executable, "-m", "singleton", "run", "--name", "secure", "--job",
                           "singleton.dev.ledger:record_tick", "--http-port", "0", *args],
                          capture_output=True, text=True, timeout=timeout_s, env=env)


def config(secure: SecureEtcd, name: str, user: str, replica: str) -> Config:
    return Config(endpoints=secure.cluster.endpoints_arg, name=name, replica_id=replica, cacert=str(secure.ca),
                  cert=str(secure.client[0]), key=str(secure.client[1]), user=user,
                  password_file=str(secure.password_files[user]), **FAST.config_kwargs())  # type: ignore[arg-type]


def test_election_and_ticking_work_with_the_right_material(secure: SecureEtcd, name: str) -> None:
    rec = Recorder()
    a = Singleton(config(secure, name, "app", "a"), rec)
    b = Singleton(config(secure, name, "app", "b"), rec)
    a.start()
    b.start()
    try:
        wait_for(lambda: len(rec.runs) >= 2, 10, "ticks over TLS with auth")
        leader = a if a.is_leader else b
        other = b if leader is a else a
        leader.stop()
        wait_for(lambda: other.is_leader, 5, "handover over TLS with auth")
    finally:
        a.stop()
        b.stop()
    rec.assert_safe()


@pytest.mark.parametrize("case, expected", [
    ("wrong CA", "not signed by --cacert"),
    ("no client certificate", "refused our client certificate"),
    ("wrong password", "authentication failed"),
    ("read-only user", "permission denied"),
])
def test_bad_material_is_refused_in_one_line_with_exit_2(secure: SecureEtcd, case: str, expected: str) -> None:
    args = {
        "wrong CA": secure.args(ca=secure.wrong_ca),
        "no client certificate": secure.args(client=False),
        "wrong password": secure.args(user="app")[:-1] + [str(secure.password_files["wrong"])],
        "read-only user": secure.args(user="reader"),
    }[case]
    result = run_cli(args)
    # Logs go to stderr too: one line means no "retrying" warning, so it gave up at the first refusal.
    # (No bound on the run time: that is mostly the interpreter's start on a busy machine.)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("singleton: error: etcd refused our credentials"), lines
    assert expected in lines[0].lower(), lines[0]
    print(f"{case}: {lines[0]}")


def test_a_read_only_user_never_becomes_leader(secure: SecureEtcd, name: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="singleton")
    rec = Recorder()
    reader = Singleton(config(secure, name, "reader", "ro"), rec)
    reader.start()
    try:
        # Its campaigns are refused, again and again, rather than won on an empty key.
        # (repeats are summarised in the log, so count the refused tries themselves)
        wait_for(lambda: "permission denied" in caplog.text and reader._campaigner._failures._count >= 2, 10,
                 "the reader's campaigns to be refused twice")
        assert not reader.is_leader and not rec.runs
        writer = Singleton(config(secure, name, "app", "rw"), rec)
        writer.start()
        try:
            wait_for(lambda: writer.is_leader, 5, "the read-write user to lead")
            wait_for(lambda: len(rec.runs) >= 2, 5, "the writer's ticks")
            assert not reader.is_leader and all(r.replica == "rw" for r in rec.runs)
        finally:
            writer.stop()
    finally:
        reader.stop()


def test_cli_password_never_comes_from_a_flag() -> None:
    result = subprocess.run([sys.executable, "-m", "singleton", "run", "--endpoints", "https://127.0.0.1:1",
                             "--name", "n", "--job", "os:getcwd", "--password", "hunter2"], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "--password-file FILE" in result.stderr  # says what to use instead
    assert "hunter2" not in result.stderr + result.stdout and len(result.stderr.splitlines()) == 1

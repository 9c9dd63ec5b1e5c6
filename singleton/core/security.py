"""TLS material and etcd credentials, read and checked once, before anything touches etcd.

The password never comes from a flag (it would show in the process list): from a file, or from the
SINGLETON_PASSWORD environment variable.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from singleton.core.errors import ConfigError

PASSWORD_ENV = "SINGLETON_PASSWORD"


@dataclass(frozen=True)
class Credentials:
    ca: bytes | None = field(default=None, repr=False)
    cert: bytes | None = field(default=None, repr=False)
    key: bytes | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.ca is not None or self.cert is not None


def _read_pem(path: str, what: str, marker: str) -> bytes:
    try:
        data = open(path, "rb").read()
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    if marker.encode() not in data:
        raise ConfigError(f"{what} {path} is not a PEM file (no '{marker}')")
    return data


def load_credentials(cacert: str | None, cert: str | None, key: str | None, user: str | None,
                     password_file: str | None, password: str | None = None) -> Credentials | None:
    """Read the files named; None when nothing is configured. Empty strings count as not given."""
    if bool(cert) != bool(key):
        raise ConfigError("--cert and --key go together (a client certificate needs its key)")
    if password_file and password:
        raise ConfigError("give the password either in a file or in the environment, not both")
    if password_file:
        try:
            password = open(password_file, encoding="utf-8").read().rstrip("\r\n")
        except OSError as err:
            raise ConfigError(f"cannot read password file {password_file}: {err.strerror}") from None
    password = password or os.environ.get(PASSWORD_ENV) or None
    if password and not user:
        raise ConfigError("a password was given but no --user")
    if user and not password:
        raise ConfigError(f"--user {user} needs a password: --password-file FILE or {PASSWORD_ENV}")
    if not any((cacert, cert, user)):
        return None
    return Credentials(
        ca=_read_pem(cacert, "CA certificate", "-----BEGIN CERTIFICATE-----") if cacert else None,
        cert=_read_pem(cert, "client certificate", "-----BEGIN CERTIFICATE-----") if cert else None,
        key=_read_pem(key, "client key", "PRIVATE KEY-----") if key else None,
        user=user or None, password=password)

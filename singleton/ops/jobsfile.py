"""`singleton run --jobs jobs.toml`: a list of jobs read with the stdlib's tomllib, each with its callable,
schedule, time zone and policies, all checked before anything touches etcd.

    [[job]]
    name = "report"                 # default: the callable's qualified name
    callable = "mypkg.jobs:report"  # package.module:callable, importable from the current directory
    cron = "0 */5 * * * *"          # or: every = 0.25 (seconds); neither: every second
    tz = "Europe/Berlin"            # cron only; default UTC
    group = "reports"               # with `run --shard`: the jobs of one group share a leader (default: the job's name)

Any mistake (TOML syntax with its line, an unknown key with the one probably meant, a wrong type, a bad cron, an
unknown zone, an interval under 0.1 s, a duplicate name, a callable that does not import) is one ConfigError line
naming the file, the job (its name, or its position when it has none yet) and the field.
"""
from __future__ import annotations

import importlib
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from singleton.core.errors import ConfigError
from singleton.core.jobspec import JobSpec, JobSpecError, build_job_spec, default_job_name
from singleton.ops.cliargs import closest
from singleton.runtime.jobs import JobFn

# Every key a [[job]] table may have, and the type a user writes it in (a number is int or float).
FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,), "callable": (str,), "every": (int, float), "cron": (str,), "tz": (str,),
    "jitter": (int, float), "overlap": (str,), "max_instances": (int,), "timeout": (int, float),
    "catch_up": (str,), "catch_up_window": (int, float), "group": (str,),
}
_TYPE_WORDS: dict[tuple[type, ...], str] = {(str,): "a string", (int, float): "a number", (int,): "a whole number"}
TOP_LEVEL = ("job",)


class JobsFileError(ConfigError):
    """One line: `FILE: job 'NAME' (#N): FIELD: what is wrong`."""


def load_job(path: str) -> JobFn:
    """`package.module:callable` (the current directory is importable, as with `python -m`)."""
    module_name, sep, attr = path.partition(":")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        file = Path(module_name)
        where = "its directory" if str(file.parent) in ("", ".") else f"{file.parent}{os.sep}, its directory"
        raise ConfigError(f"bad job {path!r}: a module path, not a file: use {file.stem.removesuffix('.py')}:"
                          f"{attr or 'FUNCTION'} (run from {where})")
    if not sep or not module_name or not attr:
        raise ConfigError(f"bad job {path!r}: expected package.module:callable")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's config error
        raise ConfigError(f"cannot import job module {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"job {path!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"job {path!r} is not callable")
    return obj  # type: ignore[no-any-return]


def load_jobs_file(path: str | os.PathLike[str]) -> list[tuple[JobSpec, JobFn]]:
    """Each job's validated spec (its `target` is the `module:callable` text, for display) and its callable."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise JobsFileError(f"cannot read jobs file {where}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise JobsFileError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise JobsFileError(f"{where}: not valid TOML: {err}") from None
    return parse_jobs(document, where)


def parse_jobs(document: dict[str, Any], where: str = "jobs file") -> list[tuple[JobSpec, JobFn]]:
    for key in document:
        if key not in TOP_LEVEL:
            raise JobsFileError(f"{where}: unknown top-level key {key!r}{_hint(key, TOP_LEVEL)}; "
                                f"jobs are [[job]] tables")
    tables = document.get("job")
    if isinstance(tables, dict) or (isinstance(tables, list) and not all(isinstance(t, dict) for t in tables)):
        raise JobsFileError(f"{where}: job: each job is a [[job]] table (double brackets), not [job] or job = ...")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise JobsFileError(f"{where}: no jobs: add at least one [[job]] table with a callable")
    jobs = [_parse_job(table, index, where) for index, table in enumerate(tables, start=1)]
    first_of: dict[str, int] = {}
    for index, (spec, _fn) in enumerate(jobs, start=1):
        if spec.name in first_of:
            raise JobsFileError(f"{where}: job {spec.name!r} (#{index}): name: already used by job "
                                f"#{first_of[spec.name]} (names must be unique; set name = \"...\")")
        first_of[spec.name] = index
    return jobs


def _parse_job(table: dict[str, Any], index: int, where: str) -> tuple[JobSpec, JobFn]:
    given = table.get("name")
    label = f"job {given!r} (#{index})" if isinstance(given, str) and given else f"job #{index}"
    for key, value in table.items():
        if key not in FIELDS:
            raise JobsFileError(f"{where}: {label}: {key}: unknown key{_hint(key, FIELDS)} "
                                f"(known: {', '.join(FIELDS)})")
        types = FIELDS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise JobsFileError(f"{where}: {label}: {key}: must be {_TYPE_WORDS[types]} "
                                f"(got {_toml_type(value)} {value!r})")
    if "callable" not in table:
        raise JobsFileError(f"{where}: {label}: callable: missing (package.module:callable)")
    target = table["callable"]
    try:
        fn = load_job(target)
    except ConfigError as err:
        raise JobsFileError(f"{where}: {label}: callable: {err}") from None
    name = table.get("name") or default_job_name(fn)
    settings = {key: table[key] for key in FIELDS if key in table and key not in ("name", "callable")}
    try:
        spec = build_job_spec(name, target, **settings)
    except JobSpecError as err:
        message = str(err).split(": ", 2)[-1]
        raise JobsFileError(f"{where}: job {err.job!r} (#{index}): {err.field_name}: {message}") from None
    return spec, fn


def _hint(word: str, candidates: Any) -> str:
    match = closest(word, list(candidates))
    return f" (did you mean {match!r}?)" if match else ""


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
             dict: "a table"}
    return next((word for kind, word in names.items() if isinstance(value, kind)), type(value).__name__)

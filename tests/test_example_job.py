"""examples/my-job: a user's package on top of the singleton image. Checked offline: its job is a valid `--job`
target, the Containerfile builds on our image and runs as non-root, and the overlay points SINGLETON_JOB at it."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from singleton import Config, MemoryBackend, Singleton
from singleton.core.timings import FAST
from singleton.ops.cli import load_job
from singleton.testing.recorder import wait_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "my-job"


def patched_config() -> dict[str, str]:
    return dict(yaml.safe_load((EXAMPLE / "k8s" / "configmap-patch.yaml").read_text())["data"])


def test_the_job_imports_and_is_a_valid_job_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))  # as `pip install` in the Containerfile makes it importable
    job = load_job(patched_config()["SINGLETON_JOB"])
    assert callable(job)
    backend = MemoryBackend()
    with Singleton(Config(endpoints="127.0.0.1:2379", name="my-job", replica_id="a",  # type: ignore[arg-type]
                          **FAST.config_kwargs()), job, backend=backend) as app:
        wait_for(lambda: app.stats.ticks["ok"] >= 1, 10, "a tick of the example job")
        kv, _ = backend.get("/my-job/last-run", 1.0)
    assert app.stats.ticks["failed"] == 0 and kv is not None and kv.value.endswith(b"by a")


def test_the_package_ships_the_module_the_job_names() -> None:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    module = patched_config()["SINGLETON_JOB"].split(":")[0]
    assert module.split(".")[0] in project["tool"]["setuptools"]["packages"]
    assert (EXAMPLE / (module.replace(".", "/") + ".py")).is_file()


def test_the_containerfile_builds_on_our_image_and_runs_as_non_root() -> None:
    text = (EXAMPLE / "Containerfile").read_text()
    base = re.search(r"^FROM (\S+)$", text, re.M)
    ours = re.search(r"^\s+image: (\S+)$", (ROOT / "k8s" / "deployment.yaml").read_text(), re.M)
    assert base and ours and base.group(1) == ours.group(1)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] == "10001:10001"  # back to the base image's user after installing
    env = re.search(r"^ENV SINGLETON_JOB=(\S+)$", text, re.M)
    assert env and env.group(1) == patched_config()["SINGLETON_JOB"]
    for src in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (EXAMPLE / src).exists(), src


def test_the_overlay_swaps_the_image_and_patches_our_configmap() -> None:
    kustomization = yaml.safe_load((EXAMPLE / "k8s" / "kustomization.yaml").read_text())
    base = (EXAMPLE / "k8s" / kustomization["resources"][0]).resolve()
    assert base == ROOT / "k8s"
    deployment_image = yaml.safe_load((base / "deployment.yaml").read_text())["spec"]["template"]["spec"][
        "containers"][0]["image"]
    assert kustomization["images"][0]["name"] == deployment_image.split(":")[0]
    patch = yaml.safe_load((EXAMPLE / "k8s" / "configmap-patch.yaml").read_text())
    ours = yaml.safe_load((base / "configmap.yaml").read_text())
    assert (patch["kind"], patch["metadata"]["name"]) == (ours["kind"], ours["metadata"]["name"])
    assert set(patch["data"]) <= set(ours["data"])

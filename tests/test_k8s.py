"""The manifests and the container recipe, checked offline: Kubernetes schemas (strict), yamllint, and
agreement with the real CLI options and health server."""
from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from yamllint import config as yamllint_config
from yamllint import linter

from singleton.ops.cli import build_parser, env_name
from singleton.ops.http import HttpServer
from singleton.core.security import PASSWORD_ENV

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
KUBERNETES_VERSION = "1.30.0"


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_docs() -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for p in MANIFESTS for d in docs(p)}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_is_valid_in_strict_mode(path: Path) -> None:
    for doc in docs(path):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_can_fail() -> None:
    bad = docs(K8S / "pdb.yaml")[0]
    bad["spec"]["maxUnavialable"] = 1  # a typo must not pass
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_yamllint() -> None:
    conf = yamllint_config.YamlLintConfig("{extends: default, rules: {line-length: {max: 200}}}")
    problems = [f"{p}:{e.line}: {e.message}" for p in sorted(K8S.rglob("*.yaml"))
                for e in linter.run(p.read_text(), conf)]
    assert not problems, problems


def test_kustomizations_list_existing_files() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text())["resources"]:
            assert (kustomization.parent / resource).exists(), f"{kustomization}: {resource} missing"


def run_options() -> set[str]:
    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    return {opt for action in run._actions for opt in action.option_strings if opt.startswith("--")}


def test_container_command_args_and_env_are_real_run_options() -> None:
    manifests = all_docs()
    deployment = manifests["Deployment/singleton"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["singleton"] and container["args"] == ["run"]
    accepted = {env_name(opt) for opt in run_options()} | {PASSWORD_ENV}
    env_names = {e["name"] for e in container["env"]}
    configmap = manifests["ConfigMap/singleton-config"]["data"]
    unknown = (env_names | set(configmap)) - accepted
    assert not unknown, f"not options of `singleton run`: {unknown}"
    assert {"SINGLETON_ENDPOINTS", "SINGLETON_NAME", "SINGLETON_JOB"} <= set(configmap)
    ref = container["envFrom"][0]["configMapRef"]["name"]
    assert f"ConfigMap/{ref}" in manifests
    secret_refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert secret_refs and all(ref["optional"] is True for ref in secret_refs)  # created by the user, may be absent
    id_env = next(e for e in container["env"] if e["name"] == "SINGLETON_ID")
    assert id_env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_the_example_job_in_the_configmap_imports() -> None:
    from singleton.ops.cli import load_job

    assert callable(load_job(all_docs()["ConfigMap/singleton-config"]["data"]["SINGLETON_JOB"]))


def test_probes_match_the_health_server() -> None:
    manifests = all_docs()
    spec = manifests["Deployment/singleton"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    port = next(p for p in container["ports"] if p["name"] == "http")["containerPort"]
    assert str(port) == manifests["ConfigMap/singleton-config"]["data"]["SINGLETON_HTTP_PORT"]
    assert manifests["Service/singleton-metrics"]["spec"]["ports"][0]["targetPort"] == "http"
    assert any(r["ports"][0]["port"] == port for r in manifests["NetworkPolicy/singleton"]["spec"]["ingress"])
    server = HttpServer("127.0.0.1", 0, lambda: [], lambda: ["not yet"]).start()
    try:
        for probe, expected in (("livenessProbe", 200), ("readinessProbe", 503)):
            assert container[probe]["httpGet"]["port"] == "http"
            path = container[probe]["httpGet"]["path"]
            try:
                code = urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=3).status
            except urllib.error.HTTPError as err:
                code = err.code
            assert code == expected, (probe, path, code)
    finally:
        server.close()


def test_replicas_reach_each_others_sense_port() -> None:
    """Fast failover: the pod advertises its IP, listens on the sense port, and the NetworkPolicy lets the replicas
    (and only they) connect to it, both ways."""
    manifests = all_docs()
    container = manifests["Deployment/singleton"]["spec"]["template"]["spec"]["containers"][0]
    port = next(p for p in container["ports"] if p["name"] == "sense")["containerPort"]
    assert str(port) == manifests["ConfigMap/singleton-config"]["data"]["SINGLETON_SENSE_PORT"]
    advertise = next(e for e in container["env"] if e["name"] == "SINGLETON_ADVERTISE_HOST")
    assert advertise["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    policy = manifests["NetworkPolicy/singleton"]["spec"]
    ours = {"podSelector": {"matchLabels": policy["podSelector"]["matchLabels"]}}
    assert any(r.get("from") == [ours] and r["ports"] == [{"port": port, "protocol": "TCP"}] for r in policy["ingress"])
    assert any(r.get("to") == [ours] and r["ports"] == [{"port": port, "protocol": "TCP"}] for r in policy["egress"])


def test_pod_hardening_and_rollout_safety() -> None:
    manifests = all_docs()
    deployment = manifests["Deployment/singleton"]["spec"]
    pod = deployment["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["replicas"] == 3
    assert deployment["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["topologySpreadConstraints"] and pod["affinity"]["podAntiAffinity"]
    stop_timeout = float(manifests["ConfigMap/singleton-config"]["data"]["SINGLETON_STOP_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] >= stop_timeout + 10
    assert manifests["PodDisruptionBudget/singleton"]["spec"]["maxUnavailable"] == 1
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_containerfile_installs_without_dev_extras_as_non_root() -> None:
    text = (ROOT / "Containerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.M)
    assert re.search(r'^RUN pip install "\.\$\{EXTRAS\}"\s', text, re.M) and "[dev]" not in text
    assert re.search(r'^ARG EXTRAS=""$', text, re.M)  # the default image: no extras (no etcd, no matplotlib)
    user = re.search(r"^USER (\S+)", text, re.M)
    assert user and not user.group(1).startswith(("root", "0"))
    assert 'ENTRYPOINT ["singleton"]' in text and 'CMD ["run"]' in text
    assert "EXPOSE 9464" in text
    copied = re.findall(r"^COPY (.+) \S+$", text, re.M)
    for item in " ".join(copied).split():
        assert (ROOT / item).exists(), f"Containerfile copies {item}, which does not exist"


def test_the_etcd_secret_is_created_by_the_user_never_applied() -> None:
    """A Secret with empty values in `apply -k` would overwrite the one `kubectl create secret` made: there is
    none in the manifests, every reference to it is optional, and the way to create it is written down."""
    manifests = all_docs()
    assert not [name for name in manifests if name.startswith("Secret/")]
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert not any("secret" in r for r in yaml.safe_load(kustomization.read_text())["resources"])
    pod = manifests["Deployment/singleton"]["spec"]["template"]["spec"]
    volumes = [v for v in pod["volumes"] if "secret" in v]
    assert volumes and all(v["secret"]["optional"] is True for v in volumes)
    names = {v["secret"]["secretName"] for v in volumes}
    text = (K8S / "deployment.yaml").read_text() + (ROOT / "README.md").read_text()
    assert all(f"kubectl create secret generic {name}" in text for name in names)


def test_the_jobs_file_is_valid_and_the_jobs_overlay_points_at_its_mount() -> None:
    """k8s/jobs-configmap.yaml carries a jobs file (checked as `singleton run --jobs` checks it); the overlay
    examples/jobs-k8s/ swaps SINGLETON_JOB for SINGLETON_JOBS pointing at where the Deployment mounts it. (An
    overlay inside k8s/ would be refused by kustomize as a cycle.)"""
    import tomllib

    from singleton.ops.jobsfile import parse_jobs

    manifests = all_docs()
    files = manifests["ConfigMap/singleton-jobs"]["data"]
    jobs = parse_jobs(tomllib.loads(files["jobs.toml"]), "jobs.toml")
    assert len(jobs) >= 3 and len({spec.name for spec, _fn in jobs}) == len(jobs)
    pod = manifests["Deployment/singleton"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "singleton-jobs")
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    overlay_dir = ROOT / "examples" / "jobs-k8s"
    overlay = yaml.safe_load((overlay_dir / "kustomization.yaml").read_text())
    assert (overlay_dir / overlay["resources"][0]).resolve() == K8S
    (patch,) = overlay["patches"]
    assert patch["target"] == {"kind": "ConfigMap", "name": "singleton-config"}
    config = dict(manifests["ConfigMap/singleton-config"]["data"])
    for op in yaml.safe_load(patch["patch"]):  # JSON patch (RFC 6902) ops on /data/<key>, applied by hand
        key = op["path"].removeprefix("/data/")
        if op["op"] == "remove":
            del config[key]
        else:
            assert op["op"] == "add"
            config[key] = op["value"]
    assert "SINGLETON_JOB" not in config  # --job and --jobs exclude each other
    assert config["SINGLETON_JOBS"] == f"{mount['mountPath']}/jobs.toml" and mount["readOnly"] is True
    assert set(config) <= {env_name(opt) for opt in run_options()}

"""k8s/ under an independent scanner and the network boundary (issue #33, points 11-13).

checkov does not look inside KubeRay's custom resources, so ``python -m ssagan_dist.deploy.check
--extract-pods`` writes each RayJob/RayCluster pod template as a Pod (the head with KubeRay's
autoscaler sidecar) beside the core-kind manifests, and checkov scans those: 0 failed checks,
every skipped one with its reason in a ``checkov.io/skipN`` annotation (docs/kubernetes.md).
checkov runs from its own environment (.venv-checkov, `make checkov-env`): it pins botocore and
packaging versions that .venv's s3fs cannot take.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ssagan_dist.deploy import check as k8s_check
from ssagan_dist.experiment import load_config
from tests.conftest import missing_part

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CHECKOV_VERSION = "3.3.30"  # Makefile's CHECKOV_VERSION
RAY_ROLES = ("head", "worker", "submitter")


def checkov_program() -> str:
    for candidate in (os.environ.get("SSAGAN_CHECKOV"), str(REPO / ".venv-checkov" / "bin" / "checkov"),
                      shutil.which("checkov")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    missing_part(f"checkov {CHECKOV_VERSION} (make checkov-env; or $SSAGAN_CHECKOV=path)")


def docs_in(folder: Path) -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(folder.rglob("*.y*ml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def ray_pods() -> list[tuple[k8s_check.Manifest, k8s_check.PodTemplate]]:
    manifests, problems = k8s_check.load_manifests(K8S)
    assert not problems
    return [(m, pod) for m in manifests for pod in k8s_check.pod_templates(m) if pod.role in RAY_ROLES]


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory) -> dict:
    program = checkov_program()
    folder = tmp_path_factory.mktemp("pods")
    paths = k8s_check.write_pod_manifests(K8S, folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "PRISMA_", "CKV_"))}
    result = subprocess.run([program, "-d", str(folder), "--framework", "kubernetes", "-o", "json",
                             "--skip-download"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    report["_files"] = paths
    return report


@pytest.mark.slow  # checkov: 10-20 s on 2 shared cores (about 4 s of CPU)
def test_checkov_finds_no_failed_check_in_the_pod_templates(checkov_report):
    summary = checkov_report["summary"]
    assert summary["checkov_version"] == CHECKOV_VERSION
    failed = [(f["check_id"], f["resource"], f["file_path"]) for f in checkov_report["results"]["failed_checks"]]
    assert failed == []
    assert summary["parsing_errors"] == 0
    scanned_pods = {f["resource"] for f in checkov_report["results"]["passed_checks"] if f["resource"].startswith("Pod.")}
    assert len(scanned_pods) == len(ray_pods()) == 8  # 3 heads, 3 worker groups, 2 job submitters


@pytest.mark.slow  # checkov: 10-20 s on 2 shared cores (about 4 s of CPU)
def test_every_skipped_check_has_its_reason(checkov_report):
    skipped = checkov_report["results"]["skipped_checks"]
    assert skipped, "the pod templates carry checkov.io/skip annotations"
    for entry in skipped:
        reason = (entry["check_result"].get("suppress_comment") or "").strip()
        assert len(reason) > 20 and reason != "No comment provided", (entry["check_id"], entry["resource"])
    assert {entry["check_id"] for entry in skipped} == {"CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_43", "CKV_K8S_38"}


def test_skip_annotations_are_well_formed_and_only_for_the_documented_checks():
    allowed = {"head": {"CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_43", "CKV_K8S_38"},
               "worker": {"CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_43"},
               "submitter": {"CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_43"}}
    docs = (REPO / "docs" / "kubernetes.md").read_text()
    for m, pod in ray_pods():
        annotations = k8s_check.dig(m.doc, *pod.path[:-1], "metadata", "annotations") or {}
        skips = {k: v for k, v in annotations.items() if k.startswith("checkov.io/skip")}
        ids = set()
        for key, value in skips.items():
            match = re.fullmatch(r"(CKV2?_K8S_\d+)=(.{20,})", value)
            assert re.fullmatch(r"checkov\.io/skip\d+", key) and match, f"{m.file} {pod.role}: {key}: {value!r}"
            ids.add(match.group(1))
            assert match.group(1) in docs, f"{match.group(1)} is skipped but docs/kubernetes.md does not say why"
        assert ids <= allowed[pod.role], (m.file, pod.role, ids)


def test_extracted_head_pod_carries_the_autoscaler_sidecar_kuberay_adds():
    pods = {name: doc for name, doc in k8s_check.pod_manifests(K8S) if doc["kind"] == "Pod"}
    head = pods["30-rayjob-train--pod-ssagan-train-head.yaml"]
    assert [c["name"] for c in head["spec"]["containers"]] == ["ray-head", "autoscaler"]
    autoscaler = head["spec"]["containers"][1]
    assert autoscaler["securityContext"]["readOnlyRootFilesystem"] is True
    assert autoscaler["imagePullPolicy"] == "Always"
    assert head["metadata"]["namespace"] == "ssagan"
    assert head["metadata"]["labels"]["app.kubernetes.io/instance"] == "ssagan-train"


# -- what the fixes are, independently of checkov -----------------------------------------------------

def test_pods_run_as_a_high_uid_and_pull_always_and_read_s3_keys_from_a_mounted_file():
    for m, pod in ray_pods():
        assert pod.spec["securityContext"]["runAsUser"] >= 10000, (m.file, pod.role)
        for _, container in k8s_check.containers(pod):
            assert container.get("imagePullPolicy") == "Always", (m.file, pod.role, container["name"])
            env = container.get("env") or []
            assert not [v for v in env if "secretKeyRef" in json.dumps(v)], "secrets as env values"
            assert not container.get("envFrom")
            if pod.role in ("head", "worker"):
                files = [v["value"] for v in env if v["name"] == "AWS_SHARED_CREDENTIALS_FILE"]
                assert files == ["/etc/ssagan-s3/credentials"]
                volumes = {v["name"]: v for v in pod.spec["volumes"]}
                mount = next(mt for mt in container["volumeMounts"] if mt["mountPath"] == "/etc/ssagan-s3")
                assert mount["readOnly"] and volumes[mount["name"]]["secret"]["secretName"] == "ssagan-s3"
                assert volumes[mount["name"]]["secret"]["defaultMode"] == 0o440
        if pod.role != "head":
            assert pod.spec["automountServiceAccountToken"] is False, (m.file, pod.role)


def test_checker_refuses_a_credentials_file_outside_a_mounted_secret(tmp_path, kuberay_crds):
    folder = tmp_path / "k8s"
    shutil.copytree(K8S, folder)
    path = folder / "30-rayjob-train.yaml"
    path.write_text(path.read_text().replace("value: /etc/ssagan-s3/credentials", "value: /tmp/credentials"))
    problems = [str(p) for p in k8s_check.check(folder, kuberay_crds)]
    assert any("AWS_SHARED_CREDENTIALS_FILE = /tmp/credentials is not in a Secret volume" in p for p in problems), problems


def test_s3_keys_are_read_from_the_shared_credentials_file_alone(s3_bucket, tmp_path):
    """What the pods rely on: with no key in the environment, the loader's S3 client (botocore
    through s3fs) takes them from AWS_SHARED_CREDENTIALS_FILE."""
    endpoint, bucket = s3_bucket
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    creds.chmod(0o440)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/nonexistent", AWS_MAX_ATTEMPTS="1",
               AWS_SHARED_CREDENTIALS_FILE=str(creds), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "data_tools.verify", f"s3://{bucket}/sky", "--endpoint-url", endpoint],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert "no S3 credentials" not in out.stderr, out.stderr
    assert out.returncode == 1 and "no index.json" in out.stdout, (out.stdout, out.stderr)


# -- NetworkPolicies (point 12) and the metrics interface on Kubernetes (point 11) ---------------------

def policies() -> list[tuple[Path, dict]]:
    return [(path, doc) for path, doc in docs_in(K8S) if doc["kind"] == "NetworkPolicy"]


def selects(policy: dict, labels: dict) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def admitted(policy: dict, port_name: str | None, port_number: int | None) -> list[dict]:
    """The `from` peers of the policy's rules that admit this port (a rule without ports: all)."""
    peers = []
    for rule in policy["spec"].get("ingress") or []:
        ports = rule.get("ports")
        if ports is None or any(p.get("port") in (port_name, port_number) for p in ports):
            peers += rule.get("from") or [{"everyone": True}]
    return peers


def test_every_ray_pod_admits_only_its_own_runs_pods_the_monitoring_namespace_and_the_operator():
    for m, pod in ray_pods():
        run = pod.labels["app.kubernetes.io/instance"]
        selecting = [(path, doc) for path, doc in policies()
                     if doc["metadata"]["namespace"] == m.namespace and selects(doc, pod.labels)]
        mine = [doc for _, doc in selecting]
        assert any(doc["spec"]["podSelector"] == {} for doc in mine), "a default deny covers the namespace"
        assert any(doc["spec"]["podSelector"] != {} for doc in mine), f"{m.file}: no policy admits its run"
        # the policies that select this pod are applied with it: its folder's, or k8s/ itself
        assert {path.parent for path, _ in selecting} <= {(REPO / m.file).parent, K8S}, m.file
        container_ports = {p["name"]: p["containerPort"] for _, c in k8s_check.containers(pod)
                           for p in c.get("ports") or []}
        ray_ports = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, None: 12345}  # None: a random Ray port
        for name, number in {**ray_ports, **container_ports}.items():
            for peer in (p for doc in mine for p in admitted(doc, name, number)):
                assert "everyone" not in peer and peer.get("ipBlock") is None, (m.file, name, peer)
                if "namespaceSelector" not in peer:  # a pod of the same namespace: this run's only
                    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/instance": run}, (m.file, name)
                elif peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}:
                    assert name in ("metrics", "ray-metrics"), (m.file, name)
                else:
                    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kuberay-system"}
                    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
                    assert number == 8265 and pod.role == "head", (m.file, name, pod.role)


def test_checker_refuses_a_policy_whose_selector_matches_no_pod(tmp_path, kuberay_crds):
    folder = tmp_path / "k8s"
    shutil.copytree(K8S, folder)
    path = folder / "40-networkpolicy.yaml"
    path.write_text(path.read_text().replace("matchLabels: {app.kubernetes.io/instance: ssagan-train}\n  policyTypes",
                                             "matchLabels: {app.kubernetes.io/instance: ssagan-trian}\n  policyTypes"))
    problems = [str(p) for p in k8s_check.check(folder, kuberay_crds)]
    assert any("NetworkPolicy/ssagan-train spec.podSelector.matchLabels" in p and "selects no pod" in p
               for p in problems), problems


def test_pods_serve_metrics_on_all_interfaces_only_because_the_run_config_says_so(tmp_path):
    configmap = next(doc for _, doc in docs_in(K8S) if doc["kind"] == "ConfigMap"
                     and doc["metadata"]["name"] == "ssagan-run-config")
    (tmp_path / "config.yaml").write_text(configmap["data"]["config.yaml"])
    assert load_config(str(tmp_path / "config.yaml")).telemetry.host == "0.0.0.0"
    assert load_config("tiny_cpu").telemetry.host == "127.0.0.1"

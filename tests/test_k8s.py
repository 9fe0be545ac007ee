"""The Kubernetes manifests, checked offline (no cluster can run here; nothing is mocked but the
network, which the offline test blocks on purpose).

The checker (ssagan_dist.deploy.check) validates core kinds with kubernetes-validate's bundled
schemas, RayJob/RayCluster with the KubeRay v1.7.0 CRDs in ../shared/k8s-crds (unknown fields
refused), and cross-checks the entrypoint, the run config, GPUs, images, security and secrets.
"""

from __future__ import annotations

import copy
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from ssagan_dist.config import load_config
from ssagan_dist.deploy import check as k8s_check

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
BROKEN = Path(__file__).parent / "fixtures" / "k8s_broken"
VALID = BROKEN / "_valid"

# case folder -> (the broken file, a fragment of the field the message must name)
BROKEN_CASES = {
    "typo_field": ("30-rayjob.yaml", "spec.shutdownAfterJobFinish"),
    "worker_without_gpu": ("30-rayjob.yaml", "workerGroupSpecs[0].template.spec.containers[0].resources.limits.nvidia.com/gpu"),
    "unpinned_image": ("30-rayjob.yaml", "workerGroupSpecs[0].template.spec.containers[0].image"),
    "config_unknown_key": ("20-run-config.yaml", "ConfigMap/ssagan-run-config data.config.yaml"),
    "gpu_requests_not_limits": ("30-rayjob.yaml", "workerGroupSpecs[0].template.spec.containers[0].resources"),
    "head_takes_tasks": ("30-rayjob.yaml", "headGroupSpec.rayStartParams.num-cpus"),
    "auth_off": ("30-rayjob.yaml", "rayClusterSpec.authOptions.mode"),
    "writable_root": ("30-rayjob.yaml", "securityContext.readOnlyRootFilesystem"),
    "no_autoscaling": ("30-rayjob.yaml", "rayClusterSpec.enableInTreeAutoscaling"),
    "literal_secret_env": ("30-rayjob.yaml", "containers[0].env[1].value"),
    "committed_secret": ("40-secret.yaml", "Secret/ssagan-s3 stringData"),
    "missing_entrypoint_module": ("30-rayjob.yaml", "spec.entrypoint"),
}


def docs_in(folder: Path) -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(folder.rglob("*.y*ml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def pinned_ray() -> Requirement:
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(Requirement(d) for d in deps if Requirement(d).name == "ray")


def dockerfile_base() -> re.Match:
    text = (REPO / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert len(froms) == 1, froms
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-(cu\d+)", froms[0])
    assert match, f"the Dockerfile must FROM an official Ray GPU image with an explicit CUDA tag, got {froms[0]}"
    return match


def test_repository_manifests_pass_every_check():
    problems = k8s_check.check(K8S)
    assert [str(p) for p in problems] == []


def test_kubectl_apply_k8s_creates_namespace_first_then_account_config_and_job():
    top_level = sorted(p for p in K8S.iterdir() if p.is_file())
    assert all(p.suffix == ".yaml" for p in top_level)
    assert not any(p.name.lower().startswith("kustomization") for p in top_level)
    kinds = [doc["kind"] for p in top_level for doc in yaml.safe_load_all(p.read_text()) if doc]
    assert kinds[0] == "Namespace"
    assert sorted(kinds) == ["ConfigMap", "Namespace", "RayJob", "ServiceAccount"]
    # the sweep and the interactive cluster live in sub-folders, applied separately
    assert {doc["kind"] for _, doc in docs_in(K8S / "tune")} == {"ConfigMap", "RayJob"}
    assert {doc["kind"] for _, doc in docs_in(K8S / "cluster")} == {"RayCluster"}
    for path, doc in docs_in(K8S):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            assert path.parent != K8S, f"{path}: Prometheus-Operator objects belong in a sub-folder"


def test_run_config_in_the_configmap_passes_the_projects_validation(tmp_path):
    configmap = next(doc for _, doc in docs_in(K8S) if doc["kind"] == "ConfigMap"
                     and doc["metadata"]["name"] == "ssagan-run-config")
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    cfg = load_config(str(path))
    assert cfg.trainer.use_gpu and cfg.model.name == "ssagan"
    assert cfg.data.train_urls.startswith("s3://") and cfg.run.storage_path.startswith("s3://")
    assert cfg.metrics.enabled and cfg.metrics.port == k8s_check.WORKER_PORTS["metrics"]


def test_training_job_runs_the_train_module_on_the_configmap_it_mounts():
    job = next(doc for _, doc in docs_in(K8S) if doc["kind"] == "RayJob" and doc["metadata"]["name"] == "ssagan-train")
    entry = k8s_check.parse_entrypoint(job["spec"]["entrypoint"])
    assert entry.module == "ssagan_dist.train" and entry.config == "/etc/ssagan/config.yaml"
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    pod = k8s_check.PodTemplate((), head, {}, "head")
    assert k8s_check.mounted_configmap_key(pod, entry.config) == ("ssagan-run-config", "config.yaml")


def test_dockerfile_base_image_is_the_pinned_ray_version():
    base = dockerfile_base()
    ray_version = Version(base.group(1))
    requirement = pinned_ray()
    assert ray_version in requirement.specifier, f"Dockerfile has Ray {ray_version}, pyproject pins {requirement}"
    assert {"default", "train", "tune"} <= requirement.extras
    # the torch build is for the image's CUDA
    index = re.search(r"^ARG TORCH_INDEX_URL=\S+/(cu\d+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert index and index.group(1) == base.group(4)
    # every Ray cluster declares the image's Ray version
    versions = {dig for _, doc in docs_in(K8S) if doc["apiVersion"] == "ray.io/v1"
                for dig in [(doc["spec"].get("rayClusterSpec") or doc["spec"])["rayVersion"]]}
    assert versions == {str(ray_version)}


def test_every_manifest_names_the_one_image_of_this_version():
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    images = set()
    for _, doc in docs_in(K8S):
        images |= set(re.findall(r"'image': '([^']+)'", repr(doc)))
    assert images == {f"ghcr.io/ssagan-dist/ssagan-dist:{version}"}
    assert f"ssagan-dist:$version" in (REPO / "jobs" / "build_image.sh").read_text()


def test_valid_fixture_base_passes():
    assert [str(p) for p in k8s_check.check(VALID)] == []


@pytest.mark.parametrize("case", sorted(BROKEN_CASES))
def test_broken_manifest_fails_naming_file_and_field(case):
    broken_file, field = BROKEN_CASES[case]
    problems = k8s_check.check(BROKEN / case)
    assert problems, f"{case}: no problem found"
    lines = [str(p) for p in problems]
    assert all(p.file == f"{case}/{broken_file}" or (case == "worker_without_gpu" and p.file.endswith("20-run-config.yaml"))
               for p in problems), lines
    assert any(field in p.field for p in problems), lines
    assert all("\n" not in line for line in lines)


def test_broken_config_message_names_the_key():
    [problem] = k8s_check.check(BROKEN / "config_unknown_key")
    assert "loss.lambda_rank" in problem.message


def test_typo_is_refused_deep_inside_the_pod_template_too():
    [(path, doc)] = [(p, d) for p, d in docs_in(VALID) if d["kind"] == "RayJob"]
    doc = copy.deepcopy(doc)
    worker = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    worker["volumeMount"] = worker.pop("volumeMounts")
    manifest = k8s_check.Manifest("30-rayjob.yaml", True, doc)
    schemas = k8s_check.crd_schemas(str(k8s_check.DEFAULT_CRDS.resolve()))
    [problem] = k8s_check.check_crd_kind(manifest, schemas)
    assert problem.field.endswith("workerGroupSpecs[0].template.spec.containers[0].volumeMount")
    assert "did you mean 'volumeMounts'" in problem.message


def test_core_kinds_validate_strictly_against_kubernetes_schemas():
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "ssagan"},
                 "datas": {"a": "b"}}
    [problem] = k8s_check.check_core_kind(k8s_check.Manifest("cm.yaml", True, configmap), "1.30")
    assert problem.field == "ConfigMap/x datas"
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x", "namespace": "ssagan"},
               "automountServiceAccountToken": "yes"}
    [problem] = k8s_check.check_core_kind(k8s_check.Manifest("sa.yaml", True, account), "1.30")
    assert problem.field == "ServiceAccount/x automountServiceAccountToken"


def test_checks_run_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network access during an offline check")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    assert [str(p) for p in k8s_check.check(VALID)] == []
    assert k8s_check.check(BROKEN / "typo_field")


def test_monitoring_objects_outside_a_sub_folder_are_refused(tmp_path):
    for path in VALID.iterdir():
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "50-podmonitor.yaml").write_text(yaml.safe_dump({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
        "metadata": {"name": "m", "namespace": "ssagan"},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "ssagan-dist"}},
                 "podMetricsEndpoints": [{"port": "metrics"}]}}))
    problems = k8s_check.check(tmp_path)
    assert [p.field for p in problems] == ["PodMonitor/m kind"]


def test_cli_prints_one_line_per_problem_and_exits_2():
    result = subprocess.run([sys.executable, "-m", "ssagan_dist.deploy.check", str(BROKEN / "writable_root")],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"{len(lines) - 1} problem(s) in {BROKEN / 'writable_root'}"
    assert len(lines) > 1 and all(line.startswith("writable_root/30-rayjob.yaml: RayJob/ssagan-train spec.")
                                  for line in lines[:-1])

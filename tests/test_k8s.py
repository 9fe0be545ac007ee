"""The Kubernetes manifests, checked offline (no cluster can run here; nothing is mocked but the
network, which the offline test blocks on purpose).

The checker (ssagan_dist.deploy.check) validates core kinds with kubernetes-validate's bundled
schemas, RayJob/RayCluster with the KubeRay v1.7.0 CRDs (given explicitly by the `kuberay_crds`
fixture of conftest.py; unknown fields refused), and cross-checks the entrypoint, the run config,
GPUs, images, security and secrets. Where the CRDs come from `kubectl`, only the kubectl program
is replaced (a script on PATH that prints what `kubectl get crd` would): no Kubernetes API here.
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

from ssagan_dist.experiment import load_config
from ssagan_dist.deploy import check as k8s_check
from tests.conftest import run_without

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


def test_repository_manifests_pass_every_check(kuberay_crds):
    problems = k8s_check.check(K8S, kuberay_crds)
    assert [str(p) for p in problems] == []


def test_kubectl_apply_k8s_creates_namespace_first_then_account_config_job_and_policies():
    top_level = sorted(p for p in K8S.iterdir() if p.is_file())
    assert all(p.suffix == ".yaml" for p in top_level)
    assert not any(p.name.lower().startswith("kustomization") for p in top_level)
    kinds = [doc["kind"] for p in top_level for doc in yaml.safe_load_all(p.read_text()) if doc]
    assert kinds[0] == "Namespace"
    assert sorted(kinds) == ["ConfigMap", "Namespace", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy",
                             "RayJob", "ServiceAccount"]
    # the sweep and the interactive cluster live in sub-folders, applied separately, each with the
    # NetworkPolicies that admit its own pods (tests/test_k8s_security.py)
    assert {doc["kind"] for _, doc in docs_in(K8S / "tune")} == {"ConfigMap", "NetworkPolicy", "RayJob"}
    assert {doc["kind"] for _, doc in docs_in(K8S / "cluster")} == {"NetworkPolicy", "RayCluster"}
    for path, doc in docs_in(K8S):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            assert path.parent != K8S, f"{path}: Prometheus-Operator objects belong in a sub-folder"


def test_run_config_in_the_configmap_passes_the_projects_validation(tmp_path):
    configmap = next(doc for _, doc in docs_in(K8S) if doc["kind"] == "ConfigMap"
                     and doc["metadata"]["name"] == "ssagan-run-config")
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    cfg = load_config(str(path))
    assert cfg.scaling.use_gpu and cfg.model.name == "ssagan"
    assert cfg.data.train_urls.startswith("s3://") and cfg.run.storage_path.startswith("s3://")
    assert cfg.telemetry.enabled and cfg.telemetry.port == k8s_check.WORKER_PORTS["metrics"]


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


def test_valid_fixture_base_passes(kuberay_crds):
    assert [str(p) for p in k8s_check.check(VALID, kuberay_crds)] == []


@pytest.mark.parametrize("case", sorted(BROKEN_CASES))
def test_broken_manifest_fails_naming_file_and_field(case, kuberay_crds):
    broken_file, field = BROKEN_CASES[case]
    problems = k8s_check.check(BROKEN / case, kuberay_crds)
    assert problems, f"{case}: no problem found"
    lines = [str(p) for p in problems]
    assert all(p.file == f"{case}/{broken_file}" or (case == "worker_without_gpu" and p.file.endswith("20-run-config.yaml"))
               for p in problems), lines
    assert any(field in p.field for p in problems), lines
    assert all("\n" not in line for line in lines)


def test_broken_config_message_names_the_key(kuberay_crds):
    [problem] = k8s_check.check(BROKEN / "config_unknown_key", kuberay_crds)
    assert "loss.lambda_rank" in problem.message


def test_typo_is_refused_deep_inside_the_pod_template_too(kuberay_crds):
    [(path, doc)] = [(p, d) for p, d in docs_in(VALID) if d["kind"] == "RayJob"]
    doc = copy.deepcopy(doc)
    worker = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    worker["volumeMount"] = worker.pop("volumeMounts")
    manifest = k8s_check.Manifest("30-rayjob.yaml", True, doc)
    schemas = k8s_check.crd_schemas(str(kuberay_crds.resolve()))
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


def test_checks_run_offline(monkeypatch, kuberay_crds):
    def no_network(*args, **kwargs):
        raise OSError("network access during an offline check")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    assert [str(p) for p in k8s_check.check(VALID, kuberay_crds)] == []
    assert k8s_check.check(BROKEN / "typo_field", kuberay_crds)


def test_monitoring_objects_outside_a_sub_folder_are_refused(tmp_path, kuberay_crds):
    for path in VALID.iterdir():
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "50-podmonitor.yaml").write_text(yaml.safe_dump({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
        "metadata": {"name": "m", "namespace": "ssagan"},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "ssagan-dist"}},
                 "podMetricsEndpoints": [{"port": "metrics"}]}}))
    problems = k8s_check.check(tmp_path, kuberay_crds)
    assert [p.field for p in problems] == ["PodMonitor/m kind"]


def test_cli_prints_one_line_per_problem_and_exits_2(kuberay_crds):
    result = subprocess.run([sys.executable, "-m", "ssagan_dist.deploy.check", str(BROKEN / "writable_root"),
                             "--crds", str(kuberay_crds)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"{len(lines) - 1} problem(s) in {BROKEN / 'writable_root'}"
    assert len(lines) > 1 and all(line.startswith("writable_root/30-rayjob.yaml: RayJob/ssagan-train spec.")
                                  for line in lines[:-1])


# -- where the KubeRay CRDs come from ------------------------------------------------------------

def _checker(*args: str, env_path: str, crds_env: str = "") -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "PATH": env_path, "SSAGAN_KUBERAY_CRDS": crds_env}
    return subprocess.run([sys.executable, "-m", "ssagan_dist.deploy.check", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120, env=env)


def _fake_kubectl(folder: Path, script: str) -> str:
    """A `kubectl` program on PATH (the only stand-in: no Kubernetes API can run here)."""
    folder.mkdir()
    kubectl = folder / "kubectl"
    kubectl.write_text(f"#!/bin/sh\n{script}\n")
    kubectl.chmod(0o755)
    (folder / "calls").write_text("")
    return f"{folder}:/usr/bin:/bin"


def test_without_any_crds_everything_else_is_checked_and_the_skip_is_said_in_one_line(tmp_path):
    no_kubectl = str(tmp_path)  # an empty PATH: the checker needs no program but Python (by its full path)
    ok = _checker("k8s/", env_path=no_kubectl)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert lines == [lines[0], "k8s: all manifests pass"]
    assert lines[0].startswith("skipped: the RayJob/RayCluster schema check (no KubeRay CRDs: kubectl is not "
                               "installed)") and "--crds DIR" in lines[0] and "SSAGAN_KUBERAY_CRDS" in lines[0]
    # the cross-checks of RayJobs still run without their schema
    bad = _checker(str(BROKEN / "writable_root"), env_path=no_kubectl)
    assert bad.returncode == 2 and "readOnlyRootFilesystem" in bad.stderr
    assert bad.stdout.startswith("skipped: the RayJob/RayCluster schema check")
    # ...but a schema-only mistake needs the CRDs: with them it is found
    typo = _checker(str(BROKEN / "typo_field"), env_path=no_kubectl)
    assert typo.returncode == 2  # via a cross-check
    assert "unknown field 'shutdownAfterJobFinish'" not in typo.stderr


@pytest.mark.slow
def test_crds_come_from_the_cluster_kubectl_reaches(tmp_path, kuberay_crds):
    # what `kubectl get crd rayjobs.ray.io rayclusters.ray.io -o yaml` prints: a List of the CRDs
    items = [doc for path in sorted(kuberay_crds.glob("*.y*ml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    (tmp_path / "list.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    path = _fake_kubectl(tmp_path / "bin", f'echo "$@" >> {tmp_path}/bin/calls\n'
                         f'case "$1" in get) cat {tmp_path}/list.yaml ;; config) echo prod-east ;; esac')
    result = _checker(str(BROKEN / "typo_field"), env_path=path)
    assert result.returncode == 2
    assert "unknown field 'shutdownAfterJobFinish' (did you mean 'shutdownAfterJobFinishes'?)" in result.stderr
    assert "skipped" not in result.stdout
    assert (tmp_path / "bin" / "calls").read_text().splitlines()[0].startswith(
        "get crd rayjobs.ray.io rayclusters.ray.io -o yaml --request-timeout=")
    assert _checker("k8s/", env_path=path).stdout.strip() == "k8s: all manifests pass"
    # an explicit folder wins over kubectl
    (tmp_path / "bin" / "calls").write_text("")
    assert _checker("k8s/", "--crds", str(kuberay_crds), env_path=path).returncode == 0
    assert _checker("k8s/", env_path=path, crds_env=str(kuberay_crds)).returncode == 0
    assert (tmp_path / "bin" / "calls").read_text() == ""


def test_kubectl_without_a_cluster_skips_the_schema_check_saying_why(tmp_path):
    path = _fake_kubectl(tmp_path / "bin", 'echo "The connection to the server localhost:8080 was refused" >&2; exit 1')
    result = _checker("k8s/", env_path=path)
    assert result.returncode == 0, result.stderr
    skipped, passed = result.stdout.strip().splitlines()
    assert "kubectl get crd` failed: The connection to the server localhost:8080 was refused" in skipped
    assert passed == "k8s: all manifests pass"


def test_an_empty_crds_folder_is_a_problem_not_a_skip(tmp_path):
    result = _checker("k8s/", "--crds", str(tmp_path), env_path=str(tmp_path))
    assert result.returncode == 2
    assert f"k8s/30-rayjob-train.yaml: RayJob/ssagan-train apiVersion: no KubeRay CRD files in --crds {tmp_path}" \
        in result.stderr.splitlines()


@pytest.mark.parametrize("blocked, named", [(("kubernetes_validate",), "kubernetes-validate"),
                                             (("kubernetes_validate", "jsonschema"), "kubernetes-validate and jsonschema")])
def test_missing_checker_packages_name_the_extra_in_one_line(blocked, named):
    """Run as a user would, in an interpreter where the packages of the `deploy` extra do not import."""
    result = run_without(blocked, "ssagan_dist.deploy.check", str(K8S))
    assert result.returncode == 3, result.stderr
    assert result.stderr.splitlines() == [f"error: the manifest checker needs {named}, which the 'deploy' extra "
                                          "installs: pip install 'ssagan-dist[deploy]'"]
    assert result.stdout == ""

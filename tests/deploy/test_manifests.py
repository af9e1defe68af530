"""The deployment files agree with each other about transport security: every pod mounts its
own certificates where the settings look for them, probes the health-only port, and the
certificates issued name the hosts the callers dial."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from kit.server import LIVENESS
from kit.settings import SERVICES
from tests.harness.platform import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
PROCESSES = (*SERVICES, "gateway")


def _documents(path: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all((DEPLOY / path).read_text()) if document]


def _config() -> dict[str, str]:
    (config,) = _documents("k8s/base/01-config.yaml")
    return dict(config["data"])


def _pod(process: str) -> dict[str, Any]:
    for path in sorted((DEPLOY / "k8s" / "base").glob("*.yaml")):
        for document in _documents(f"k8s/base/{path.name}"):
            if document["kind"] == "Deployment" and document["metadata"]["name"] == process:
                return dict(document["spec"]["template"]["spec"])
    raise AssertionError(f"no Deployment {process}")


def _tls_directory(settings: dict[str, str]) -> str:
    directories = {
        str(PurePosixPath(settings[f"STYLESTUDIO_GRPC_TLS_{name}_FILE"]).parent)
        for name in ("CERT", "KEY", "CA")
    }
    assert len(directories) == 1, directories
    return directories.pop()


@pytest.mark.parametrize("process", PROCESSES)
def test_every_pod_mounts_its_own_certificates_where_the_settings_look(process: str) -> None:
    pod = _pod(process)
    (container,) = pod["containers"]
    secrets = {
        volume["name"]: volume["secret"]["secretName"] for volume in pod["volumes"] if "secret" in volume
    }
    mounted = {mount["mountPath"]: secrets.get(mount["name"]) for mount in container["volumeMounts"]}
    assert mounted[_tls_directory(_config())] == f"{process}-tls"


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_is_probed_on_the_health_only_port(service: str) -> None:
    health_port = int(_config()["STYLESTUDIO_HEALTH_ADDR"].rsplit(":", 1)[1])
    (container,) = _pod(service)["containers"]
    assert health_port in {port["containerPort"] for port in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == health_port
    # Readiness is the server-wide entry (dependencies); liveness the process alone (kit.server).
    assert container["readinessProbe"]["grpc"].get("service", "") == ""
    assert container["livenessProbe"]["grpc"]["service"] == LIVENESS


def test_cert_manager_issues_every_secret_for_the_host_its_callers_dial() -> None:
    config = _config()
    issued = {
        document["spec"]["secretName"]: document["spec"]
        for document in _documents("k8s/tls/certificates.yaml")
        if document["kind"] == "Certificate" and not document["spec"].get("isCA")
    }
    assert set(issued) == {f"{process}-tls" for process in PROCESSES}
    for service in SERVICES:
        host = _dialled_host(config[f"STYLESTUDIO_{service.upper()}_ADDR"])
        assert host in issued[f"{service}-tls"]["dnsNames"]
        assert {"server auth", "client auth"} <= set(issued[f"{service}-tls"]["usages"])
    assert "client auth" in issued["gateway-tls"]["usages"]


def _dialled_host(address: str) -> str:
    """The name gRPC checks the server's certificate against: the host of ``host:port``, or of
    ``dns:///host:port`` (after the DNS server's authority, if any)."""
    name = address.rsplit("/", 1)[-1] if address.startswith("dns:") else address
    return name.rsplit(":", 1)[0]


def test_the_compose_overlay_gives_every_process_its_own_folder_of_certificates() -> None:
    (base,) = _documents("docker-compose.yml")
    (overlay,) = _documents("docker-compose.tls.yml")
    for process in PROCESSES:
        assert process in base["services"]
        settings = overlay["services"][process]["environment"]
        assert settings["STYLESTUDIO_GRPC_TLS"] == "true"
        assert f"./tls/{process}:{_tls_directory(settings)}:ro" in overlay["services"][process]["volumes"]

"""deploy/: compose carries no usable secret, reads them from a generated .env, fails without one;
the Kubernetes manifests take theirs from a Secret created out of band."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from kit.settings import MIN_SECRET_BYTES, SERVICES
from tests.harness.platform import REPO_ROOT

COMPOSE = REPO_ROOT / "deploy" / "docker-compose.yml"
K8S = REPO_ROOT / "deploy" / "k8s" / "base"
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt} ...
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<rest>[^}]*)\}")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|PASSPHRASE|TOKEN|_KEY$|_KEYS$")
REQUIRED = {":?", "?"}


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def environments() -> dict[str, dict[str, str]]:
    """Each compose service's environment, merge keys resolved."""
    found = {}
    for name, service in compose()["services"].items():
        env = service.get("environment") or {}
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        found[name] = {str(key): str(value) for key, value in env.items()}
    return found


def interpolations() -> list[re.Match[str]]:
    return list(INTERPOLATION.finditer(COMPOSE.read_text()))


def test_the_compose_file_has_no_default_for_any_secret() -> None:
    secret_uses = [match for match in interpolations() if SECRET_NAME.search(match["name"])]
    assert len(secret_uses) >= 10, "the service secret, the passphrase and every password are read"
    for match in secret_uses:
        assert match["op"] in REQUIRED, f"{match[0]} must be required (${{VAR:?message}}), not defaulted"


def test_no_service_gets_a_literal_secret() -> None:
    checked = 0
    for service, env in environments().items():
        for key, value in env.items():
            if SECRET_NAME.search(key):
                match = INTERPOLATION.fullmatch(value)
                assert match and match["op"] in REQUIRED, f"{service}: {key} is not read from .env"
                checked += 1
            if "DATABASE_URL" in key:
                password = re.search(r"://[^:/@]+:(?P<password>[^@]*)@", value)
                assert password, f"{service}: {key} has no password"
                match = INTERPOLATION.fullmatch(password["password"])
                assert match and match["op"] in REQUIRED, f"{service}: {key}'s password is not read from .env"
                checked += 1
    assert checked >= 12


def test_each_service_connects_with_its_own_role_and_only_provisioning_has_the_admin_password() -> None:
    envs = environments()
    for service in ("users", "billing", "files", "generation", "analytics"):
        url = envs[service]["STYLESTUDIO_SERVICE_DATABASE_URL"]
        assert f"://stylestudio_{service}:${{STYLESTUDIO_{service.upper()}_DB_PASSWORD:?" in url
    holders = {
        name for name, env in envs.items() if any("POSTGRES_PASSWORD" in value for value in env.values())
    }
    assert holders == {"postgres", "provision"}
    assert {name for name, env in envs.items() if "STYLESTUDIO_SIGNING_KEY_PASSPHRASE" in env} == {"users"}


def test_make_env_writes_every_variable_compose_requires_with_strong_distinct_values(tmp_path: Path) -> None:
    target = tmp_path / ".env"
    run = [sys.executable, str(REPO_ROOT / "scripts" / "make_env.py"), str(target)]
    subprocess.run(run, check=True, capture_output=True, timeout=60)
    values = dict(
        line.split("=", 1) for line in target.read_text().splitlines() if line and not line.startswith("#")
    )
    required = {match["name"] for match in interpolations() if match["op"] in REQUIRED}
    assert required <= set(values), f"missing from the generated .env: {required - set(values)}"
    secrets = [
        values[name] for name in required if SECRET_NAME.search(name) and name != "STYLESTUDIO_STRIPE_API_KEY"
    ]
    assert len(secrets) >= 8
    assert all(len(value.encode()) >= MIN_SECRET_BYTES for value in secrets)
    assert len(set(secrets)) == len(secrets)
    assert values["STYLESTUDIO_OFFLINE_PAYMENTS_ENABLED"] == "false", "offline payments only when asked for"
    assert target.stat().st_mode & 0o077 == 0

    again = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "exists" in again.stderr, "the current secrets are never overwritten"


def test_the_env_file_is_ignored_by_git() -> None:
    paths = ["deploy/.env", ".env"]
    ignored = subprocess.run(
        ["git", "check-ignore", *paths], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
    )
    assert ignored.stdout.split() == paths


def test_kubernetes_takes_its_secrets_from_a_secret_created_out_of_band() -> None:
    documents = [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    assert all(doc["kind"] != "Secret" for doc in documents), "no Secret (with values) in the manifests"
    workloads = [doc for doc in documents if doc["kind"] in ("Deployment", "Job")]
    assert len(workloads) >= 7
    for doc in workloads:
        for container in doc["spec"]["template"]["spec"]["containers"]:
            refs = [source.get("secretRef", {}).get("name") for source in container.get("envFrom", [])]
            # Whole, or (PgBouncer: the roles' passwords only) one key at a time.
            refs += [
                variable.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
                for variable in container.get("env", [])
            ]
            assert "stylestudio" in refs, f"{doc['metadata']['name']} reads the Secret"
            for variable in container.get("env", []):
                assert not SECRET_NAME.search(variable["name"]) or "valueFrom" in variable


def runs_as_main(module: str) -> bool:
    """``python -m module`` would run something: a module, or a package with a __main__."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        return False
    return (
        spec.submodule_search_locations is None or importlib.util.find_spec(f"{module}.__main__") is not None
    )


def test_every_compose_command_is_a_real_entry_point() -> None:
    commands = {
        name: service["command"] for name, service in compose()["services"].items() if "command" in service
    }
    ours = {name: command for name, command in commands.items() if command[:2] == ["python", "-m"]}
    assert set(ours) == {"provision", *SERVICES, "gateway"}
    for name, command in ours.items():
        assert len(command) == 3 and runs_as_main(command[2]), f"{name}: {command}"
    assert ours["provision"][2] == "kit.bootstrap"
    assert ours["gateway"][2] == "gateway"
    for service in SERVICES:
        assert ours[service][2] == f"services.{service}"


def test_prometheus_runs_beside_jaeger_and_the_collector_and_scrapes_every_service() -> None:
    services = compose()["services"]
    assert {"jaeger", "otel-collector", "prometheus"} <= set(services)
    prometheus = services["prometheus"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus["volumes"]
    (token,) = prometheus["secrets"]
    assert token["target"] == "/etc/prometheus/metrics-token"
    assert compose()["secrets"][token["source"]] == {"environment": "STYLESTUDIO_METRICS_BEARER_TOKEN"}
    for volume in prometheus["volumes"][:2]:
        assert (COMPOSE.parent / volume.split(":")[0]).is_file(), volume
    scrape = yaml.safe_load((COMPOSE.parent / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in scrape["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert "alerts.yml" in scrape["rule_files"]
    envs = environments()
    for service in SERVICES:
        address = envs[service]["STYLESTUDIO_METRICS_ADDR"]
        assert address == "0.0.0.0:9464", service
        assert f"{service}:{address.rsplit(':', 1)[1]}" in targets, "Prometheus scrapes where it serves"
    for process in (*SERVICES, "gateway"):
        # Production refuses scrapes without it: the services hold what Prometheus presents.
        assert envs[process]["STYLESTUDIO_METRICS_BEARER_TOKEN"].startswith(
            "${STYLESTUDIO_METRICS_BEARER_TOKEN:?"
        )


def test_files_links_are_absolute_on_the_port_compose_publishes_the_gateway_on() -> None:
    published = compose()["services"]["gateway"]["ports"]
    assert published == ["8080:8080"]
    base = environments()["files"]["STYLESTUDIO_FILE_URL_BASE"]
    assert base == "${STYLESTUDIO_FILE_URL_BASE:-http://localhost:8080}"
    tls = yaml.safe_load((COMPOSE.parent / "docker-compose.tls.yml").read_text())["services"]["files"]
    assert (
        tls["environment"]["STYLESTUDIO_FILE_URL_BASE"]
        == "${STYLESTUDIO_FILE_URL_BASE:-https://localhost:8080}"
    )


def test_generation_and_billing_read_the_same_model_catalogue_settings() -> None:
    """Billing prices the models generation runs (kit/image_models.py): a setting given to one
    alone would let an estimate quote what a start refuses, or a start fail on its own price."""
    env = environments()
    assert (
        env["billing"]["STYLESTUDIO_REFUSE_STAND_IN_MODELS"]
        == env["generation"]["STYLESTUDIO_REFUSE_STAND_IN_MODELS"]
    )
    shared = compose()["x-service"]["environment"]
    assert "STYLESTUDIO_REFUSE_STAND_IN_MODELS" in shared

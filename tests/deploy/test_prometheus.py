"""deploy/prometheus: the alert rules and scrape configurations pass promtool (Debian's
`prometheus` package, installed by `make promtool`), and the rules fire as alerts_test.yml says."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.harness.platform import REPO_ROOT

PROMETHEUS = REPO_ROOT / "deploy" / "prometheus"


def promtool(*arguments: str, cwd: Path = PROMETHEUS) -> str:
    tool = shutil.which("promtool")
    assert tool is not None, "promtool is missing: run `make promtool` (Debian's prometheus package)"
    done = subprocess.run([tool, *arguments], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    assert "SUCCESS" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


def test_the_compose_scrape_configuration_passes_promtool() -> None:
    # --syntax-only: the token file is the deployment's, mounted at run time.
    assert "SUCCESS" in promtool("check", "config", "--syntax-only", "prometheus.yml")
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == {
        f"{name}:9464" for name in ("users", "billing", "files", "generation", "analytics")
    } | {"gateway:8080"}


def test_the_kubernetes_scrape_configuration_passes_promtool(tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes discovery: the rest of the file (relabelling,
    authorization, rule files) is checked with each discovery replaced by a static target."""
    config = yaml.safe_load((PROMETHEUS / "prometheus-kubernetes.yml").read_text())
    for job in config["scrape_configs"]:
        discovery = job.pop("kubernetes_sd_configs")
        assert discovery == [{"role": "pod", "namespaces": {"names": ["stylestudio"]}}]
        job["static_configs"] = [{"targets": ["pod:9464"]}]
    keeps = [
        rule
        for job in config["scrape_configs"]
        for rule in job["relabel_configs"]
        if rule.get("action") == "keep"
    ]
    assert [rule["regex"] for rule in keeps] == ["metrics", "gateway;http"]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    assert "SUCCESS" in promtool("check", "config", "--syntax-only", str(checked))

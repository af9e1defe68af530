"""The reasons table of docs/clients.md is the one scripts/error_reasons.py derives from the code
today, and it lists every RPC of the protos with the reasons its service is known to raise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness.identities import platform_services

REPO_ROOT = Path(__file__).resolve().parents[2]


def documented_reasons() -> dict[str, set[str]]:
    text = (REPO_ROOT / "docs" / "clients.md").read_text()
    table = text[text.index("<!-- error-reasons: generated") : text.index("<!-- error-reasons: end")]
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| `")]
    return {row[1].strip().strip("`"): set(row[3].strip().split(", ")) - {"-"} for row in rows}


def test_the_table_is_the_codes_today() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/error_reasons.py", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_table_lists_every_rpc() -> None:
    rpcs = {f"{service.name}/{method.name}" for service in platform_services() for method in service.methods}
    assert set(documented_reasons()) == rpcs


def test_the_table_shows_what_the_services_raise() -> None:
    """Reasons the handlers raise a few calls deep, through shared functions and worker threads."""
    reasons = documented_reasons()
    assert "INSUFFICIENT_TOKENS" in reasons["BillingService/ReserveTokens"]
    assert {"FILE_TOO_LARGE", "INVALID_FILE_TYPE", "QUOTA_EXCEEDED"} <= reasons["FilesService/UploadFile"]
    assert "FEATURE_NOT_IN_PLAN" in reasons["GenerationService/BatchCreateGenerations"]
    assert "NOT_FOUND" in reasons["GenerationService/WatchGeneration"]
    assert reasons["GenerationService/ListStyles"] == set()

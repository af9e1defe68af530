"""The breaking-change check of the protos (`scripts/gen_protos.py --breaking`, part of `make lint`
and so of `make test`): today's protos pass against the last release kept in protos/releases/, and
a copy of them with a renamed field or a changed field number fails, naming the field."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GEN_PROTOS = REPO_ROOT / "scripts" / "gen_protos.py"
GENERATION_PROTO = Path("stylestudio/generation/v1/generation.proto")
PROMPT_FIELD = "string prompt = 3 ["


def check(protos: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GEN_PROTOS), "--breaking", "--protos", str(protos)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_with(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of protos/ (its releases and buf.yaml included) with ``old`` replaced by ``new``
    in generation.proto."""
    protos = tmp_path / "protos"
    shutil.copytree(REPO_ROOT / "protos", protos)
    proto = protos / GENERATION_PROTO
    text = proto.read_text()
    assert text.count(old) == 1
    proto.write_text(text.replace(old, new))
    return protos


def test_todays_protos_are_compatible_with_the_last_release() -> None:
    result = check(REPO_ROOT / "protos")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "buf breaking against v" in result.stdout


@pytest.mark.parametrize(
    ("change", "replacement", "complaint"),
    [
        ("a renamed field", "string description = 3 [", 'changed name from "prompt" to "description"'),
        ("a changed field number", "string prompt = 30 [", 'field "3" with name "prompt"'),
    ],
)
def test_a_breaking_change_fails_the_check(
    tmp_path: Path, change: str, replacement: str, complaint: str
) -> None:
    result = check(copy_with(tmp_path, PROMPT_FIELD, replacement))
    assert result.returncode != 0, change
    assert complaint in result.stdout, result.stdout + result.stderr
    assert 'on message "CreateGenerationRequest"' in result.stdout
    assert "buf breaking failed against v" in result.stderr


def test_an_added_field_is_compatible(tmp_path: Path) -> None:
    """What the check lets through: a new field under a new number."""
    protos = copy_with(tmp_path, PROMPT_FIELD, f"string note = 5;\n  {PROMPT_FIELD}")
    result = check(protos)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_contract_version_is_not_behind_its_last_release() -> None:
    version = (REPO_ROOT / "protos" / "VERSION").read_text().strip()
    releases = [path.stem.removeprefix("v") for path in (REPO_ROOT / "protos" / "releases").glob("v*.binpb")]
    newest = max(releases, key=lambda name: tuple(map(int, name.split("."))))
    assert tuple(map(int, version.split("."))) >= tuple(map(int, newest.split(".")))

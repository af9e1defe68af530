"""Build the client package for internal callers: `make dist` (docs/clients.md).

    .venv/bin/python scripts/build_client.py [--dist dist]

Stages clients/python/ with the stubs `scripts/gen_protos.py` generated into stylestudio/ and
the contract's version (protos/VERSION), then builds the wheel
`stylestudio_client-<version>-py3-none-any.whl` with pip, offline (the setuptools of the
development environment, no build isolation). Refuses a build whose stubs need a newer
grpcio or protobuf than the package's floors: the wheel must install what its stubs import.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

from gen_protos import OUTPUT, ROOT, contract_version

CLIENT = ROOT / "clients" / "python"
DISTRIBUTION = "stylestudio_client"
# Everything the wheel may hold: the stubs and the helper, never the platform's server code.
PACKAGES = ("stylestudio/", "stylestudio_client/", f"{DISTRIBUTION}-")

GRPC_GENERATED = re.compile(r"^GRPC_GENERATED_VERSION = '([\d.]+)'", re.MULTILINE)
PROTOBUF_GENERATED = re.compile(r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def floors(pyproject: Path) -> dict[str, tuple[int, ...]]:
    """The lowest version each dependency of the client package accepts."""
    found = {}
    for requirement in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        matched = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?>=([\d.]+)", requirement)
        if matched:
            found[matched.group(1).lower()] = _version(matched.group(2))
    return found


def check_floors(stubs: Path, pyproject: Path) -> None:
    """The stubs check grpcio's and protobuf's versions when imported: the floors must allow them."""
    needed: dict[str, tuple[int, ...]] = {}
    for module in stubs.rglob("*_pb2_grpc.py"):
        if matched := GRPC_GENERATED.search(module.read_text()):
            needed["grpcio"] = max(needed.get("grpcio", ()), _version(matched.group(1)))
    for module in stubs.rglob("*_pb2.py"):
        if matched := PROTOBUF_GENERATED.search(module.read_text()):
            needed["protobuf"] = max(needed.get("protobuf", ()), tuple(map(int, matched.groups())))
    declared = floors(pyproject)
    for package, version in needed.items():
        if declared.get(package, ()) < version:
            wanted = ".".join(map(str, version))
            raise SystemExit(
                f"the stubs need {package}>={wanted}: raise its floor in {pyproject.relative_to(ROOT)}"
            )


def stage(into: Path, version: str) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(CLIENT / name, into / name)
    shutil.copytree(CLIENT / "src" / "stylestudio_client", into / "src" / "stylestudio_client", ignore=ignore)
    shutil.copytree(OUTPUT, into / "src" / "stylestudio", ignore=ignore)
    (into / "src" / "stylestudio" / "py.typed").touch()  # type checkers read the stubs' .pyi files
    (into / "VERSION").write_text(version + "\n")


def build(dist: Path) -> Path:
    if not (OUTPUT / "__init__.py").is_file():
        raise SystemExit("no generated stubs in stylestudio/: run `make protos` first")
    check_floors(OUTPUT, CLIENT / "pyproject.toml")
    version = contract_version()
    dist.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build_client.") as tmp:
        staged = Path(tmp)
        stage(staged, version)
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        subprocess.run([*command, "--wheel-dir", str(dist), str(staged)], check=True)
    wheel = dist / f"{DISTRIBUTION}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        strays = [name for name in archive.namelist() if not name.startswith(PACKAGES)]
    if strays:
        raise SystemExit(f"{wheel.name} holds more than the client: {strays[:5]}")
    return wheel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="where the wheel goes")
    wheel = build(parser.parse_args().dist.resolve())
    print(f"built {wheel}")


if __name__ == "__main__":
    main()

"""Generate the Python code and descriptor set of Style Studio's gRPC contracts.

    .venv/bin/python scripts/gen_protos.py              # regenerate stylestudio/
    .venv/bin/python scripts/gen_protos.py --lint       # regenerate, then buf lint, format and breaking
    .venv/bin/python scripts/gen_protos.py --breaking   # only the breaking-change check (no codegen)
    .venv/bin/python scripts/gen_protos.py --release    # keep today's contract as protos/VERSION's release

Compiles every .proto under protos/ with grpc_tools.protoc into the top-level
package `stylestudio/` at the repository root (gitignored, never edited by hand):
`*_pb2.py`, `*_pb2.pyi`, `*_pb2_grpc.py`, an `__init__.py` in every package, and
`descriptor_set.binpb` (with imports and source info) for the gateway and Envoy.
The output is built in a temporary folder and swapped in only when protoc
succeeds, so a failed run leaves the previous code in place.

`--lint` runs `buf lint` with protos/buf.yaml over that descriptor set, limited to
our own files: buf then needs neither the network nor a copy of the googleapis
protos (google/api, google/rpc), which protoc found in googleapis-common-protos.

`--breaking` (also part of `--lint`) runs `buf breaking` with buf.yaml's rules: today's
descriptor set against the newest release kept in protos/releases/ (`v<version>.binpb`,
written by `--release` from protos/VERSION), offline like the lint. `--protos DIR` checks
another copy of the protos (with its own releases/): the tests break a copy on purpose.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUTPUT = ROOT / "stylestudio"
DESCRIPTOR_SET = "descriptor_set.binpb"
# The contract's version, which the client package (`make dist`) carries too, and the
# descriptor sets of its releases, which today's protos must stay compatible with.
VERSION_FILE = "VERSION"
RELEASES = "releases"
OUR_PACKAGE = "stylestudio"  # top folder under protos/ and the generated package


def well_known_types_dir() -> Path:
    """google/protobuf/*.proto, shipped inside grpc_tools."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or spec.origin is None:
        raise SystemExit("grpc_tools is not installed (pip install grpcio-tools)")
    return Path(spec.origin).parent / "_proto"


def googleapis_dir() -> Path:
    """The site-packages folder holding google/api/*.proto and google/rpc/*.proto.

    `google` is a namespace package shared by protobuf and googleapis-common-protos,
    so locate a module that only the latter ships and walk up from it.
    """
    spec = importlib.util.find_spec("google.api.annotations_pb2")
    if spec is None or spec.origin is None:
        raise SystemExit("googleapis-common-protos is not installed")
    root = Path(spec.origin).parent.parent.parent
    if not (root / "google" / "api" / "annotations.proto").is_file():
        raise SystemExit(f"google/api/annotations.proto not found under {root}")
    return root


def proto_files(protos: Path = PROTOS) -> list[str]:
    files = sorted(p.relative_to(protos).as_posix() for p in (protos / OUR_PACKAGE).rglob("*.proto"))
    if not files:
        raise SystemExit(f"no .proto files under {protos / OUR_PACKAGE}")
    return files


def protoc_include_args(protos: Path = PROTOS) -> list[str]:
    return [
        f"--proto_path={protos}",
        f"--proto_path={well_known_types_dir()}",
        f"--proto_path={googleapis_dir()}",
    ]


def run_protoc(files: list[str], out: Path) -> None:
    args = [
        "grpc_tools.protoc",
        *protoc_include_args(),
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--descriptor_set_out={out / OUR_PACKAGE / DESCRIPTOR_SET}",
        "--include_imports",
        "--include_source_info",
        *files,
    ]
    (out / OUR_PACKAGE).mkdir(parents=True)
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; stylestudio/ was left as it was")


def drop_serviceless_grpc_modules(out: Path) -> None:
    """protoc writes a *_pb2_grpc.py for every file; keep only those with a service."""
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(
        (out / OUR_PACKAGE / DESCRIPTOR_SET).read_bytes()
    )
    for file in descriptors.file:
        if file.name.startswith(f"{OUR_PACKAGE}/") and not file.service:
            proto = out / file.name
            proto.with_name(f"{proto.stem}_pb2_grpc.py").unlink()


# protoc's pyi_out declares top-level extension numbers as `X_FIELD_NUMBER: _ClassVar[int]`,
# which mypy rejects outside a class body (as soon as code imports access_pb2).
MODULE_LEVEL_CLASSVAR = re.compile(r"^(\w+_FIELD_NUMBER): _ClassVar\[int\]$", re.MULTILINE)


def fix_module_level_classvars(package_root: Path) -> None:
    for stub in package_root.rglob("*_pb2.pyi"):
        text = stub.read_text()
        fixed = MODULE_LEVEL_CLASSVAR.sub(r"\1: int", text)
        if fixed != text:
            stub.write_text(fixed)


def add_init_files(package_root: Path) -> None:
    for folder in [package_root, *(p for p in package_root.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()


def generate() -> None:
    files = proto_files()
    with tempfile.TemporaryDirectory(prefix="gen_protos.") as tmp:
        out = Path(tmp)
        run_protoc(files, out)
        drop_serviceless_grpc_modules(out)
        fix_module_level_classvars(out / OUR_PACKAGE)
        add_init_files(out / OUR_PACKAGE)
        shutil.rmtree(OUTPUT, ignore_errors=True)
        shutil.move(out / OUR_PACKAGE, OUTPUT)
    print(f"generated {len(files)} proto files into {OUTPUT.relative_to(ROOT)}/")


def buf_executable() -> str:
    beside_python = Path(sys.executable).parent / "buf"
    found = str(beside_python) if beside_python.is_file() else shutil.which("buf")
    if found is None:
        raise SystemExit("buf not found (pip install buf-bin)")
    return found


def lint() -> None:
    """buf lint our files, read from the descriptor set generate() just wrote,
    and check they are laid out as `buf format -w protos` would."""
    buf = buf_executable()
    command = [
        buf,
        "lint",
        f"{OUTPUT / DESCRIPTOR_SET}#format=binpb",
        "--config",
        str(PROTOS / "buf.yaml"),
        "--path",
        OUR_PACKAGE,
    ]
    if subprocess.run(command, check=False).returncode != 0:
        raise SystemExit("buf lint failed")
    format_check = [buf, "format", str(PROTOS), "--diff", "--exit-code"]
    if subprocess.run(format_check, check=False).returncode != 0:
        raise SystemExit("protos/ is not formatted: run `.venv/bin/buf format -w protos`")
    print("buf lint and format: ok")


def contract_version(protos: Path = PROTOS) -> str:
    """The version of the contract (protos/VERSION, e.g. "1.0.0")."""
    version = (protos / VERSION_FILE).read_text().strip()
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise SystemExit(f"{protos / VERSION_FILE}: {version!r} is not MAJOR.MINOR.PATCH")
    return version


def _version_key(release: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in release.stem.removeprefix("v").split("."))


def latest_release(protos: Path = PROTOS) -> Path:
    releases = sorted((protos / RELEASES).glob("v*.binpb"), key=_version_key)
    if not releases:
        raise SystemExit(f"no release under {protos / RELEASES} (cut one with --release)")
    return releases[-1]


def build_descriptor_set(protos: Path, out: Path, source_info: bool = False) -> None:
    """Our files and their imports; a release keeps no source info (only buf's messages use it)."""
    args = ["grpc_tools.protoc", *protoc_include_args(protos), f"--descriptor_set_out={out}"]
    if source_info:
        args.append("--include_source_info")
    if protoc.main([*args, "--include_imports", *proto_files(protos)]) != 0:
        raise SystemExit(f"protoc failed on {protos}")


def breaking(protos: Path = PROTOS) -> None:
    """buf breaking: today's protos against the newest release, with buf.yaml's rules, our files only."""
    buf = buf_executable()
    against = latest_release(protos)
    with tempfile.TemporaryDirectory(prefix="gen_protos.") as tmp:
        current = Path(tmp) / DESCRIPTOR_SET
        build_descriptor_set(protos, current, source_info=True)
        command = [
            buf,
            "breaking",
            f"{current}#format=binpb",
            "--against",
            f"{against}#format=binpb",
            "--config",
            str(protos / "buf.yaml"),
            "--path",
            OUR_PACKAGE,
        ]
        if subprocess.run(command, check=False).returncode != 0:
            raise SystemExit(
                f"buf breaking failed against {against.name}: keep the contract compatible, or "
                'make a new major version of the package (docs/contracts.md, "Breaking changes")'
            )
    print(f"buf breaking against {against.name}: ok")


def release(protos: Path = PROTOS) -> None:
    """Keep today's contract as the release of protos/VERSION (never overwrites one)."""
    target = protos / RELEASES / f"v{contract_version(protos)}.binpb"
    if target.exists():
        raise SystemExit(f"{target.relative_to(protos.parent)} exists: bump {VERSION_FILE} first")
    target.parent.mkdir(exist_ok=True)
    build_descriptor_set(protos, target)
    print(f"kept the contract as {target.relative_to(protos.parent)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lint", action="store_true", help="also run buf lint, format and breaking")
    parser.add_argument(
        "--breaking", action="store_true", help="only check against the last release (no codegen)"
    )
    parser.add_argument("--release", action="store_true", help="keep today's protos as a release")
    parser.add_argument("--protos", type=Path, default=PROTOS, help="for --breaking: another protos/ copy")
    options = parser.parse_args()
    if options.breaking:
        breaking(options.protos.resolve())
        return
    if options.release:
        release()
        return
    generate()
    if options.lint:
        lint()
        breaking()


if __name__ == "__main__":
    main()

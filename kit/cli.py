"""`stylestudio`: the operators' command line, one entry point for every admin and operations command.

    stylestudio --help                       # the commands
    stylestudio trace <generation id | trace id | request id> [--json] [--dir DIR]
    stylestudio admin promote --email you@example.com
    stylestudio <command> --help             # a command's own options

Every command but ``trace`` runs the ``main`` of the module that has always done the job (the table
below), so ``python -m <module>`` keeps working and runs the same code. Each reads the same
``STYLESTUDIO_*`` environment as the services. docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# sysexits' EX_NOINPUT: the trace asked for is not in the store; EX_UNAVAILABLE: a command's
# code is not installed here.
EXIT_NOT_FOUND = 66
EXIT_UNAVAILABLE = 69


@dataclass(frozen=True)
class Command:
    """A subcommand run by ``module``'s ``main(argv)`` (its own argument parser; sync or async)."""

    module: str
    summary: str

    def run(self, argv: Sequence[str]) -> int:
        try:
            main = importlib.import_module(self.module).main
        except ModuleNotFoundError as missing:
            if missing.name != self.module.partition(".")[0]:
                raise
            # bench/ is in a development checkout only (`make install`), not in the image.
            print(f"stylestudio: this command needs {missing.name}/, not installed here", file=sys.stderr)
            return EXIT_UNAVAILABLE
        result = main(list(argv))
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)


COMMANDS = {
    "run": Command("kit.launcher", "run the whole platform, as `make run` does"),
    "bootstrap": Command("kit.bootstrap", "create every service's role and schema, run the migrations"),
    "service-keys": Command("kit.service_keys", "generate service identity keys (`service-keys generate`)"),
    "admin": Command("services.users.admin", "accounts: promote an admin, rotate-keys, end-sessions"),
    "payments": Command("services.billing.payments", "offline payments: confirm or fail a purchase"),
    "reconcile": Command("services.billing.reconcile", "check every wallet against its transfers"),
    "invariants": Command("bench.soak.invariants.__main__", "check every invariant of a running platform"),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="stylestudio",
        description="Style Studio's operator commands. `stylestudio <command> --help` for one's options.",
    )
    commands = top.add_subparsers(dest="command", metavar="<command>", required=True)
    trace = commands.add_parser(
        "trace",
        help="print a generation's (or a request's) trace from the local span store",
        description="Print one trace from the local span store as a tree: each span's start offset, "
        "duration, service, name, status and key attributes; * marks the critical path, ! an error, "
        "~ a compensation; queue hops and span links shown.",
    )
    trace.add_argument(
        "ident", help="a generation id, a trace id (X-Trace-Id) or a request id (X-Request-Id)"
    )
    trace.add_argument("--json", action="store_true", help='{"trace_id": ..., "spans": [...]}, for tools')
    trace.add_argument(
        "--dir", type=Path, default=None, help="the span store (default: where `make run` keeps it)"
    )
    for name, command in COMMANDS.items():
        commands.add_parser(name, help=command.summary, add_help=False)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]].run(argv[1:])
    args = parser().parse_args(argv)
    return print_trace(args.ident, args.dir, as_json=args.json)


def default_span_store() -> Path:
    from kit.launcher import LaunchSettings

    return LaunchSettings().span_store_path


def print_trace(ident: str, directory: Path | None, *, as_json: bool) -> int:
    from kit.spanstore import SpanStore
    from kit.tracetree import Trace, dump_json, render

    directory = directory or default_span_store()
    if not directory.is_dir():
        print(
            f"stylestudio trace: no span store at {directory} (give --dir, or set "
            "STYLESTUDIO_SPAN_STORE_DIR or STYLESTUDIO_DATA_DIR as the platform has them)",
            file=sys.stderr,
        )
        return EXIT_NOT_FOUND
    spans = SpanStore(directory).find(ident)
    if spans is None:
        print(
            f"stylestudio trace: no trace for {ident!r} in {directory}: not a generation id, trace id "
            "or request id of a kept trace (sampled out, or older than the store keeps)",
            file=sys.stderr,
        )
        return EXIT_NOT_FOUND
    if as_json:
        dump_json(Trace(spans), sys.stdout)
    else:
        store = SpanStore(directory)
        trace = Trace(spans, linked_from=store.linking_to(str(spans[0]["trace_id"])))
        render(trace, sys.stdout, colour=sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    return 0


def run() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    run()

"""``python -m bench.soak.invariants``: check a platform's invariants after a run.

Prints each violation, then ``violations: N`` as the last line; exit status 1 if N > 0.
Defaults come from the same ``STYLESTUDIO_*`` environment as the services.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta
from pathlib import Path

from bench.soak.invariants import Target, check, default_sweeper_deadline
from kit.settings import PlatformSettings
from services.files.settings import FilesSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    platform = PlatformSettings()
    parser = argparse.ArgumentParser(prog="stylestudio invariants", description=__doc__)
    parser.add_argument("--database-url", default=platform.database_url, help="admin URL of the database")
    parser.add_argument("--redis-url", default=platform.redis_url)
    parser.add_argument("--redis-prefix", default=platform.redis_prefix)
    parser.add_argument("--data-dir", type=Path, default=None, help="the files service's data dir")
    parser.add_argument("--gateway-url", default=None, help="check /readyz answers 200 too")
    parser.add_argument(
        "--sweeper-deadline",
        type=float,
        default=None,
        help="seconds after which a generation must be terminal "
        "(default: generation deadline + two sweeper intervals)",
    )
    parser.add_argument("--requests", type=Path, default=None, help="the load's requests.jsonl")
    parser.add_argument("--faults", type=Path, default=None, help="the fault injector's faults.jsonl")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds a 503 may follow a fault's end")
    parser.add_argument(
        "--overload-reason",
        action="append",
        default=[],
        help="a 503 reason allowed outside fault windows (admission control); repeatable",
    )
    parser.add_argument("--settle", type=float, default=0.0, help="seconds to let in-flight work settle")
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    target = Target(
        database_url=args.database_url,
        redis_url=args.redis_url,
        redis_prefix=args.redis_prefix,
        data_dir=args.data_dir or FilesSettings().data_dir,
        gateway_url=args.gateway_url,
        sweeper_deadline=(
            timedelta(seconds=args.sweeper_deadline)
            if args.sweeper_deadline is not None
            else default_sweeper_deadline()
        ),
        requests=args.requests,
        faults=args.faults,
        fault_grace_seconds=args.grace,
        overload_reasons=frozenset(args.overload_reason),
    )
    violations = await check(target, settle_seconds=args.settle)
    for violation in violations:
        print(violation)
    print(f"violations: {len(violations)}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

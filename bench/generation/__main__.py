"""``python -m bench.generation``: see bench/generation/run.py."""

from __future__ import annotations

import argparse
import asyncio

from bench.generation import run


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.generation",
        description=run.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--per-client", type=int, default=10, help="generations each client runs in turn")
    parser.add_argument("--workers", type=int, default=32, help="STYLESTUDIO_GENERATION_WORKERS")
    parser.add_argument(
        "--no-trace", action="store_true", help="no span file (no breakdown; measures the exporter's cost)"
    )
    args = parser.parse_args()
    asyncio.run(run.run(args.clients, args.per_client, args.workers, not args.no_trace))


if __name__ == "__main__":
    main()

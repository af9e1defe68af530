"""Run the load headless against a running platform and write its report.

    .venv/bin/python -m bench.load --host http://127.0.0.1:8080 --users 20 --spawn-rate 5 \\
        --duration 60s --out DIR [--models stable-diffusion-xl,dall-e-3] \\
        [--webhook-secret SECRET] [--admin-token TOKEN]

Locust runs as a process of its own (it monkey-patches the standard library with gevent),
``locust -f bench/load/locustfile.py --headless``; this command builds that command line,
hands it the secrets through its environment (never its arguments, which ``ps`` shows),
waits, and prints ``report.txt``. Exit status: 0 when the report was written (whatever it
says: judging it is the caller's part), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from bench.load.webhooks import WEBHOOK_SECRET_ENV

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
ADMIN_TOKEN_ENV = "STYLESTUDIO_LOAD_ADMIN_TOKEN"
# Seconds the users get, once the duration is over, to finish the journey they are in.
STOP_TIMEOUT_SECONDS = 10


def locust_command(args: argparse.Namespace) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        args.host,
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        args.duration,
        "--stop-timeout",
        str(args.stop_timeout),
        "--out",
        str(args.out),
        "--only-summary",
        "--models",
        args.models,
        "--loglevel",
        args.log_level,
        "--exit-code-on-error",
        "0",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="http://127.0.0.1:8080", help="the gateway's base URL")
    parser.add_argument("--users", type=int, default=20, help="simulated users at full load")
    parser.add_argument("--spawn-rate", type=float, default=5.0, help="users started per second")
    parser.add_argument("--duration", default="60s", help="how long the load runs (30s, 5m, 1h)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the report files")
    parser.add_argument(
        "--webhook-secret",
        default=os.environ.get(WEBHOOK_SECRET_ENV, ""),
        help=f"Stripe webhook secret of the platform (default ${WEBHOOK_SECRET_ENV}, else development's)",
    )
    parser.add_argument(
        "--admin-token",
        default=os.environ.get(ADMIN_TOKEN_ENV, ""),
        help=f"an admin's access token: upgrades some users to pro (batches) and reads the "
        f"system analytics (default ${ADMIN_TOKEN_ENV})",
    )
    parser.add_argument(
        "--models",
        default="stable-diffusion-xl",
        help="image models the generations pick from, comma-separated (a name twice: twice as often)",
    )
    parser.add_argument("--stop-timeout", type=int, default=STOP_TIMEOUT_SECONDS)
    parser.add_argument("--log-level", default="WARNING", help="Locust's log level")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    env.pop(WEBHOOK_SECRET_ENV, None)
    env.pop(ADMIN_TOKEN_ENV, None)
    if args.webhook_secret:
        env[WEBHOOK_SECRET_ENV] = args.webhook_secret
    if args.admin_token:
        env[ADMIN_TOKEN_ENV] = args.admin_token
    with (args.out / "locust.log").open("wb") as log:
        subprocess.run(locust_command(args), cwd=REPO_ROOT, env=env, stdout=log, stderr=log, check=False)
    report = args.out / "report.txt"
    if not report.exists():
        print(f"no report was written; see {args.out / 'locust.log'}", file=sys.stderr)
        return 1
    print(report.read_text(encoding="utf-8"), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A short soak run (issue 13): load, a fault every 20 s on a fixed seed, then the invariants.

The command is run as `make soak` runs it, as a subprocess, on its own embedded PostgreSQL and
Redis; it takes about two minutes (platform start, 70 s of load, settling, the checks).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED = 2
# The kinds of fault the short run draws from: every kind whose run is clean on main today.
# Left out until their fixes land (issue 13, section 1): restart_redis and restart_postgres
# (requests answered 500 INTERNAL while a dependency is down, not 503) and pause (a paused
# replica's calls end in 504 DEADLINE_EXCEEDED). With seed 2: kill billing, kill generation-2,
# terminate_backends.
FAULTS = "kill,terminate_backends,provider_fail,provider_stall,provider_slow,stripe_webhooks"


def test_a_short_soak_run_ends_with_no_violation(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "bench.soak",
        "--duration",
        "70s",
        "--fault-every",
        "20s",
        "--seed",
        str(SEED),
        "--faults",
        FAULTS,
        "--users",
        "6",
        "--out",
        str(tmp_path / "soak"),
    ]
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=420)
    lines = run.stdout.strip().splitlines()
    assert lines and lines[-1] == "violations: 0", run.stdout[-6000:] + run.stderr[-4000:]
    assert run.returncode == 0
    assert any(line.startswith("faults injected: 3") for line in lines), run.stdout

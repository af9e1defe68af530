"""schemathesis, run against the gateway's own /openapi.json over the echo service.

The gateway and the echo service run in this test's event loop, and the schemathesis
CLI in a subprocess that the loop awaits, so neither blocks the other. The run is
bounded (examples per operation and a time budget). /v1/fail is left out: failing
with any status it is told to, 5xx included, is its job.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.gateway.conftest import RunningGateway

MAX_EXAMPLES = "25"
MAX_SECONDS = "30"


async def test_schemathesis_finds_no_server_error_and_no_response_off_the_schema(
    echo_gateway: RunningGateway, tmp_path: Path
) -> None:
    st = Path(sys.executable).parent / "st"
    process = await asyncio.create_subprocess_exec(
        str(st),
        "run",
        f"{echo_gateway.url}/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance",
        "--max-examples",
        MAX_EXAMPLES,
        "--max-time",
        MAX_SECONDS,
        "--exclude-path",
        "/v1/fail",
        "--header",
        "Authorization: Bearer test-token",
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        "1",
        "--workers",
        "1",
        "--no-color",
        "--request-timeout",
        "10",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
    assert "No issues found" in text or "passed" in text, text[-3000:]

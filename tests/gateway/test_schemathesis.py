"""schemathesis, run against the gateway's own /openapi.json over the echo service.

The gateway and the echo service run in this test's event loop, and the schemathesis
CLI in a subprocess that the loop awaits, so neither blocks the other. The run is
bounded (examples per operation and a time budget). /v1/fail is left out: failing
with any status it is told to, 5xx included, is its job.

Event streams are text in OpenAPI 3.0 (their schema is `type: string`, what generated
clients read them as), while schemathesis holds each event to that schema, as OpenAPI 3.2
does with `itemSchema`: their conformance is left to tests/gateway/test_streaming.py, which
checks every event against the schema the document names for it (x-event-schemas).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.gateway.conftest import RunningGateway

MAX_EXAMPLES = "25"
MAX_SECONDS = "30"
# The checks, and the one operation-specific exception (in the config file: a check named on
# the command line would override it).
CONFIG = """
[checks]
enabled = false
not_a_server_error.enabled = true
response_schema_conformance.enabled = true
content_type_conformance.enabled = true
status_code_conformance.enabled = true

[[operations]]
include-path-regex = ":watch$"
checks.response_schema_conformance.enabled = false
"""


async def test_schemathesis_finds_no_server_error_and_no_response_off_the_schema(
    echo_gateway: RunningGateway, tmp_path: Path
) -> None:
    st = Path(sys.executable).parent / "st"
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    process = await asyncio.create_subprocess_exec(
        str(st),
        "run",
        f"{echo_gateway.url}/openapi.json",
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

"""The test harness: the real platform (services as processes, real PostgreSQL and Redis).

Fixtures in tests/conftest.py build on it; any issue's tests reuse them.
"""

from tests.harness.platform import (
    SERVICES,
    Platform,
    TestDatabase,
    free_port,
    own_database,
    own_platform,
    service_of,
)
from tests.harness.streams import stream_entries

__all__ = [
    "SERVICES",
    "Platform",
    "TestDatabase",
    "free_port",
    "own_database",
    "own_platform",
    "service_of",
    "stream_entries",
]

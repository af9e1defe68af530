from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import TestDatabase


@pytest.fixture(scope="package")
def kit_database(infrastructure: object) -> Iterator[TestDatabase]:
    """A database of its own, so no running platform relays the kit tests' outbox."""
    database = TestDatabase(infrastructure.database_url)  # type: ignore[attr-defined]
    database.create(services=["analytics"])
    yield database
    database.drop()

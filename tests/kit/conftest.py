from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import TestDatabase, own_database


@pytest.fixture(scope="package")
def kit_database(infrastructure: object) -> Iterator[TestDatabase]:
    """A database of its own, so no running platform relays the kit tests' outbox."""
    with own_database(infrastructure, ["analytics"]) as database:
        yield database

"""Start the users service: ``python -m services.users``."""

from __future__ import annotations

from kit.server import run
from services.users.service import definition

if __name__ == "__main__":
    run(definition())

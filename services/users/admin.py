"""Operator commands for the users service.

    python -m services.users.admin promote --email ada@example.com   # make an account admin
    python -m services.users.admin rotate-keys                       # new signing key, old one retired

They read the same ``STYLESTUDIO_*`` environment as the service (database URL first of all).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from redis.asyncio import Redis

from kit.db import Database
from kit.errors import DomainError
from kit.server import database_url
from services.users import keys
from services.users.credentials import Credentials
from services.users.profiles import promote_by_email
from services.users.settings import UsersSettings


async def _promote(db: Database, settings: UsersSettings, email: str) -> str:
    # The credential state in Redis changes with the role: the user's current tokens are admin's.
    redis = Redis.from_url(settings.redis_url)
    try:
        user = await promote_by_email(db, Credentials(db, redis, settings), email)
    finally:
        await redis.aclose()
    return f"user {user.id} is now an admin"


async def _rotate(db: Database, settings: UsersSettings) -> str:
    kid = await keys.rotate(db, settings)
    return f"new signing key {kid}; older keys are retired, published until their tokens expire"


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.users.admin")
    commands = parser.add_subparsers(dest="command", required=True)
    promote = commands.add_parser("promote", help="give the account with this email the admin role")
    promote.add_argument("--email", required=True)
    commands.add_parser("rotate-keys", help="sign new access tokens with a fresh key")
    args = parser.parse_args(argv)

    settings = UsersSettings()
    db = Database(database_url(settings), "users", pool_size=1, max_overflow=0)
    try:
        message = await (
            _promote(db, settings, args.email) if args.command == "promote" else _rotate(db, settings)
        )
    except DomainError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    finally:
        await db.dispose()
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

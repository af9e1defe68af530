"""Operator commands for the users service.

    stylestudio admin promote --email ada@example.com   # make an account admin
    stylestudio admin rotate-keys                       # new signing key, old one retired
    stylestudio admin end-sessions --email ada@example.com   # sign an account out everywhere

(`python -m services.users.admin ...` runs the same.)

They read the same ``STYLESTUDIO_*`` environment as the service (database URL first of all).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from redis.asyncio import Redis

from kit import audit
from kit.db import Database
from kit.errors import DomainError, NotFound
from kit.events import Outbox
from kit.server import command_database
from services.users import accounts, keys, models, store
from services.users.credentials import Credentials
from services.users.profiles import promote_by_email
from services.users.settings import UsersSettings
from services.users.signin import end_all_sessions


def _outbox() -> Outbox:
    """The users service's outbox: its relay publishes what a command writes (the audit log's
    records of the command, actor "operator")."""
    return Outbox("users", models.outbox)


async def _promote(db: Database, settings: UsersSettings, email: str) -> str:
    # The credential state in Redis changes with the role: the user's current tokens are admin's.
    redis = Redis.from_url(settings.redis_url)
    try:
        user = await promote_by_email(db, _outbox(), Credentials(db, redis, settings), email)
    finally:
        await redis.aclose()
    return f"user {user.id} is now an admin"


async def _end_sessions(db: Database, settings: UsersSettings, email: str) -> str:
    async with db.autocommit() as session:
        user = await store.get_user_by_email(session, accounts.normalize_email(email))
    if user is None:
        raise NotFound("No account with this email")
    redis = Redis.from_url(settings.redis_url)
    try:
        ended = await end_all_sessions(
            db,
            _outbox(),
            Credentials(db, redis, settings),
            user.id,
            "ended_by_operator",
            audit.Actor(service=audit.OPERATOR),
        )
    finally:
        await redis.aclose()
    return f"user {user.id}: {ended} session(s) ended; their access tokens are refused within a second"


async def _rotate(db: Database, settings: UsersSettings) -> str:
    kid = await keys.rotate(db, settings)
    return f"new signing key {kid}; older keys are retired, published until their tokens expire"


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stylestudio admin")
    commands = parser.add_subparsers(dest="command", required=True)
    promote = commands.add_parser("promote", help="give the account with this email the admin role")
    promote.add_argument("--email", required=True)
    commands.add_parser("rotate-keys", help="sign new access tokens with a fresh key")
    end_sessions = commands.add_parser("end-sessions", help="sign the account with this email out everywhere")
    end_sessions.add_argument("--email", required=True)
    args = parser.parse_args(argv)

    settings = UsersSettings()
    db = command_database(settings, "users")
    try:
        if args.command == "promote":
            message = await _promote(db, settings, args.email)
        elif args.command == "end-sessions":
            message = await _end_sessions(db, settings, args.email)
        else:
            message = await _rotate(db, settings)
    except DomainError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    finally:
        await db.dispose()
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

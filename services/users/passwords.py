"""Password hashing with argon2id, off the event loop, in constant time for unknown accounts.

Hashes are deliberately expensive (64 MiB, ~tens of ms of CPU each): at most
``argon2_max_concurrent`` run at once (default: one per core), a bounded number wait, and
past that a sign-in is refused with RATE_LIMITED and a Retry-After instead of queueing
without end, so a burst of logins cannot starve the process's other work or its memory.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from kit.errors import RateLimited
from services.users.settings import UsersSettings

T = TypeVar("T")


class Passwords:
    def __init__(self, settings: UsersSettings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_cost_kib,
            parallelism=settings.argon2_parallelism,
        )
        # Verified against when the account does not exist (or has no password), so that a
        # wrong email costs exactly as long as a wrong password.
        self._decoy = self._hasher.hash("decoy password nobody has")
        self._slots = asyncio.Semaphore(settings.argon2_max_concurrent or os.cpu_count() or 1)
        self._max_waiting = settings.argon2_max_waiting
        self._waiting = 0

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        return await self._run(self._verify, stored_hash, password)

    async def _run(self, work: Callable[..., T], *args: object) -> T:
        if self._slots.locked() and self._waiting >= self._max_waiting:
            raise RateLimited("Too many sign-ins at once; try again in a moment", retry_after_seconds=1)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            return await asyncio.to_thread(work, *args)
        finally:
            self._slots.release()

    def _verify(self, stored_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash or self._decoy, password) and stored_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when the hash was made with weaker parameters than the current settings."""
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return True

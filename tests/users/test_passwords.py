"""Password hashing keeps to its concurrency cap and refuses, rather than queues, past its backlog."""

from __future__ import annotations

import asyncio
import threading

from kit.errors import RateLimited
from services.users.passwords import Passwords
from services.users.settings import UsersSettings


def cheap_settings(argon2_max_concurrent: int = 0, argon2_max_waiting: int = 64) -> UsersSettings:
    return UsersSettings(
        argon2_time_cost=1,
        argon2_memory_cost_kib=8192,
        argon2_parallelism=1,
        argon2_max_concurrent=argon2_max_concurrent,
        argon2_max_waiting=argon2_max_waiting,
    )


async def test_a_hash_verifies_and_a_wrong_password_or_unknown_account_does_not() -> None:
    passwords = Passwords(cheap_settings())
    stored = await passwords.hash("correct horse battery")
    assert await passwords.verify(stored, "correct horse battery")
    assert not await passwords.verify(stored, "wrong horse battery")
    assert not await passwords.verify(None, "correct horse battery")


async def test_no_more_hashes_run_at_once_than_the_cap() -> None:
    passwords = Passwords(cheap_settings(argon2_max_concurrent=2, argon2_max_waiting=100))
    running, most = 0, 0
    lock = threading.Lock()
    real = passwords._hasher

    class CountingHasher:
        def hash(self, password: str) -> str:
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            try:
                return real.hash(password)
            finally:
                with lock:
                    running -= 1

    passwords._hasher = CountingHasher()  # type: ignore[assignment]
    hashes = await asyncio.gather(*(passwords.hash(f"password-{i}") for i in range(12)))
    assert len(set(hashes)) == 12
    assert most == 2


async def test_past_the_backlog_a_sign_in_is_refused_with_a_retry_after() -> None:
    passwords = Passwords(cheap_settings(argon2_max_concurrent=1, argon2_max_waiting=2))
    results = await asyncio.gather(
        *(passwords.verify(None, "any password at all") for _ in range(8)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, RateLimited)]
    # One runs, two wait, the rest are turned away at once.
    assert len(refused) == 5
    assert all(r.retry_after_seconds == 1 for r in refused)
    assert [r for r in results if not isinstance(r, BaseException)] == [False, False, False]
    # The refusals cost nothing lasting: the next one is served.
    assert await passwords.verify(None, "any password at all") is False


async def test_with_no_backlog_only_the_running_hash_is_served() -> None:
    passwords = Passwords(cheap_settings(argon2_max_concurrent=1, argon2_max_waiting=0))
    results = await asyncio.gather(*(passwords.hash("pw-12345678") for _ in range(3)), return_exceptions=True)
    assert sum(isinstance(r, RateLimited) for r in results) == 2

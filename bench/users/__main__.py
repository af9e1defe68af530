"""Users service benchmark: ``python -m bench.users [--users 50] [--concurrency 8]``.

Starts the users service alone (a real process, fresh database, production argon2
parameters unless overridden by the environment) and prints, for each operation,
throughput and latency percentiles: sign-up and login (argon2-bound), refresh
rotation, GetMe (local access-token verification) and an API-key request.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kit.infra import resolve_infrastructure
from stylestudio.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2, users_pb2_grpc
from tests.harness import Platform, TestDatabase

PASSWORD = "benchmark password 1"
DATA_DIR = Path(__file__).resolve().parents[2] / "data"


async def _measure(
    name: str, count: int, concurrency: int, operation: Callable[[int], Awaitable[Any]]
) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    results: list[Any] = [None] * count

    async def one(index: int) -> None:
        async with gate:
            started = time.perf_counter()
            results[index] = await operation(index)
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100)
    print(
        f"{name:<12} {count:>6} ops  {count / elapsed:>8.1f} ops/s  "
        f"p50 {q[49]:>7.1f} ms  p95 {q[94]:>7.1f} ms  p99 {q[98]:>7.1f} ms"
    )
    return results


async def run(users: int, concurrency: int) -> None:
    infra = resolve_infrastructure(DATA_DIR)
    database = TestDatabase(infra.database_url)
    database.create(services=("users",))
    platform = Platform(database, infra.redis_url, Path(tempfile.mkdtemp(prefix="bench-users-")))
    try:
        platform.start("users")
        await platform.wait_serving("users")
        channel = platform.user_channel("users")
        auth, profiles = auth_pb2_grpc.AuthServiceStub(channel), users_pb2_grpc.UsersServiceStub(channel)
        run_id = uuid.uuid4().hex[:6]
        email = [f"bench-{run_id}-{i}@example.com" for i in range(users)]
        print(f"users service alone, {users} accounts, concurrency {concurrency}")
        signed = await _measure(
            "signup",
            users,
            concurrency,
            lambda i: auth.Signup(auth_pb2.SignupRequest(email=email[i], password=PASSWORD, name="Bench")),
        )
        logins = await _measure(
            "login",
            users,
            concurrency,
            lambda i: auth.Login(auth_pb2.LoginRequest(email=email[i], password=PASSWORD)),
        )
        await _measure(
            "refresh",
            users,
            concurrency,
            lambda i: auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=logins[i].refresh_token)),
        )
        tokens = [s.access_token for s in signed]  # type: ignore[attr-defined]
        await _measure(
            "get_me",
            users * 20,
            concurrency * 4,
            lambda i: profiles.GetMe(users_pb2.GetMeRequest(), metadata=Platform.bearer(tokens[i % users])),
        )
        _, admin = platform.user_token(role="admin")
        owner = signed[0].user.id  # type: ignore[attr-defined]
        await profiles.AdminUpdateUser(
            users_pb2.AdminUpdateUserRequest(user_id=owner, plan="pro"), metadata=Platform.bearer(admin)
        )
        refreshed = await auth.RefreshToken(
            auth_pb2.RefreshTokenRequest(refresh_token=signed[0].refresh_token)
        )  # type: ignore[attr-defined]
        key = await profiles.CreateApiKey(
            users_pb2.CreateApiKeyRequest(name="bench"), metadata=Platform.bearer(refreshed.access_token)
        )
        await _measure(
            "api_key",
            users * 20,
            concurrency * 4,
            lambda i: profiles.GetMe(users_pb2.GetMeRequest(), metadata=Platform.bearer(key.secret)),
        )
        await channel.close()
    finally:
        await platform.close()
        database.drop()
        infra.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.users")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(run(args.users, args.concurrency))


if __name__ == "__main__":
    main()

"""A dependency that refuses or drops connections is DependencyUnavailable (503
SERVICE_UNAVAILABLE naming it), from real failures: a closed port, a role over its
connection limit, a backend ended mid-session, a pool with nothing free, a dead Redis, a
peer that never answers. Other failures keep their meaning. And the retry policy."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import psycopg
import psycopg_pool
import pytest
import redis.exceptions
import sqlalchemy as sa
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from kit import retry
from kit.clients import open_channel
from kit.db import Database
from kit.errors import (
    DependencyUnavailable,
    ProviderUnavailable,
    Reason,
    dependency_failure,
    from_rpc_error,
    service_of,
)
from services.users.service import definition as users_definition
from services.users.settings import UsersSettings
from stylestudio.users.v1 import auth_pb2, auth_pb2_grpc
from tests.harness.in_process import start_in_process
from tests.harness.platform import free_port


def _url(infrastructure: object, **parts: object) -> str:
    base = make_url(infrastructure.database_url)  # type: ignore[attr-defined]
    return base.set(drivername="postgresql+psycopg", **parts).render_as_string(hide_password=False)  # type: ignore[arg-type]


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _assert_database(error: BaseException) -> None:
    found = dependency_failure(error)
    assert found is not None, f"{type(error).__name__} not mapped"
    assert (found.reason, found.code) == (Reason.SERVICE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
    assert found.details == {"dependency": "database"}
    assert found.message == "The database is unavailable; try again shortly"
    assert found.retry_after_seconds == 1


async def _failure_of(url: str, **engine: object) -> BaseException:
    engine_ = create_async_engine(url, **engine)  # type: ignore[arg-type]
    try:
        async with engine_.connect() as connection:
            await connection.execute(sa.text("SELECT 1"))
    except Exception as error:
        return error
    finally:
        await engine_.dispose()
    raise AssertionError("the connection was not refused")


@pytest.fixture
def limited_role(infrastructure: object) -> Iterator[str]:
    """A role of this test's own (never a service's: roles are shared by every test database)
    that may open no connection at all."""
    role = f"sstest_limited_{uuid.uuid4().hex[:8]}"
    admin = _libpq(_url(infrastructure))
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    yield role
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"DROP ROLE IF EXISTS {role}")


async def test_a_closed_port_is_the_database_unavailable(infrastructure: object) -> None:
    _assert_database(await _failure_of(_url(infrastructure, port=free_port())))


async def test_too_many_connections_is_the_database_unavailable(
    infrastructure: object, limited_role: str
) -> None:
    error = await _failure_of(_url(infrastructure, username=limited_role, password=None))
    assert "too many connections" in str(error)
    _assert_database(error)
    assert "too many" not in str(dependency_failure(error)) and limited_role not in str(
        dependency_failure(error).details  # type: ignore[union-attr]
    )


async def test_a_backend_ended_mid_session_is_the_database_unavailable(infrastructure: object) -> None:
    engine = create_async_engine(_url(infrastructure))
    try:
        async with engine.connect() as connection:
            pid = (await connection.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
            async with await psycopg.AsyncConnection.connect(
                _libpq(_url(infrastructure)), autocommit=True
            ) as admin:
                await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(sa.exc.OperationalError) as caught:
                await connection.execute(sa.text("SELECT 1"))
    finally:
        await engine.dispose()
    _assert_database(caught.value)


async def test_a_transaction_whose_backend_ends_is_the_database_unavailable(infrastructure: object) -> None:
    """kit.db's transaction() itself: the error that leaves it is the database's (the soak found a
    restart answered 500 when its clean-up reconnected synchronously and raised MissingGreenlet)."""
    db = Database(_url(infrastructure), "public", pool_size=1, max_overflow=0)
    try:
        with pytest.raises(Exception) as caught:
            async with db.transaction() as connection:
                pid = (await connection.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
                async with await psycopg.AsyncConnection.connect(
                    _libpq(_url(infrastructure)), autocommit=True
                ) as admin:
                    await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                await connection.execute(sa.text("SELECT 1"))
    finally:
        await db.engine.dispose()
    _assert_database(caught.value)


async def test_no_pooled_connection_in_time_is_the_database_unavailable(infrastructure: object) -> None:
    engine = create_async_engine(_url(infrastructure), pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        async with engine.connect():
            with pytest.raises(sa.exc.TimeoutError) as caught:
                async with engine.connect():
                    pass
    finally:
        await engine.dispose()
    _assert_database(caught.value)

    async with psycopg_pool.AsyncConnectionPool(
        _libpq(_url(infrastructure)), min_size=1, max_size=1, timeout=0.2, open=False
    ) as pool:
        async with pool.connection():
            with pytest.raises(psycopg_pool.PoolTimeout) as timed_out:
                async with pool.connection():
                    pass
    _assert_database(timed_out.value)


async def test_what_the_database_refuses_for_a_reason_of_its_own_is_not_unavailability(
    infrastructure: object,
) -> None:
    engine = create_async_engine(_url(infrastructure))
    try:
        async with engine.connect() as connection:
            with pytest.raises(sa.exc.ProgrammingError) as syntax:
                await connection.execute(sa.text("SELEC 1"))
            await connection.rollback()
            with pytest.raises(sa.exc.DataError) as data:
                await connection.execute(sa.text("SELECT 1 / 0"))
    finally:
        await engine.dispose()
    assert dependency_failure(syntax.value) is None
    assert dependency_failure(data.value) is None
    assert dependency_failure(ValueError("no")) is None


async def test_redis_gone_or_silent_or_loading_is_redis_unavailable() -> None:
    dead = Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), retries=0))
    with socket.socket() as silent_listener:  # accepts (the kernel's backlog), never answers
        silent_listener.bind(("127.0.0.1", 0))
        silent_listener.listen(1)
        silent = Redis(
            port=silent_listener.getsockname()[1],
            socket_connect_timeout=0.5,
            socket_timeout=0.3,
            retry=Retry(NoBackoff(), retries=0),
        )
        try:
            with pytest.raises(redis.exceptions.ConnectionError) as refused:
                await dead.ping()
            with pytest.raises(redis.exceptions.TimeoutError) as timed_out:
                await silent.ping()
        finally:
            await dead.aclose()
            await silent.aclose()
    loading = redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory")
    for error in (refused.value, timed_out.value, loading):
        found = dependency_failure(error)
        assert found is not None and found.details == {"dependency": "redis"}, type(error)
        assert found.message == "Redis is unavailable; try again shortly"
    assert dependency_failure(redis.exceptions.ResponseError("WRONGTYPE")) is None
    assert dependency_failure(redis.exceptions.AuthenticationError("invalid password")) is None


async def test_a_failure_raised_from_an_unavailable_dependency_is_found_through_its_cause() -> None:
    try:
        try:
            raise redis.exceptions.ConnectionError("Error 111 connecting to 10.0.0.7:6379")
        except redis.exceptions.ConnectionError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        found = dependency_failure(outer)
    assert found is not None and found.dependency == "redis"
    assert "10.0.0.7" not in found.message


async def test_a_transport_failure_names_the_service_and_never_a_provider() -> None:
    # Refused: nothing listens there.
    async with open_channel(f"127.0.0.1:{free_port()}", deadline_seconds=2.0) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await auth_pb2_grpc.AuthServiceStub(channel).GetJwks(auth_pb2.GetJwksRequest())

    # Silent: a server that takes the call and never answers it.
    async def never_answers(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(30)
        return b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "stylestudio.users.v1.AuthService",
                {"GetJwks": grpc.unary_unary_rpc_method_handler(never_answers)},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with open_channel(f"127.0.0.1:{port}", deadline_seconds=0.5) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as silent:
                await auth_pb2_grpc.AuthServiceStub(channel).GetJwks(auth_pb2.GetJwksRequest())
    finally:
        await server.stop(0)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert silent.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    for failure in (refused.value, silent.value):
        error = from_rpc_error(failure, "users")
        assert isinstance(error, DependencyUnavailable) and not isinstance(error, ProviderUnavailable)
        assert (error.reason, error.code) == (Reason.SERVICE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE)
        assert error.details == {"dependency": "users"}
        assert error.message == "The users service is unavailable; try again shortly"
    assert service_of("stylestudio.billing.v1.BillingService") == "billing"
    assert service_of("/stylestudio.files.v1.FilesService/ReadFileContent") == "files"


@pytest.fixture
async def users_on_dead_redis(infrastructure: object) -> AsyncIterator[grpc.aio.Channel]:
    service, database, _ = await start_in_process(
        "users",
        infrastructure,
        f"redis://127.0.0.1:{free_port()}/0",
        UsersSettings,
        users_definition,
        health_check_interval_seconds=60.0,
    )
    try:
        async with grpc.aio.insecure_channel(service.definition.settings.listen_addr) as channel:
            yield channel
    finally:
        await service.stop()
        database.drop()


async def test_a_service_whose_redis_is_gone_answers_unavailable(
    users_on_dead_redis: grpc.aio.Channel,
) -> None:
    stub = auth_pb2_grpc.AuthServiceStub(users_on_dead_redis)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Login(
            auth_pb2.LoginRequest(email="nobody@example.com", password="not-a-real-one"), timeout=20
        )
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    error = from_rpc_error(caught.value, "users")
    assert error.reason is Reason.SERVICE_UNAVAILABLE
    assert error.details == {"dependency": "redis"}
    assert error.retry_after_seconds == 1


async def test_the_retry_policy_is_bounded_and_jittered() -> None:
    policy = retry.RetryPolicy(first_delay=0.01, max_delay=0.04, max_attempts=4, max_seconds=5.0)
    delays = [policy.delay(failures) for failures in range(1, 30) for _ in range(20)]
    assert all(0 <= delay <= 0.04 for delay in delays)
    assert len({round(delay, 6) for delay in delays}) > 100  # drawn, not a fixed ladder

    attempts: list[int] = []

    async def always_down() -> None:
        attempts.append(1)
        raise DependencyUnavailable("billing")

    with pytest.raises(DependencyUnavailable):
        await retry.retried(always_down, policy)
    assert len(attempts) == 4

    async def broken() -> None:
        attempts.append(1)
        raise ValueError("a bug is not retried")

    attempts.clear()
    with pytest.raises(ValueError):
        await retry.retried(broken, policy)
    assert len(attempts) == 1

    outage = iter([True, True, False])

    async def recovering() -> str:
        if next(outage):
            raise sa.exc.TimeoutError("QueuePool limit reached")
        return "done"

    assert await retry.retried(recovering, policy) == "done"

    backoff = retry.Backoff(policy)
    waits = [backoff.next_delay() for _ in range(10)]
    assert backoff.failures == 10 and max(waits) <= 0.04
    backoff.reset()
    assert backoff.failures == 0
    await asyncio.sleep(0)

"""Brute-force protection, black-box through the real gateway (docs/users.md, "Brute force").

Every client here connects from its own loopback address (127.x.y.z: all of 127.0.0.0/8 is
this machine), so the gateway and the users service see real, distinct client addresses, not
headers a client could make up.

Two platforms: the package's users service, whose delays (1, 2, 4 s) the doubling test waits
out, and one whose delays are minutes long, for the tests that show an attempt refused during
a delay: how long a request takes on a busy machine then cannot decide the outcome (a 1 s delay
could pass while a few sign-ins were hashed).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from kit import audit
from services.users.throttle import delay_after
from tests.harness import Platform, TestDatabase, own_database
from tests.users.conftest import (
    DELAY_CAP_SECONDS,
    FREE_FAILURES,
    MAX_FAILURES_PER_ADDRESS,
    PASSWORD,
    audit_events_about,
)

WRONG = "not the password at all"
# The held platform's delays: longer than any test takes, so an attempt during one is refused.
LONG_DELAY_SECONDS = 600


@pytest.fixture(scope="module")
async def gateway_url(users_platform: Platform) -> AsyncIterator[str]:
    try:
        await users_platform.start_and_wait("gateway")
        yield users_platform.gateway_url
    finally:
        users_platform.stop("gateway")


@pytest.fixture(scope="module")
def held_database(infrastructure: object) -> Iterator[TestDatabase]:
    # Its own: a users service keeps the first signing key stored under the harness's key id.
    with own_database(infrastructure, ("users",)) as database:
        yield database


@pytest.fixture(scope="module")
async def held_platform(
    held_database: TestDatabase, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    """Users and the gateway, with the package's policy but delays of LONG_DELAY_SECONDS."""
    env = {
        "STYLESTUDIO_ARGON2_TIME_COST": "1",
        "STYLESTUDIO_ARGON2_MEMORY_COST_KIB": "8192",
        "STYLESTUDIO_ARGON2_PARALLELISM": "1",
        "STYLESTUDIO_LOGIN_FREE_FAILURES": str(FREE_FAILURES),
        "STYLESTUDIO_LOGIN_DELAY_BASE_SECONDS": str(LONG_DELAY_SECONDS),
        "STYLESTUDIO_LOGIN_DELAY_MAX_SECONDS": str(LONG_DELAY_SECONDS),
        "STYLESTUDIO_LOGIN_MAX_FAILURES_PER_ADDRESS": str(MAX_FAILURES_PER_ADDRESS),
    }
    work_dir = tmp_path_factory.mktemp("brute-force-held")
    async with Platform(held_database, redis_url, work_dir, extra_env=env) as running:
        await running.start_and_wait("users", "gateway")
        yield running


@pytest.fixture(scope="module")
def held_gateway_url(held_platform: Platform) -> str:
    return held_platform.gateway_url


class Client:
    """Someone at one address with one browser."""

    def __init__(self, base_url: str, address: str, agent: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url,
            timeout=60.0,
            transport=httpx.AsyncHTTPTransport(local_address=address),
            headers={"User-Agent": agent},
        )

    async def sign_up(self, email: str) -> httpx.Response:
        return await self.http.post(
            "/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "Ada"}
        )

    async def sign_in(self, email: str, password: str = PASSWORD) -> httpx.Response:
        return await self.http.post("/v1/auth/login", json={"email": email, "password": password})

    async def close(self) -> None:
        await self.http.aclose()


OpenClient = Callable[..., Client]


async def _clients(gateway_url: str) -> AsyncIterator[OpenClient]:
    opened: list[Client] = []

    def open_client(address: str, agent: str = "Mozilla/5.0 (tests)") -> Client:
        client = Client(gateway_url, address, agent)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.close()


@pytest.fixture
async def client_at(gateway_url: str) -> AsyncIterator[OpenClient]:
    """Clients of the package's users service (delays of 1, 2, 4 s)."""
    async for open_client in _clients(gateway_url):
        yield open_client


@pytest.fixture
async def held_client_at(held_gateway_url: str) -> AsyncIterator[OpenClient]:
    """Clients of the held platform (delays of LONG_DELAY_SECONDS)."""
    async for open_client in _clients(held_gateway_url):
        yield open_client


def new_email() -> str:
    return f"bf.{uuid.uuid4().hex[:12]}@example.com"


def retry_after(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    assert response.json()["error"]["reason"] == "RATE_LIMITED"
    return int(response.headers["Retry-After"])


def test_the_delay_doubles_after_the_free_failures_up_to_the_cap() -> None:
    delays = [delay_after(n, free=3, base=1.0, cap=60.0) for n in range(12)]
    assert delays == [0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]


async def test_concurrent_wrong_passwords_are_checked_at_most_the_free_ones(
    held_client_at: OpenClient,
) -> None:
    email = new_email()
    owner = held_client_at("127.0.1.1", "owner's laptop")
    assert (await owner.sign_up(email)).status_code == 200
    attacker = held_client_at("127.0.1.2", "attacker")

    answers = await asyncio.gather(*(attacker.sign_in(email, WRONG) for _ in range(30)))

    statuses = Counter(answer.status_code for answer in answers)
    assert set(statuses) <= {401, 429}, statuses
    assert 1 <= statuses[401] <= FREE_FAILURES, statuses
    assert statuses[429] == 30 - statuses[401]
    assert all(
        1 <= retry_after(answer) <= LONG_DELAY_SECONDS for answer in answers if answer.status_code == 429
    )
    # The owner's laptop signed in to this account: it is not held up by the attack.
    assert (await owner.sign_in(email)).status_code == 200
    # A device the account has never seen waits like the attacker (that the wait ends, and the
    # next attempt is then checked, is the doubling test's).
    newcomer = held_client_at("127.0.1.3", "owner's new phone")
    assert 1 <= retry_after(await newcomer.sign_in(email)) <= LONG_DELAY_SECONDS


async def test_each_failure_past_the_free_ones_doubles_the_wait_up_to_the_cap(client_at: OpenClient) -> None:
    email = new_email()
    assert (await client_at("127.0.2.1").sign_up(email)).status_code == 200
    attacker = client_at("127.0.2.2", "attacker")
    for _ in range(FREE_FAILURES):
        assert (await attacker.sign_in(email, WRONG)).status_code == 401
    # Each further failure doubles the wait: 1, 2, 4 s, then 4 s again (the cap; 8 s without).
    for failures in range(FREE_FAILURES, FREE_FAILURES + 4):
        # Refused at once, right password or not, with how long to wait ...
        wait = retry_after(await attacker.sign_in(email, PASSWORD))
        expected = delay_after(failures, free=FREE_FAILURES, base=1.0, cap=DELAY_CAP_SECONDS)
        # (rounded up from what is left of the delay: at most a second under it)
        assert expected - 1 <= wait <= expected, (failures, wait, expected)
        if failures < FREE_FAILURES + 3:
            # ... and once it has passed, the next guess is checked again (and fails).
            await asyncio.sleep(wait)
            assert (await attacker.sign_in(email, WRONG)).status_code == 401
    assert delay_after(FREE_FAILURES + 3, free=FREE_FAILURES, base=1.0, cap=60) - 1 > DELAY_CAP_SECONDS


async def test_a_device_that_signed_in_recently_has_a_budget_of_its_own(held_client_at: OpenClient) -> None:
    client_at = held_client_at
    email = new_email()
    phone = client_at("127.0.3.1", "owner's phone")
    assert (await phone.sign_up(email)).status_code == 200
    attacker = client_at("127.0.3.2", "attacker")
    for _ in range(FREE_FAILURES):
        assert (await attacker.sign_in(email, WRONG)).status_code == 401
    assert retry_after(await attacker.sign_in(email, WRONG)) >= 1

    # Held up for everyone else, the account still lets its owner in from their phone ...
    for _ in range(3):
        assert (await phone.sign_in(email)).status_code == 200
    # ... but not from the phone's user agent at another address (the pair is the device) ...
    assert retry_after(await client_at("127.0.3.3", "owner's phone").sign_in(email)) >= 1
    # ... and the phone's own guesses are limited by the same rule, apart from the account's.
    for _ in range(FREE_FAILURES):
        assert (await phone.sign_in(email, WRONG)).status_code == 401
    assert retry_after(await phone.sign_in(email, PASSWORD)) >= 1


async def test_failures_from_one_address_are_limited_over_all_accounts(client_at: OpenClient) -> None:
    resident_email = new_email()
    resident = client_at("127.0.4.1", "resident")
    assert (await resident.sign_up(resident_email)).status_code == 200
    sprayer = client_at("127.0.4.1", "sprayer")  # the same address: one office, one proxy
    for _ in range(MAX_FAILURES_PER_ADDRESS):
        assert (await sprayer.sign_in(new_email(), WRONG)).status_code == 401
    refused = await sprayer.sign_in(new_email(), WRONG)
    assert retry_after(refused) >= 1
    assert refused.json()["error"]["details"]["scope"] == "address"
    # Someone at that address who has signed in to their account before is not locked out ...
    assert (await resident.sign_in(resident_email)).status_code == 200
    # ... and another address is not affected at all.
    assert (await client_at("127.0.4.2", "sprayer").sign_in(new_email(), WRONG)).status_code == 401


async def test_successful_sign_ins_are_never_refused(client_at: OpenClient) -> None:
    # Many in a row to one account, from a device it has not seen yet ...
    email = new_email()
    assert (await client_at("127.0.5.1", "signup").sign_up(email)).status_code == 200
    visitor = client_at("127.0.5.2", "first visit")
    for _ in range(FREE_FAILURES + MAX_FAILURES_PER_ADDRESS + 1):
        assert (await visitor.sign_in(email)).status_code == 200
    # ... and a load test's pattern: many accounts, one address, all at once.
    loader = client_at("127.0.5.3", "load test")
    emails = [new_email() for _ in range(MAX_FAILURES_PER_ADDRESS + 2)]
    assert {(await loader.sign_up(e)).status_code for e in emails} == {200}
    answers = await asyncio.gather(*(loader.sign_in(e) for e in emails))
    assert {answer.status_code for answer in answers} == {200}


async def test_failures_and_the_wait_they_start_are_audited_once_each(
    held_client_at: OpenClient, held_platform: Platform, held_database: TestDatabase
) -> None:
    email = new_email()
    signed_up = await held_client_at("127.0.6.1").sign_up(email)
    user_id = signed_up.json()["user"]["id"]
    attacker = held_client_at("127.0.6.2", "attacker")

    answers = await asyncio.gather(*(attacker.sign_in(email, WRONG) for _ in range(12)))

    statuses = Counter(answer.status_code for answer in answers)
    assert 1 <= statuses[401] <= FREE_FAILURES and statuses[429] == 12 - statuses[401], statuses
    events = await audit_events_about(held_platform, held_database, f"users/{user_id}")
    failed = [event for event in events if event.action == audit.LOGIN_FAILED]
    throttled = [event for event in events if event.action == audit.LOGIN_THROTTLED]
    # Every failure, and one refusal for the whole wait however many attempts it refused.
    assert len(failed) == statuses[401] and len(throttled) == 1, events
    assert {(e.client_address, e.user_agent, e.actor_user_id) for e in events} == {
        ("127.0.6.2", "attacker", "")
    }
    assert {e.details["reason"] for e in failed} == {"wrong_password"}
    assert throttled[0].details["scope"] == "account" and int(throttled[0].details["retryAfterSeconds"]) >= 1
    assert email not in str(events) and WRONG not in str(events)

"""The local provider's run-time fault switch (soak runs): a Redis key makes it fail or wait."""

from __future__ import annotations

import functools
import time
import uuid

import pytest
from redis.asyncio import Redis

from services.generation.faults import provider_fault_key, read_provider_fault
from services.generation.providers import ProviderError
from services.generation.providers.local import LocalProvider
from services.generation.settings import GenerationSettings
from tests.generation.test_rules import _provider_request


async def test_the_switch_makes_the_local_provider_fail_or_slow_until_it_is_cleared(redis_url: str) -> None:
    prefix = f"sstest:{uuid.uuid4().hex[:8]}"
    redis = Redis.from_url(redis_url)
    provider = LocalProvider(GenerationSettings(), functools.partial(read_provider_fault, redis, prefix))
    try:
        assert (await provider.submit(_provider_request(1))).outputs  # off: images

        await redis.set(provider_fault_key(prefix), "fail:5", ex=5)
        with pytest.raises(ProviderError) as failed:
            await provider.submit(_provider_request(1))
        assert failed.value.transient  # worth another try once the provider is back

        await redis.set(provider_fault_key(prefix), "slow:0.3", ex=5)
        started = time.monotonic()
        assert (await provider.submit(_provider_request(1))).outputs
        assert time.monotonic() - started >= 0.3

        await redis.set(provider_fault_key(prefix), "nonsense", ex=5)  # unknown: ignored
        assert (await provider.submit(_provider_request(1))).outputs
    finally:
        await redis.delete(provider_fault_key(prefix))
        await redis.aclose()


async def test_an_unreadable_switch_is_off() -> None:
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        assert await read_provider_fault(unreachable, "sstest:x") is None
    finally:
        await unreachable.aclose()

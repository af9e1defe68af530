"""One service running inside the test process, on a database of its own.

For tests of a service's own behaviour: user tokens are real ES256 JWTs checked
against a local JWKS (no users service needed), internal RPCs use the real service
credential of a caller the protos declare (the service has no key settings, so it accepts
the development keys, as under `make run`), events can be published to its streams
exactly as the outbox relay does.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from redis.asyncio import Redis

from kit.clients import open_channel
from kit.events import Event, stream_key
from kit.server import RunningService, ServiceDefinition
from kit.settings import ServiceSettings
from kit.tls import TransportSecurity
from kit.tokens import AccessTokenVerifier, SigningKey, generate_signing_key, sign_access_token
from tests.harness.identities import Keyring
from tests.harness.platform import TestDatabase, free_port
from tests.harness.streams import stream_entries

_DEVELOPMENT_KEYS = Keyring.development()


@dataclasses.dataclass
class InProcessService:
    """A running service and what tests need to talk to it."""

    service: RunningService
    database: TestDatabase
    signing_key: SigningKey
    channels: list[grpc.aio.Channel] = dataclasses.field(default_factory=list)

    @property
    def settings(self) -> Any:
        return self.service.definition.settings

    @property
    def redis(self) -> Redis:
        return self.service.runtime.redis  # type: ignore[union-attr]

    @property
    def address(self) -> str:
        return str(self.settings.listen_addr)

    def token(self, user_id: str | None = None, *, plan: str = "free", role: str = "user") -> tuple[str, str]:
        user_id = user_id or str(uuid.uuid4())
        return user_id, sign_access_token(self.signing_key, user_id=user_id, plan=plan, role=role)

    @property
    def keyring(self) -> Keyring:
        return _DEVELOPMENT_KEYS

    def channel(self, *, as_service: bool) -> grpc.aio.Channel:
        """A channel whose INTERNAL calls present a declared caller's credential, or one that
        presents none (pass a user's in metadata). Under TLS settings, the service's own certificate."""
        security = TransportSecurity.from_settings(self.settings)
        channel = (
            self.keyring.channel(self.address, 30.0, security)
            if as_service
            else open_channel(self.address, None, 30.0, security)
        )
        self.channels.append(channel)
        return channel

    async def publish(self, stream: str, event: Event) -> None:
        """XADD an envelope exactly as kit.events.OutboxRelay writes it."""
        key = stream_key(self.settings.redis_prefix, stream)
        await self.redis.xadd(key, {"id": event.id, "type": event.type, "event": event.SerializeToString()})

    async def stream(self, stream: str) -> list[Event]:
        key = stream_key(self.settings.redis_prefix, stream)
        return [Event.FromString(fields[b"event"]) for _, fields in await stream_entries(self.redis, key)]

    async def stop(self) -> None:
        for channel in self.channels:
            await channel.close()
        await self.service.stop()
        redis = Redis.from_url(self.settings.redis_url)
        try:
            async for key in redis.scan_iter(match=f"{self.settings.redis_prefix}:*"):
                await redis.delete(key)
        finally:
            await redis.aclose()
        self.database.drop()


async def start_in_process(
    name: str,
    infrastructure: object,
    redis_url: str,
    settings_type: type[ServiceSettings],
    definition: Callable[[Any], ServiceDefinition],
    **settings: Any,
) -> tuple[RunningService, TestDatabase, SigningKey]:
    """Create a database for ``name``, start its service in-process, return the parts."""
    database = TestDatabase(infrastructure.database_url)  # type: ignore[attr-defined]
    database.create(services=[name])
    key = generate_signing_key(f"{name}-test-key")
    options: dict[str, Any] = {
        f"{name}_addr": f"127.0.0.1:{free_port()}",
        "service_database_url": database.service_urls[name],
        "redis_url": redis_url,
        "redis_prefix": f"sstest-{name}-{uuid.uuid4().hex[:8]}",
        "migrate_on_start": False,
        "consumer_block_ms": 100,
    }

    async def jwks() -> list[dict[str, str]]:
        return [key.public_jwk()]

    verifier = AccessTokenVerifier(jwks)
    service_definition = definition(settings_type(**(options | settings)))
    service_definition.user_verifier = lambda runtime: verifier.verify
    service = RunningService(service_definition)
    await service.start()
    return service, database, key

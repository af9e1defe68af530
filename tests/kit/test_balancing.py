"""Balancing calls over the replicas a DNS name stands for, as on Kubernetes with a headless Service
(docs/operations.md, "Balancing calls over replicas"), for real: gRPC's own resolver asks a DNS
server of the test's (tests/kit/dns_server.py, named in the target's authority) for a name with
two loopback addresses, 127.0.0.2 and 127.0.0.3, where two servers listen on one port.

The servers end their connections at a maximum age of a second or less, so the tests take about
two seconds each at most.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest

from gateway.settings import GatewaySettings
from kit.clients import (
    DNS_REFRESH,
    ROUND_ROBIN,
    TracedChannel,
    channel_options,
    channel_target,
    dial_service,
    open_channel,
)
from kit.server import server_options, server_options_of
from kit.settings import ServiceSettings
from kit.tls import TransportSecurity, listen
from tests.harness.pki import CertificateAuthority
from tests.kit.dns_server import DnsServer, serve_dns

NAME = "replicas.stylestudio.test"
FIRST, SECOND = "127.0.0.2", "127.0.0.3"
STREAM_SECONDS = 2.0  # a stream outliving its connection's age (a watch, an upload, a download)
WAIT_SECONDS = 10.0  # how long a test waits for what should come within a second or two


def _replica(host: str) -> grpc.GenericRpcHandler:
    """A service that says which replica answered, on which connection."""

    async def which(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return f"{host} {context.peer()}".encode()

    async def watch(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield f"{host} {context.peer()}".encode()
        await asyncio.sleep(STREAM_SECONDS)  # quiet, as a watch waiting for a generation
        yield b"done"

    return grpc.method_handlers_generic_handler(
        "test.Replica",
        {
            "Which": grpc.unary_unary_rpc_method_handler(which),
            "Watch": grpc.unary_stream_rpc_method_handler(watch),
        },
    )


async def _serve(
    hosts: Sequence[str], options: list[tuple[str, int]], security: TransportSecurity | None = None
) -> tuple[list[grpc.aio.Server], int]:
    """One server per host, all on one port (as pods of one Deployment), with ``options``."""
    for _ in range(5):  # the first host's free port may be taken on another: pick again
        servers: list[grpc.aio.Server] = []
        port = 0
        for host in hosts:
            server = grpc.aio.server(options=options)
            server.add_generic_rpc_handlers([_replica(host)])
            try:
                port = listen(server, f"{host}:{port}", security)
            except RuntimeError:
                port = 0
            if port == 0:
                break
            await server.start()
            servers.append(server)
        if len(servers) == len(hosts):
            return servers, port
        for server in servers:
            await server.stop(None)
    raise AssertionError(f"no port free on all of {hosts}")


async def _which(channel: grpc.aio.Channel | TracedChannel) -> tuple[str, str]:
    """The replica that answered a call, and the connection (the caller's address and port)."""
    answer = await channel.unary_unary("/test.Replica/Which")(b"", timeout=5)
    host, peer = answer.decode().split(" ", 1)
    return host, peer


def test_a_dns_target_is_balanced_round_robin_and_asked_again_within_seconds() -> None:
    for target in (f"dns:///{NAME}:50051", f"dns://127.0.0.1:53/{NAME}:50051"):
        assert channel_target(target) == (target, [ROUND_ROBIN, DNS_REFRESH])
    assert channel_target(f"{NAME}:50051") == (f"{NAME}:50051", [])  # one connection, pick first


async def test_calls_to_a_name_of_two_replicas_land_on_both() -> None:
    dns = await serve_dns({NAME: [FIRST, SECOND]})
    servers, port = await _serve([FIRST, SECOND], server_options())
    channel = open_channel(f"dns://127.0.0.1:{dns.port}/{NAME}:{port}")  # a service's client
    try:
        await _calls_until_answered_by(channel, FIRST)
        await _calls_until_answered_by(channel, SECOND)  # both connected (pick-first never gets here)
        answered = [(await _which(channel))[0] for _ in range(6)]
        assert answered.count(FIRST) == answered.count(SECOND) == 3, answered  # in turn
    finally:
        await _close(channel, servers, dns)


async def test_over_tls_each_replica_must_have_a_certificate_naming_the_name_dialled() -> None:
    """``dns:///users:50051`` (the ConfigMap's) checks every pod's certificate against ``users``,
    the name cert-manager's certificates carry (deploy/k8s/tls/certificates.yaml)."""
    ca = CertificateAuthority("stylestudio-test")
    users = ca.issue("users", hosts=())
    client = ca.issue("gateway", hosts=())
    dns = await serve_dns({"users": [FIRST, SECOND], "billing": [FIRST, SECOND]})
    servers, port = await _serve(
        [FIRST, SECOND], server_options(), TransportSecurity(users.certificate, users.key, ca.pem, True)
    )
    security = TransportSecurity(client.certificate, client.key, ca.pem, True)
    channel = open_channel(f"dns://127.0.0.1:{dns.port}/users:{port}", security=security)
    impostor = open_channel(f"dns://127.0.0.1:{dns.port}/billing:{port}", security=security)
    try:
        await _calls_until_answered_by(channel, FIRST)
        await _calls_until_answered_by(channel, SECOND)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _which(impostor)  # users' pods cannot answer for billing
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await impostor.close()
        await _close(channel, servers, dns)


async def test_connections_end_at_their_age_so_callers_find_a_replica_added_since() -> None:
    """A scale-up: DNS names one replica, then two. The caller keeps calling; the first replica
    ends its connection at its age, the caller asks DNS again and spreads its calls over both."""
    dns = await serve_dns({NAME: [FIRST]})
    servers, port = await _serve([FIRST, SECOND], server_options(max_connection_age_seconds=1.0))
    # The gateway's way (gateway/channels.py), asking DNS again at most every 200 ms instead of 5 s.
    options = [*channel_options(), ("grpc.dns_min_time_between_resolutions_ms", 200)]
    channel = dial_service(f"dns://127.0.0.1:{dns.port}/{NAME}:{port}", None, options)
    try:
        before = [await _which(channel) for _ in range(3)]
        assert {host for host, _ in before} == {FIRST}
        dns.records[NAME] = [FIRST, SECOND]  # the new pod is ready: the name has it
        # Every call is answered meanwhile: none fails at the connection's end.
        after = await _calls_until_answered_by(channel, SECOND)
        assert dns.queries[NAME] >= 2, "the caller asked DNS again"
        then = [await _which(channel) for _ in range(6)]
        assert {host for host, _ in then} == {FIRST, SECOND}, then
        first_connections = {peer for host, peer in before + after + then if host == FIRST}
        assert len(first_connections) >= 2, "the first replica's aged connection was replaced"
    finally:
        await _close(channel, servers, dns)


async def _calls_until_answered_by(
    channel: grpc.aio.Channel | TracedChannel, host: str
) -> list[tuple[str, str]]:
    answers: list[tuple[str, str]] = []
    async with asyncio.timeout(WAIT_SECONDS):
        while not answers or answers[-1][0] != host:
            answers.append(await _which(channel))
            await asyncio.sleep(0.05)
    return answers


async def test_a_stream_open_when_its_connection_ages_runs_to_its_end() -> None:
    """The grace (the default: the gateway's stream deadline and a minute) lets a watch, an upload
    or a download outlive its connection's age; new calls go to a new connection meanwhile."""
    servers, port = await _serve([FIRST], server_options(max_connection_age_seconds=0.5))
    channel = open_channel(f"{FIRST}:{port}")
    try:
        watch = channel.unary_stream("/test.Replica/Watch")(b"", timeout=30)
        _, stream_connection = (await watch.read()).decode().split(" ", 1)
        async with asyncio.timeout(WAIT_SECONDS):
            while (await _which(channel))[1] == stream_connection:
                await asyncio.sleep(0.05)  # the stream's connection has not aged yet
        assert await watch.read() == b"done"
        assert await watch.code() == grpc.StatusCode.OK
    finally:
        await _close(channel, servers)


async def test_a_grace_shorter_than_a_stream_cuts_it() -> None:
    """Why the grace must cover the longest stream: past it, the aged connection is closed under
    the calls still open on it."""
    options = server_options(max_connection_age_seconds=0.5, max_connection_age_grace_seconds=0.5)
    servers, port = await _serve([FIRST], options)
    channel = open_channel(f"{FIRST}:{port}")
    try:
        watch = channel.unary_stream("/test.Replica/Watch")(b"", timeout=30)
        await watch.read()
        with pytest.raises(grpc.aio.AioRpcError) as cut:
            await watch.read()
        assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await _close(channel, servers)


def test_the_settings_give_every_server_a_connection_age_and_a_grace_covering_the_streams() -> None:
    options = dict(server_options_of(ServiceSettings()))
    assert options["grpc.max_connection_age_ms"] == 300_000
    grace_seconds = options["grpc.max_connection_age_grace_ms"] / 1000
    assert grace_seconds >= GatewaySettings().stream_deadline_seconds
    unlimited = dict(server_options_of(ServiceSettings(grpc_max_connection_age_seconds=0)))
    assert "grpc.max_connection_age_ms" not in unlimited


def test_the_gateway_refuses_a_stream_deadline_its_connections_age_would_cut() -> None:
    with pytest.raises(ValueError, match="STYLESTUDIO_GRPC_MAX_CONNECTION_AGE_GRACE_SECONDS"):
        GatewaySettings(stream_deadline_seconds=1800)
    assert GatewaySettings(stream_deadline_seconds=1800, grpc_max_connection_age_grace_seconds=1900)
    assert GatewaySettings(stream_deadline_seconds=1800, grpc_max_connection_age_seconds=0)


async def _close(
    channel: grpc.aio.Channel | TracedChannel, servers: list[grpc.aio.Server], dns: DnsServer | None = None
) -> None:
    await channel.close()
    for server in servers:
        await server.stop(None)
    if dns is not None:
        dns.close()

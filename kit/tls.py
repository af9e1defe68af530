"""Transport security of gRPC: TLS on every port and channel, mutual TLS between services.

Off by default: ``make run`` talks plaintext on loopback. With ``STYLESTUDIO_GRPC_TLS=true``
every process serves its port with its own certificate, presents that certificate when it calls
another service, and trusts only peers whose certificate the platform's CA signed; a service
refuses callers without such a certificate unless ``STYLESTUDIO_GRPC_TLS_REQUIRE_CLIENT_CERT``
is false. The services' servers, their clients, the gateway's channels (and so its readiness
checks) and the health probe all get their port or channel here, so none of them can be left
in plaintext by accident.

The files are read once, at start: a renewed certificate takes effect when the process restarts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kit.settings import PlatformSettings

ChannelOptions = Sequence[tuple[str, Any]]


class TransportSecurityError(ValueError):
    """A TLS setting that cannot work; the message names the variable to fix."""


@dataclass(frozen=True)
class TransportSecurity:
    """This process's certificate and key, and the CA it trusts, as PEM bytes."""

    certificate_chain: bytes
    private_key: bytes = field(repr=False)
    root_certificates: bytes
    require_client_cert: bool

    @classmethod
    def from_settings(cls, settings: PlatformSettings) -> TransportSecurity | None:
        """The process's transport security, or None when gRPC is plaintext."""
        if not settings.grpc_tls:
            return None
        chain = _read(settings, "grpc_tls_cert_file")
        key = _read(settings, "grpc_tls_key_file")
        ca = _read(settings, "grpc_tls_ca_file")
        _check_pair(chain, key)
        _certificates(ca, "grpc_tls_ca_file")
        return cls(chain, key, ca, settings.grpc_tls_require_client_cert)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.root_certificates,
            require_client_auth=self.require_client_cert,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def listen(server: grpc.aio.Server, address: str, security: TransportSecurity | None) -> int:
    """Add ``address`` to ``server``, over TLS when ``security`` is given; the bound port (0: failed)."""
    if security is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, security.server_credentials())


def dial(target: str, security: TransportSecurity | None, options: ChannelOptions = ()) -> grpc.aio.Channel:
    """A channel to ``target``, over TLS when ``security`` is given. The server's certificate must
    name the host part of ``target`` (or the ``grpc.ssl_target_name_override`` option's name)."""
    if security is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, security.channel_credentials(), options=options)


def _variable(name: str) -> str:
    return f"STYLESTUDIO_{name.upper()}"


def _read(settings: PlatformSettings, name: str) -> bytes:
    path = str(getattr(settings, name))
    if not path:
        raise TransportSecurityError(f"{_variable(name)} is required when STYLESTUDIO_GRPC_TLS is on")
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise TransportSecurityError(f"{_variable(name)}: cannot read {path}: {error.strerror}") from None


def _certificates(pem: bytes, name: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TransportSecurityError(f"{_variable(name)}: no PEM certificate in the file") from None


def _check_pair(chain: bytes, key: bytes) -> None:
    """Refuse at start what grpc would only report as a failed handshake."""
    leaf = _certificates(chain, "grpc_tls_cert_file")[0]
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        # Never the key's content in the message: only that it is not an unencrypted PEM key.
        raise TransportSecurityError(
            f"{_variable('grpc_tls_key_file')}: not an unencrypted PEM private key"
        ) from None
    if private_key.public_key() != leaf.public_key():
        raise TransportSecurityError(
            f"{_variable('grpc_tls_key_file')}: the key does not belong to the certificate of "
            f"{_variable('grpc_tls_cert_file')}"
        )

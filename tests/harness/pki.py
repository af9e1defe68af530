"""Certificates for tests of transport security: a CA made on the spot (the `cryptography`
package) and one certificate per process of the platform, as a deployment would have them."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kit.settings import SERVICES
from kit.tls import TransportSecurity

# Every test certificate names the loopback addresses the harness listens on.
LOOPBACK_NAMES = ("localhost", "127.0.0.1")
HARNESS = "harness"


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: bytes
    key: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """``<name>.pem`` and ``<name>.key`` under ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(self.certificate)
        key_path.write_bytes(self.key)
        key_path.chmod(0o600)
        return cert_path, key_path


class CertificateAuthority:
    """A self-signed CA that issues certificates for servers and clients."""

    def __init__(self, name: str) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self._certificate = (
            x509.CertificateBuilder()
            .subject_name(self._name)
            .issuer_name(self._name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self._certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, hosts: tuple[str, ...] = LOOPBACK_NAMES) -> IssuedCertificate:
        """A certificate for ``common_name`` that serves ``hosts`` and also authenticates as a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = [_general_name(host) for host in (common_name, *hosts)]
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCertificate(
            certificate.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


class PlatformCertificates:
    """The CA and one certificate per process (each service, the gateway, the harness itself),
    written under ``directory``; ``env(process)`` turns mutual TLS on for that process, and for
    the gateway HTTPS too, with the same certificate."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = CertificateAuthority("Style Studio test CA")
        self.ca_file = directory / "ca.pem"
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file.write_bytes(self.ca.pem)
        self.files = {
            process: self.ca.issue(process).write(directory, process)
            for process in (*SERVICES, "gateway", HARNESS)
        }

    def env(self, process: str) -> dict[str, str]:
        cert, key = self.files[process]
        env = {
            "STYLESTUDIO_GRPC_TLS": "true",
            "STYLESTUDIO_GRPC_TLS_CERT_FILE": str(cert),
            "STYLESTUDIO_GRPC_TLS_KEY_FILE": str(key),
            "STYLESTUDIO_GRPC_TLS_CA_FILE": str(self.ca_file),
        }
        if process == "gateway":
            env |= {
                "STYLESTUDIO_GATEWAY_TLS_CERT_FILE": str(cert),
                "STYLESTUDIO_GATEWAY_TLS_KEY_FILE": str(key),
            }
        return env

    def security(self, process: str = HARNESS) -> TransportSecurity:
        """What ``process`` presents and trusts on its gRPC channels."""
        cert, key = self.files[process]
        return TransportSecurity(cert.read_bytes(), key.read_bytes(), self.ca.pem, require_client_cert=True)

    def https_context(self) -> ssl.SSLContext:
        """What an HTTPS client of the gateway trusts: the CA, nothing else."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )

"""Style Studio's client for internal callers: the generated stubs live in ``stylestudio``
(``stylestudio.generation.v1.generation_pb2_grpc`` ...); this package opens channels that call
as a service identity (docs/clients.md)."""

from importlib import metadata

from stylestudio_client.channel import Channel, connect
from stylestudio_client.errors import ERROR_DOMAIN, ErrorDetails, error_details
from stylestudio_client.identity import ServiceIdentity

try:
    __version__ = metadata.version("stylestudio-client")  # the contract's version
except metadata.PackageNotFoundError:  # imported from the source tree (the platform's tests)
    __version__ = "0+source"

__all__ = ["ERROR_DOMAIN", "Channel", "ErrorDetails", "ServiceIdentity", "connect", "error_details"]

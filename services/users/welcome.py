"""The welcome grant, asked of billing as sign-up's last step, so a balance read right after
sign-up already holds it.

The user.created event (published in sign-up's transaction) asks for the same grant under
the same key (billing: Ledger.welcome_in, ``welcome:<user_id>``): whichever comes second
grants nothing. If billing cannot answer within ``welcome_grant_timeout_seconds``, sign-up
still succeeds and the event brings the tokens a moment later, as before.
"""

from __future__ import annotations

import logging

import grpc

from kit.clients import ServiceClients
from kit.errors import DomainError
from stylestudio.billing.v1 import billing_pb2, billing_pb2_grpc

log = logging.getLogger("stylestudio.users.welcome")


class WelcomeGrant:
    def __init__(self, clients: ServiceClients, timeout_seconds: float) -> None:
        self._clients, self._timeout = clients, timeout_seconds

    async def grant(self, user_id: str) -> None:
        if self._timeout <= 0:
            return  # configured off: the event alone grants
        billing = self._clients.stub("billing", billing_pb2_grpc.BillingServiceStub)
        request = billing_pb2.GrantWelcomeTokensRequest(user_id=user_id)
        try:
            await billing.GrantWelcomeTokens(request, timeout=self._timeout)
        except (grpc.RpcError, DomainError, OSError) as error:
            code = error.code() if isinstance(error, grpc.RpcError) else None
            log.warning("welcome grant left to the user.created event", extra={"code": str(code)})

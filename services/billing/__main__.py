"""Start the billing service: ``python -m services.billing``."""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any

from kit.events import EventConsumer
from kit.server import Registration, Runtime, ServiceDefinition, run
from services.billing import api, events, models, monitoring
from services.billing.ledger import Ledger
from services.billing.pricing import PriceList
from services.billing.purchases import Purchases
from services.billing.settings import BillingSettings


class Billing:
    """Wires the service's parts once the kit has built the runtime."""

    def __init__(self, settings: BillingSettings) -> None:
        self.settings = settings
        self.ledger: Ledger | None = None

    def register(self, runtime: Runtime) -> Sequence[Registration]:
        prices = PriceList(self.settings)
        self.ledger = Ledger(runtime.db, runtime.outbox, self.settings)
        purchases = Purchases(runtime.db, runtime.outbox, self.settings, prices)
        monitoring.watch(runtime.metrics, runtime.db)
        return api.registrations(api.BillingApi(self.ledger, purchases, prices, self.settings))

    def consumers(self, runtime: Runtime) -> Sequence[EventConsumer]:
        assert self.ledger is not None
        return events.consumers(self.ledger, runtime.consumer())

    def background(self, runtime: Runtime) -> Sequence[Coroutine[Any, Any, None]]:
        assert self.ledger is not None
        return [self.ledger.sweep_expired_holds()]


def definition(settings: BillingSettings | None = None) -> ServiceDefinition:
    billing = Billing(settings or BillingSettings())
    return ServiceDefinition(
        name="billing",
        settings=billing.settings,
        metadata=models.metadata,
        register=billing.register,
        consumers=billing.consumers,
        background=billing.background,
    )


if __name__ == "__main__":
    run(definition())

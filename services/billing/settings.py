"""Typed settings of the billing service (environment, prefix ``STYLESTUDIO_``).

Prices, multipliers and packages are configuration: their defaults are API.md's
numbers, and each can be replaced with a JSON value in the environment, e.g.
``STYLESTUDIO_MODEL_MULTIPLIERS='{"stable-diffusion-xl": 1.0, "flux": 1.8}'``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

from kit.image_models import ImageModelSettings
from kit.settings import DevelopmentOnly, SecretCheck


class TokenPackage(BaseModel):
    name: str
    display_name: str
    tokens: int = Field(gt=0)
    price_cents: int = Field(gt=0)
    currency: str = "usd"


DEFAULT_PACKAGES = [
    TokenPackage(name="starter", display_name="Starter", tokens=10, price_cents=299),
    TokenPackage(name="standard", display_name="Standard", tokens=50, price_cents=999),
    TokenPackage(name="pro", display_name="Pro", tokens=200, price_cents=2999),
    TokenPackage(name="enterprise", display_name="Enterprise", tokens=1000, price_cents=9999),
]


class BillingSettings(ImageModelSettings):
    """Its own knobs, and the model catalogue it prices (kit/image_models.py, shared with generation)."""

    service_name: str = "billing"

    # --- pricing: ceil(quality x aspect ratio x model) tokens per image ---
    # Every factor, the defaults and the image count are the catalogue's, which generation runs
    # (kit/image_models.py: STYLESTUDIO_IMAGE_MODELS, _QUALITY_MULTIPLIERS, ...), so what an
    # estimate quotes is what a start charges.

    # --- packages on sale ---
    token_packages: list[TokenPackage] = DEFAULT_PACKAGES

    # --- ledger ---
    welcome_grant_tokens: int = 10
    welcome_grant_reason: str = "Welcome grant"
    # The most tokens one grant (admin or internal) may give: a typo or a hostile number is
    # refused (VALIDATION_ERROR) long before the ledger's 64-bit balances could overflow.
    max_grant_tokens: int = Field(default=1_000_000, gt=0, le=10**12)
    # A hold nobody captured or released is voided after this long (ReserveTokens may ask otherwise).
    hold_default_ttl_seconds: int = 3600
    hold_max_ttl_seconds: int = 24 * 3600
    hold_sweep_interval_seconds: float = 30.0
    hold_sweep_batch_size: int = 200
    recent_purchases_in_summary: int = 5

    # --- Stripe ---
    # Empty: offline payments mode (local payment intents, confirmations posted as signed webhooks),
    # which production refuses unless offline_payments_enabled says so.
    stripe_api_key: SecretStr = SecretStr("")
    # Production without a Stripe key: allow offline payments anyway (a demo deployment whose
    # operator confirms purchases by hand). Anyone holding the webhook secret can then credit
    # purchases, so production also requires a strong one.
    offline_payments_enabled: bool = False
    # Stripe's API base; tests point it at a local server that speaks Stripe's REST format.
    stripe_api_base: str = "https://api.stripe.com"
    stripe_webhook_secret: SecretStr = SecretStr("whsec_dev_only_offline_payments_secret")
    stripe_webhook_tolerance_seconds: int = 300
    stripe_max_network_retries: int = 2
    stripe_timeout_seconds: float = 20.0
    # Where `python -m services.billing.payments confirm` posts its signed events.
    gateway_addr: str = "127.0.0.1:8080"

    @property
    def offline_payments(self) -> bool:
        return not self.stripe_api_key.get_secret_value()

    def secret_checks(self) -> list[SecretCheck]:
        # Offline or with Stripe, the webhook secret is what makes a purchase paid.
        return [*super().secret_checks(), self.secret_check("stripe_webhook_secret")]

    def development_only(self) -> list[DevelopmentOnly]:
        offline = DevelopmentOnly(
            self.variable_of("offline_payments_enabled"),
            in_use=self.offline_payments and not self.offline_payments_enabled,
            why=f"{self.variable_of('stripe_api_key')} is not set, so purchases would be confirmed "
            "offline (by signed webhooks alone); set the key, or enable offline payments explicitly",
        )
        return [*super().development_only(), offline, self.https_only("stripe_api_base")]

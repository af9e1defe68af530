"""Typed settings of the generation service (environment, prefix ``STYLESTUDIO_``).

Lists and maps (styles, models, limits) are read as JSON from their variables, e.g.
``STYLESTUDIO_HOURLY_GENERATION_LIMITS='{"free": 5, ...}'``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr, model_validator

from kit.image_models import (  # re-exported: the catalogue's types, for generation's modules
    COMMON_PARAMETERS,
    DEFAULT_MODELS,
    OPTIONAL_PARAMETERS,
    ImageModel,
    ImageModelSettings,
)
from kit.plans import Feature, plans_with
from kit.settings import DevelopmentOnly, SecretCheck


class StylePreset(BaseModel):
    name: str
    display_name: str
    prompt_suffix: str
    # Backdrop colours (top, bottom) the local provider paints for this style.
    backdrop: tuple[str, str] = ("#f2f2f2", "#d9d9d9")


DEFAULT_STYLES = [
    StylePreset(
        name="realistic",
        display_name="Realistic",
        prompt_suffix="photorealistic, natural lighting, high detail",
        backdrop=("#e9e4dc", "#c9c0b3"),
    ),
    StylePreset(
        name="fashion",
        display_name="Fashion",
        prompt_suffix="high fashion photography, runway style, dramatic lighting",
        backdrop=("#2b2d42", "#8d99ae"),
    ),
    StylePreset(
        name="studio",
        display_name="Studio",
        prompt_suffix="professional studio lighting, clean background, product photography",
        backdrop=("#ffffff", "#e6e6e6"),
    ),
    StylePreset(
        name="lifestyle",
        display_name="Lifestyle",
        prompt_suffix="lifestyle photography, casual setting, warm natural light",
        backdrop=("#f4d9b8", "#a7c4a0"),
    ),
    StylePreset(
        name="editorial",
        display_name="Editorial",
        prompt_suffix="editorial magazine photography, artistic composition, bold contrast",
        backdrop=("#1d1d1d", "#5a4a42"),
    ),
    StylePreset(
        name="minimalist",
        display_name="Minimalist",
        prompt_suffix="minimalist composition, neutral tones, negative space",
        backdrop=("#fafafa", "#f0ede8"),
    ),
]


class GenerationSettings(ImageModelSettings):
    """Its own knobs, and the model catalogue it shares with billing (kit/image_models.py)."""

    service_name: str = "generation"

    # Catalogues.
    styles: list[StylePreset] = Field(default_factory=lambda: list(DEFAULT_STYLES))
    # Qualities (with their output sizes), aspect ratios, their defaults and the image count
    # are the catalogue's, shared with billing (kit/image_models.py).

    # Defaults for what a request leaves out (API.md).
    default_style: str = "realistic"

    # Request limits.
    max_prompt_length: int = 1000
    max_negative_prompt_length: int = 1000
    guidance_scale_range: tuple[float, float] = (1.0, 20.0)
    min_product_images: int = 1
    max_product_images: int = 5
    max_model_images: int = 3
    batch_max_requests: int = 20
    # Default: the plans kit/plans.py says include batch (what the entitlements show).
    batch_plans: list[str] = plans_with(Feature.BATCH)

    # Hourly generation limits per plan (sliding window in Redis).
    hourly_generation_limits: dict[str, int] = {"free": 5, "basic": 10, "pro": 30, "enterprise": 100}
    rate_limit_window_seconds: int = 3600

    # The saga.
    generation_deadline_seconds: float = 600.0
    # Billing voids a hold nobody resolved this long after the generation's deadline.
    hold_expiry_margin_seconds: float = 600.0
    generation_workers: int = 8
    # Pooled connections kept beside one per worker, for RPCs (starts, watch reads) and the sweeper.
    db_connections_beside_workers: int = 4
    # A worker owns a PROCESSING generation this long, renewing it while the provider runs.
    worker_lease_seconds: float = 30.0
    provider_max_attempts: int = 3
    provider_retry_backoff_seconds: float = 0.5
    provider_retry_backoff_max_seconds: float = 10.0

    # Admission (services/generation/admission.py): a start is refused with RATE_LIMITED and
    # Retry-After while this many generations wait for a worker (QUEUED); 0: no limit. Each
    # process reads the depth at most once per queue_depth_refresh_seconds.
    max_queued_generations: int = Field(default=500, ge=0)
    queue_depth_refresh_seconds: float = Field(default=1.0, ge=0.0)
    queue_full_retry_after_seconds: int = Field(default=10, ge=1)

    # The sweeper finishes sagas that stopped half-way.
    sweeper_interval_seconds: float = 5.0
    sweeper_batch_size: int = 100
    # A start that neither queued nor failed after this long was cut short by a crash.
    start_abandoned_after_seconds: float = 30.0
    # A QUEUED generation no worker took after this long gets its job again.
    queued_requeue_after_seconds: float = 60.0
    # A decided outcome (complete, fail, cancel) not recorded after this long is finished again.
    resolution_retry_after_seconds: float = 5.0

    # Progress streaming: WatchGeneration re-reads the generation at least this often.
    watch_poll_interval_seconds: float = 2.0

    # Local provider.
    local_provider_latency_seconds: float = 0.0
    # Share of local calls that fail for good / transiently (demos, chaos; refused in production,
    # like the latency above and fault injection below).
    local_provider_failure_rate: float = 0.0
    local_provider_transient_failure_rate: float = 0.0
    local_output_format: str = Field(default="JPEG", pattern="^(JPEG|PNG|WEBP)$")
    # Tests and demos only (refused in production): honour "[fail:...]", "[latency:...]",
    # "[pause:...]" directives in prompts; off, they are plain prompt text.
    fault_injection: bool = False
    # Soak runs only (refused in production): the local provider reads a Redis key the fault
    # injector sets to make it fail, stall or answer slowly for a while (faults.py).
    local_provider_fault_switch: bool = False

    # Replicate.
    replicate_api_token: SecretStr = SecretStr("")
    replicate_base_url: str = "https://api.replicate.com"
    # The public URL of POST /webhooks/replicate (the gateway's), given to Replicate per prediction.
    replicate_webhook_url: str = ""
    # "whsec_..." from Replicate's GET /v1/webhooks/default/secret.
    replicate_webhook_secret: SecretStr = SecretStr("")
    replicate_webhook_tolerance_seconds: int = 300
    # Without a webhook, a prediction is polled this often.
    replicate_poll_interval_seconds: float = 10.0
    replicate_timeout_seconds: float = 30.0
    max_output_bytes: int = 10 * 1024 * 1024

    def secret_checks(self) -> list[SecretCheck]:
        with_replicate = bool(self.replicate_api_token.get_secret_value())
        return [
            *super().secret_checks(),
            self.secret_check("replicate_webhook_secret", required=with_replicate),
        ]

    def development_only(self) -> list[DevelopmentOnly]:
        """Tests' and demos' knobs: fault directives in prompts, a slow or failing local provider."""
        switches = [
            DevelopmentOnly(
                self.variable_of("fault_injection"),
                self.fault_injection,
                "prompts could steer the saga ([fail:...], [pause:...] directives)",
            ),
            DevelopmentOnly(
                self.variable_of("local_provider_fault_switch"),
                self.local_provider_fault_switch,
                "anyone who can write the platform's Redis could make the local provider fail",
            ),
            DevelopmentOnly(
                self.variable_of("local_provider_latency_seconds"),
                self.local_provider_latency_seconds > 0,
                "the local provider would sleep on every image",
            ),
            DevelopmentOnly(
                self.variable_of("local_provider_failure_rate"),
                self.local_provider_failure_rate > 0,
                "the local provider would fail generations on purpose",
            ),
            DevelopmentOnly(
                self.variable_of("local_provider_transient_failure_rate"),
                self.local_provider_transient_failure_rate > 0,
                "the local provider would fail attempts on purpose",
            ),
        ]
        with_replicate = any(model.provider == "replicate" for model in self.image_models)
        switches.append(self.https_only("replicate_base_url", in_use=with_replicate))
        return [*super().development_only(), *switches]

    @model_validator(mode="after")
    def _pool_fits_the_workers(self) -> GenerationSettings:
        # Every worker runs short transactions all the time: a pool smaller than the workers
        # opens and closes overflow connections on nearly every job (churn, seen in profiles).
        # Raised, the pool takes the overflow's share instead of adding to it: the service's
        # connection cap (pool + overflow) stays what it was, or the pool itself if larger, since
        # PostgreSQL's connection slots are shared by every service (exhausted, they fail calls).
        needed = self.generation_workers + self.db_connections_beside_workers
        if needed > self.db_pool_size:
            cap = self.db_pool_size + self.db_max_overflow
            self.db_pool_size, self.db_max_overflow = needed, max(0, cap - needed)
        return self


__all__ = [
    "COMMON_PARAMETERS",
    "DEFAULT_MODELS",
    "OPTIONAL_PARAMETERS",
    "GenerationSettings",
    "ImageModel",
    "StylePreset",
]

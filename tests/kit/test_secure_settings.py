"""Secure by default: production refuses to start with a weak, missing or public secret, or a
test switch, naming the variable; development starts and says so once (docs/security.md)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from kit.auth import ServiceCredentials
from kit.infra import Infrastructure, Origin
from kit.launcher import LaunchSettings, platform_children
from kit.server import RunningService, ServiceDefinition
from kit.service_keys import generate_signing_identity, public_keys_json
from kit.settings import (
    EXIT_CONFIGURATION,
    MIN_SECRET_BYTES,
    InsecureSettings,
    PlatformSettings,
    ServiceSettings,
    refuse_insecure_settings,
)
from kit.tls import TransportSecurity
from services.analytics.settings import AnalyticsSettings
from services.billing.__main__ import definition as billing_definition
from services.billing.settings import BillingSettings
from services.files.__main__ import definition as files_definition
from services.files.settings import FilesSettings
from services.generation.__main__ import definition as generation_definition
from services.generation.settings import GenerationSettings
from services.users.settings import UsersSettings
from tests.harness import SERVICES, Platform, own_database
from tests.harness.platform import REPO_ROOT

WARNING = "insecure settings"
RETIRED = "STYLESTUDIO_SERVICE_SECRET is no longer used"


def strong() -> str:
    return secrets.token_urlsafe(32)


# A service key of its own and a public key set without development keys (docs/security.md).
_KEY = generate_signing_identity("users")
SERVICE_KEYS = {
    "service_private_key": _KEY.private_pem(),
    "service_public_keys": public_keys_json({"users": [_KEY.public_key]}),
}


def production_env(**variables: str) -> dict[str, str]:
    """The machine's environment without any STYLESTUDIO_ setting, in production, plus ``variables``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("STYLESTUDIO_")}
    return env | {"STYLESTUDIO_ENVIRONMENT": "production", "STYLESTUDIO_LOG_FORMAT": "text"} | variables


def run_to_exit(module: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module],
        cwd=REPO_ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- real processes: every service and the gateway, out of the box, in production ---


@pytest.mark.parametrize("module", [*(f"services.{name}" for name in SERVICES), "gateway"])
async def test_out_of_the_box_every_process_refuses_production_naming_its_service_key(module: str) -> None:
    finished = await asyncio.to_thread(run_to_exit, module, production_env())
    output = finished.stdout + finished.stderr
    assert finished.returncode == EXIT_CONFIGURATION, output
    assert "STYLESTUDIO_SERVICE_PRIVATE_KEY is not set" in output
    # The gateway only signs; every service also verifies others' credentials.
    assert ("STYLESTUDIO_SERVICE_PUBLIC_KEYS is not set" in output) == (module != "gateway"), output
    assert "Traceback" not in output


async def test_the_users_service_refuses_production_without_the_signing_key_passphrase() -> None:
    keys = {f"STYLESTUDIO_{field.upper()}": value for field, value in SERVICE_KEYS.items()}
    retired = strong()
    env = production_env(**keys, STYLESTUDIO_SERVICE_SECRET=retired)
    finished = await asyncio.to_thread(run_to_exit, "services.users", env)
    output = finished.stdout + finished.stderr
    assert finished.returncode == EXIT_CONFIGURATION, output
    (refusal,) = [line for line in output.splitlines() if "refusing to start" in line]
    assert "STYLESTUDIO_SIGNING_KEY_PASSPHRASE is not set" in refusal
    for variable in ("SERVICE_PRIVATE_KEY", "SERVICE_PUBLIC_KEYS", "SERVICE_SECRET"):
        assert variable not in refusal
    # The retired secret is no reason to refuse: one warning says it is unused (never its value).
    assert output.count(RETIRED) == 1, output
    assert retired not in output and _KEY.private_pem() not in output


async def test_billing_refuses_offline_payments_in_production_unless_enabled() -> None:
    env = production_env(STYLESTUDIO_STRIPE_WEBHOOK_SECRET=strong())
    finished = await asyncio.to_thread(run_to_exit, "services.billing", env)
    output = finished.stdout + finished.stderr
    assert finished.returncode == EXIT_CONFIGURATION, output
    assert "STYLESTUDIO_OFFLINE_PAYMENTS_ENABLED" in output and "STYLESTUDIO_STRIPE_API_KEY" in output


async def test_the_offline_confirm_command_is_refused_in_production() -> None:
    env = production_env(
        STYLESTUDIO_STRIPE_API_KEY="sk_live_" + strong(), STYLESTUDIO_STRIPE_WEBHOOK_SECRET=strong()
    )
    finished = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "services.billing.payments",
            "confirm",
            "00000000-0000-0000-0000-000000000001",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode != 0
    assert (
        "refused in production" in finished.stderr
        and "STYLESTUDIO_OFFLINE_PAYMENTS_ENABLED" in finished.stderr
    )


# --- the conditions, on the kit's own start-up path (RunningService refuses before connecting) ---

Build = Callable[[Any], ServiceDefinition]


async def refusal(build: Build, settings: ServiceSettings) -> str:
    # Nothing listens on these settings' database: a start that got past the check would fail
    # differently (or hang in its retries), not raise InsecureSettings.
    with pytest.raises(InsecureSettings) as raised:
        await RunningService(build(settings)).start()
    return str(raised.value)


# Billing's declared default: a development value, public in this repository.
DEVELOPMENT_WEBHOOK_SECRET = BillingSettings.model_fields["stripe_webhook_secret"].default.get_secret_value()


def base(**values: Any) -> dict[str, Any]:
    return {
        "environment": "production",
        "database_url": "postgresql+psycopg://x@127.0.0.1:1/none",
        **SERVICE_KEYS,
    } | values


async def test_a_stripe_key_with_the_public_webhook_secret_is_refused() -> None:
    settings = BillingSettings(**base(stripe_api_key="sk_live_" + strong()))
    message = await refusal(billing_definition, settings)
    assert "STYLESTUDIO_STRIPE_WEBHOOK_SECRET is a development default" in message
    assert "OFFLINE_PAYMENTS" not in message


async def test_enabled_offline_payments_still_need_a_strong_webhook_secret() -> None:
    settings = BillingSettings(**base(offline_payments_enabled=True, stripe_webhook_secret="whsec_short"))
    message = await refusal(billing_definition, settings)
    assert f"STYLESTUDIO_STRIPE_WEBHOOK_SECRET is shorter than {MIN_SECRET_BYTES} bytes" in message


async def test_a_replicate_token_needs_its_webhook_secret() -> None:
    settings = GenerationSettings(**base(replicate_api_token="r8_" + strong()))
    assert "STYLESTUDIO_REPLICATE_WEBHOOK_SECRET is not set" in await refusal(generation_definition, settings)
    without_token = GenerationSettings(**base())
    assert without_token.insecurities() == []


@pytest.mark.parametrize(
    ("switch", "variable"),
    [
        ({"fault_injection": True}, "STYLESTUDIO_FAULT_INJECTION"),
        ({"local_provider_latency_seconds": 0.5}, "STYLESTUDIO_LOCAL_PROVIDER_LATENCY_SECONDS"),
        ({"local_provider_failure_rate": 0.1}, "STYLESTUDIO_LOCAL_PROVIDER_FAILURE_RATE"),
        ({"local_provider_fault_switch": True}, "STYLESTUDIO_LOCAL_PROVIDER_FAULT_SWITCH"),
        ({"local_provider_transient_failure_rate": 0.1}, "STYLESTUDIO_LOCAL_PROVIDER_TRANSIENT_FAILURE_RATE"),
    ],
)
async def test_generation_test_switches_are_refused_in_production(
    switch: dict[str, Any], variable: str
) -> None:
    assert variable in await refusal(generation_definition, GenerationSettings(**base(**switch)))


@pytest.mark.parametrize(
    ("settings_type", "values", "variable"),
    [
        (
            BillingSettings,
            {"stripe_api_key": "sk_live_x", "stripe_api_base": "http://stripe.test"},
            "STRIPE_API_BASE",
        ),
        (
            GenerationSettings,
            {"image_models": [{"name": "m", "display_name": "M", "multiplier": 1.0, "provider": "replicate"}]}
            | {"replicate_base_url": "http://replicate.test"},
            "REPLICATE_BASE_URL",
        ),
        (
            UsersSettings,
            {"github_client_id": "id", "github_token_url": "http://github.test/token"},
            "GITHUB_TOKEN_URL",
        ),
        (
            FilesSettings,
            {"storage_backend": "cloudinary", "cloudinary_api_url": "http://cloudinary.test"},
            "CLOUDINARY_API_URL",
        ),
    ],
)
def test_provider_urls_in_plain_http_are_refused_in_production(
    settings_type: type[ServiceSettings], values: dict[str, Any], variable: str
) -> None:
    settings = settings_type(**base(**values))
    assert any(
        problem.startswith(f"STYLESTUDIO_{variable}: plain http") for problem in settings.insecurities()
    )
    https = {
        key: value.replace("http://", "https://") if isinstance(value, str) else value
        for key, value in values.items()
    }
    assert not any(variable in problem for problem in settings_type(**base(**https)).insecurities())


async def test_plain_http_image_delivery_is_refused_in_production() -> None:
    cloudinary = {
        "cloudinary_cloud_name": "demo",
        "cloudinary_api_key": "1",
        "cloudinary_api_secret": strong(),
    }
    settings = FilesSettings(
        **base(storage_backend="cloudinary", cloudinary_secure_delivery=False, **cloudinary)
    )
    assert "STYLESTUDIO_CLOUDINARY_SECURE_DELIVERY" in await refusal(files_definition, settings)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "is not set"),
        ("x" * (MIN_SECRET_BYTES - 1), f"is shorter than {MIN_SECRET_BYTES} bytes"),
        ("é" * 15 + "x", f"is shorter than {MIN_SECRET_BYTES} bytes"),  # 31 bytes in 16 characters
        (
            BillingSettings.model_fields["stripe_webhook_secret"].default.get_secret_value(),
            "is a development default",
        ),
        ("change-me-please-32-characters!!", "is a development default"),  # the old compose example
    ],
)
async def test_each_kind_of_weak_secret_is_refused(value: str, problem: str) -> None:
    settings = BillingSettings(**base(stripe_webhook_secret=value, offline_payments_enabled=True))
    assert f"STYLESTUDIO_STRIPE_WEBHOOK_SECRET {problem}" in await refusal(billing_definition, settings)


def test_thirty_two_bytes_are_enough() -> None:
    exactly = secrets.token_hex(MIN_SECRET_BYTES // 2)
    settings = UsersSettings(**base(signing_key_passphrase=exactly))
    assert settings.insecurities() == []


def test_the_gateway_app_refuses_production_without_its_service_key() -> None:
    with pytest.raises(InsecureSettings, match="STYLESTUDIO_SERVICE_PRIVATE_KEY is not set"):
        create_app(GatewaySettings(environment="production"))


# --- development: starts, with one warning ---


async def test_in_development_a_service_and_the_gateway_start_with_one_warning(
    infrastructure: object, redis_url: str, tmp_path: Path
) -> None:
    # The retired secret is still set, as by a deployment that has not dropped it; the gateway's
    # metrics token is too short.
    retired, short_token = strong(), "a-short-metrics-token"
    env = {"STYLESTUDIO_SERVICE_SECRET": retired, "STYLESTUDIO_METRICS_BEARER_TOKEN": short_token}
    with own_database(infrastructure, ["billing"]) as database:
        async with Platform(database, redis_url, tmp_path, extra_env=env) as platform:
            await platform.start_and_wait("billing", "gateway")
    billing = [line for line in platform.logs("billing").splitlines() if WARNING in line]
    gateway = [line for line in platform.logs("gateway").splitlines() if WARNING in line]
    assert len(billing) == 1, platform.logs("billing")
    assert len(gateway) == 1, platform.logs("gateway")
    for variable in ("STYLESTUDIO_STRIPE_WEBHOOK_SECRET", "STYLESTUDIO_OFFLINE_PAYMENTS_ENABLED"):
        assert variable in billing[0]
    assert "STYLESTUDIO_METRICS_BEARER_TOKEN is shorter" in gateway[0] and "STRIPE" not in gateway[0]
    assert "WARNING" in billing[0]
    for process in ("billing", "gateway"):
        logs = platform.logs(process)
        assert logs.count(RETIRED) == 1, logs
        assert retired not in logs and short_token not in logs


# --- the README's quick start: `make run` needs no configuration ---

PROCESS_SETTINGS: dict[str, type[PlatformSettings]] = {
    "users": UsersSettings,
    "billing": BillingSettings,
    "files": FilesSettings,
    "generation": GenerationSettings,
    "analytics": AnalyticsSettings,
    "gateway": GatewaySettings,
}


def test_make_run_needs_no_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make run` (python -m kit.launcher) on a machine with no STYLESTUDIO_ variable and no .env
    file: the launcher is in development and so is every process it starts, and each passes the
    start-up checks that would stop it in production (secrets, switches, service keys, TLS)."""
    for variable in [name for name in os.environ if name.startswith("STYLESTUDIO_")]:
        monkeypatch.delenv(variable)
    monkeypatch.chdir(REPO_ROOT)  # where a stray .env would be read from, if any settings read one
    assert LaunchSettings().environment == "development"
    infrastructure = Infrastructure(
        "postgresql+psycopg://postgres@127.0.0.1/stylestudio",
        Origin.LOCALHOST,
        "redis://127.0.0.1/0",
        Origin.LOCALHOST,
    )
    urls = {name: f"postgresql+psycopg://stylestudio_{name}:pw@127.0.0.1/stylestudio" for name in SERVICES}
    children = platform_children(dict(os.environ), infrastructure, urls)
    assert sorted(child.name for child in children) == sorted(PROCESS_SETTINGS)
    log = logging.getLogger("test.quick_start")
    for child in children:
        settings_class = PROCESS_SETTINGS[child.name]
        assert settings_class.model_config.get("env_file") is None, child.name
        with monkeypatch.context() as child_env:
            for variable, value in child.env.items():
                child_env.setenv(variable, value)
            settings = settings_class()
            assert settings.environment == "development", child.name
            assert settings.insecurities(), child.name  # development stand-ins, allowed here...
            refuse_insecure_settings(settings, log)  # ...so this does not raise
            ServiceCredentials.from_settings(settings, child.name, verifies=child.name != "gateway")
            assert TransportSecurity.from_settings(settings) is None  # plaintext on loopback
            child_env.setenv("STYLESTUDIO_ENVIRONMENT", "production")
            with pytest.raises(InsecureSettings):  # the same environment is refused in production
                refuse_insecure_settings(settings_class(), log)

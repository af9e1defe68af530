"""Start the gateway: ``python -m gateway``."""

from __future__ import annotations

import logging
import sys

import uvicorn

from gateway.app import create_app
from gateway.settings import GatewaySettings
from kit.logs import setup_logging
from kit.settings import EXIT_CONFIGURATION, InsecureSettings, refuse_insecure_settings

log = logging.getLogger("stylestudio.gateway")


def main() -> None:
    settings = GatewaySettings()
    setup_logging("gateway", settings.log_level, settings.log_format)
    try:
        # Checked once before any worker starts (each worker's create_app checks again).
        refuse_insecure_settings(settings, log)
    except InsecureSettings as refusal:
        log.critical(str(refusal))
        sys.exit(EXIT_CONFIGURATION)
    # Each worker process builds its own app (and channels) through the factory.
    app = "gateway.app:create_app" if settings.gateway_workers > 1 else create_app(settings)
    uvicorn.run(
        app,  # type: ignore[arg-type]
        factory=settings.gateway_workers > 1,
        workers=settings.gateway_workers if settings.gateway_workers > 1 else None,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # uvloop and httptools: the event loop and HTTP parser in C keep the per-request cost low.
        loop=settings.gateway_loop,
        http="httptools",
        # The gateway decides itself whom to believe about the client's address (settings);
        # uvicorn would otherwise take X-Forwarded-For from any local peer.
        proxy_headers=False,
        ssl_certfile=settings.gateway_tls_cert_file or None,
        ssl_keyfile=settings.gateway_tls_key_file or None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )


if __name__ == "__main__":
    main()

"""Entry points of the gateway: embedded (in-process models) or scale-out (gRPC verifiers and drafter)."""

from __future__ import annotations

import asyncio
import logging

from services.gateway.app import create_app, serve_app
from services.gateway.embedded import build_embedded_engine
from services.gateway.remote import build_remote_engine
from services.gateway.settings import GatewaySettings


async def serve(settings: GatewaySettings | None = None) -> None:
    """Run the gateway until SIGINT/SIGTERM: scale-out when `verifier_urls` is set, else embedded."""
    settings = settings or GatewaySettings()
    factory = build_remote_engine if settings.verifier_urls else build_embedded_engine
    await serve_app(create_app(settings, engine_factory=factory), settings)


def main() -> None:
    """`python -m services.gateway`: configured from `SPECSERVE_*` environment variables."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve())

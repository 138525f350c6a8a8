"""Entry points of the verifier service: `serve(settings)` (async) and `main()` (settings from the environment)."""

from __future__ import annotations

import asyncio
import logging

from services.common.host import run_until_signal
from services.common.threads import set_torch_threads
from services.verifier.server import VerifierServer
from services.verifier.settings import VerifierSettings
from specserve.engine.verifier import LocalVerifier


async def serve(settings: VerifierSettings, verifier: LocalVerifier | None = None) -> None:
    """Load the target (unless `verifier` is given), profile SPS(B), serve until SIGINT/SIGTERM, then drain."""
    set_torch_threads(settings.threads, service="verifier")
    await run_until_signal(VerifierServer(settings, verifier))


def main() -> None:
    """`python -m services.verifier`: configuration from SPECSERVE_VERIFIER_* environment variables."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(VerifierSettings()))

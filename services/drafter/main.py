"""Entry points of the drafter service: `serve(settings)` (async) and `main()` (settings from the environment)."""

from __future__ import annotations

import asyncio
import logging

from services.common.host import run_until_signal
from services.common.threads import set_torch_threads
from services.drafter.server import DrafterServer
from services.drafter.settings import DrafterSettings
from specserve.drafters.base import Drafter


async def serve(settings: DrafterSettings, drafter: Drafter | None = None) -> None:
    """Build the drafter (unless `drafter` is given), serve until SIGINT/SIGTERM, then drain."""
    set_torch_threads(settings.threads, service="drafter")
    await run_until_signal(DrafterServer(settings, drafter))


def main() -> None:
    """`python -m services.drafter`: configuration from SPECSERVE_DRAFTER_* environment variables."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(DrafterSettings()))

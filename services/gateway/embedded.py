"""Embedded mode: target, drafter and verifier in the gateway's process, with in-process transports.

`specserve serve` is `asyncio.run(serve(GatewaySettings(...)))`. The engine is the same SpecEngine the
distributed mode runs; only the Verifier and Drafter are the in-process implementations.
"""

from __future__ import annotations

import asyncio
import logging
import time

from services.gateway.app import create_app, serve_app
from services.gateway.settings import GatewaySettings
from specserve.decoding.budget import BudgetPolicy, FixedK, PrefixScheduler, StaticThreshold
from specserve.drafters.base import Drafter
from specserve.drafters.registry import build_drafter
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier
from specserve.target.model import CausalLM
from specserve.target.profile import profile_sps

log = logging.getLogger(__name__)


def build_policy(settings: GatewaySettings, drafter: Drafter | None) -> BudgetPolicy:
    """The verification-budget policy named by `settings.policy` (no drafter: plain decoding, k = 0)."""
    if drafter is None:
        return FixedK(0)
    block = drafter.max_block
    if settings.policy == "fixed":
        return FixedK(block if settings.fixed_k is None else min(settings.fixed_k, block))
    if settings.policy == "threshold":
        return StaticThreshold(settings.threshold, block)
    return PrefixScheduler(block)


def build_embedded_engine(settings: GatewaySettings) -> SpecEngine:
    """Load the target, build the drafter and the in-process verifier, and assemble the SpecEngine."""
    start = time.perf_counter()
    target = CausalLM.from_pretrained(settings.target, dtype=settings.dtype, device=settings.device,
                                      max_len=settings.max_model_len)
    drafter = build_drafter(settings.drafter, target, settings.block_size)
    policy = build_policy(settings, drafter)
    sps = None
    if policy.needs_load:
        per_session = policy.max_draft + 1
        largest = settings.max_batch * per_session
        sizes = [1 << i for i in range(largest.bit_length()) if 1 << i <= largest] + [largest]
        sps = profile_sps(target, sizes, tokens_per_session=per_session,
                          taps=drafter.target_layer_ids if drafter else ())
        log.info("profiled SPS(B) for B up to %d: %s", max(sps), {b: round(v, 1) for b, v in sps.items()})
    verifier = LocalVerifier(target, tap_layers=drafter.target_layer_ids if drafter else (), sps=sps)
    engine = SpecEngine(verifier, drafter, policy, tokenizer=target.tokenizer, max_batch=settings.max_batch)
    log.info("loaded %s (%d layers, context %d) with drafter %s and %s policy in %.1fs", settings.target,
             target.num_layers, target.max_context, settings.drafter, settings.policy, time.perf_counter() - start)
    return engine


async def serve(settings: GatewaySettings | None = None) -> None:
    """Run the embedded gateway (OpenAI API on settings.host:settings.port) until SIGINT/SIGTERM."""
    settings = settings or GatewaySettings()
    await serve_app(create_app(settings, engine_factory=build_embedded_engine), settings)


def main() -> None:
    """`python -m services.gateway`: the embedded gateway configured from `SPECSERVE_*` variables."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve())

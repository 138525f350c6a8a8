"""Embedded mode: target, drafter and verifier in the gateway's process, with in-process transports.

`specserve serve` is `asyncio.run(serve(GatewaySettings(...)))`. The engine is the same SpecEngine the
distributed mode runs; only the Verifier and Drafter are the in-process implementations.
"""

from __future__ import annotations

import asyncio
import logging
import time

import torch

from services.gateway.app import create_app, serve_app
from services.gateway.settings import GatewaySettings
from specserve.decoding.budget import BudgetPolicy, FixedK, PrefixScheduler, StaticThreshold
from specserve.drafters.base import Drafter
from specserve.drafters.registry import build_drafter
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier
from specserve.target.model import CausalLM

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


def profile_sps(target: CausalLM, max_tokens: int, repeats: int = 5) -> dict[int, float]:
    """SPS(B): target forward steps per second with B new tokens per forward, for B = 1, 2, 4 ... max_tokens.

    Measured on one scratch session after a short prefix, truncating back after each forward so every
    size sees the same cache length. Noise from other load only ever adds time, so each size keeps its
    fastest of `repeats` timings, and SPS(B) is raised to the best SPS measured for any larger B: a
    forward over more tokens is never faster, so a lower value at a smaller B can only be noise.
    """
    session, prefix = "__specserve_sps_profile__", [0] * min(16, target.max_context // 4)
    sizes = [1 << i for i in range(max_tokens.bit_length()) if (1 << i) <= max_tokens]
    sizes = [b for b in sizes if len(prefix) + b < target.max_context] or [1]
    target.open(session)
    try:
        target.forward([session], [prefix], last_only=True)
        base = target.length(session)
        table = {}
        for b in sizes:
            timings = []
            for _ in range(repeats + 1):  # the first run warms up kernels and allocations
                start = time.perf_counter()
                target.forward([session], [[0] * b])
                if target.device.type == "cuda":
                    torch.cuda.synchronize(target.device)
                timings.append(time.perf_counter() - start)
                target.truncate(session, base)
            table[b] = 1.0 / max(min(timings[1:]), 1e-9)
    finally:
        target.close(session)
    for smaller, larger in zip(sizes[-2::-1], sizes[:0:-1], strict=True):
        table[smaller] = max(table[smaller], table[larger])
    return table


def build_embedded_engine(settings: GatewaySettings) -> SpecEngine:
    """Load the target, build the drafter and the in-process verifier, and assemble the SpecEngine."""
    start = time.perf_counter()
    target = CausalLM.from_pretrained(settings.target, dtype=settings.dtype, device=settings.device,
                                      max_len=settings.max_model_len)
    drafter = build_drafter(settings.drafter, target, settings.block_size)
    policy = build_policy(settings, drafter)
    sps = None
    if policy.needs_load:
        sps = profile_sps(target, settings.max_batch * (policy.max_draft + 1))
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

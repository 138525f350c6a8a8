"""Embedded mode: target, drafter and verifier in the gateway's process, with in-process transports.

The engine is the same SpecEngine the scale-out mode (remote.py) runs; only the Verifier and Drafter
are the in-process implementations.
"""

from __future__ import annotations

import logging
import time

from services.common.threads import set_torch_threads
from services.gateway.policy import build_policy
from services.gateway.settings import GatewaySettings
from specserve.drafters.base import Drafter
from specserve.drafters.registry import build_drafter
from specserve.engine.engine import SpecEngine
from specserve.engine.verifier import LocalVerifier
from specserve.target.model import CausalLM
from specserve.target.profile import profile_plain, profile_sps

log = logging.getLogger(__name__)


def build_embedded_engine(settings: GatewaySettings) -> SpecEngine:
    """Load the target, build the drafter and the in-process verifier, and assemble the SpecEngine."""
    start = time.perf_counter()
    set_torch_threads(settings.threads, reserve=1, service="embedded engine")
    target = CausalLM.from_pretrained(settings.target, dtype=settings.dtype, device=settings.device,
                                      max_len=settings.max_model_len)
    drafter = build_drafter(settings.drafter, target, settings.block_size)
    policy = build_policy(settings, drafter)
    sps, plain_sps = profile_for(target, drafter, policy.max_draft, settings.max_batch) if policy.needs_load \
        else (None, None)
    verifier = LocalVerifier(target, tap_layers=drafter.target_layer_ids if drafter else (), sps=sps,
                             plain_sps=plain_sps)
    engine = SpecEngine(verifier, drafter, policy, tokenizer=target.tokenizer, max_batch=settings.max_batch)
    log.info("loaded %s (%d layers, context %d) with drafter %s and %s policy in %.1fs", settings.target,
             target.num_layers, target.max_context, settings.drafter, settings.policy, time.perf_counter() - start)
    return engine


def profile_for(target: CausalLM, drafter: Drafter | None, max_draft: int,
                max_batch: int) -> tuple[dict[int, float], dict[int, float]]:
    """SPS(B) for the verifies this engine can run (B = 1, 2, 4, ... up to `max_batch` sessions of `max_draft` + 1
    tokens each) and for its plain rounds (up to `max_batch` sessions of one token each), tapping the drafter's
    layers."""
    per_session = max_draft + 1
    largest = max_batch * per_session
    sizes = [1 << i for i in range(largest.bit_length()) if 1 << i <= largest] + [largest]
    taps = drafter.target_layer_ids if drafter else ()
    sps = profile_sps(target, sizes, tokens_per_session=per_session, taps=taps)
    plain_sps = profile_plain(target, max_batch, taps=taps)
    log.info("profiled SPS(B) for B up to %d: %s; plain rounds: %s", max(sps), {b: round(v, 1) for b, v in sps.items()},
             {b: round(v, 1) for b, v in plain_sps.items()})
    return sps, plain_sps

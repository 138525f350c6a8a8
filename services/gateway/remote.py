"""Scale-out mode: the gateway hosts the SpecEngine over gRPC clients of separate verifier replicas and a
drafter service. Only the tokenizer is loaded here; the target lives in the verifiers.
"""

from __future__ import annotations

import logging

from transformers import AutoTokenizer

from services.clients import RemoteDrafter, RemoteVerifier
from services.gateway.policy import build_policy
from services.gateway.settings import GatewaySettings
from specserve.engine.engine import SpecEngine
from specserve.errors import ModelLoadError

log = logging.getLogger(__name__)


def build_remote_engine(settings: GatewaySettings) -> SpecEngine:
    """Connect to the verifier replicas (and the drafter, when configured) and assemble the SpecEngine."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(settings.target)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {settings.target!r}: {exc}") from exc
    verifier = RemoteVerifier(settings.verifier_urls)
    drafter = RemoteDrafter(settings.drafter_url) if settings.drafter_url else None
    if drafter is not None and tuple(drafter.target_layer_ids) != tuple(verifier.tap_layers):
        raise ModelLoadError(f"the drafter reads target layers {list(drafter.target_layer_ids)} but the verifiers "
                             f"return taps of {list(verifier.tap_layers)}; set SPECSERVE_VERIFIER_TAP_LAYERS")
    engine = SpecEngine(verifier, drafter, build_policy(settings, drafter), tokenizer=tokenizer,
                        max_batch=settings.max_batch)
    log.info("scale-out engine: verifiers %s, drafter %s, %s policy", settings.verifier_urls,
             settings.drafter_url or "none", settings.policy)
    return engine

"""The verification-budget policy a gateway's settings name (shared by embedded and scale-out modes)."""

from __future__ import annotations

from services.gateway.settings import GatewaySettings
from specserve.decoding.budget import BudgetPolicy, FixedK, PrefixScheduler, StaticThreshold
from specserve.drafters.base import Drafter


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

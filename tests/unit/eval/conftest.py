import numpy as np
import pytest

from specserve.engine.request import RoundRecord


def synthetic_rounds(n: int, gamma: int = 5, overconfidence: float = 1.0, seed: int = 0) -> list[RoundRecord]:
    """Full-block rounds of a head whose logits are `overconfidence` × the true conditional-acceptance logits.

    Slot j is accepted with probability σ(u_j) given all earlier slots were; the head reports σ(s·u_j), so
    s = 1 is perfectly calibrated and s > 1 overconfident, with the ideal STS temperature s at every slot.
    """
    rng = np.random.default_rng(seed)
    u = rng.normal(1.0, 1.0, size=(n, gamma))
    accept = rng.uniform(size=(n, gamma)) < 1 / (1 + np.exp(-u))
    accepted = np.where(accept.all(axis=1), gamma, np.argmin(accept, axis=1))
    conf = 1 / (1 + np.exp(-overconfidence * u))
    return [RoundRecord(drafted=gamma, verified=gamma, accepted=int(a), committed=int(a) + 1,
                        confidence=tuple(c.tolist())) for a, c in zip(accepted, conf)]


@pytest.fixture(scope="session")
def make_rounds():
    """Factory for synthetic full-block rounds with confidences (see `synthetic_rounds`)."""
    return synthetic_rounds

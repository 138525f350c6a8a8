"""What an engine round costs on this machine, measured from finished rounds, and whether drafting pays.

The prefix scheduler (decoding/budget.py) decides how many drafted tokens to verify, but the drafter has
already run by then: when drafting plus verification yields fewer tokens per second than plain decoding
(a high load, a weak draft, a small model on a CPU), the best budget still loses to not drafting at all.
`RoundCosts` keeps moving averages of

- the time a round spends outside the target forward (wall time − 1/SPS(tokens verified)), separately
  for rounds that drafted and plain rounds (no drafter call),
- the tokens a request commits and the draft tokens it verifies per drafting round,

and predicts both rates for the current batch size R from the SPS(B) table:

    drafting:  R·τ / (overhead_drafting + 1/SPS(R·(1 + verified)))
    plain:     R / (overhead_plain + 1/SPS(R))

The engine drafts while the first is at least the second, otherwise decodes plainly. To keep both
estimates current it tries the other choice after `probe_every` rounds, and doubles that interval (up
to `max_probe_every`) each time the probe confirms the preference: under a load where drafting clearly
loses, probes soon cost well under 1 % of the rounds. Every decision reads finished rounds only, so a round's drafts
never influence whether they are drafted or verified beyond what Algorithm 1 allows: lossless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from specserve.decoding.budget import sps_at

log = logging.getLogger(__name__)

EMA = 0.1  # weight of the newest round in every moving average, once it has 1/EMA samples


def _average(previous: float | None, sample: float, count: int) -> float:
    """The mean of the first 1/EMA samples (`count` includes this one), then an exponential moving average:
    a kind of round that is only probed now and then must not stay pinned near its first sample."""
    return sample if previous is None else previous + max(EMA, 1.0 / count) * (sample - previous)


@dataclass
class RoundCosts:
    probe_every: int = 8  # rounds of the preferred choice before the other is tried again...
    max_probe_every: int = 256  # ...doubling, up to this, each time a probe confirms the preference
    overhead_drafting: float | None = None  # seconds per round outside the forward, rounds that drafted
    overhead_plain: float | None = None  # the same for rounds without a drafter call
    tau: float | None = None  # tokens committed per request per drafting round
    verified: float | None = None  # draft tokens verified per request per drafting round
    _rounds: dict = field(default_factory=lambda: {True: 0, False: 0})  # rounds recorded, drafting / plain
    _preferred: bool | None = None  # the choice the estimates favoured last round
    _interval: int = 0  # current probe interval (0: not started)
    _streak: int = 0  # rounds of the preferred choice since the last probe
    _probed: bool = False  # the last round was a probe

    def record(self, drafted: bool, wall_s: float, sps: dict[int, float], requests: int, tokens: int,
               committed: int) -> None:
        """One finished round: whether it drafted, its wall time, and what it verified and committed."""
        if not sps or requests == 0:
            return
        overhead = max(0.0, wall_s - 1.0 / sps_at(sps, tokens))
        self._rounds[drafted] += 1
        n = self._rounds[drafted]
        if drafted:
            self.overhead_drafting = _average(self.overhead_drafting, overhead, n)
            self.tau = _average(self.tau, committed / requests, n)
            self.verified = _average(self.verified, (tokens - requests) / requests, n)
        else:
            self.overhead_plain = _average(self.overhead_plain, overhead, n)

    def rates(self, sps: dict[int, float], requests: int) -> tuple[float, float] | None:
        """(drafting, plain) committed tokens per second predicted for `requests`, once both were measured."""
        if None in (self.overhead_drafting, self.overhead_plain, self.tau) or not sps or requests == 0:
            return None
        tokens = round(requests * (1 + self.verified))
        drafting = requests * self.tau / (self.overhead_drafting + 1.0 / sps_at(sps, tokens))
        plain = requests / (self.overhead_plain + 1.0 / sps_at(sps, requests))
        return drafting, plain

    def should_draft(self, sps: dict[int, float], requests: int) -> bool:
        """Draft this round? Measures each kind of round once first; then the faster, with probes of the other
        whose interval doubles while they confirm the preference and resets when it changes."""
        if not sps:
            return True  # nothing to compare with: the policy alone decides
        if self.overhead_plain is None:
            return False
        if self.overhead_drafting is None:
            return True
        drafting, plain = self.rates(sps, requests)
        preferred = drafting >= plain
        if preferred != self._preferred:
            self._interval, self._streak = self.probe_every, 0
            log.debug("%s at %d requests: predicted %.1f tokens/s drafting (tau %.2f, %.1f verified, overhead %.2f ms) "
                      "vs %.1f plain (overhead %.2f ms)", "drafting" if preferred else "plain decoding", requests,
                      drafting, self.tau, self.verified, 1e3 * self.overhead_drafting, plain,
                      1e3 * self.overhead_plain)
        elif self._probed:
            self._interval = min(2 * self._interval, self.max_probe_every)
        self._preferred, self._probed = preferred, False
        if self._streak >= self._interval:
            self._streak, self._probed = 0, True
            return not preferred
        self._streak += 1
        return preferred

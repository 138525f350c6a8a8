"""What an engine round costs on this machine, measured from finished rounds, and whether drafting pays.

The prefix scheduler (decoding/budget.py) decides how many drafted tokens to verify, but the drafter has
already run by then: when drafting plus verification yields fewer tokens per second than plain decoding
(a high load, a weak draft, a small model on a CPU), the best budget still loses to not drafting at all.
`RoundCosts` measures

- how long a verify takes against the profiled forward time 1/SPS(tokens): a fit c0 + m/SPS over recent
  rounds (m > 1 where the sampler, a ragged batch's padding or a transport cost per token beyond the
  forward; c0 a fixed cost per call, such as an RPC). Plain rounds feed it too: under load they set its level, and
  a drafting verify comes out 9-15 % too cheap, which offsets the drafting round's few % optimistic tokens at a tie
  (fitted on drafting rounds alone, the gRPC gateway drafted at a loss at 8 streams; docs/architecture.md),
- the rest of a drafting round (scheduling, streaming) as a line in the round's requests R, and what a plain round
  takes beyond its profiled forward as another (below),
- the drafter's call, as a fixed part per call plus parts per request and per drafted slot (the requests that
  drafted: a probe's call serves an eighth of the round. Fitted against the whole round, it priced drafting for
  32 requests over gRPC at ~990 tokens/s where fixed-2 measured ~750, and the engine drafted at 4 to 32 streams
  in 24-68 % of request-rounds, at a loss; fitted against those requests, drafting at 32 was predicted at 620-680
  against 970-1,040 plain, and the share fell to 0-1 %), and the mean prefix survival of each draft
  slot (the product of calibrated confidences), from which `draft_cap` picks how far to draft: the k a fixed-k
  policy would find fastest,
- the tokens a request commits and the draft tokens it verifies per drafting round, a padded slot of a
  ragged verify counting the verifier's `LoadReport.padding_cost` of a token,
- the drafter's intake: its call's time beyond a steady call's per position taken in (rounds with a backlog), and
  the prompt positions admitted per second: every arriving prompt costs a drafting engine, never a plain one, so
  drafting's predicted rate is scaled by 1 - that share of its time (`intake_share`),

and predicts both rates for the current batch size R from the SPS(B) table:

    drafting:  R·(1 + Σ_{j≤k} a_j) / (overhead_drafting(R) + propose(R, R·k) + c0 + m/SPS(R·(1 + k)))
               (before survival is measured: R·τ / (overhead_drafting(R) + c0 + m/SPS(R·(1 + verified))))
    plain:     R / (1/SPS_plain(R) + p0 + p·R)

SPS_plain is the verifier's profile of plain rounds (`LoadReport.plain_sps`: R sessions appending one token each;
the verify's table where the verifier has none). A plain round is fitted on its own: its seconds beyond that
forward, p0 + p·R over recent plain rounds (a cost per call and one per request: sampling, committing, a
transport's bytes). Fitted as p0 + p/SPS(R) against the verify's table instead, the
per-request part rode on the forward's slope: the demo's SPS(B) is flat up to 8, so rounds at 16 and 32 (6.0 and
10.0 ms beyond the forward, 3.1 at 1 request) fitted a slope of 1.5 on the forward, and priced plain decoding back
at 8 requests 14 % too slow (20.5 ms against 18.0); the engine drafted there at a 6 % loss. Priced from the verify
fit (dominated by the more numerous drafting rounds) plus an overhead, it came out 1.3 ms too slow over gRPC at 2
requests (8.4 vs 7.1 ms), and the engine drafted there at a 16 % loss. Priced by the median of the last five plain
rounds at exactly R, it followed whichever rounds had last run at that R: over HTTP at 16 and 32 streams the price
of plain decoding swung by up to a factor of two from one decision to the next (a round stalls when the event loop
or the load generator takes the core), and each low swing switched the engine to drafting, at a loss (a third of
request-rounds drafted at 16 streams over gRPC, prefix at 0.84 of no speculation per user). The fit, like the
drafting terms, averages the stalls of the last ~50 rounds. And Σ a_j is scaled by what verification accepted
against what the confidences promised (the demo's, calibrated to 2-3 % ECE per slot, promised 7 % more accepted
tokens than were accepted).

The engine drafts while the first is at least the second, otherwise decodes plainly; where it decodes plainly,
drafting must be predicted `switch_gap` faster to take over (a switch costs a catch-up round). To keep both
estimates current it tries the other choice after `probe_every` rounds, and doubles that interval (up
to `max_probe_every`) each time the probe confirms the preference; a preference predicted clearly faster
(`clear_gap`), at a load both choices were tried at, is probed `clear_probe_factor` times less often:
under a load where drafting clearly loses, probes soon take 2 rounds in 258. A probe of drafting while plain
decoding is preferred drafts for a share of the round's requests only (`probe_share`, at least one): what it
measures (the drafts' survival, the drafter's cost per request and per slot, the verify's cost per token, the
round's overhead at this load) does not need every request to draft, and a whole batch drafting cost the demo
over gRPC at 8 requests 9 % of its plain throughput (a catch-up of every request's backlog, a verify of 4× the
tokens), and it drafts `probe_cap` slots at most (the verify pads the round's other requests to its budget).
The same model prices the budgets of the round (`priced`):
Algorithm 1 sees the measured cost of a verified token, not the bare forward's (the fit's tokens count each
padded slot at the verifier's `padding_cost`; the scheduler then fills padding that pays, see
`PrefixScheduler`). Taking the whole gap
between a round and its profiled forward as fixed overhead (as before) made every extra token look cheap:
on the demo at 4 requests the scheduler verified 3.5 ragged tokens per request where 2 uniform ones
(fixed-2) were 8 % faster.

Only steady drafting rounds feed the drafting overhead. A round whose drafter also takes in a backlog (a
new request's prompt, the tokens of rounds decoded without it) costs more than drafting does round
after round: counting the first drafting round after 256 plain ones as a typical one made drafting look
slower than plain decoding on the demo model at temperature 1 (predicted 146 vs 149 tokens/s) while a
fixed budget drafted at 172 vs 157. A probe of drafting therefore lasts `drafting_probe` rounds, the
first catching up and the rest measured. Every decision reads finished rounds only, so a round's drafts
never influence whether they are drafted or verified beyond what Algorithm 1 and its padding fill allow:
lossless.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

from specserve.decoding.budget import LoadReport, sps_at
from specserve.engine.fits import FIT_EMA, DrafterFit, LinearFit

log = logging.getLogger(__name__)

EMA = 0.1  # weight of the newest round in the moving averages of round costs, once they have 1/EMA samples
# ...and in those of τ and verified tokens: one round's τ is noisy (std ~1.5 at τ 2.5), and a low estimate left
# by a few unlucky rounds is not corrected while the engine decodes plainly, so τ averages over more rounds
TAU_EMA = 1 / 64
# weight of the newest round in the fits of a round's overhead against its requests (drafting rounds: probes under
# load); those of a verify's and a plain round's time against the forward's weigh it FIT_EMA (fits.py)
OVERHEAD_EMA = 0.05
# weight of each request that drafted in the mean prefix survival per slot (a round of 8 requests: ~0.1). Weighed per
# round, a probe's lone request moved the survival of a round of 8, and the drafting estimate swung by ±10 % from
# probe to probe: near a tie the choice flipped several times a second, each switch a catch-up of every request
# (embedded, 8 streams, temperature 1: prefix 0.84 of fixed-2's throughput while drafting in a third of its rounds)
SURVIVAL_EMA = 0.0125
SLOPE_EMA = 0.002  # weight of the newest plain round in the fit of a plain round's cost per request


def _average(previous: float | None, sample: float, count: int, weight: float = EMA) -> float:
    """The mean of the first 1/weight samples (`count` includes this one), then an exponential moving average:
    a kind of round that is only probed now and then must not stay pinned near its first sample."""
    return sample if previous is None else previous + max(weight, 1.0 / count) * (sample - previous)


@dataclass
class _Choice:
    """The choice at one load: the one the estimates favoured last, the probe interval and the rounds of the
    preferred choice since the last probe."""

    preferred: bool | None = None
    interval: int = 0  # 0: not started
    streak: int = 0
    probed: bool = False  # a probe ended with the last round at this load


@dataclass(frozen=True)
class DraftShare:
    """The requests of a round that drafted, when only some of them did (a probe): how many, the tokens they
    committed, and the draft tokens they verified (a padded slot among them counting `padding_cost` of a token)."""

    requests: int
    committed: int
    verified: float


@dataclass
class RoundCosts:
    probe_every: int = 8  # rounds of the preferred choice before the other is tried again...
    max_probe_every: int = 64  # ...doubling, up to this, each time a probe confirms the preference
    drafting_probe: int = 2  # rounds a probe of drafting lasts (the first takes in the backlog)
    # a choice predicted `clear_gap` faster than the other is probed `clear_probe_factor` times less often (both
    # intervals): under load a probe of drafting costs a catch-up round, and probes at 8, 16, 32... rounds cost the
    # demo at 32 greedy requests 7 % of its plain throughput where drafting was predicted 15 % slower
    # A preference is clear only at a load both choices were tried at, and the other choice is probed after
    # `probe_every` rounds at a load it was never tried at: a cost extrapolated past its measured requests is a
    # guess (a plain round's overhead measured at 2 requests, taken as proportional, priced plain decoding at 8
    # requests 30-60 % too slow over gRPC, and the engine kept the interval it had grown at 2 and drafted at a loss
    # for 50 rounds).
    clear_gap: float = 0.10
    # at a load where plain decoding is preferred, drafting must be predicted `switch_gap` faster to take over (a
    # preference for drafting holds while drafting is predicted at least as fast). Each switch to drafting costs a
    # catch-up round, which no steady round prices: at 16 requests on the demo, where the two were predicted within
    # 1 % (743 vs 749 tokens/s), the choice flipped every few probes, drafting rounds realised 694 tokens/s with their
    # catch-ups against 785 plain, and the engine ran at 0.94 of no speculation
    switch_gap: float = 0.05
    clear_probe_factor: int = 4
    # the share of a round's requests a probe of drafting drafts for (at least one), while plain decoding is preferred
    probe_share: float = 0.125
    # ...and drafts at most `probe_cap` slots for them: the verify pads every other request of the round to the probe's
    # longest budget, so a probe at 8 requests drafting γ = 7 verified 64 positions where a plain round verifies 8
    probe_cap: int = 2
    # seconds a drafting round spends outside the verify and drafter calls, against the requests of the round
    overhead_drafting: LinearFit = field(default_factory=lambda: LinearFit(OVERHEAD_EMA))
    # seconds of a plain round beyond its profiled forward 1/SPS(R), against R (a constant until R varies); its cost
    # per request over the last ~500 plain rounds, which span loads that the last ~50 may not
    plain: LinearFit = field(default_factory=lambda: LinearFit(FIT_EMA, fallback_slope=0.0, keep_slope=True,
                                                               slope_decay=SLOPE_EMA))
    # seconds of the verify call against the profiled forward time 1/SPS(effective tokens); slope 1 at first
    # (a token never costs less than half the profiled forward's: a lower fitted slope is noise)
    verify: LinearFit = field(default_factory=lambda: LinearFit(FIT_EMA, fallback_slope=1.0, min_slope=0.5,
                                                                keep_slope=True))
    # seconds of the drafter's call against its requests and the slots it drafts, steady rounds
    propose: DrafterFit = field(default_factory=lambda: DrafterFit(OVERHEAD_EMA))
    # the drafter's intake: seconds of its call beyond `propose` against the positions it took in, rounds with a
    # backlog (a new request's prompt, the tokens of rounds decoded without it); and the prompt positions admitted per
    # second (decayed sums over recent rounds of both kinds), which drafting must take in and plain decoding never does
    intake: LinearFit = field(default_factory=lambda: LinearFit(OVERHEAD_EMA))
    _admitted: list[float] = field(default_factory=lambda: [0.0, 0.0])  # decayed Σ positions admitted, Σ seconds
    # mean prefix survival a_j (product of confidences up to slot j) over drafting rounds' requests, per slot of the
    # last such round (a slot it did not draft is dropped: seen again later, it starts afresh, not from a stale value)
    survival: list[float] = field(default_factory=list)
    tau: float | None = None  # tokens committed per request per drafting round
    verified: float | None = None  # draft tokens verified per request per drafting round, plus padding_cost per pad
    longest: float | None = None  # the longest budget of a drafting round (tokens of one request)
    _drafting_rounds: int = 0  # drafting rounds recorded (their τ, verified and longest budget)
    # decayed sums of the draft tokens the confidences promised (Σ of prefix survivals over the verified budgets)
    # and of those verification accepted, over drafting rounds
    _promised: float = 0.0
    _accepted: float = 0.0
    # the choice and its probes, per load (`_Choice`, keyed by the round's requests in power-of-two bins)
    _choices: dict[int, _Choice] = field(default_factory=dict)
    _choice: _Choice | None = None  # that of the last decision (a running probe's)
    _probe_left: int = 0  # rounds of the running probe still to come
    _probing: bool = False  # the choice last returned is a probe
    # the loads (power-of-two bins of requests, as `_choices`) each kind of round (keyed by `drafted`) was tried at. A
    # catch-up round counts: where arrivals keep every round catching up, requiring a priced one kept the probes at 8
    # rounds. (A range of requests from the fewest to the most counted 8 as tried after rounds at 2 and 32 only.)
    _tried: dict[bool, set[int]] = field(default_factory=lambda: {True: set(), False: set()})

    def __post_init__(self):
        if self.clear_gap < 0 or self.switch_gap < 0 or self.clear_probe_factor < 1:
            raise ValueError(f"need clear_gap >= 0, switch_gap >= 0 and clear_probe_factor >= 1, got {self.clear_gap}, "
                             f"{self.switch_gap}, {self.clear_probe_factor}")
        if self.probe_every < 1 or self.max_probe_every < self.probe_every or self.drafting_probe < 1:
            raise ValueError(f"need 1 <= probe_every <= max_probe_every and drafting_probe >= 1, got "
                             f"{self.probe_every}, {self.max_probe_every}, {self.drafting_probe}")
        if not 0.0 < self.probe_share <= 1.0:
            raise ValueError(f"need 0 < probe_share <= 1, got {self.probe_share}")
        if self.probe_cap < 1:
            raise ValueError(f"need probe_cap >= 1, got {self.probe_cap}")

    def record(self, drafted: bool, wall_s: float, sps: dict[int, float], requests: int, tokens: int,
               committed: int, steady: bool = True, longest: int | None = None, verify_s: float | None = None,
               padded: int = 0, padding_cost: float = 0.0, propose_s: float | None = None, slots: int = 0,
               survival: list[float] | None = None, share: DraftShare | None = None,
               promised: float | None = None, accepted: int = 0, backlog: int = 0, admitted: int = 0,
               plain_sps: dict[int, float] | None = None) -> None:
        """One finished round: whether it drafted, its wall time, and what it verified and committed
        (`longest`: the largest budget of one request; `verify_s`: the verify call's time, None: assume the
        profiled forward; `padded`: padding slots of the verify, each costing `padding_cost` of a token;
        `propose_s`: the drafter call's time for `slots` drafted slots; `survival`: the round's mean prefix
        survival per slot; `share`: what the requests that drafted verified and committed, when only some of the
        round's requests drafted (the drafter's call served those only); `promised`: the draft tokens the
        confidences promised, Σ over requests of the prefix survivals of the slots verified, against the `accepted`
        ones; `backlog`: the positions the drafter took in; `admitted`: the prompt positions of the requests admitted
        since the last round, which the drafter will take in; `plain_sps`: the SPS(B) table of plain rounds, where
        the verifier has one). `steady` False: the drafter also took in a backlog, so
        the round's overhead is not typical of drafting (its τ and verified tokens still count; its drafter call
        beyond a steady one's prices the intake)."""
        if not sps or requests == 0:
            return
        effective = tokens + padding_cost * padded
        forward = 1.0 / sps_at(sps, effective)
        if verify_s is not None:
            self.verify.add(forward, verify_s)
        if drafted:
            self._drafting_rounds += 1
            n = self._drafting_rounds
            if share is None:
                share = DraftShare(requests, committed, effective - requests)
            self.tau = _average(self.tau, share.committed / share.requests, n, TAU_EMA)
            self.verified = _average(self.verified, share.verified / share.requests, n, TAU_EMA)
            if longest is not None:  # a short average: a cap that binds must lift again within rounds
                self.longest = _average(self.longest, longest, n)
            if promised is not None:
                keep = 1.0 - TAU_EMA
                self._promised, self._accepted = keep * self._promised + promised, keep * self._accepted + accepted
            if survival:
                del self.survival[len(survival):]
                weight = 1.0 - (1.0 - SURVIVAL_EMA) ** share.requests  # each request that drafted, one sample
                for j, a in enumerate(survival):
                    if j < len(self.survival):
                        self.survival[j] += weight * (a - self.survival[j])
                    else:
                        self.survival.append(a)
        self._tried[drafted].add(requests.bit_length())
        keep = 1.0 - TAU_EMA  # arrivals are sparse (one every few rounds): a long window
        self._admitted = [keep * self._admitted[0] + admitted, keep * self._admitted[1] + wall_s]
        if drafted and not steady and propose_s is not None and slots > 0 and not self.propose.empty and backlog > 0:
            self.intake.add(backlog, max(0.0, propose_s - self.propose(share.requests, slots)))
        if not drafted:  # plain rounds are never catch-ups: every one is priced
            self.plain.add(requests, wall_s - _plain_forward(sps, plain_sps, requests))
        elif steady:
            overhead = wall_s - (forward if verify_s is None else verify_s)
            if propose_s is not None and slots > 0:  # the call served the requests that drafted only
                self.propose.add(share.requests, slots, propose_s)
                overhead -= propose_s
            self.overhead_drafting.add(requests, max(0.0, overhead))

    def rates(self, sps: dict[int, float], requests: int, cap: int = 0,
              plain_sps: dict[int, float] | None = None) -> tuple[float, float] | None:
        """(drafting, plain) committed tokens per second predicted for `requests` (drafting `cap` slots each),
        once both were measured."""
        if self.overhead_drafting.empty or self.plain.empty or self.tau is None or not sps or requests == 0:
            return None
        if cap > 0 and self._modelled(sps, requests):  # the drafts' own survival at this round's cap
            drafting = self._fixed_k_rate(sps, requests, cap)
        else:  # what drafting rounds committed and verified of late
            drafting = requests * self.tau / self._drafting_s(sps, requests, requests * (1 + self.verified), cap)
        return drafting * (1.0 - self.intake_share), requests / self.plain_s(sps, requests, plain_sps)

    @property
    def intake_share(self) -> float:
        """The share of a drafting engine's time its drafter spends taking in the prompts of arriving requests:
        seconds per position taken in × prompt positions admitted per second (at most a half). A steady round prices
        what drafting costs round after round, but every request's first drafting round also takes in its prompt,
        which plain decoding never pays: over 16 closed-loop streams on the demo (DSpark, ~50-token prompts) ~10 ms
        more per round that took in 2.3 new prompts, ~2.5 % of fixed-2's time."""
        positions, seconds = self._admitted
        if self.intake.empty or seconds <= 0.0:
            return 0.0
        return min(0.5, self.intake.coefficients()[1] * positions / seconds)

    def plain_s(self, sps: dict[int, float], requests: int, plain_sps: dict[int, float] | None = None) -> float:
        """A plain round's predicted seconds at `requests` (its forward from `plain_sps` where given)."""
        return max(1e-6, _plain_forward(sps, plain_sps, requests) + self.plain(requests))

    def _drafting_s(self, sps: dict[int, float], requests: int, tokens: float, cap: int = 0) -> float:
        """A drafting round's predicted seconds: its overhead at `requests`, the drafter's `cap` slots per request
        and a verify of `tokens`."""
        overhead = self.overhead_drafting(requests)
        return max(1e-6, overhead + self._propose_s(requests, cap) + self.verify(1.0 / sps_at(sps, tokens)))

    def _propose_s(self, requests: int, cap: int) -> float:
        return 0.0 if self.propose.empty or cap <= 0 else self.propose(requests, requests * cap)

    def priced(self, load: LoadReport, requests: int, cap: int = 0, drafting: int | None = None) -> LoadReport:
        """The verifier's load with this engine's measured costs, for the budget policy of a round of `requests`
        of which `drafting` (default: all) draft `cap` slots each: that round's overhead (the drafter's call
        included) plus the fixed part of a verify, and the verify's cost per profiled forward."""
        c0, m = self.verify.coefficients()
        overhead = 0.0 if self.overhead_drafting.empty else self.overhead_drafting(requests)
        propose = self._propose_s(requests if drafting is None else drafting, cap)
        return dataclasses.replace(load, round_overhead_s=overhead + propose + c0, verify_scale=m)

    def draft_cap(self, cap: int, sps: dict[int, float] | None = None, requests: int = 0) -> int:
        """Tokens worth drafting per request, at most `cap`.

        Once the drafter's cost per slot and the drafts' survival per slot are measured: the k that a fixed-k
        policy would find fastest, R·(1 + Σ_{j≤k} a_j) / (overhead + propose(R, R·k) + verify(R·(1 + k))), with a_j
        the mean prefix survival of slot j (slots past those drafted of late extrapolated geometrically, so the
        cap can grow). The prefix scheduler then verifies at most that much per request. Under load a drafted slot
        costs about what a verified token does (DSpark on the demo at 8 requests: 0.8 ms per slot per round), so
        slots no budget will reach are not drafted. Before that (and for drafts without confidences): two more
        than the longest budgets of late. A cap read from finished rounds only: lossless."""
        if self.longest is None or cap <= 0:
            return cap
        if not self._modelled(sps, requests):
            return max(1, min(cap, math.ceil(self.longest) + 2))
        return max(range(1, cap + 1), key=lambda k: self._fixed_k_rate(sps, requests, k))

    def _modelled(self, sps: dict[int, float] | None, requests: int) -> bool:
        """Whether drafting k slots can be priced from survival and the drafter's measured cost per slot."""
        return bool(self.survival) and not self.propose.empty and not self.overhead_drafting.empty and bool(sps) \
            and requests > 0

    def _fixed_k_rate(self, sps: dict[int, float], requests: int, k: int) -> float:
        """Committed tokens per second drafting and verifying k slots per request: R·(1 + Σ_{j≤k} a_j) per round,
        Σ a_j scaled by what verification accepted of what the confidences promised."""
        seen = self.survival
        ratio = min(1.0, seen[-1] / seen[-2]) if len(seen) > 1 and seen[-2] > 0 else seen[-1]
        promised = sum(seen[j] if j < len(seen) else seen[-1] * ratio ** (j + 1 - len(seen)) for j in range(k))
        expected = 1.0 + self.acceptance_scale * promised
        return requests * expected / self._drafting_s(sps, requests, requests * (1 + k), k)

    @property
    def acceptance_scale(self) -> float:
        """Draft tokens accepted per token the confidences promised, over recent drafting rounds (1 until they
        promised a token's worth)."""
        return self._accepted / self._promised if self._promised >= 1.0 else 1.0

    def drafting_requests(self, sps: dict[int, float], requests: int, cap: int = 0,
                          plain_sps: dict[int, float] | None = None) -> int:
        """How many of the round's `requests` draft: all of them or none (the faster choice), or a share of them
        (a probe of drafting while plain decoding is preferred, `probe_share`)."""
        if not self._should_draft(sps, requests, cap, plain_sps):
            return 0
        if self._probing and not self._choice.preferred:
            return min(requests, max(1, math.ceil(self.probe_share * requests)))
        return requests

    def _should_draft(self, sps: dict[int, float], requests: int, cap: int, plain_sps: dict[int, float] | None) -> bool:
        """Draft this round? Measures a plain round first, then drafts until a steady drafting round is measured;
        then the faster, with probes of the other whose interval doubles while they confirm the preference and
        resets when it changes. Each load keeps its own choice and probe interval (`_Choice`): every burst of
        arrivals ramps the batch through the low loads, where drafting pays, and one choice for all loads flipped
        twice per burst and restarted its interval each time. At 16 streams over gRPC, where drafting clearly lost,
        a probe round then came every ~25 rounds (each a catch-up and a padded verify) and the engine ran at 0.89
        of plain decoding's speed per user while drafting in 0.5 % of request-rounds (1.00 per load). The counts toward
        the next probe are shared where the estimates are (`_restart_counts`)."""
        self._probing = False
        if not sps:
            return True  # nothing to compare with: the policy alone decides
        if self.plain.empty:
            return False
        if self.overhead_drafting.empty or self.tau is None:
            return True
        if self._probe_left > 0:  # a probe runs its course whatever the estimates say meanwhile
            self._probe_left -= 1
            self._choice.probed = self._probe_left == 0
            self._probing = True
            return not self._choice.preferred
        load = requests.bit_length()
        choice = self._choice = self._choices.setdefault(load, _Choice())
        drafting, plain = self.rates(sps, requests, cap, plain_sps)
        preferred = drafting >= plain * (1.0 + self.switch_gap if choice.preferred is False else 1.0)
        tried = {kind: load in loads for kind, loads in self._tried.items()}
        clear = max(drafting, plain) >= (1.0 + self.clear_gap) * min(drafting, plain) and all(tried.values())
        factor = self.clear_probe_factor if clear else 1
        if preferred != choice.preferred:
            choice.interval, choice.streak = self.probe_every * factor, 0
            log.debug("%s at %d requests: predicted %.1f tokens/s drafting (tau %.2f, %.1f verified with padding, "
                      "overhead %.2f ms, intake %.1f %%) vs %.1f plain (%.2f ms a round)",
                      "drafting" if preferred else "plain decoding", requests, drafting, self.tau, self.verified,
                      1e3 * self.overhead_drafting(requests), 100 * self.intake_share, plain, 1e3 * requests / plain)
        elif choice.probed:
            choice.interval *= 2
        # the other choice never tried at this load: its cost here is an extrapolation, probe it soon
        limit = self.max_probe_every * factor if tried[not preferred] else self.probe_every
        choice.interval = min(choice.interval, limit)
        choice.preferred, choice.probed = preferred, False
        if choice.streak >= choice.interval:
            choice.streak = 0
            self._restart_counts(preferred)
            self._probe_left = (1 if preferred else self.drafting_probe) - 1
            choice.probed = self._probe_left == 0
            self._probing = True
            return not preferred
        choice.streak += 1
        return preferred

    def _restart_counts(self, preferred: bool) -> None:
        """A probe of the other choice starts: every load that prefers the same, and was tried both ways, counts its
        rounds afresh. The probe refreshes estimates all loads share (τ, survival, the drafter's and the verify's
        costs); counted per load, a batch that alternates between two loads (a closed loop of 16 streams runs at 12-16
        requests, two bins) probed twice as often. A load the other choice was never tried at keeps its count: its
        costs there are a guess until its own probe."""
        for load, choice in self._choices.items():
            if choice.preferred == preferred and load in self._tried[not preferred]:
                choice.streak = 0


def _plain_forward(sps: dict[int, float], plain_sps: dict[int, float] | None, requests: int) -> float:
    """A plain round's profiled forward: `requests` sessions of one token, from the plain rounds' table where the
    verifier has one (`LoadReport.plain_sps`), else from the verify's."""
    return 1.0 / sps_at(plain_sps or sps, requests)

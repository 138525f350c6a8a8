"""Least-squares fits over recent samples, each sample weighing `1 - decay` times the next: what `RoundCosts`
(round_costs.py) fits a round's costs with."""

from __future__ import annotations

from dataclasses import dataclass, field

FIT_EMA = 0.02  # weight of the newest round in the fits of a verify's and a plain round's time against the forward's


@dataclass
class _DecayedSums:
    """Sums over samples in which each sample weighs `1 - decay` times the next (recent rounds count most)."""

    decay: float = FIT_EMA
    sums: list[float] = field(default_factory=lambda: [0.0] * 5)

    def _add(self, sample: tuple[float, ...]) -> None:
        keep = 1.0 - self.decay
        self.sums = [keep * s + v for s, v in zip(self.sums, sample, strict=True)]

    @property
    def empty(self) -> bool:
        return self.sums[0] == 0.0


@dataclass
class LinearFit(_DecayedSums):
    """y ≈ c0 + m·x, c0 ≥ 0, by least squares over recent samples (each sample weighs `1 - decay` times the next).

    Until x varies by more than a tenth of its mean the slope is `fallback_slope`, or with None the line runs
    through the origin (y ∝ x). That fallback is optimistic for a cost measured at large x only (a drafting round
    seen under load, whose cost is mostly per request): at a small x it predicts a cheap round, so the engine
    tries one and measures it, where a pessimistic estimate would never be tested again.

    With `keep_slope`, a slope once measured replaces the fallback. The verify's slope is the verifier's cost per
    token (transport, sampling) and is measured by the few drafting rounds a probe brings between long plain
    stretches; those decay away while x stays at the plain rounds' size. Falling back to the bare forward's slope
    then (the demo over gRPC at 8 requests: 1.0 where the drafting rounds had measured 1.5) priced drafting 10 %
    too cheap, and probes kept coming at the short interval of an unclear preference.

    With `slope_decay`, the slope is fitted over a longer window than the intercept: a slope that x's recent samples
    barely measure (a long stretch at one x, the last other x's almost decayed away) is noise, and kept it stands for
    good (a plain round's cost per request, fitted as the engine moved from 16 to 32 requests, came out 0 where it was
    0.25 ms, and priced plain decoding back at 1 request 19 % too slow), while the intercept must follow the machine.
    """

    fallback_slope: float | None = None
    min_slope: float = 0.0  # a fitted slope below this (noise) is raised to it
    # with a fallback slope: once x has varied, the slope it measured then stands in for the fallback while x stays put
    keep_slope: bool = False
    slope_decay: float | None = None  # the slope's own, slower decay (None: the intercept's)
    _kept: float | None = None
    _slow: _DecayedSums | None = None

    def __post_init__(self):
        if self.slope_decay is not None:
            self._slow = _DecayedSums(self.slope_decay)

    def add(self, x: float, y: float) -> None:
        sample = (1.0, x, y, x * x, x * y)  # Σ1, Σx, Σy, Σx², Σxy
        self._add(sample)
        if self._slow is not None:
            self._slow._add(sample)
        if self.keep_slope:
            slope = self._fitted_slope()
            if slope is not None:
                self._kept = slope

    def _fitted_slope(self) -> float | None:
        """The least-squares slope, None unless x varies by more than a tenth of its mean."""
        n, sx, sy, sxx, sxy = (self if self._slow is None else self._slow).sums
        if n == 0.0:
            return None
        mx, my = sx / n, sy / n
        var = sxx / n - mx * mx
        return max(self.min_slope, (sxy / n - mx * my) / var) if var > (0.1 * mx) ** 2 else None

    def coefficients(self) -> tuple[float, float]:
        """(c0, m); (0, fallback slope or 0) before the first sample."""
        n, sx, sy, sxx, sxy = self.sums
        if n == 0.0:
            return 0.0, self.fallback_slope or 0.0
        mx, my = sx / n, sy / n
        slope = self._fitted_slope()
        if slope is None and self.fallback_slope is None:
            return 0.0, (my / mx if mx > 0 else 0.0)
        if slope is None:
            slope = self.fallback_slope if self._kept is None else self._kept
        if my - slope * mx < 0.0:  # a cost is never negative, even where nothing was measured: through the origin
            return 0.0, (max(self.min_slope, sxy / sxx) if sxx > 0 else 0.0)
        return my - slope * mx, slope

    def __call__(self, x: float) -> float:
        c0, m = self.coefficients()
        return c0 + m * x


@dataclass
class DrafterFit(_DecayedSums):
    """The drafter's call: y ≈ c + a·R + b·S seconds for R requests and S = R·k slots (c, a, b ≥ 0), decayed least
    squares.

    c is what every call costs (the batch's Python and small kernels: ~2.5 ms of the demo DSpark's 4.2 ms at 4
    requests drafting 2 slots each), a what each request adds (its new taps, sampling), b what each drafted slot
    adds (~0.1 ms there). Without c, its share went to the slots: b came out at 0.7 ms and the cap stayed short.
    b is the slope in S of what R does not explain (S varies apart from R when k varies, or when requests near
    their end draft fewer slots); while k has not varied it is 0, the optimistic guess (the cap may grow, and the
    next rounds at the new k measure it), where charging everything to slots would make every longer draft look
    dear and keep the cap where it is for good.
    c and a then split the rest as a line in R; while R has not varied the line runs through the origin (the
    optimistic guess for fewer requests, see `LinearFit`).
    """

    sums: list[float] = field(default_factory=lambda: [0.0] * 9)

    def add(self, requests: int, slots: int, seconds: float) -> None:
        r, s, y = requests, slots, seconds
        self._add((1.0, r, s, y, r * r, r * s, s * s, r * y, s * y))  # Σ1, ΣR, ΣS, Σy, ΣR², ΣRS, ΣS², ΣRy, ΣSy

    def coefficients(self) -> tuple[float, float, float]:
        """(c, a, b): seconds per call, per request and per slot."""
        n, sr, ss, sy, srr, srs, sss, sry, ssy = self.sums
        if n == 0.0:
            return 0.0, 0.0, 0.0
        mr, ms, my = sr / n, ss / n, sy / n
        vrr, vrs, vss = srr / n - mr * mr, srs / n - mr * ms, sss / n - ms * ms
        vry, vsy = sry / n - mr * my, ssy / n - ms * my
        r_varies = vrr > (0.1 * mr) ** 2
        vs_r, csy_r = (vss - vrs * vrs / vrr, vsy - vrs * vry / vrr) if r_varies else (vss, vsy)
        b = max(0.0, csy_r / vs_r) if vs_r > (0.1 * ms) ** 2 else 0.0
        mz, vrz, srz = my - b * ms, vry - b * vrs, sry - b * srs  # z = y - b·S, the part a line in R explains
        if r_varies:
            a = vrz / vrr
            c = mz - a * mr
            if a < 0.0:
                return max(0.0, mz), 0.0, b
            if c >= 0.0:
                return c, a, b
        return 0.0, (max(0.0, srz / srr) if srr > 0.0 else 0.0), b

    def __call__(self, requests: int, slots: int) -> float:
        c, a, b = self.coefficients()
        return c + a * requests + b * slots

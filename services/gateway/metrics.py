"""Prometheus metrics of one gateway, named as vLLM's with a `specserve:` prefix.

Each app owns a `CollectorRegistry` (no global state, so tests can run several gateways in one process).
Speculation counters are fed by `observe_verify`, registered as the engine's verify observer, whatever
Verifier the engine uses (in-process or remote), so they move while requests run, as vLLM's do. Latencies are measured
at the gateway, from admission to the deltas reaching the handler.

Derived values (PromQL):
- mean accepted length: `1 + rate(specserve:spec_decode_num_accepted_tokens_total[5m])
  / rate(specserve:spec_decode_num_drafts_total[5m])`
- draft acceptance rate: `rate(specserve:spec_decode_num_accepted_tokens_total[5m])
  / rate(specserve:spec_decode_num_draft_tokens_total[5m])`
- acceptance at position j: `rate(specserve:spec_decode_num_accepted_tokens_per_pos_total{position="j"}[5m])
  / rate(specserve:spec_decode_num_drafts_total[5m])`
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from specserve.engine.verifier import VerifyRequest, VerifyResult

_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_BUDGET_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32, 64)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class GatewayMetrics:
    """Every metric of one gateway app, labelled with `model_name` as vLLM's are."""

    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        self.model_name = model_name
        self._per_pos = Counter("specserve:spec_decode_num_accepted_tokens_per_pos",
                                "Accepted draft tokens at each draft position (0-based).",
                                ["model_name", "position"], registry=self.registry)
        self._success = Counter("specserve:request_success", "Finished engine requests by finish reason.",
                                ["model_name", "finished_reason"], registry=self.registry)
        counter = lambda name, doc: Counter(f"specserve:{name}", doc, ["model_name"],
                                            registry=self.registry).labels(model_name)
        histogram = lambda name, doc, buckets: Histogram(f"specserve:{name}", doc, ["model_name"], buckets=buckets,
                                                         registry=self.registry).labels(model_name)
        self.num_drafts = counter("spec_decode_num_drafts", "Verification rounds of a request with ≥ 1 draft token.")
        self.num_draft_tokens = counter("spec_decode_num_draft_tokens", "Draft tokens sent to verification.")
        self.num_accepted_tokens = counter("spec_decode_num_accepted_tokens", "Draft tokens accepted.")
        self.rejected = counter("request_rejected", "Requests refused with 429 (admission queue full).")
        self.ttft = histogram("time_to_first_token_seconds", "Time to the first token (from admission).",
                              _TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds",
                             "Time between consecutive deltas of a request (one delta per verify round).",
                             _ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Admission to the last token.", _E2E_BUCKETS)
        self.verify_batch = histogram("spec_decode_verify_batch_size", "Requests in one verify call.",
                                      _BATCH_BUCKETS)
        self.verify_tokens = histogram("spec_decode_verify_tokens", "Tokens in one verify forward (anchors + drafts).",
                                       _BATCH_BUCKETS)
        self.budget = histogram("spec_decode_scheduled_budget",
                                "Draft tokens the budget policy scheduled for one request in one round.",
                                _BUDGET_BUCKETS)
        self._running = Gauge("specserve:num_requests_running", "Requests in the engine's running batch.",
                              ["model_name"], registry=self.registry).labels(model_name)
        self._waiting = Gauge("specserve:num_requests_waiting", "Requests queued in the engine.",
                              ["model_name"], registry=self.registry).labels(model_name)

    def watch_engine(self, engine) -> None:
        """Read the running / waiting gauges from the engine's queues at scrape time."""
        self._running.set_function(lambda: len(engine.running))
        self._waiting.set_function(lambda: len(engine.waiting))

    def observe_verify(self, batch: list[VerifyRequest], results: list[VerifyResult]) -> None:
        """Count one verify call: batch size, per-request budgets, drafts and accepted tokens per position."""
        self.verify_batch.observe(len(batch))
        self.verify_tokens.observe(sum(1 + len(item.draft_ids) for item in batch))
        for item, res in zip(batch, results, strict=True):
            drafted = len(item.draft_ids)
            self.budget.observe(drafted)
            if drafted == 0:
                continue
            accepted = min(res.accepted, drafted)
            self.num_drafts.inc()
            self.num_draft_tokens.inc(drafted)
            self.num_accepted_tokens.inc(accepted)
            for position in range(accepted):
                self._per_pos.labels(self.model_name, str(position)).inc()

    def finished(self, reason: str) -> None:
        """Count one finished engine request (`stop`, `length`, `abort`, `error`)."""
        self._success.labels(self.model_name, reason).inc()

    def render(self) -> bytes:
        """The text exposition of this app's registry."""
        return generate_latest(self.registry)


class RequestTimer:
    """Latency bookkeeping of one engine request: TTFT, inter-delta latency, end-to-end."""

    def __init__(self, metrics: GatewayMetrics):
        self.metrics = metrics
        self.start = self.last = time.perf_counter()
        self.seen_token = False

    def delta(self, n_tokens: int) -> None:
        """A delta with `n_tokens` new tokens arrived."""
        if n_tokens == 0:
            return
        now = time.perf_counter()
        (self.metrics.itl if self.seen_token else self.metrics.ttft).observe(now - self.last)
        self.seen_token, self.last = True, now

    def finish(self, reason: str) -> None:
        """The request ended with `reason`; aborted and failed requests do not count toward e2e latency."""
        self.metrics.finished(reason)
        if reason in ("stop", "length"):
            self.metrics.e2e.observe(time.perf_counter() - self.start)

"""`VerifierServer`: a `LocalVerifier` behind the `specserve.v1.Verifier` gRPC service.

The server adds what the in-process verifier leaves to its caller: per-item validation (one bad
session never fails a batch), session leases, idempotent retries and stale-call rejection keyed by
`committed_len`, the SPS(B) profile at start-up, and draining. All batch handlers run on the model
thread (see `ModelServer`).
"""

from __future__ import annotations

import logging

import grpc

from services.common.codec import OK, Code, ItemError, check_ids, fingerprint, q_from_proto, sampling_from_proto
from services.common.codec import tensor_to_proto as encode
from services.common.host import ModelServer
from services.verifier.settings import VerifierSettings
from specserve.engine.verifier import LocalVerifier, OpenRequest, VerifyRequest
from specserve.target.profile import profile_plain, profile_sps
from specserve.v1 import common_pb2, verifier_pb2, verifier_pb2_grpc

log = logging.getLogger(__name__)


class VerifierServer(ModelServer):
    """Serves one target. `verifier` defaults to the model named by `settings` (loaded here)."""

    service_name = verifier_pb2.DESCRIPTOR.services_by_name["Verifier"].full_name

    def __init__(self, settings: VerifierSettings, verifier: LocalVerifier | None = None):
        super().__init__(settings)
        self.verifier = verifier or build_verifier(settings)
        self.target = self.verifier.target
        self.sps: dict[int, float] = {}  # SPS(B), fixed by `prepare`
        self.plain_sps: dict[int, float] = {}  # SPS(B) of plain rounds (B sessions of one token), fixed by `prepare`

    # ---- lifecycle hooks ------------------------------------------------------------------------
    def add_servicer(self, server: grpc.aio.Server) -> None:
        verifier_pb2_grpc.add_VerifierServicer_to_server(_Servicer(self), server)

    async def prepare(self) -> None:
        s = self.settings
        given = self.verifier.load()
        self.sps, self.plain_sps = dict(s.sps or given.sps), dict(s.plain_sps or given.plain_sps)
        if not self.sps:
            self.sps, self.plain_sps = await self.on_model_thread(self._profile)
            log.info("SPS(B) profiled: %s; plain rounds: %s", {b: round(v, 1) for b, v in self.sps.items()},
                     {b: round(v, 1) for b, v in self.plain_sps.items()})

    def _profile(self) -> tuple[dict[int, float], dict[int, float]]:
        """SPS(B) of verifies over `sps_sizes`, and of plain rounds up to as many sessions (at most `max_sessions`)."""
        s, taps = self.settings, self.verifier.tap_layers
        sps = profile_sps(self.target, s.sps_sizes, s.sps_context, repeats=s.sps_repeats, taps=taps)
        sessions = min(max(s.sps_sizes), s.max_sessions)
        return sps, profile_plain(self.target, sessions, s.sps_context, repeats=s.sps_repeats, taps=taps)

    def drop_session(self, session: str) -> None:
        self.verifier.close(session)

    # ---- batch handlers (model thread) ----------------------------------------------------------
    def open_batch(self, request: verifier_pb2.VerifierOpenRequest) -> verifier_pb2.VerifierOpenResponse:
        results: list = [None] * len(request.items)
        todo: list[tuple[int, OpenRequest, bytes]] = []
        for i, item in enumerate(request.items):
            digest = fingerprint(item)
            cached = self.sessions.replay(item.session, "open", 0, digest)
            if cached is not None:
                results[i] = cached
                continue
            try:
                todo.append((i, self._open_request(item, {r.session for _, r, _ in todo}, len(todo)), digest))
            except ItemError as exc:
                results[i] = verifier_pb2.VerifierOpenResult(session=item.session, status=exc.status())
        if todo:
            try:
                opened = self.verifier.open([r for _, r, _ in todo])
            except Exception as exc:  # the model failed for the whole sub-batch; LocalVerifier cleaned up
                log.exception("prefill of %d sessions failed", len(todo))
                for i, r, _ in todo:
                    results[i] = _failed_open(r.session, Code.INTERNAL, f"prefill failed: {exc}")
            else:
                for (i, r, digest), res in zip(todo, opened, strict=True):
                    msg = verifier_pb2.VerifierOpenResult(session=r.session, status=OK, token=res.token)
                    if res.taps is not None:
                        msg.taps.CopyFrom(encode(res.taps))
                    self.sessions.open(r.session)
                    self.sessions.remember(r.session, "open", 0, digest, msg)
                    results[i] = msg
        return verifier_pb2.VerifierOpenResponse(results=results)

    def _open_request(self, item: verifier_pb2.VerifierOpenItem, batch: set[str], adding: int) -> OpenRequest:
        if not item.session:
            raise ItemError(Code.INVALID_ARGUMENT, "session: must be a non-empty id")
        if item.session in self.sessions or item.session in batch:
            raise ItemError(Code.ALREADY_EXISTS, f"session {item.session!r} is already open")
        if len(self.sessions) + adding >= self.settings.max_sessions:
            raise ItemError(Code.RESOURCE_EXHAUSTED, f"the verifier holds its maximum of "
                                                     f"{self.settings.max_sessions} sessions")
        prompt = check_ids(item.prompt_ids, self.verifier.vocab_size, "prompt_ids")
        if not prompt:
            raise ItemError(Code.INVALID_ARGUMENT, "prompt_ids: must contain at least one token")
        if len(prompt) >= self.verifier.max_context:
            raise ItemError(Code.OUT_OF_RANGE, f"prompt_ids: {len(prompt)} tokens leave no room in the context "
                                               f"window of {self.verifier.max_context}")
        resume = None
        if item.HasField("resume_token"):
            resume = check_ids([item.resume_token], self.verifier.vocab_size, "resume_token")[0]
        return OpenRequest(item.session, prompt, sampling_from_proto(item.sampling), resume_token=resume,
                           want_taps=not item.skip_taps, defer_taps=item.defer_taps)

    def verify_batch(self, request: verifier_pb2.VerifyRequest) -> verifier_pb2.VerifyResponse:
        results: list = [None] * len(request.items)
        todo: list[tuple[int, VerifyRequest, bytes]] = []
        for i, item in enumerate(request.items):
            digest = fingerprint(item)
            cached = self.sessions.replay(item.session, "verify", item.committed_len, digest)
            if cached is not None:
                results[i] = cached
                continue
            try:
                todo.append((i, self._verify_request(item, {r.session for _, r, _ in todo}), digest))
            except ItemError as exc:
                results[i] = verifier_pb2.VerifyResult(session=item.session, status=exc.status())
        if todo:
            try:
                verified = self.verifier.verify([r for _, r, _ in todo])
            except Exception as exc:  # the forward failed before any session changed
                log.exception("verification of %d sessions failed", len(todo))
                for i, r, _ in todo:
                    results[i] = verifier_pb2.VerifyResult(session=r.session, status=common_pb2.Status(
                        code=Code.INTERNAL, message=f"verification failed: {exc}"))
            else:
                for (i, r, digest), res in zip(todo, verified, strict=True):
                    msg = verifier_pb2.VerifyResult(session=r.session, status=OK, accepted=res.accepted,
                                                    tokens=res.tokens)
                    if res.taps is not None:
                        msg.taps.CopyFrom(encode(res.taps))
                    self.sessions.remember(r.session, "verify", r.committed_len, digest, msg)
                    results[i] = msg
        return verifier_pb2.VerifyResponse(results=results)

    def _held(self, item: verifier_pb2.VerifyItem | verifier_pb2.TakeTapsItem, batch: set[str] = frozenset(),
              lost: str = "") -> int:
        """The committed tokens the server holds of `item`'s session, which its `committed_len` must equal (the
        lease renewed); NOT_FOUND (`lost` says what went with the session), INVALID_ARGUMENT for a session already in
        `batch`, FAILED_PRECONDITION for a stale call."""
        if item.session not in self.sessions:
            raise ItemError(Code.NOT_FOUND, f"session {item.session!r} is not open here (never opened, closed, or "
                                            f"evicted after {self.sessions.ttl_s:g}s idle){lost}")
        if item.session in batch:
            raise ItemError(Code.INVALID_ARGUMENT, f"session {item.session!r} appears twice in one batch")
        self.sessions.touch(item.session)
        held = self.target.length(item.session) + 1
        if item.committed_len != held:
            raise ItemError(Code.FAILED_PRECONDITION, f"committed_len {item.committed_len} is stale: the verifier "
                                                      f"holds {held} committed tokens of {item.session!r}")
        return held

    def _verify_request(self, item: verifier_pb2.VerifyItem, batch: set[str]) -> VerifyRequest:
        held = self._held(item, batch)
        drafts = check_ids(item.draft_ids, self.verifier.vocab_size, "draft_ids")
        if held + len(drafts) > self.verifier.max_context:
            raise ItemError(Code.OUT_OF_RANGE, f"draft_ids: {len(drafts)} drafts after {held} tokens exceed the "
                                               f"context window of {self.verifier.max_context}")
        if item.position < 0:
            raise ItemError(Code.INVALID_ARGUMENT, f"position: must be >= 0, got {item.position}")
        q = q_from_proto(item.q, len(drafts), self.verifier.vocab_size) if item.HasField("q") else None
        return VerifyRequest(item.session, item.committed_len, drafts, q, sampling_from_proto(item.sampling),
                             position=item.position, want_taps=not item.skip_taps, defer_taps=item.defer_taps)

    def take_taps_batch(self, request: verifier_pb2.TakeTapsRequest) -> verifier_pb2.TakeTapsResponse:
        results = []
        for item in request.items:
            digest = fingerprint(item)
            cached = self.sessions.replay(item.session, "taps", item.committed_len, digest)
            if cached is None:
                try:
                    cached = self._take_taps(item)
                except ItemError as exc:
                    cached = verifier_pb2.TakeTapsResult(session=item.session, status=exc.status())
                else:
                    self.sessions.remember(item.session, "taps", item.committed_len, digest, cached)
            results.append(cached)
        return verifier_pb2.TakeTapsResponse(results=results)

    def _take_taps(self, item: verifier_pb2.TakeTapsItem) -> verifier_pb2.TakeTapsResult:
        self._held(item, lost=": its held taps are lost")
        [taps] = self.verifier.take_taps([item.session])
        return verifier_pb2.TakeTapsResult(session=item.session, status=OK, taps=encode(taps))

    def close_batch(self, request: common_pb2.CloseSessionsRequest) -> common_pb2.CloseSessionsResponse:
        self.close_sessions(request.sessions)
        return common_pb2.CloseSessionsResponse(statuses=[OK] * len(request.sessions))

    # ---- facts (event loop; read-only) ----------------------------------------------------------
    def load_report(self) -> verifier_pb2.LoadReport:
        return verifier_pb2.LoadReport(
            sps=[verifier_pb2.SpsPoint(tokens=b, steps_per_second=v) for b, v in sorted(self.sps.items())],
            running_sessions=len(self.sessions), queue_depth=max(0, self.queue_depth - 1),
            cached_tokens=sum(self.target.cache.lengths), max_sessions=self.settings.max_sessions,
            draining=self.draining, padding_cost=self.target.padding_cost,
            plain_sps=[verifier_pb2.SpsPoint(tokens=b, steps_per_second=v) for b, v in sorted(self.plain_sps.items())])

    def info(self) -> verifier_pb2.VerifierInfo:
        return verifier_pb2.VerifierInfo(
            vocab_size=self.verifier.vocab_size, max_context=self.verifier.max_context,
            eos_token_ids=list(self.verifier.eos_token_ids), tap_layers=list(self.verifier.tap_layers),
            model=self.settings.model, dtype=str(self.target.dtype).removeprefix("torch."))


def _failed_open(session: str, code: int, message: str) -> verifier_pb2.VerifierOpenResult:
    return verifier_pb2.VerifierOpenResult(session=session, status=common_pb2.Status(code=code, message=message))


class _Servicer(verifier_pb2_grpc.VerifierServicer):
    """The RPC surface: each batch runs on the model thread; facts are answered from the event loop."""

    def __init__(self, server: VerifierServer):
        self.server = server

    async def Open(self, request, context):
        """Prefill sessions and sample their first tokens; refused (UNAVAILABLE) while draining."""
        if self.server.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the verifier is draining: open on another replica")
        return await self.server.on_model_thread(self.server.open_batch, request)

    async def Verify(self, request, context):
        """Verify each session's drafts in one target forward (idempotent per session and committed_len)."""
        return await self.server.on_model_thread(self.server.verify_batch, request)

    async def TakeTaps(self, request, context):
        """Hand over the taps deferred calls held back (idempotent per session and committed_len)."""
        return await self.server.on_model_thread(self.server.take_taps_batch, request)

    async def Close(self, request, context):
        """Close sessions and free their KV cache."""
        return await self.server.on_model_thread(self.server.close_batch, request)

    async def GetLoad(self, request, context):
        """SPS(B) table, sessions, queue depth and cache usage."""
        return self.server.load_report()

    async def GetInfo(self, request, context):
        """The target's static facts."""
        return self.server.info()


def build_verifier(settings: VerifierSettings) -> LocalVerifier:
    """Load the target named by the settings and wrap it in a LocalVerifier tapping `tap_layers`."""
    from specserve.target.model import CausalLM

    target = CausalLM.from_pretrained(settings.model, dtype=settings.dtype, device=settings.device,
                                      max_len=settings.max_len, load_tokenizer=False)
    return LocalVerifier(target, tap_layers=settings.tap_layers)

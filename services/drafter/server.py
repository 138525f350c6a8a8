"""`DrafterServer`: any `Drafter` behind the `specserve.v1.Drafter` gRPC service.

Like the verifier server it adds per-item validation, leases, idempotent retries and stale-call
rejection around the in-process drafter. The drafter holds a session's committed tokens; the server
tracks how many (`held`), so that a call is processed only when it extends them: a call older than
the server's state is stale (FAILED_PRECONDITION), a repeat of the session's last call is answered
from the cache, and a call that skips tokens is refused.
"""

from __future__ import annotations

import logging
import types

import grpc
import torch

from services.common.codec import (
    OK,
    Code,
    ItemError,
    check_ids,
    fingerprint,
    optional_tensor,
    q_to_proto,
    sampling_from_proto,
)
from services.common.host import ModelServer
from services.drafter.settings import DrafterSettings
from specserve.drafters.base import DraftBlock, Drafter, DraftRequest
from specserve.errors import SpecServeError
from specserve.v1 import common_pb2, drafter_pb2, drafter_pb2_grpc

log = logging.getLogger(__name__)


class DrafterServer(ModelServer):
    """Serves one drafter. `drafter` defaults to the one the settings' spec string names (built here)."""

    service_name = drafter_pb2.DESCRIPTOR.services_by_name["Drafter"].full_name

    def __init__(self, settings: DrafterSettings, drafter: Drafter | None = None):
        super().__init__(settings)
        self.drafter = drafter or build_drafter(settings)
        self._held: dict[str, int] = {}  # committed tokens each session's drafter state holds

    def add_servicer(self, server: grpc.aio.Server) -> None:
        drafter_pb2_grpc.add_DrafterServicer_to_server(_Servicer(self), server)

    def drop_session(self, session: str) -> None:
        self.drafter.close(session)
        self._held.pop(session, None)

    # ---- batch handlers (model thread) ----------------------------------------------------------
    def open_batch(self, request: drafter_pb2.DrafterOpenRequest) -> drafter_pb2.DrafterOpenResponse:
        results = []
        for item in request.items:
            digest = fingerprint(item)
            cached = self.sessions.replay(item.session, "open", 0, digest)
            if cached is None:
                cached = drafter_pb2.DrafterOpenResult(session=item.session, status=self._open(item, digest))
            results.append(cached)
        return drafter_pb2.DrafterOpenResponse(results=results)

    def _open(self, item: drafter_pb2.DrafterOpenItem, digest: bytes) -> common_pb2.Status:
        try:
            if not item.session:
                raise ItemError(Code.INVALID_ARGUMENT, "session: must be a non-empty id")
            if item.session in self.sessions:
                raise ItemError(Code.ALREADY_EXISTS, f"session {item.session!r} is already open")
            if len(self.sessions) >= self.settings.max_sessions:
                raise ItemError(Code.RESOURCE_EXHAUSTED, f"the drafter holds its maximum of "
                                                         f"{self.settings.max_sessions} sessions")
            tokens = check_ids(item.token_ids, self.drafter.vocab_size, "token_ids")
            if not tokens:
                raise ItemError(Code.INVALID_ARGUMENT, "token_ids: must contain at least one token")
            taps = optional_tensor(item, "taps", "taps")
            try:
                self.drafter.open(item.session, tokens, taps)
            except (SpecServeError, ValueError) as exc:
                raise ItemError(Code.INVALID_ARGUMENT, str(exc)) from None
        except ItemError as exc:
            return exc.status()
        except Exception as exc:
            log.exception("drafter open failed for %s", item.session)
            return common_pb2.Status(code=Code.INTERNAL, message=f"open failed: {exc}")
        self.sessions.open(item.session)
        self._held[item.session] = len(tokens)
        self.sessions.remember(item.session, "open", 0, digest,
                               drafter_pb2.DrafterOpenResult(session=item.session, status=OK))
        return OK

    def propose_batch(self, request: drafter_pb2.ProposeRequest) -> drafter_pb2.ProposeResponse:
        results: list = [None] * len(request.items)
        todo: list[tuple[int, DraftRequest, bytes]] = []
        for i, item in enumerate(request.items):
            digest = fingerprint(item)
            cached = self.sessions.replay(item.session, "propose", item.committed_len, digest)
            if cached is not None:
                results[i] = cached
                continue
            try:
                todo.append((i, self._draft_request(item, {r.session for _, r, _ in todo}), digest))
            except ItemError as exc:
                results[i] = drafter_pb2.ProposeResult(session=item.session, status=exc.status())
        if todo:
            try:
                blocks = self.drafter.propose([r for _, r, _ in todo])
                if len(blocks) != len(todo):
                    raise RuntimeError(f"the drafter returned {len(blocks)} blocks for {len(todo)} sessions")
            except Exception as exc:
                log.exception("drafting failed for %d sessions", len(todo))
                for i, r, _ in todo:
                    results[i] = drafter_pb2.ProposeResult(session=r.session, status=common_pb2.Status(
                        code=Code.INTERNAL, message=f"drafting failed: {exc}"))
            else:
                for (i, r, digest), block in zip(todo, blocks, strict=True):
                    self._held[r.session] = r.committed_len
                    results[i] = _encode_block(r.session, block)
                    self.sessions.remember(r.session, "propose", r.committed_len, digest, results[i])
        return drafter_pb2.ProposeResponse(results=results)

    def _draft_request(self, item: drafter_pb2.ProposeItem, batch: set[str]) -> DraftRequest:
        if item.session not in self.sessions:
            raise ItemError(Code.NOT_FOUND, f"session {item.session!r} is not open here (never opened, closed, or "
                                            f"evicted after {self.sessions.ttl_s:g}s idle)")
        if item.session in batch:
            raise ItemError(Code.INVALID_ARGUMENT, f"session {item.session!r} appears twice in one batch")
        self.sessions.touch(item.session)
        held, base = self._held[item.session], item.committed_len - len(item.new_ids)
        if item.committed_len < held:
            raise ItemError(Code.FAILED_PRECONDITION, f"committed_len {item.committed_len} is stale: the drafter "
                                                      f"holds {held} committed tokens of {item.session!r}")
        if not 0 <= base <= held:
            raise ItemError(Code.FAILED_PRECONDITION, f"committed_len {item.committed_len} with {len(item.new_ids)} "
                                                      f"new tokens skips tokens: the drafter holds {held}")
        if item.max_tokens < 0 or item.position < 0:
            raise ItemError(Code.INVALID_ARGUMENT, "max_tokens and position: must be >= 0")
        return DraftRequest(session=item.session, new_ids=check_ids(item.new_ids, self.drafter.vocab_size, "new_ids"),
                            committed_len=item.committed_len, max_tokens=item.max_tokens,
                            sampling=sampling_from_proto(item.sampling), position=item.position,
                            new_taps=optional_tensor(item, "new_taps", "new_taps"))

    def close_batch(self, request: common_pb2.CloseSessionsRequest) -> common_pb2.CloseSessionsResponse:
        self.close_sessions(request.sessions)
        return common_pb2.CloseSessionsResponse(statuses=[OK] * len(request.sessions))

    def info(self) -> drafter_pb2.DrafterInfo:
        msg = drafter_pb2.DrafterInfo(target_layer_ids=list(self.drafter.target_layer_ids),
                                      max_block=self.drafter.max_block, drafter=self.settings.drafter)
        if self.drafter.vocab_size is not None:
            msg.vocab_size = self.drafter.vocab_size
        return msg


def _encode_block(session: str, block: DraftBlock) -> drafter_pb2.ProposeResult:
    if block.error is not None:
        return drafter_pb2.ProposeResult(session=session, status=common_pb2.Status(
            code=Code.FAILED_PRECONDITION, message=block.error))
    msg = drafter_pb2.ProposeResult(session=session, status=OK, ids=block.ids)
    if block.q is not None:
        msg.q.CopyFrom(q_to_proto(block.q))
    if block.confidence is not None:
        msg.confidence.extend(block.confidence.float().tolist())
    return msg


class _Servicer(drafter_pb2_grpc.DrafterServicer):
    """The RPC surface: each batch runs on the model thread; facts are answered from the event loop."""

    def __init__(self, server: DrafterServer):
        self.server = server

    async def Open(self, request, context):
        """Open drafter sessions; refused (UNAVAILABLE) while draining."""
        if self.server.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the drafter is draining")
        return await self.server.on_model_thread(self.server.open_batch, request)

    async def Propose(self, request, context):
        """Commit new tokens and draft the next block of every session (idempotent per committed_len)."""
        return await self.server.on_model_thread(self.server.propose_batch, request)

    async def Close(self, request, context):
        """Close drafter sessions."""
        return await self.server.on_model_thread(self.server.close_batch, request)

    async def GetInfo(self, request, context):
        """The drafter's static facts."""
        return self.server.info()


def build_drafter(settings: DrafterSettings) -> Drafter:
    """Build the drafter of the settings' spec string with the shared registry.

    The registry reads the target's dtype and device (to place a model-based drafter) and, for a tap
    draft saved without its frozen head, the target's embedding and LM head. A drafter server holds no
    target, so it passes dtype and device from its settings and reads only those two tensors of
    `settings.target`.
    """
    from specserve.drafters.checkpoint import load_frozen_head
    from specserve.drafters.registry import build_drafter as from_spec

    head = load_frozen_head(settings.target) if settings.target else None
    placement = types.SimpleNamespace(dtype=getattr(torch, settings.dtype), device=torch.device(settings.device),
                                      model=head)
    drafter = from_spec(settings.drafter, placement, settings.block_size)
    if drafter is None:
        raise ValueError(f"drafter spec {settings.drafter!r} builds no drafter; a drafter service needs one")
    return drafter

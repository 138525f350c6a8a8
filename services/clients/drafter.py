"""`RemoteDrafter`: the `Drafter` protocol over a drafter service.

Failures raise: the engine then continues the affected requests without drafts (plain decoding, same
output). After a transport failure (the server is down or missed its deadline) the client fails fast
for `cooldown_s` instead of making every new request wait for the deadline again; once the server
answers again, new requests draft again.
"""

from __future__ import annotations

import logging
import time

import grpc
import torch

from services.common.codec import Code, q_from_proto, sampling_to_proto, tensor_to_proto
from services.common.transport import DEFAULT_MAX_MESSAGE_BYTES, RemoteCallError, client_options, grpc_code
from specserve.drafters.base import DraftBlock, DraftRequest
from specserve.v1 import common_pb2, drafter_pb2, drafter_pb2_grpc

log = logging.getLogger(__name__)
_TRANSPORT_FAILURES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class RemoteDrafter:
    """A drafter service at `target` ("host:port"). Not thread-safe: the engine's thread calls it.

    `timeout_s` is the deadline of Open and Propose (the engine waits for it every round); the connection
    is made (and the drafter's facts fetched) in the constructor, waiting at most `connect_timeout_s`.
    """

    def __init__(self, target: str, timeout_s: float = 5.0, connect_timeout_s: float = 10.0,
                 cooldown_s: float = 1.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.target = target
        self.timeout_s, self.cooldown_s = timeout_s, cooldown_s
        self._channel = grpc.insecure_channel(target, options=client_options(max_message_bytes))
        self._stub = drafter_pb2_grpc.DrafterStub(self._channel)
        self._down_until = 0.0
        try:
            info = self._stub.GetInfo(common_pb2.GetInfoRequest(), timeout=connect_timeout_s, wait_for_ready=True)
        except grpc.RpcError as exc:
            self._channel.close()
            raise RemoteCallError(target, exc.code(), f"drafter GetInfo failed: {exc.details()}") from None
        self.info = info
        self._target_layer_ids = tuple(info.target_layer_ids)
        self._max_block = info.max_block
        self._vocab_size = info.vocab_size if info.HasField("vocab_size") else None

    @property
    def target_layer_ids(self) -> tuple[int, ...]:
        return self._target_layer_ids

    @property
    def max_block(self) -> int:
        return self._max_block

    @property
    def vocab_size(self) -> int | None:
        return self._vocab_size

    def open(self, session: str, token_ids: list[int], taps: torch.Tensor | None) -> None:
        """Open one session; raises `RemoteCallError` when the server or the item fails."""
        item = drafter_pb2.DrafterOpenItem(session=session, token_ids=token_ids)
        if taps is not None:
            item.taps.CopyFrom(tensor_to_proto(taps))
        [result] = self._call(self._stub.Open, drafter_pb2.DrafterOpenRequest(items=[item])).results
        if result.status.code != Code.OK:
            raise RemoteCallError(self.target, grpc_code(result.status.code), result.status.message)

    def propose(self, batch: list[DraftRequest]) -> list[DraftBlock]:
        """One Propose RPC for the batch; a failed item comes back as a block with `error` set."""
        if not batch:
            return []
        items = [_propose_item(r) for r in batch]
        results = self._call(self._stub.Propose, drafter_pb2.ProposeRequest(items=items)).results
        if len(results) != len(batch):
            raise RemoteCallError(self.target, grpc.StatusCode.INTERNAL,
                                  f"Propose answered {len(results)} results for {len(batch)} items")
        return [self._block(res) for res in results]

    def close(self, session: str) -> None:
        """Close a session, best effort: a lost close is reclaimed by the server's lease TTL."""
        if time.monotonic() < self._down_until:
            return
        try:
            self._stub.Close(common_pb2.CloseSessionsRequest(sessions=[session]), timeout=self.timeout_s)
        except grpc.RpcError as exc:
            log.debug("drafter close of %s failed (%s); the lease will reclaim it", session, exc.code())

    def close_channels(self) -> None:
        self._channel.close()

    # ---- helpers --------------------------------------------------------------------------------
    def _call(self, method, request):
        if time.monotonic() < self._down_until:
            raise RemoteCallError(self.target, grpc.StatusCode.UNAVAILABLE,
                                  f"drafter marked down for {self._down_until - time.monotonic():.1f}s more")
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            if exc.code() in _TRANSPORT_FAILURES:
                self._down_until = time.monotonic() + self.cooldown_s
            raise RemoteCallError(self.target, exc.code(), exc.details() or "") from None

    def _block(self, res: drafter_pb2.ProposeResult) -> DraftBlock:
        if res.status.code != Code.OK:
            return DraftBlock(ids=[], error=f"{Code.Name(res.status.code)}: {res.status.message}")
        ids = list(res.ids)
        q = q_from_proto(res.q, len(ids), self._vocab_size) if res.HasField("q") else None
        confidence = torch.tensor(list(res.confidence), dtype=torch.float32) if len(res.confidence) else None
        return DraftBlock(ids=ids, q=q, confidence=confidence)


def _propose_item(r: DraftRequest) -> drafter_pb2.ProposeItem:
    item = drafter_pb2.ProposeItem(session=r.session, new_ids=r.new_ids, committed_len=r.committed_len,
                                   max_tokens=r.max_tokens, sampling=sampling_to_proto(r.sampling),
                                   position=r.position)
    if r.new_taps is not None:
        item.new_taps.CopyFrom(tensor_to_proto(r.new_taps))
    return item


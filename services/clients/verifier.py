"""`RemoteVerifier`: the `Verifier` interface over one or more verifier replicas, with transparent failover.

The client keeps, for every session, what the engine holds as the truth: the prompt, the sampling
parameters and every committed token. A replica's KV cache is a function of exactly that, so when a
replica fails (UNAVAILABLE, or its deadline missed twice in a row) or answers that it lost a session
(NOT_FOUND after a restart or lease eviction, FAILED_PRECONDITION after a divergence), the client
re-opens the session on a healthy replica from prompt + committed tokens (`resume_token` = the newest
one) and repeats the call there. Every random draw is keyed by (seed, position), so the repeated round
commits the same tokens and the engine never notices. A call repeated on the same replica is
idempotent: the server answers it from its last-result cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import torch

from services.common.codec import Code, optional_tensor, q_to_proto, sampling_to_proto
from services.common.transport import DEFAULT_MAX_MESSAGE_BYTES, RemoteCallError, client_options, grpc_code
from specserve.decoding.budget import LoadReport
from specserve.decoding.sampling import SamplingParams
from specserve.engine.verifier import OpenRequest, OpenResult, VerifyRequest, VerifyResult
from specserve.errors import SessionError
from specserve.v1 import common_pb2, verifier_pb2, verifier_pb2_grpc

log = logging.getLogger(__name__)
# a replica that is down, stopping (it cancels in-flight calls) or missed its deadline twice
_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
_LOST = (Code.NOT_FOUND, Code.FAILED_PRECONDITION)  # the replica's copy of the session is gone or wrong


@dataclass(eq=False)
class _Replica:
    target: str
    channel: grpc.Channel
    stub: verifier_pb2_grpc.VerifierStub
    sessions: int = 0  # this client's sessions placed here
    down_until: float = 0.0  # no new sessions here before this time (unless no replica is up)


@dataclass
class _Session:
    prompt: list[int]
    sampling: SamplingParams
    committed: list[int]  # output tokens committed so far: the first token, then every round's tokens
    replica: _Replica


class RemoteVerifier:
    """Verifier replicas at `targets` ("host:port", one or more). Not thread-safe: the engine's thread calls
    open/verify/close; `load`, `replica_loads` and the facts may be read from any thread.

    `timeout_s` is the deadline of Verify (and of Open unless `open_timeout_s` is given); a replica that
    failed is avoided for new sessions for `retry_down_s`. The replicas must serve the same target (checked
    at construction for those that answer; one that is down then starts marked down).
    """

    def __init__(self, targets: str | Sequence[str], timeout_s: float = 30.0, open_timeout_s: float | None = None,
                 connect_timeout_s: float = 10.0, retry_down_s: float = 2.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        targets = [targets] if isinstance(targets, str) else list(targets)
        if not targets:
            raise ValueError("RemoteVerifier needs at least one replica address")
        self.timeout_s, self.open_timeout_s = timeout_s, open_timeout_s or timeout_s
        self.retry_down_s = retry_down_s
        self._replicas = []
        for t in targets:
            channel = grpc.insecure_channel(t, options=client_options(max_message_bytes))
            self._replicas.append(_Replica(t, channel, verifier_pb2_grpc.VerifierStub(channel)))
        self._sessions: dict[str, _Session] = {}
        self._sps: dict[int, float] | None = None
        self._plain_sps: dict[int, float] = {}
        self._padding_cost = 0.0
        self.info = self._connect(connect_timeout_s)
        self.vocab_size = self.info.vocab_size
        self.max_context = self.info.max_context
        self.eos_token_ids = tuple(self.info.eos_token_ids)
        self.tap_layers = tuple(self.info.tap_layers)

    def _connect(self, timeout_s: float) -> verifier_pb2.VerifierInfo:
        """Fetch every replica's facts (they must agree) and the SPS table; unreachable replicas start down."""
        infos = []
        for rep in self._replicas:
            try:
                info = rep.stub.GetInfo(common_pb2.GetInfoRequest(), timeout=timeout_s, wait_for_ready=True)
                infos.append(info)
                if self._sps is None:
                    load = rep.stub.GetLoad(verifier_pb2.GetLoadRequest(), timeout=timeout_s)
                    self._sps = {p.tokens: p.steps_per_second for p in load.sps}
                    self._plain_sps = {p.tokens: p.steps_per_second for p in load.plain_sps}
                    self._padding_cost = load.padding_cost
            except grpc.RpcError as exc:
                log.warning("verifier replica %s unreachable at start-up (%s)", rep.target, exc.code())
                self._mark_down(rep)
        if not infos:
            self.close_channels()
            raise RemoteCallError(",".join(r.target for r in self._replicas), grpc.StatusCode.UNAVAILABLE,
                                  "no verifier replica answered GetInfo")
        self._sps = self._sps or {}
        facts = {(i.vocab_size, i.max_context, tuple(i.eos_token_ids), tuple(i.tap_layers)) for i in infos}
        if len(facts) > 1:
            self.close_channels()
            raise RemoteCallError(self._replicas[0].target, grpc.StatusCode.FAILED_PRECONDITION,
                                  f"verifier replicas serve different targets: {sorted(facts)}")
        return infos[0]

    # ---- the Verifier interface -----------------------------------------------------------------
    def open(self, batch: list[OpenRequest]) -> list[OpenResult]:
        """Prefill on the least-loaded healthy replicas; an item that fails everywhere carries its error."""
        opened, failed = self._open_items([_open_item(r) for r in batch], avoid=set())
        results = []
        for r in batch:
            if r.session in failed:
                code, message = failed[r.session]
                results.append(OpenResult(r.session, -1, None, error=f"open failed ({code.name}): {message}"))
                continue
            rep, res = opened[r.session]
            rep.sessions += 1
            self._sessions[r.session] = _Session(list(r.prompt_ids), r.sampling, [res.token], rep)
            results.append(OpenResult(r.session, res.token, optional_tensor(res, "taps", "taps")))
        return results

    def verify(self, batch: list[VerifyRequest]) -> list[VerifyResult]:
        """Verify on each session's replica (in parallel across replicas), failing over transparently."""
        for r in batch:
            self._check_view(r)
        done: dict[str, VerifyResult] = {}
        todo, avoid, slow = list(batch), set(), set()
        for _ in range(2 * len(self._replicas) + 2):
            if not todo:
                break
            todo, lost = self._verify_round(todo, done, avoid, slow)
            if lost:
                self._reopen(lost, avoid)
        if todo:
            raise RemoteCallError("verifier", grpc.StatusCode.UNAVAILABLE,
                                  f"{len(todo)} sessions could not be verified on any replica")
        return [done[r.session] for r in batch]

    def _verify_round(self, todo: list[VerifyRequest], done: dict[str, VerifyResult], avoid: set[_Replica],
                      slow: set[_Replica]) -> tuple[list[VerifyRequest], list[str]]:
        """One Verify per replica; returns the requests to repeat and the sessions to re-open first."""
        groups: dict[_Replica, list[VerifyRequest]] = {}
        for r in todo:
            groups.setdefault(self._sessions[r.session].replica, []).append(r)
        calls = _fan_out([(rep, reqs, rep.stub.Verify, verifier_pb2.VerifyRequest(items=list(map(_verify_item, reqs))))
                          for rep, reqs in groups.items()], self.timeout_s)
        retry, lost = [], []
        for rep, reqs, outcome in calls:
            try:
                results = outcome().results
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and rep not in slow:
                    slow.add(rep)  # maybe only slow: the same call again is idempotent
                elif exc.code() in _DOWN:
                    log.warning("verifier %s failed (%s): moving %d sessions", rep.target, exc.code(), len(reqs))
                    self._mark_down(rep)
                    avoid.add(rep)
                    lost += [r.session for r in reqs]
                else:
                    raise RemoteCallError(rep.target, exc.code(), exc.details() or "") from None
                retry += reqs
                continue
            for r, res in zip(reqs, results, strict=True):
                if res.status.code == Code.OK:
                    self._sessions[r.session].committed.extend(res.tokens)
                    done[r.session] = VerifyResult(r.session, res.accepted, list(res.tokens),
                                                   optional_tensor(res, "taps", "taps"))
                elif res.status.code in _LOST:
                    log.warning("verifier %s lost session %s (%s): re-opening it", rep.target, r.session,
                                res.status.message)
                    retry.append(r)
                    lost.append(r.session)
                else:  # a fault of this item alone: it fails, the rest of the batch goes on
                    done[r.session] = VerifyResult(r.session, 0, [], None, error=f"verify failed on {rep.target} "
                                                   f"({grpc_code(res.status.code).name}): {res.status.message}")
        return retry, lost

    def take_taps(self, sessions: list[str]) -> list[torch.Tensor | None]:
        """The taps each session's replica held back (one TakeTaps per replica, in parallel). None for a session
        whose replica failed or no longer holds it (it was re-opened elsewhere): its held taps are lost, and the
        caller drops its drafter (decoding goes on, without drafts)."""
        groups: dict[_Replica, list[str]] = {}
        for session in sessions:
            groups.setdefault(self._sessions[session].replica, []).append(session)
        calls = _fan_out([(rep, group, rep.stub.TakeTaps, verifier_pb2.TakeTapsRequest(items=[
            verifier_pb2.TakeTapsItem(session=s, committed_len=self._committed_len(s)) for s in group]))
            for rep, group in groups.items()], self.timeout_s)
        taken: dict[str, torch.Tensor | None] = {}
        for rep, group, outcome in calls:
            try:
                results = outcome().results
            except grpc.RpcError as exc:
                log.warning("verifier %s failed TakeTaps (%s): %d sessions lose their held taps", rep.target,
                            exc.code(), len(group))
                continue
            for session, res in zip(group, results, strict=True):
                if res.status.code == Code.OK:
                    taken[session] = optional_tensor(res, "taps", "taps")
                else:
                    log.warning("verifier %s holds no taps of %s (%s)", rep.target, session, res.status.message)
        return [taken.get(s) for s in sessions]

    def close(self, session: str) -> None:
        """Forget a session and close it on its replica, best effort (the lease reclaims a lost close)."""
        s = self._sessions.pop(session, None)
        if s is not None:
            s.replica.sessions -= 1
            self._close_on(s.replica, session)

    def load(self) -> LoadReport:
        """The SPS table and padding cost fetched at start-up and this client's open sessions (no RPC: called every
        round)."""
        return LoadReport(sps=dict(self._sps or {}), running=len(self._sessions), padding_cost=self._padding_cost,
                          plain_sps=dict(self._plain_sps))

    # ---- for the gateway ------------------------------------------------------------------------
    def replica_loads(self, timeout_s: float = 1.0) -> dict[str, verifier_pb2.LoadReport | None]:
        """Every replica's full load report (None when it does not answer), for metrics and readiness."""
        out = {}
        for rep in self._replicas:
            try:
                out[rep.target] = rep.stub.GetLoad(verifier_pb2.GetLoadRequest(), timeout=timeout_s)
            except grpc.RpcError:
                out[rep.target] = None
        return out

    def close_channels(self) -> None:
        for rep in self._replicas:
            rep.channel.close()

    # ---- placement and failover -----------------------------------------------------------------
    def _open_items(self, items: list[verifier_pb2.VerifierOpenItem], avoid: set[_Replica]):
        """Open items, moving a replica's share to another when the replica fails.

        Returns ({session: (replica, result)}, {session: (grpc code, message)} for the items that failed).
        """
        opened, failed = {}, {}
        pending = list(items)
        while pending:
            groups = self._place(pending, avoid)
            if not groups:
                break
            calls = _fan_out([(rep, its, rep.stub.Open, verifier_pb2.VerifierOpenRequest(items=its))
                              for rep, its in groups.items()], self.open_timeout_s)
            pending = []
            for rep, its, outcome in calls:
                try:
                    results = outcome().results
                except grpc.RpcError as exc:
                    if exc.code() not in _DOWN:
                        failed.update({it.session: (exc.code(), exc.details() or "") for it in its})
                        continue
                    log.warning("verifier %s refused Open (%s): trying another replica", rep.target, exc.code())
                    self._mark_down(rep)
                    avoid.add(rep)
                    pending += its
                    continue
                for it, res in zip(its, results, strict=True):
                    if res.status.code == Code.OK:
                        opened[it.session] = (rep, res)
                    else:
                        failed[it.session] = (grpc_code(res.status.code), res.status.message)
        failed.update({it.session: (grpc.StatusCode.UNAVAILABLE, "no verifier replica is available")
                       for it in pending})
        return opened, failed

    def _place(self, items, avoid: set[_Replica]) -> dict[_Replica, list]:
        """Spread items over the least-loaded replicas: healthy ones, else any not failed in this call."""
        now = time.monotonic()
        candidates = [r for r in self._replicas if r not in avoid and r.down_until <= now]
        candidates = candidates or [r for r in self._replicas if r not in avoid]
        if not candidates:
            return {}
        load = {r: r.sessions for r in candidates}
        groups: dict[_Replica, list] = {}
        for it in items:
            rep = min(candidates, key=load.__getitem__)
            load[rep] += 1
            groups.setdefault(rep, []).append(it)
        return groups

    def _reopen(self, sessions: list[str], avoid: set[_Replica]) -> None:
        """Rebuild sessions on a healthy replica from the prompt and committed tokens."""
        items = []
        for session in sessions:
            s = self._sessions[session]
            if s.replica not in avoid:
                self._close_on(s.replica, session)  # its copy is missing or wrong: drop it before re-opening
            s.replica.sessions -= 1
            items.append(verifier_pb2.VerifierOpenItem(session=session, prompt_ids=s.prompt + s.committed[:-1],
                                                       sampling=sampling_to_proto(s.sampling),
                                                       resume_token=s.committed[-1], skip_taps=True))
        opened, failed = self._open_items(items, set(avoid))
        for session, (rep, _) in opened.items():
            self._sessions[session].replica = rep
            rep.sessions += 1
        for session in failed:
            self._sessions[session].replica.sessions += 1  # still counted where it was, until closed
        if failed:
            session, (code, message) = next(iter(failed.items()))
            raise RemoteCallError("verifier", code, f"re-opening {session!r} failed: {message}")

    def _committed_len(self, session: str) -> int:
        s = self._sessions[session]
        return len(s.prompt) + len(s.committed)

    def _check_view(self, r: VerifyRequest) -> None:
        s = self._sessions.get(r.session)
        if s is None:
            raise SessionError(f"session {r.session!r} was not opened through this client")
        if r.committed_len != self._committed_len(r.session):
            raise SessionError(f"session {r.session!r}: committed_len {r.committed_len} disagrees with the "
                               f"{self._committed_len(r.session)} tokens this client saw committed")

    def _close_on(self, rep: _Replica, session: str) -> None:
        try:
            rep.stub.Close(common_pb2.CloseSessionsRequest(sessions=[session]), timeout=min(self.timeout_s, 2.0))
        except grpc.RpcError as exc:
            log.debug("close of %s on %s failed (%s); its lease will reclaim it", session, rep.target, exc.code())

    def _mark_down(self, rep: _Replica) -> None:
        rep.down_until = time.monotonic() + self.retry_down_s


def _open_item(r: OpenRequest) -> verifier_pb2.VerifierOpenItem:
    item = verifier_pb2.VerifierOpenItem(session=r.session, prompt_ids=r.prompt_ids,
                                         sampling=sampling_to_proto(r.sampling), skip_taps=not r.want_taps,
                                         defer_taps=r.defer_taps)
    if r.resume_token is not None:
        item.resume_token = r.resume_token
    return item


def _verify_item(r: VerifyRequest) -> verifier_pb2.VerifyItem:
    item = verifier_pb2.VerifyItem(session=r.session, committed_len=r.committed_len, draft_ids=r.draft_ids,
                                   sampling=sampling_to_proto(r.sampling), position=r.position,
                                   skip_taps=not r.want_taps, defer_taps=r.defer_taps)
    if r.q is not None:
        item.q.CopyFrom(q_to_proto(r.q))
    return item


def _fan_out(calls: list[tuple], timeout_s: float) -> list[tuple]:
    """Start one unary call per replica group: [(replica, items, method, request)] -> [(replica, items, outcome)].

    `outcome()` returns the response or raises its grpc.RpcError. Several groups run as futures, in
    parallel; a single group (one replica, the common case) is a plain blocking call when its outcome is
    read: a future starts a channel-spin thread per call, which cost the gateway a sixth of its CPU time at
    concurrency 8 (py-spy, bench/serving_concurrency.py, gRPC mode).
    """
    if len(calls) == 1:
        rep, items, method, request = calls[0]
        return [(rep, items, lambda: method(request, timeout=timeout_s))]
    return [(rep, items, method.future(request, timeout=timeout_s).result) for rep, items, method, request in calls]

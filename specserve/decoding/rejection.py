"""Lossless speculative sampling (Leviathan et al. 2023; Chen et al. 2023), batched over requests.

For each request, left to right: accept draft d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the
first rejection sample from normalize(max(p_i - q_i, 0)) and stop; if every draft is accepted sample
a bonus token from p_{k+1}. The committed tokens are then distributed exactly as the target's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specserve.decoding.sampling import sample_from

# Residual mass below this is rounding noise (p == q up to float error): fall back to p.
_RESIDUAL_EPS = 1e-6


@dataclass
class RejectionResult:
    accepted: torch.Tensor  # [R] number of accepted draft tokens
    next_token: torch.Tensor  # [R] the replacement (after a rejection) or bonus token


def rejection_sample(
    p: torch.Tensor,
    draft_ids: torch.Tensor,
    n_drafts: torch.Tensor,
    q: torch.Tensor | None,
    u_accept: torch.Tensor,
    u_sample: torch.Tensor,
) -> RejectionResult:
    """Verify padded draft blocks against target distributions.

    p: [R, T, V] processed target probabilities at the T = max drafts + 1 verified positions.
    draft_ids: [R, T-1] (padding ignored beyond n_drafts[r]); q: [R, T-1, V] processed draft
    probabilities, or None for deterministic drafts (one-hot q). u_accept: [R, T-1], u_sample: [R, T].
    """
    rows = torch.arange(p.shape[0])
    width = draft_ids.shape[1]
    if width:
        p_draft = p[:, :width].gather(-1, draft_ids[..., None]).squeeze(-1)
        q_draft = torch.ones_like(p_draft) if q is None else q.gather(-1, draft_ids[..., None]).squeeze(-1)
        # q >= p: accept with probability p/q; q < p: always accept (ratio > 1 > u).
        accept = u_accept < p_draft / q_draft.clamp_min(1e-30)
        accept &= torch.arange(width)[None, :] < n_drafts[:, None]
        accepted = accept.long().cumprod(-1).sum(-1)
    else:
        accepted = torch.zeros(p.shape[0], dtype=torch.long)

    dist = p[rows, accepted]
    rejected = accepted < n_drafts
    if bool(rejected.any()):
        at = accepted[rejected]
        r = rows[rejected]
        if q is None:
            q_at = torch.zeros_like(dist[rejected])
            q_at[torch.arange(r.shape[0]), draft_ids[r, at]] = 1.0
        else:
            q_at = q[r, at]
        residual = (dist[rejected] - q_at).clamp_min(0.0)
        usable = residual.sum(-1) > _RESIDUAL_EPS
        dist[rejected] = torch.where(usable[:, None], residual, dist[rejected])
    next_token = sample_from(dist, u_sample[rows, accepted])
    return RejectionResult(accepted=accepted, next_token=next_token)


def greedy_verify(target_argmax: torch.Tensor, draft_ids: torch.Tensor, n_drafts: torch.Tensor) -> RejectionResult:
    """Temperature-0 special case without materialising one-hot distributions.

    target_argmax: [R, T]; accept while d_i == argmax p_i; the next token is the argmax after the prefix.
    """
    width = draft_ids.shape[1]
    if width:
        match = draft_ids == target_argmax[:, :width]
        match &= torch.arange(width)[None, :] < n_drafts[:, None]
        accepted = match.long().cumprod(-1).sum(-1)
    else:
        accepted = torch.zeros(target_argmax.shape[0], dtype=torch.long)
    next_token = target_argmax[torch.arange(target_argmax.shape[0]), accepted]
    return RejectionResult(accepted=accepted, next_token=next_token)

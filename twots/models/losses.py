"""The offer-set softmax loss of the paper (eq. 10-12), shared by stage 1, stage 2 and the baselines."""

from __future__ import annotations

import torch


def offer_softmax_loss(user_vec: torch.Tensor, pos_vec: torch.Tensor, neg_vec: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over valid rows of log sum_{j in O} exp(u . x_j) - u . x_pos, O = {pos} + the p negatives.

    user_vec [B, D], pos_vec [B, D], neg_vec [B, P, D], mask [B] (True = a real interaction, False = padding).
    """
    if user_vec.dim() != 2 or pos_vec.shape != user_vec.shape or neg_vec.dim() != 3 \
            or neg_vec.shape[0] != user_vec.shape[0] or neg_vec.shape[2] != user_vec.shape[1]:
        raise ValueError(f"offer_softmax_loss: expected user [B,D], pos [B,D], neg [B,P,D]; got "
                         f"{tuple(user_vec.shape)}, {tuple(pos_vec.shape)}, {tuple(neg_vec.shape)}")
    pos_logit = (user_vec * pos_vec).sum(-1, keepdim=True)
    neg_logit = torch.bmm(neg_vec, user_vec.unsqueeze(-1)).squeeze(-1)
    logits = torch.cat([pos_logit, neg_logit], dim=1)
    per_row = torch.logsumexp(logits, dim=1) - logits[:, 0]
    if mask is None:
        return per_row.mean()
    mask = mask.to(per_row.dtype)
    # A batch with no valid row gives 0 (not NaN) and still carries the graph, so DDP's backward stays in step.
    return (per_row * mask).sum() / mask.sum().clamp(min=1.0)

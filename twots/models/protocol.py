"""The one protocol behind 2TS, its ablations and every baseline (docs/design.md): a user state that starts with
`init_state`, takes one click at a time with `step`, and scores items by the dot product of `user_vector` with
`item_vectors`. The trainer, the online replay and serving use nothing else."""

from __future__ import annotations

import torch
from torch import nn

State = tuple[torch.Tensor, ...]


class SequentialRecommender(nn.Module):
    """The protocol of docs/design.md. A State is a tuple of tensors whose first dimension is the batch of users.

    Subclasses set `self.hparams` (their constructor kwargs, including n_items) and implement init_state, step,
    user_vector and item_vectors; scores are dot products of the user vector with item vectors. In init_state a
    user id of -1 is a user the model has never seen (served users missing from the users table): such a user starts
    as the model starts its new users (is_active is false for them).
    """

    hparams: dict

    def init_state(self, user_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        raise NotImplementedError(f"{type(self).__name__} must implement init_state")

    def own_start(self, user_ids: torch.Tensor, is_active: torch.Tensor) -> torch.Tensor:
        """[B] bool: whether init_state starts each user from their own embedding (phi) rather than a start shared
        by users (psi, GRU4Rec's h0, ...). Serving reports it as `start`."""
        return torch.zeros_like(user_ids, dtype=torch.bool)

    def step(self, state: State, item_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        raise NotImplementedError(f"{type(self).__name__} must implement step")

    def steps(self, state: State, item_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        """The state after `step` over each column of item_ids [B, L] in turn; an item -1 leaves its row as it is.
        The replay's warm-up and serving feed histories through it, so a model whose step is costly can do the work
        once (SASRec encodes the final window alone). Here each column steps only its rows with an item."""
        state = tuple(s.clone() for s in state)
        for t in range(item_ids.shape[1]):
            rows = torch.nonzero(item_ids[:, t] >= 0).squeeze(1)
            if len(rows):
                new = self.step(tuple(s[rows] for s in state), item_ids[rows, t], is_active[rows])
                for s, n in zip(state, new):
                    s[rows] = n
        return state

    def lr_scale(self, name: str) -> float:
        """The factor of the training learning rate for the parameter called `name` (named_parameters); 1 unless a
        model trains some part slower (twots.training.trainer.make_optimizers)."""
        return 1.0

    def update_gate(self, state: State, item_ids: torch.Tensor, is_active: torch.Tensor) -> torch.Tensor | None:
        """[B]: for models that update the state by a GRU, the mean over dimensions of its update gate z when
        `step` feeds item_ids (h' = (1 - z) * candidate + z * h: near 1 the state barely moves); None otherwise. A
        diagnostic of the replay (twots.evaluation.replay), not used by training or serving."""
        return None

    def user_vector(self, state: State) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement user_vector")

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement item_vectors")

    def score(self, state: State, item_ids: torch.Tensor) -> torch.Tensor:
        """[B, C] scores of the candidates item_ids [B, C]; higher is better."""
        return torch.bmm(self.item_vectors(item_ids), self.user_vector(state).unsqueeze(-1)).squeeze(-1)

    def score_all(self, state: State) -> torch.Tensor:
        """[B, n_items] scores of every item (serving)."""
        users = self.user_vector(state)
        return users @ self.item_vectors(torch.arange(self.hparams["n_items"], device=users.device)).T


def gru_update_gate(weight_ih: torch.Tensor, weight_hh: torch.Tensor, bias_ih: torch.Tensor, bias_hh: torch.Tensor,
                    x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """[B]: the mean update gate z = sigmoid(W_iz x + b_iz + W_hz h + b_hz) of a GRU (torch's gate order r, z, n)
    for inputs x [B, D] and states h [B, H]."""
    size = h.shape[-1]
    z_in = x @ weight_ih[size:2 * size].T + bias_ih[size:2 * size]
    z_h = h @ weight_hh[size:2 * size].T + bias_hh[size:2 * size]
    return torch.sigmoid(z_in + z_h).mean(-1)

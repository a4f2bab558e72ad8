"""Stage 1 of 2TS (paper section 3.2): transductive user embeddings phi_u and item vectors learned with the offer-set
softmax; as a recommender on its own, the CCF baseline."""

from __future__ import annotations

import torch
from torch import nn

from twots.models.items import DEFAULT_FEATURE_DIM, DEFAULT_ITEM_DIM, INIT_STD, ItemEncoder
from twots.models.losses import offer_softmax_loss
from twots.models.protocol import SequentialRecommender, State


class Stage1Model(SequentialRecommender):
    """Stage 1 (collaborative competitive filtering): score phi_u . [x_i, g(f_i)], offer-set softmax loss.
    With item_bias=True the score is phi_u . [x_i, g(f_i)] + b_i (ItemEncoder), in training and in scoring.

    As a recommender (the CCF baseline) the state is static: phi_u for users seen in training, the mean phi of those
    users for new users (set_known_users after training); step leaves the state unchanged.
    """

    def __init__(self, n_users: int, n_items: int, n_features: int = 0, max_features: int = 0,
                 item_dim: int = DEFAULT_ITEM_DIM, feature_dim: int = DEFAULT_FEATURE_DIM, item_bias: bool = False):
        super().__init__()
        self.hparams = dict(n_users=n_users, n_items=n_items, n_features=n_features, max_features=max_features,
                            item_dim=item_dim, feature_dim=feature_dim, item_bias=item_bias)
        self.items = ItemEncoder(n_items, n_features, max_features, item_dim, feature_dim, bias=item_bias)
        self.phi = nn.Embedding(n_users, self.items.dim, sparse=True)
        nn.init.normal_(self.phi.weight, std=INIT_STD)
        self.register_buffer("known_users", torch.zeros(n_users, dtype=torch.bool))

    def set_known_users(self, known: torch.Tensor) -> None:
        """known [n_users] bool: the users with training interactions (user_activity.n_train > 0)."""
        known = torch.as_tensor(known, dtype=torch.bool)
        if known.shape != self.known_users.shape:
            raise ValueError(f"known users: expected [{self.known_users.shape[0]}] bools, got {tuple(known.shape)}")
        self.known_users.copy_(known)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # One lookup for the whole offer set: one sparse gradient for the item table instead of two to add up.
        ids = torch.cat([batch["item_id"].unsqueeze(1), batch["neg_item_ids"]], dim=1)
        offers = self.items.item_side(self.items(ids), ids)
        pos, neg = offers.split([1, offers.shape[1] - 1], dim=1)
        return offer_softmax_loss(self.items.user_side(self.phi(batch["user_id"])), pos.squeeze(1), neg)

    def init_state(self, user_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        if not self.known_users.any():
            raise RuntimeError("Stage1Model: no known users; call set_known_users after training")
        mean_phi = self.phi.weight[self.known_users].mean(0)
        return (torch.where(self.own_start(user_ids, is_active).unsqueeze(-1), self.phi(user_ids.clamp(min=0)),
                            mean_phi),)

    def own_start(self, user_ids: torch.Tensor, is_active: torch.Tensor) -> torch.Tensor:
        return (user_ids >= 0) & self.known_users[user_ids.clamp(min=0)]

    def step(self, state: State, item_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        return state

    def user_vector(self, state: State) -> torch.Tensor:
        return self.items.user_side(state[0])

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.items.item_side(self.items(item_ids), item_ids)

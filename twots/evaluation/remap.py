"""A trained model seen through another data's dense ids, so the replay can score it on that data's candidates.

After a retrain on refreshed tables, @champion's dense ids mean other raw users and items than the current tables'.
RemappedModel takes current ids and hands the model its own, treating everyone as the served model would: a user
starts from phi only when the model knows them as active (the state carries the model's flag, because the
`is_active` the replay passes is the current data's), a clicked item the model does not know is fed as -1 (which
leaves the state as it is, as an unknown recent item does in serving), and a candidate it does not know scores
-inf: the served model can never recommend it, and the replay's expected rank under ties then puts an unknown
positive below every known candidate, in the middle of the unknown ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from twots.models.protocol import SequentialRecommender, State


class RemappedModel(SequentialRecommender):
    """`model` over current ids. user_map [current users]: the model's user id of each current user (-1 unknown);
    model_active [model users]: the model's own active flags; item_map [current items]: the model's item id of each
    current item (-1 unknown). State = (model's is_active [B], *the model's state)."""

    def __init__(self, model: SequentialRecommender, user_map, model_active, item_map):
        super().__init__()
        self.model = model
        user_map, item_map = (torch.as_tensor(np.asarray(m), dtype=torch.long) for m in (user_map, item_map))
        model_active = torch.as_tensor(np.asarray(model_active), dtype=torch.bool)
        for name, ids, size in (("user_map", user_map, len(model_active)),
                                ("item_map", item_map, model.hparams["n_items"])):
            if ids.dim() != 1 or (ids < -1).any() or (ids >= size).any():
                raise ValueError(f"RemappedModel: {name} must be 1-d ids in [-1, {size})")
        self.register_buffer("user_map", user_map)
        self.register_buffer("model_active", model_active)
        self.register_buffer("item_map", item_map)
        self.hparams = dict(n_users=len(user_map), n_items=len(item_map))

    @classmethod
    def by_raw_ids(cls, model: SequentialRecommender, model_user_ids, model_active, model_item_ids,
                   user_ids, item_ids) -> RemappedModel:
        """From raw ids: the model's users and items in the order of its dense ids (and its active flags), and the
        current ones in the order of the current dense ids."""
        return cls(model, pd.Index(model_user_ids).get_indexer(user_ids), model_active,
                   pd.Index(model_item_ids).get_indexer(item_ids))

    def init_state(self, user_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        own = self.user_map[user_ids]
        active = (own >= 0) & self.model_active[own.clamp(min=0)]
        return active, *self.model.init_state(own, active)  # own = -1: a user the model has never seen

    def _own_items(self, item_ids: torch.Tensor) -> torch.Tensor:
        return torch.where(item_ids >= 0, self.item_map[item_ids.clamp(min=0)], -1)

    def step(self, state: State, item_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        active, *inner = state
        return active, *self.model.step(tuple(inner), self._own_items(item_ids), active)

    def steps(self, state: State, item_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        active, *inner = state
        return active, *self.model.steps(tuple(inner), self._own_items(item_ids), active)

    def user_vector(self, state: State) -> torch.Tensor:
        return self.model.user_vector(state[1:])

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        """The model's item vectors; zero for unknown items (score and score_all give those -inf)."""
        own = self.item_map[item_ids]
        return self.model.item_vectors(own.clamp(min=0)) * (own >= 0).unsqueeze(-1)

    def score(self, state: State, item_ids: torch.Tensor) -> torch.Tensor:
        own = self.item_map[item_ids]
        return self.model.score(state[1:], own.clamp(min=0)).masked_fill(own < 0, float("-inf"))

    def score_all(self, state: State) -> torch.Tensor:
        scores = self.model.score_all(state[1:])[:, self.item_map.clamp(min=0)]
        return scores.masked_fill(self.item_map < 0, float("-inf"))

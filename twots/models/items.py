"""Item vectors [x_i, g(f_i)] (paper section 3.3): a transductive embedding x_i and the mean embedding of the item's
features, shared by every trained model kind; optionally a learned bias b_i per item."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

DEFAULT_ITEM_DIM = 48
DEFAULT_FEATURE_DIM = 16
# Embeddings start small: with N(0, 1) a 64-d dot product has std 8 and the softmax saturates from step one.
INIT_STD = 0.1

# Items encoded per call when ItemEncoder.table() builds the whole catalogue (bounds its temporary memory).
TABLE_CHUNK = 65536


class ItemEncoder(nn.Module):
    """Item vector [x_i, g(f_i)]: a transductive embedding x_i and the mean embedding of the item's features.

    The item -> feature ids matrix ([n_items, max_features], -1 = padding) is a buffer, so it is saved with the model;
    fill it with set_item_features (or load a saved state). An item without features has g(f_i) = 0.

    With bias=True it also holds b_i, a learned scalar per item (the `item_bias` option of the 2TS family) that every
    score adds: u . [x_i, g(f_i)] + b_i = user_side(u) . item_side([x_i, g(f_i)], i), one more column on each side,
    so scores stay dot products of a user vector and item vectors (replay, serving and remap need nothing else). The
    encoder's own output (what the GRUs read) stays [x_i, g(f_i)].
    """

    def __init__(self, n_items: int, n_features: int, max_features: int, item_dim: int, feature_dim: int,
                 bias: bool = False):
        super().__init__()
        self.n_features = n_features
        # With features declared but never given, every g(f_i) would silently be 0: forward refuses instead.
        self.features_set = n_features == 0
        self.register_load_state_dict_post_hook(_mark_features_set)
        self.dim = item_dim + feature_dim
        self.item = nn.Embedding(n_items, item_dim, sparse=True)
        # Row n_features is the padding row: zero and never updated, so a plain sum over the row ignores padding.
        # Dense gradient: the table is small, and a sparse one (B x offer x F rows onto it) cost half of a stage-1
        # step to coalesce.
        self.feature = nn.Embedding(n_features + 1, feature_dim, padding_idx=n_features)
        nn.init.normal_(self.item.weight, std=INIT_STD)
        with torch.no_grad():
            self.feature.weight[:n_features].normal_(std=INIT_STD)
        self.register_buffer("item_features", torch.full((n_items, max(max_features, 1)), -1, dtype=torch.long))
        self._table: tuple[tuple, torch.Tensor] | None = None
        # Zero at start and drawn from no random generator: with the same seed a model with biases starts with the
        # same weights and scores as one without. Sparse like x_i (SparseAdam, L2 on the touched rows).
        self.bias = nn.Embedding.from_pretrained(torch.zeros(n_items, 1), freeze=False, sparse=True) if bias else None

    def item_side(self, vectors: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        """The item side of a score: vectors [*S, D] of item_ids [*S], with b_i appended ([*S, D + 1]) when the
        encoder has biases, else unchanged."""
        if self.bias is None:
            return vectors
        return torch.cat([vectors, self.bias(item_ids)], dim=-1)

    def user_side(self, users: torch.Tensor) -> torch.Tensor:
        """The user side of a score: users [..., D] with a constant 1 appended when the encoder has biases, so that
        user_side(u) . item_side(x_i, i) = u . x_i + b_i; else unchanged."""
        if self.bias is None:
            return users
        return torch.cat([users, users.new_ones(*users.shape[:-1], 1)], dim=-1)

    def set_item_features(self, feature_ids) -> None:
        """Each item's feature ids: an [n_items, F] array padded with -1, or one list per item (the `feature_ids`
        column of the items table, in item_id order); F <= max_features."""
        if not isinstance(feature_ids, (torch.Tensor, np.ndarray)):
            feature_ids = pad_lists(feature_ids)
        feature_ids = torch.as_tensor(feature_ids, dtype=torch.long)
        n_items, width = self.item_features.shape
        if feature_ids.dim() != 2 or feature_ids.shape[0] != n_items or feature_ids.shape[1] > width:
            raise ValueError(f"item features: expected [n_items={n_items}, <= max_features={width}], got "
                             f"{tuple(feature_ids.shape)}")
        if feature_ids.numel() and (feature_ids.min() < -1 or feature_ids.max() >= self.n_features):
            raise ValueError(f"item features: ids must be in [0, {self.n_features}) or -1 for padding")
        self.item_features.fill_(-1)
        self.item_features[:, :feature_ids.shape[1]] = feature_ids.to(self.item_features.device)
        self.features_set = True

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        """item_ids of any shape S (valid ids only) -> [*S, D]."""
        if not self.features_set:
            raise RuntimeError(f"ItemEncoder has n_features={self.n_features} but no item features: call "
                               "set_item_features with the items table's feature_ids first")
        trained = self.item.weight.requires_grad or self.feature.weight.requires_grad
        if trained and torch.is_grad_enabled():
            # Offer sets repeat items: encode each distinct item once, for fewer feature lookups and a smaller
            # sparse gradient (stage-1 steps 1.7x faster with 10k items, a little faster with 200k).
            unique, inverse = item_ids.unique(return_inverse=True)
            return nn.functional.embedding(inverse, self._encode(unique))
        return nn.functional.embedding(item_ids, self.table())  # a row gather; much faster than table[ids] on CPU

    def table(self) -> torch.Tensor:
        """[n_items, D], every item's vector. Without gradients to the encoder (evaluation, or frozen in stage 2)
        the same items are encoded again and again (500 candidates per event, p per step): encoding the catalogue
        once and gathering rows is several times cheaper than the feature means.
        Cached until a weight or the feature matrix changes (in-place updates bump a tensor's version)."""
        key = tuple((t.data_ptr(), t._version) for t in (self.item.weight, self.feature.weight, self.item_features))
        if self._table is None or self._table[0] != key:
            with torch.no_grad():
                ids = torch.arange(self.item_features.shape[0], device=self.item_features.device)
                self._table = key, torch.cat([self._encode(chunk) for chunk in ids.split(TABLE_CHUNK)])
        return self._table[1]

    def _encode(self, item_ids: torch.Tensor) -> torch.Tensor:
        feature_ids = self.item_features[item_ids]
        valid = feature_ids >= 0
        summed = self.feature(torch.where(valid, feature_ids, self.n_features)).sum(-2)
        mean = summed / valid.sum(-1, keepdim=True).clamp(min=1)
        return torch.cat([self.item(item_ids), mean], dim=-1)


def _mark_features_set(module: ItemEncoder, incompatible_keys) -> None:
    module.features_set = True


def pad_lists(lists, fill: int = -1) -> np.ndarray:
    """Variable-length id lists -> a [len(lists), longest] int64 array padded at the end with `fill`."""
    out = np.full((len(lists), max((len(x) for x in lists), default=0)), fill, dtype=np.int64)
    for row, values in enumerate(lists):
        out[row, :len(values)] = values
    return out

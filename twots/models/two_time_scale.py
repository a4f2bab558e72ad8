"""The two-time-scale model family (paper section 3) behind one protocol (docs/design.md, docs/model.md).

ItemEncoder       item vector [x_i, g(f_i)] of dimension D = item_dim + feature_dim; optionally a bias b_i
Stage1Model       stage 1: transductive phi_u and items, offer-set softmax; also the CCF baseline
TwoTimeScaleModel stage 2: frozen phi/items, learned psi, GRU Theta_1 (inactive) and Theta_2 (active);
                  plus=True is 2TS-Plus (with group_mix=True one W per user group), use_phi=False is 2-GRU,
                  freeze_stage1=False is 2TS-SingleStage, train_items=True trains the items in stage 2 (phi frozen)
Saving and loading, and the table of model kinds: twots.models.kinds.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from twots.models.losses import offer_softmax_loss

DEFAULT_ITEM_DIM = 48
DEFAULT_FEATURE_DIM = 16
# Embeddings start small: with N(0, 1) a 64-d dot product has std 8 and the softmax saturates from step one.
INIT_STD = 0.1

# Items encoded per call when ItemEncoder.table() builds the whole catalogue (bounds its temporary memory).
TABLE_CHUNK = 65536

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


class TwoTimeScaleModel(SequentialRecommender):
    """2TS: inactive and new users run GRU Theta_1 from a learned psi, active users GRU Theta_2 from phi_u.

    State = (h [B, D], prev_item [B], -1 = none). The user vector is h, or W [h, x_prev] with plus=True (2TS-Plus).
    group_mix=True (with plus) gives each user group its own W: `mix` for inactive and new users, `mix_active` for
    active ones, whose h lives near phi rather than near psi; the state then carries is_active [B] as a third
    tensor, as user_vector needs the group. Ablations: use_phi=False (2-GRU: active users start from their own
    learned common start, no phi table); freeze_stage1=False (2TS-SingleStage: phi and items are trained with the GRUs).
    train_items=True (our variant 2ts-tuned-items) keeps phi frozen but trains the item encoder with the GRUs, which
    separates the two frozen parts of stage 1.
    item_bias=True adds b_i to every score, in the stage-2 loss too; from_stage1 takes it (frozen, with the items)
    from the stage-1 model, 2TS-SingleStage learns it with the rest.
    """

    def __init__(self, n_users: int, n_items: int, n_features: int = 0, max_features: int = 0,
                 item_dim: int = DEFAULT_ITEM_DIM, feature_dim: int = DEFAULT_FEATURE_DIM,
                 plus: bool = False, use_phi: bool = True, freeze_stage1: bool = True, group_mix: bool = False,
                 item_bias: bool = False, train_items: bool = False):
        super().__init__()
        if group_mix and not plus:
            raise ValueError("TwoTimeScaleModel: group_mix=True gives each user group its own W of 2TS-Plus; "
                             "it needs plus=True")
        if train_items and not freeze_stage1:
            raise ValueError("TwoTimeScaleModel: train_items=True trains the items of a frozen stage 1; with "
                             "freeze_stage1=False everything trains already")
        self.hparams = dict(n_users=n_users, n_items=n_items, n_features=n_features, max_features=max_features,
                            item_dim=item_dim, feature_dim=feature_dim, plus=plus, use_phi=use_phi,
                            freeze_stage1=freeze_stage1, group_mix=group_mix, item_bias=item_bias,
                            train_items=train_items)
        self.items = ItemEncoder(n_items, n_features, max_features, item_dim, feature_dim, bias=item_bias)
        dim = self.items.dim
        self.phi = nn.Embedding(n_users, dim, sparse=True) if use_phi else None
        if self.phi is not None:
            nn.init.normal_(self.phi.weight, std=INIT_STD)
        self.psi = nn.Parameter(torch.zeros(dim))
        self.psi_active = None if use_phi else nn.Parameter(torch.zeros(dim))
        self.gru_inactive = nn.GRUCell(dim, dim)
        self.gru_active = nn.GRUCell(dim, dim)
        self.mix = _identity_mix(dim) if plus else None
        self.mix_active = _identity_mix(dim) if group_mix else None
        if freeze_stage1:
            self.items.requires_grad_(train_items)
            if self.phi is not None:
                self.phi.requires_grad_(False)

    @classmethod
    def from_stage1(cls, stage1: Stage1Model, *, plus: bool = False, use_phi: bool = True,
                    freeze_stage1: bool = True, group_mix: bool = False,
                    train_items: bool = False) -> TwoTimeScaleModel:
        """A stage-2 model holding copies of a trained stage-1 model's phi and item encoder (b_i included, when the
        stage-1 model has item biases)."""
        model = cls(**stage1.hparams, plus=plus, use_phi=use_phi, freeze_stage1=freeze_stage1, group_mix=group_mix,
                    train_items=train_items)
        model.items.load_state_dict(stage1.items.state_dict())
        if model.phi is not None:
            model.phi.load_state_dict(stage1.phi.state_dict())
        return model.to(stage1.phi.weight.device)

    def init_state(self, user_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        batch = user_ids.shape[0]
        active_start = (self.phi(user_ids.clamp(min=0)) if self.phi is not None
                        else self.psi_active.expand(batch, -1))
        h = torch.where(is_active.unsqueeze(-1), active_start, self.psi.expand(batch, -1))
        group = (is_active,) if self.mix_active is not None else ()
        return h, torch.full_like(user_ids, -1), *group

    def own_start(self, user_ids: torch.Tensor, is_active: torch.Tensor) -> torch.Tensor:
        return is_active & torch.tensor(self.phi is not None, device=is_active.device)

    def step(self, state: State, item_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        """Feed one clicked item per user; rows with item -1 (padding) keep their state."""
        h, prev = state[:2]
        clicked = item_ids >= 0
        x = self.items(item_ids.clamp(min=0))
        # Both cells run on every row and torch.where picks: no data-dependent indexing, so no host sync on GPUs.
        h_next = torch.where(is_active.unsqueeze(-1), self.gru_active(x, h), self.gru_inactive(x, h))
        return torch.where(clicked.unsqueeze(-1), h_next, h), torch.where(clicked, item_ids, prev), *state[2:]

    def user_vector(self, state: State) -> torch.Tensor:
        h, prev = state[:2]
        if self.mix is None:
            return self.items.user_side(h)
        x_prev = self.items(prev.clamp(min=0)) * (prev >= 0).unsqueeze(-1)
        return self.items.user_side(self._mixed(torch.cat([h, x_prev], dim=-1),
                                                state[2] if self.mix_active is not None else None))

    def _mixed(self, h_prev: torch.Tensor, is_active: torch.Tensor | None) -> torch.Tensor:
        """W [h, x_prev] for h_prev [B, ..., 2D]: the one W, or each row's group's (is_active [B]). Both Ws run on
        every row and torch.where picks, so a group's loss reaches only its own W."""
        if is_active is None:
            return self.mix(h_prev)
        group = is_active.reshape(-1, *[1] * (h_prev.dim() - 1))
        return torch.where(group, self.mix_active(h_prev), self.mix(h_prev))

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.items.item_side(self.items(item_ids), item_ids)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stage-2 loss: the state before each step scores that step's offer set, then the GRU takes the click."""
        item_ids, neg_ids = batch["item_ids"], batch["neg_item_ids"]
        is_active = batch["is_active"].bool()
        batch_size, length = item_ids.shape
        valid = item_ids >= 0
        # Padding is at the end, so a row with n clicks needs the GRU over its first n - 1 (at least 1: packing
        # refuses empty rows; the extra state is masked). Groups and lengths go to the host once (packing needs
        # them there), before the heavy kernels are queued: the one host sync of the forward.
        groups, inputs = torch.stack([is_active.long(), (valid.sum(1) - 1).clamp(min=1)]).cpu()
        h0 = self.init_state(batch["user_id"], is_active)[0]
        x = self.items(item_ids.clamp(min=0))
        h = h0.unsqueeze(1)
        if length > 1:
            h = torch.cat([h, self._run_groups(x[:, :-1], h0, groups.bool(), inputs)], dim=1)
        if self.mix is None:
            users = h
        else:
            prev = batch["prev_item_id"]
            first = self.items(prev.clamp(min=0)) * (prev >= 0).unsqueeze(-1)
            users = self._mixed(torch.cat([h, torch.cat([first.unsqueeze(1), x[:, :-1]], dim=1)], dim=-1),
                                is_active if self.mix_active is not None else None)
        neg_ids = neg_ids.clamp(min=0)
        neg = self.items.item_side(self.items(neg_ids), neg_ids).reshape(batch_size * length, neg_ids.shape[2], -1)
        pos = self.items.item_side(x, item_ids.clamp(min=0))
        return offer_softmax_loss(self.items.user_side(users).reshape(batch_size * length, -1),
                                  pos.reshape(batch_size * length, -1), neg, mask=valid.reshape(-1))

    def _run_groups(self, x: torch.Tensor, h0: torch.Tensor, is_active: torch.Tensor,
                    lengths: torch.Tensor) -> torch.Tensor:
        """[B, T, D]: each row's state after each of its first lengths[b] inputs x [B, T, D] (0 after), from h0;
        active rows (is_active and lengths on the host) through Theta_2, the others through Theta_1, each group in
        one fused GRU call: the same recurrence as `step`, without a Python loop over T."""
        out = x.new_zeros(x.shape)
        for cell, rows in ((self.gru_active, is_active), (self.gru_inactive, ~is_active)):
            index = rows.nonzero().squeeze(1)
            if index.numel():
                on_device = index.to(x.device)
                out = out.index_copy(0, on_device, fused_gru(cell, x[on_device], h0[on_device], lengths[index]))
            else:
                # An empty group's cell still gets a (zero) gradient, as when both cells ran on every row: the ranks'
                # dense all-reduce needs the same gradients everywhere, and Adam steps the same parameters.
                out = out + sum(w.sum() for w in cell.parameters()) * 0
        return out


def _identity_mix(dim: int) -> nn.Linear:
    """W of 2TS-Plus, [I, 0] at start: 2TS-Plus begins as 2TS and learns how much of the previous item to mix in."""
    mix = nn.Linear(2 * dim, dim)
    with torch.no_grad():
        mix.weight.zero_()
        mix.weight[:, :dim].copy_(torch.eye(dim))
        mix.bias.zero_()
    return mix


def fused_gru(cell: nn.GRUCell, x: torch.Tensor, h0: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`cell` along x [N, T, D] from h0 [N, H], row n over its first lengths[n] >= 1 inputs (lengths on the host):
    [N, T, H], the state after each input, 0 past a row's length. One call of the kernel behind a packed nn.GRU
    (cuDNN on GPUs) with the cell's own weights: GRUCell and GRU share the gate layout."""
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    with warnings.catch_warnings():
        # cuDNN copies separate weight tensors into its flat buffer on each call (four small matrices here) and
        # warns, as for an nn.GRU whose flattened weights were lost.
        warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk")
        out, _ = torch.gru(packed.data, packed.batch_sizes, h0[packed.sorted_indices].unsqueeze(0), weights,
                           True, 1, 0.0, cell.training, False)
    padded, _ = nn.utils.rnn.pad_packed_sequence(
        nn.utils.rnn.PackedSequence(out, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices),
        batch_first=True, total_length=x.shape[1])
    return padded


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters of sparse embedding tables (for SparseAdam) and all other trainable ones (for Adam)."""
    sparse_ids = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [p for p in trainable if id(p) in sparse_ids], [p for p in trainable if id(p) not in sparse_ids]


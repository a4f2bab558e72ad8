"""The paper's baselines behind the same protocol as 2TS (docs/design.md), so one trainer and one replay serve all.

Popularity  training click counts; the floor every model must beat
SumPooling  user = a dense layer over the mean of the items seen so far (and a learned prior pseudo-item)
GRU4Rec     one GRU for every user over the whole training sequence, from one learned start state
SASRec      2-layer causal self-attention over the last `window` items, behind a learned start token

Items are `twots.models.items.ItemEncoder` vectors [x_i, g(f_i)], trained from scratch by each model (no
stage 1), and every trainable model's loss is the same offer-set softmax of `twots.models.losses` on rows of the
`sequences` schema (pipelines.histories builds the full-history version they train on).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twots.models.items import DEFAULT_FEATURE_DIM, DEFAULT_ITEM_DIM, INIT_STD, ItemEncoder
from twots.models.losses import offer_softmax_loss
from twots.models.protocol import SequentialRecommender, State, gru_update_gate


def _sequence_loss(users: torch.Tensor, items: ItemEncoder, item_ids: torch.Tensor,
                   neg_ids: torch.Tensor) -> torch.Tensor:
    """users [B, L, D] (the vector before each step) scored against each step's offer set; -1 steps are masked."""
    batch, length, dim = users.shape
    pos = items(item_ids.clamp(min=0)).reshape(batch * length, dim)
    neg = items(neg_ids.clamp(min=0)).reshape(batch * length, neg_ids.shape[2], dim)
    return offer_softmax_loss(users.reshape(batch * length, dim), pos, neg, mask=(item_ids >= 0).reshape(-1))


class Popularity(SequentialRecommender):
    """Scores every user's candidates by log(1 + training clicks of the item); nothing is learned by gradient.

    A dot-product model of dimension 1: the user vector is 1, the item vector log(1 + count).
    """

    def __init__(self, n_items: int):
        super().__init__()
        self.hparams = dict(n_items=n_items)
        # A frozen parameter rather than a buffer: the replay finds the device through model.parameters().
        self.log_counts = nn.Parameter(torch.zeros(n_items), requires_grad=False)

    def set_counts(self, counts: torch.Tensor) -> Popularity:
        counts = torch.as_tensor(counts, dtype=torch.float32)
        if counts.shape != self.log_counts.shape or (counts < 0).any():
            raise ValueError(f"Popularity: expected [{self.log_counts.shape[0]}] non-negative counts, "
                             f"got shape {tuple(counts.shape)}")
        with torch.no_grad():
            self.log_counts.copy_(torch.log1p(counts))
        return self

    def init_state(self, user_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        return (self.log_counts.new_ones(user_ids.shape[0], 1),)

    def step(self, state: State, item_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        return state

    def user_vector(self, state: State) -> torch.Tensor:
        return state[0]

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.log_counts[item_ids].unsqueeze(-1)


class _ItemModel(SequentialRecommender):
    """Shared by the trainable baselines: the item encoder and its hyperparameters."""

    def __init__(self, n_items: int, n_features: int, max_features: int, item_dim: int, feature_dim: int, **extra):
        super().__init__()
        self.hparams = dict(n_items=n_items, n_features=n_features, max_features=max_features, item_dim=item_dim,
                            feature_dim=feature_dim, **extra)
        self.items = ItemEncoder(n_items, n_features, max_features, item_dim, feature_dim)
        self.dim = self.items.dim

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.items(item_ids)


class SumPooling(_ItemModel):
    """u = W (psi + sum of seen item vectors) / (1 + #seen) + b. psi, a learned pseudo-item, is the new users' start.

    State = (sum [B, D], count [B, 1]).
    """

    def __init__(self, n_items: int, n_features: int = 0, max_features: int = 0,
                 item_dim: int = DEFAULT_ITEM_DIM, feature_dim: int = DEFAULT_FEATURE_DIM):
        super().__init__(n_items, n_features, max_features, item_dim, feature_dim)
        self.psi = nn.Parameter(torch.randn(self.dim) * INIT_STD)
        self.out = nn.Linear(self.dim, self.dim)

    def init_state(self, user_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        batch = user_ids.shape[0]
        return self.psi.new_zeros(batch, self.dim), self.psi.new_zeros(batch, 1)

    def step(self, state: State, item_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        total, count = state
        clicked = (item_ids >= 0).unsqueeze(-1)
        x = self.items(item_ids.clamp(min=0)) * clicked
        return total + x, count + clicked

    def user_vector(self, state: State) -> torch.Tensor:
        total, count = state
        return self.out((self.psi + total) / (1 + count))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        item_ids = batch["item_ids"]
        x = self.items(item_ids.clamp(min=0)) * (item_ids >= 0).unsqueeze(-1)
        # Before step t the user has seen steps < t: exclusive prefix sums.
        seen = torch.cumsum(x, dim=1) - x
        count = torch.arange(item_ids.shape[1], device=x.device, dtype=x.dtype).view(1, -1, 1)
        users = self.out((self.psi + seen) / (1 + count))
        return _sequence_loss(users, self.items, item_ids, batch["neg_item_ids"])


class GRU4Rec(_ItemModel):
    """One GRU for all users over their whole training sequence, starting from a learned h0. State = (h [B, D],)."""

    def __init__(self, n_items: int, n_features: int = 0, max_features: int = 0,
                 item_dim: int = DEFAULT_ITEM_DIM, feature_dim: int = DEFAULT_FEATURE_DIM):
        super().__init__(n_items, n_features, max_features, item_dim, feature_dim)
        self.h0 = nn.Parameter(torch.zeros(self.dim))
        self.gru = nn.GRU(self.dim, self.dim, batch_first=True)

    def init_state(self, user_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        return (self.h0.expand(user_ids.shape[0], -1).clone(),)

    def step(self, state: State, item_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        (h,) = state
        x = self.items(item_ids.clamp(min=0)).unsqueeze(1)
        _, h_next = self.gru(x, h.unsqueeze(0).contiguous())
        return (torch.where((item_ids >= 0).unsqueeze(-1), h_next[0], h),)

    def update_gate(self, state: State, item_ids: torch.Tensor, is_active: torch.Tensor) -> torch.Tensor:
        g = self.gru
        return gru_update_gate(g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0,
                               self.items(item_ids.clamp(min=0)), state[0])

    def user_vector(self, state: State) -> torch.Tensor:
        return state[0]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        item_ids = batch["item_ids"]
        batch_size = item_ids.shape[0]
        h0 = self.h0.expand(batch_size, -1)
        # Padding is at the end, so the outputs at real steps never see it.
        out, _ = self.gru(self.items(item_ids[:, :-1].clamp(min=0)), h0.unsqueeze(0).contiguous())
        users = torch.cat([h0.unsqueeze(1), out], dim=1)
        return _sequence_loss(users, self.items, item_ids, batch["neg_item_ids"])


class SASRec(_ItemModel):
    """Causal self-attention over [start token, last `window` items]; the output at the last token is the user.

    State = (window [B, window]: item ids in time order, padded with -1 at the end; user [B, D]: the output at the
    window's last token). The state carries the encoding: `user_vector` reads it, and `step` / `steps` encode the new
    window once, however many items they feed, running the top layer at the last token alone (`_last_output`). No
    keys or values are kept: once the window is full, each item moves every token to another absolute position, which
    changes them all (docs/model.md). Training (`forward`) runs the whole encoder (`_encode`).
    Training rows are cut to their last window + 1 items: the outputs at the start token and the first `window`
    items predict the next item, the same token positions the replay uses.
    """

    def __init__(self, n_items: int, n_features: int = 0, max_features: int = 0,
                 item_dim: int = DEFAULT_ITEM_DIM, feature_dim: int = DEFAULT_FEATURE_DIM,
                 window: int = 50, layers: int = 2, heads: int = 1, dropout: float = 0.2):
        super().__init__(n_items, n_features, max_features, item_dim, feature_dim,
                         window=window, layers=layers, heads=heads, dropout=dropout)
        if self.dim % heads:
            raise ValueError(f"SASRec: dimension {self.dim} is not divisible by heads={heads}")
        self.window = window
        self.start = nn.Parameter(torch.randn(self.dim) * INIT_STD)
        self.position = nn.Parameter(torch.randn(window + 1, self.dim) * INIT_STD)
        layer = nn.TransformerEncoderLayer(self.dim, heads, dim_feedforward=self.dim, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(self.dim)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(window + 1),
                             persistent=False)

    def _tokens(self, window_items: torch.Tensor) -> torch.Tensor:
        """[B, W] item ids (-1 padding at the end, W <= window) -> the encoder's input [B, W + 1, D]."""
        batch, width = window_items.shape
        x = self.items(window_items.clamp(min=0)) * (window_items >= 0).unsqueeze(-1)
        return torch.cat([self.start.expand(batch, 1, -1), x], dim=1) + self.position[:width + 1]

    def _encode(self, window_items: torch.Tensor) -> torch.Tensor:
        """[B, W] item ids (-1 padding at the end, W <= window) -> outputs [B, W + 1, D] at every token."""
        tokens = self._tokens(window_items)
        # Padding comes after every real token, so the causal mask alone keeps it out of real outputs.
        mask = self.causal[:tokens.shape[1], :tokens.shape[1]]
        return self.norm(self.encoder(tokens, mask=mask, is_causal=True))

    def _last_output(self, window: torch.Tensor) -> torch.Tensor:
        """[B, window] item ids -> [B, D]: `_encode`'s output at each row's last real token as in eval (no dropout),
        computing only what it depends on: the tokens up to the longest row's last, and in the top layer that token
        alone."""
        length = (window >= 0).sum(1)  # the start token is 0, so the last real item sits at its count
        x = self._tokens(window[:, :int(length.max())])
        *lower, top = self.encoder.layers
        for layer in lower:
            x = _causal_layer(layer, x)
        return self.norm(_layer_at(top, x, length))

    def init_state(self, user_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        window = torch.full((user_ids.shape[0], self.window), -1, dtype=torch.long, device=user_ids.device)
        start = self._last_output(window.new_full((1, self.window), -1))
        return window, start.expand(len(window), -1).clone()

    def step(self, state: State, item_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        return self.steps(state, item_ids.unsqueeze(1), is_active)

    def steps(self, state: State, item_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        window, user = state
        items = torch.cat([window, item_ids], dim=1)
        valid = items >= 0
        # The newest `window` valid items, in order: each one's count of valid items at or after it says its place.
        newer = valid.flip(1).cumsum(1).flip(1)
        kept = newer[:, :1].clamp(max=self.window)
        keep = valid & (newer <= kept)
        slot = torch.where(keep, kept - newer, self.window)  # column `window` takes what is not kept
        new = items.new_full((len(items), self.window + 1), -1).scatter(1, slot, torch.where(keep, items, -1))
        fed = (item_ids >= 0).any(1, keepdim=True)
        window = torch.where(fed, new[:, :self.window], window)
        return window, torch.where(fed, self._last_output(window), user)

    def user_vector(self, state: State) -> torch.Tensor:
        return state[1]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        item_ids, neg_ids = batch["item_ids"], batch["neg_item_ids"]
        batch_size, length = item_ids.shape
        span = min(length, self.window + 1)
        # Each row's last `span` items (rows shorter than span keep their end padding).
        start = ((item_ids >= 0).sum(1) - span).clamp(min=0)
        idx = start.unsqueeze(1) + torch.arange(span, device=item_ids.device)
        targets = item_ids.gather(1, idx)
        target_negs = neg_ids.gather(1, idx.unsqueeze(-1).expand(-1, -1, neg_ids.shape[2]))
        users = self._encode(targets[:, :-1])
        return _sequence_loss(users, self.items, targets, target_negs)


def _causal_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """A norm-first `layer` as in eval (no dropout) on x [B, T, D] under a causal mask: [B, T, D]."""
    attn = layer.self_attn
    q, k, v = F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (attn.num_heads, -1)).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True)
    return _feed_forward(layer, x + attn.out_proj(out.transpose(1, 2).flatten(2)))


def _layer_at(layer: nn.TransformerEncoderLayer, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """`_causal_layer`'s output at token `at` [B] of each row of x [B, T, D] alone: [B, D].

    No key or value is projected: a query q scores a token h as q . (W_k h + b_k) = (W_k^T q) . h + q . b_k, whose
    last term is the same for every token and cancels in the softmax, and as the attention weights a_j sum to 1 the
    output is W_v (sum_j a_j h_j) + b_v."""
    attn, heads = layer.self_attn, layer.self_attn.num_heads
    h = layer.norm1(x)
    rows = torch.arange(len(x), device=x.device)
    w_q, w_k, w_v = (w.unflatten(0, (heads, -1)) for w in attn.in_proj_weight.chunk(3))  # [H, d, D] each
    b_q, _, b_v = attn.in_proj_bias.chunk(3)
    # The query at each row's token, scaled as scaled_dot_product_attention scales it: [B, H, d].
    q = (torch.einsum("bf,hef->bhe", h[rows, at], w_q) + b_q.view(heads, -1)) * w_q.shape[1] ** -0.5
    logits = torch.bmm(torch.einsum("bhe,hef->bhf", q, w_k), h.transpose(1, 2))  # [B, H, T]
    later = torch.arange(x.shape[1], device=x.device) > at.unsqueeze(1)
    weights = logits.masked_fill(later.unsqueeze(1), float("-inf")).softmax(-1)
    out = torch.einsum("bhf,hef->bhe", torch.bmm(weights, h), w_v).flatten(1) + b_v
    return _feed_forward(layer, x[rows, at] + attn.out_proj(out))


def _feed_forward(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    return x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))

"""Stage 2 of 2TS (paper section 3): two GRUs on the stage-1 embeddings. Inactive and new users run GRU Theta_1
from a learned psi, active users GRU Theta_2 from their phi_u; 2TS-Plus mixes in the last clicked item.

What a model of the family is beyond its sizes is one TwoTimeScaleOptions: the paper's 2TS and 2TS-Plus, its
ablations 2-GRU (no phi) and 2TS-SingleStage (nothing from stage 1), and the settings that test why 2TS trails the
sequence baselines on some data (docs/model.md). Saving and loading, and the table of model kinds:
twots.models.kinds.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from twots.models.items import DEFAULT_FEATURE_DIM, DEFAULT_ITEM_DIM, INIT_STD, ItemEncoder
from twots.models.losses import offer_softmax_loss
from twots.models.protocol import SequentialRecommender, State, gru_update_gate
from twots.models.stage1 import Stage1Model

ItemMode = Literal["frozen", "finetune", "input"]
MixMode = Literal["shared", "per_group", "residual", "residual_per_group"]


@dataclass(frozen=True)
class TwoTimeScaleOptions:
    """A model of the 2TS family; the defaults are the paper's 2TS.

    start: "phi" (active users start from their stage-1 phi_u, frozen) or "learned" (a learned common start, as
        psi is for the others: 2-GRU).
    items: stage 1's item vectors in stage 2: "frozen" (the paper), "finetune" (trained with the GRUs at
        item_lr_scale x the learning rate; phi stays frozen) or "input" (a trainable copy feeds the GRUs, the frozen
        vectors score).
    single_stage: phi, items, psi and both GRUs trained together from scratch (2TS-SingleStage).
    plus: 2TS-Plus, the user vector mixes in the last clicked item x_prev by `mix`: "shared" W [h, x_prev] started
        at [I, 0] (the paper), "per_group" one such W per user group, "residual" h + W2 x_prev with W2 started at 0
        (h passes unchanged whatever W2 learns), "residual_per_group" one W2 per group.
    phi_scale: the active GRU runs on phi / s, s the largest |entry| of phi (the GRU's states lie in (-1, 1)), and
        active users' vectors are s x the state: the start scores as phi does.
    bptt_window: > 0 cuts the gradient through the GRUs every bptt_window steps of a training row (truncated
        backpropagation over long rows); 0 backpropagates through the whole row.
    """

    start: Literal["phi", "learned"] = "phi"
    items: ItemMode = "frozen"
    item_lr_scale: float = 1.0
    single_stage: bool = False
    plus: bool = False
    mix: MixMode = "shared"
    phi_scale: bool = False
    bptt_window: int = 0

    def __post_init__(self):
        problems = []
        if self.mix != "shared" and not self.plus:
            problems.append(f"mix={self.mix!r} is 2TS-Plus's W: it needs plus=True")
        if self.single_stage and (self.items != "frozen" or self.start != "phi" or self.phi_scale):
            problems.append("single_stage trains phi and items from scratch: items, start and phi_scale are stage "
                            "1's settings")
        if self.phi_scale and self.start != "phi":
            problems.append("phi_scale needs start='phi'")
        if self.item_lr_scale <= 0 or (self.item_lr_scale != 1.0 and self.items != "finetune"):
            problems.append("item_lr_scale must be > 0, and set only with items='finetune'")
        if self.bptt_window < 0:
            problems.append("bptt_window must be >= 0")
        if problems:
            raise ValueError("TwoTimeScaleOptions: " + "; ".join(problems))


class TwoTimeScaleModel(SequentialRecommender):
    """2TS: inactive and new users run GRU Theta_1 from a learned psi, active users GRU Theta_2 from phi_u (see
    TwoTimeScaleOptions for the rest of the family).

    State = (h [B, D], prev_item [B] (-1 = none), is_active [B]). The user vector is h (s x h for active users with
    phi_scale), with 2TS-Plus's mix of x_prev. item_bias=True adds b_i to every score, in the stage-2 loss too;
    from_stage1 takes it (frozen, with the items) from the stage-1 model, 2TS-SingleStage learns it with the rest.
    `state_scale` is s of phi_scale (from_stage1 computes it; 1 otherwise).
    """

    def __init__(self, n_users: int, n_items: int, n_features: int = 0, max_features: int = 0,
                 item_dim: int = DEFAULT_ITEM_DIM, feature_dim: int = DEFAULT_FEATURE_DIM, item_bias: bool = False,
                 options: TwoTimeScaleOptions | dict | None = None, state_scale: float = 1.0):
        super().__init__()
        opts = options if isinstance(options, TwoTimeScaleOptions) else TwoTimeScaleOptions(**(options or {}))
        self.options = opts
        self.hparams = dict(n_users=n_users, n_items=n_items, n_features=n_features, max_features=max_features,
                            item_dim=item_dim, feature_dim=feature_dim, item_bias=item_bias, options=asdict(opts),
                            state_scale=state_scale)
        self.items = ItemEncoder(n_items, n_features, max_features, item_dim, feature_dim, bias=item_bias)
        dim = self.items.dim
        # items="input": the GRUs read a trainable copy of the item vectors; the frozen ones score.
        self.item_inputs = (ItemEncoder(n_items, n_features, max_features, item_dim, feature_dim)
                            if opts.items == "input" else None)
        self.phi = nn.Embedding(n_users, dim, sparse=True) if opts.start == "phi" else None
        if self.phi is not None:
            nn.init.normal_(self.phi.weight, std=INIT_STD)
        self.psi = nn.Parameter(torch.zeros(dim))
        self.psi_active = nn.Parameter(torch.zeros(dim)) if opts.start == "learned" else None
        self.gru_inactive = nn.GRUCell(dim, dim)
        self.gru_active = nn.GRUCell(dim, dim)
        residual = opts.mix.startswith("residual")
        per_group = opts.mix.endswith("per_group")
        self.mix = (_residual_mix(dim) if residual else _identity_mix(dim)) if opts.plus else None
        self.mix_active = (_residual_mix(dim) if residual else _identity_mix(dim)) if opts.plus and per_group else None
        self.state_scale = state_scale
        if not opts.single_stage:
            self.items.requires_grad_(opts.items == "finetune")
            if self.phi is not None:
                self.phi.requires_grad_(False)

    @classmethod
    def from_stage1(cls, stage1: Stage1Model, options: TwoTimeScaleOptions | None = None) -> TwoTimeScaleModel:
        """A stage-2 model holding copies of a trained stage-1 model's phi and item encoder (b_i included, when the
        stage-1 model has item biases); with items="input" the GRUs' input table starts as a copy of the items."""
        options = options or TwoTimeScaleOptions()
        if options.single_stage:
            raise ValueError("from_stage1: a single-stage model is trained from scratch, not on a stage-1 model")
        scale = 1.0
        if options.phi_scale:
            known = stage1.phi.weight[stage1.known_users] if stage1.known_users.any() else stage1.phi.weight
            scale = max(float(known.detach().abs().max()), 1e-6)
        model = cls(**stage1.hparams, options=options, state_scale=scale)
        model.items.load_state_dict(stage1.items.state_dict())
        if model.item_inputs is not None:
            inputs = {k: v for k, v in stage1.items.state_dict().items() if not k.startswith("bias.")}
            model.item_inputs.load_state_dict(inputs)
        if model.phi is not None:
            model.phi.load_state_dict(stage1.phi.state_dict())
        return model.to(stage1.phi.weight.device)

    def lr_scale(self, name: str) -> float:
        return self.options.item_lr_scale if name.startswith("items.") else 1.0

    def _inputs(self, item_ids: torch.Tensor) -> torch.Tensor:
        """What the GRUs read for item_ids (valid ids): the item vectors, or with items="input" their own copy."""
        return (self.item_inputs or self.items)(item_ids)

    def _start(self, user_ids: torch.Tensor, is_active: torch.Tensor) -> torch.Tensor:
        batch = user_ids.shape[0]
        active_start = (self.phi(user_ids.clamp(min=0)) / self.state_scale if self.phi is not None
                        else self.psi_active.expand(batch, -1))
        return torch.where(is_active.unsqueeze(-1), active_start, self.psi.expand(batch, -1))

    def init_state(self, user_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        return self._start(user_ids, is_active), torch.full_like(user_ids, -1), is_active.clone()

    def own_start(self, user_ids: torch.Tensor, is_active: torch.Tensor) -> torch.Tensor:
        return is_active & torch.tensor(self.phi is not None, device=is_active.device)

    def step(self, state: State, item_ids: torch.Tensor, is_active: torch.Tensor) -> State:
        """Feed one clicked item per user; rows with item -1 (padding) keep their state."""
        h, prev, group = state
        clicked = item_ids >= 0
        x = self._inputs(item_ids.clamp(min=0))
        # Both cells run on every row and torch.where picks: no data-dependent indexing, so no host sync on GPUs.
        h_next = torch.where(is_active.unsqueeze(-1), self.gru_active(x, h), self.gru_inactive(x, h))
        return torch.where(clicked.unsqueeze(-1), h_next, h), torch.where(clicked, item_ids, prev), group

    def update_gate(self, state: State, item_ids: torch.Tensor, is_active: torch.Tensor) -> torch.Tensor:
        h, x = state[0], self._inputs(item_ids.clamp(min=0))
        gates = [gru_update_gate(c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh, x, h)
                 for c in (self.gru_active, self.gru_inactive)]
        return torch.where(is_active, *gates)

    def user_vector(self, state: State) -> torch.Tensor:
        h, prev, is_active = state
        return self.items.user_side(self._users(h, prev, is_active))

    def _users(self, h: torch.Tensor, prev: torch.Tensor, is_active: torch.Tensor) -> torch.Tensor:
        """User vectors of states h [B, ..., D] whose last clicked items are prev [B, ...] (-1: none), rows of
        group is_active [B]: s x h for active users with phi_scale, then 2TS-Plus's mix of x_prev."""
        group = is_active.reshape(-1, *[1] * (h.dim() - 1))
        if self.state_scale != 1.0:
            h = h * torch.where(group, self.state_scale, 1.0)
        if self.mix is None:
            return h
        x_prev = self.items(prev.clamp(min=0)) * (prev >= 0).unsqueeze(-1)
        residual = self.options.mix.startswith("residual")
        mixed_in = x_prev if residual else torch.cat([h, x_prev], dim=-1)
        # Both Ws run on every row and torch.where picks, so a group's loss reaches only its own W.
        mixed = self.mix(mixed_in) if self.mix_active is None else torch.where(
            group, self.mix_active(mixed_in), self.mix(mixed_in))
        return h + mixed if residual else mixed

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
        h0 = self._start(batch["user_id"], is_active)
        clicked = item_ids.clamp(min=0)
        x = self.items(clicked)
        h = h0.unsqueeze(1)
        if length > 1:
            fed = x if self.item_inputs is None else self.item_inputs(clicked)
            h = torch.cat([h, self._run_groups(fed[:, :-1], h0, groups.bool(), inputs)], dim=1)
        prev = torch.cat([batch["prev_item_id"].unsqueeze(1), item_ids[:, :-1]], dim=1)
        users = self._users(h, prev, is_active)
        neg_ids = neg_ids.clamp(min=0)
        neg = self.items.item_side(self.items(neg_ids), neg_ids).reshape(batch_size * length, neg_ids.shape[2], -1)
        pos = self.items.item_side(x, clicked)
        return offer_softmax_loss(self.items.user_side(users).reshape(batch_size * length, -1),
                                  pos.reshape(batch_size * length, -1), neg, mask=valid.reshape(-1))

    def _run_groups(self, x: torch.Tensor, h0: torch.Tensor, is_active: torch.Tensor,
                    lengths: torch.Tensor) -> torch.Tensor:
        """[B, T, D]: each row's state after each of its first lengths[b] inputs x [B, T, D] (0 after), from h0;
        active rows (is_active and lengths on the host) through Theta_2, the others through Theta_1, each group in
        fused GRU calls: the same recurrence as `step`, without a Python loop over T (one call per bptt_window
        steps when the gradient is cut)."""
        out = x.new_zeros(x.shape)
        for cell, rows in ((self.gru_active, is_active), (self.gru_inactive, ~is_active)):
            index = rows.nonzero().squeeze(1)
            if index.numel():
                on_device = index.to(x.device)
                states = windowed_gru(cell, x[on_device], h0[on_device], lengths[index], self.options.bptt_window)
                out = out.index_copy(0, on_device, states)
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


def _residual_mix(dim: int) -> nn.Linear:
    """W2 of the residual mix h + W2 x_prev, 0 at start: begins as 2TS, and h always passes unchanged."""
    mix = nn.Linear(dim, dim, bias=False)
    nn.init.zeros_(mix.weight)
    return mix


def windowed_gru(cell: nn.GRUCell, x: torch.Tensor, h0: torch.Tensor, lengths: torch.Tensor,
                 window: int) -> torch.Tensor:
    """fused_gru over x [N, T, D] from h0, with the gradient cut every `window` steps (0: never): each window starts
    from the (detached) state the previous one ended in. The forward values are fused_gru's."""
    steps = x.shape[1]
    if window <= 0 or steps <= window:
        return fused_gru(cell, x, h0, lengths)
    pieces, h = [], h0
    for start in range(0, steps, window):
        span = min(window, steps - start)
        inside = (lengths - start).clamp(min=0, max=span)
        rows = (inside > 0).nonzero().squeeze(1)
        piece = x.new_zeros(x.shape[0], span, h0.shape[1])
        if rows.numel():
            on_device = rows.to(x.device)
            states = fused_gru(cell, x[on_device, start:start + span], h[on_device], inside[rows])
            piece = piece.index_copy(0, on_device, states)
            last = states[torch.arange(rows.numel(), device=x.device), (inside[rows] - 1).to(x.device)]
            h = h.detach().index_copy(0, on_device, last.detach())
        pieces.append(piece)
    return torch.cat(pieces, dim=1)


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

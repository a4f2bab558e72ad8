"""Baseline models on synthetic tensors: the protocol agrees with forward(), and each model beats Popularity
on a set where the next item's cluster is given away by the user's history."""

import numpy as np
import pytest
import torch

from twots.evaluation.metrics import rank_metrics
from twots.evaluation.replay import Events, Warmup, replay
from twots.models.baselines import Popularity, SASRec
from twots.models.kinds import KINDS, load_model, save_model
from twots.models.losses import offer_softmax_loss
from twots.models.protocol import SequentialRecommender
from twots.training.trainer import split_parameters

N_ITEMS, CLUSTERS, P = 80, 8, 5
DIMS = dict(n_items=N_ITEMS, n_features=3, max_features=1, item_dim=16, feature_dim=4)
TRAINABLE = ["sumpooling", "gru4rec", "sasrec"]


def make(kind, **extra):
    if kind == "popularity":
        return Popularity(N_ITEMS)
    model = KINDS[kind].model_class(**DIMS, **extra)
    # A feature shared by all items of a parity: true but useless for the task.
    model.items.set_item_features(torch.arange(N_ITEMS).remainder(2).unsqueeze(1))
    return model


def cluster_sequences(n_users, length, seed):
    """Each user clicks random items of one cluster; cluster 0 has twice the users of the others."""
    g = torch.Generator().manual_seed(seed)
    size = N_ITEMS // CLUSTERS
    cluster = torch.randint(0, CLUSTERS + 1, (n_users,), generator=g).clamp(max=CLUSTERS - 1)
    items = cluster.unsqueeze(1) * size + torch.randint(0, size, (n_users, length), generator=g)
    negs = torch.randint(0, N_ITEMS - 1, (n_users, length, P), generator=g)
    negs = negs + (negs >= items.unsqueeze(-1)).long()  # uniform over the other items
    return items, negs


def batch_of(items, negs, pad_from=None):
    items = items.clone()
    if pad_from is not None:
        for row, start in enumerate(pad_from):
            items[row, start:] = -1
    return {"user_id": torch.arange(len(items)), "is_active": torch.zeros(len(items), dtype=torch.bool),
            "item_ids": items, "neg_item_ids": negs, "prev_item_id": torch.full((len(items),), -1)}


def protocol_loss(model, batch):
    """The training loss recomputed through init_state / step / user_vector, step by step."""
    items, negs = batch["item_ids"], batch["neg_item_ids"]
    state = model.init_state(batch["user_id"], batch["is_active"])
    losses = []
    for t in range(items.shape[1]):
        valid = items[:, t] >= 0
        u = model.user_vector(state)
        losses.append(offer_softmax_loss(u, model.items(items[:, t].clamp(min=0)),
                                         model.items(negs[:, t]), mask=valid) * valid.sum())
        state = model.step(state, items[:, t], batch["is_active"])
    return torch.stack(losses).sum() / (items >= 0).sum()


@pytest.mark.parametrize("kind", TRAINABLE)
def test_forward_matches_step_by_step_protocol(kind):
    torch.manual_seed(0)
    model = make(kind).eval()
    items, negs = cluster_sequences(6, 8, seed=1)
    batch = batch_of(items, negs, pad_from=[8, 5, 1, 8, 3, 7])
    with torch.no_grad():
        assert model(batch).item() == pytest.approx(protocol_loss(model, batch).item(), rel=1e-5)
        state = model.init_state(batch["user_id"], batch["is_active"])
        assert model.user_vector(state).shape == (6, model.items.dim)
        assert model.score(state, negs[:, 0]).shape == (6, P)
        assert model.score_all(state).shape == (6, N_ITEMS)
        # A padding step (-1) leaves the state as it was.
        same = model.step(state, torch.full((6,), -1), batch["is_active"])
        assert all(torch.equal(a, b) for a, b in zip(state, same))


def test_sasrec_window_keeps_the_last_items_and_cuts_training_rows():
    torch.manual_seed(0)
    model = make("sasrec", window=3).eval()
    state = model.init_state(torch.arange(2), torch.zeros(2, dtype=torch.bool))
    for item in [5, 6, 7, 8, 9]:
        state = model.step(state, torch.tensor([item, item if item < 7 else -1]), torch.zeros(2, dtype=torch.bool))
    assert state[0].tolist() == [[7, 8, 9], [5, 6, -1]]
    # Training on 7 steps with window 3 is training on the last 4 of them.
    items, negs = cluster_sequences(4, 7, seed=2)
    with torch.no_grad():
        full = model(batch_of(items, negs)).item()
        tail = protocol_loss(model, batch_of(items[:, 3:], negs[:, 3:])).item()
    assert full == pytest.approx(tail, rel=1e-5)
    with pytest.raises(ValueError, match="heads"):
        SASRec(**DIMS, heads=3)


class WholeEncoderSASRec(SequentialRecommender):
    """The reference of SASRec's cached state: the same windows, but every user vector runs the whole encoder
    (training's `_encode`) over the window, as SASRec scored before its state carried the encoding."""

    def __init__(self, model: SASRec):
        super().__init__()
        self.model, self.hparams = model, model.hparams

    def init_state(self, user_ids, is_active):
        return self.model.init_state(user_ids, is_active)

    def step(self, state, item_ids, is_active):
        return self.model.step(state, item_ids, is_active)

    def user_vector(self, state):
        window = state[0]
        return self.model._encode(window)[torch.arange(len(window)), (window >= 0).sum(1)]

    def item_vectors(self, item_ids):
        return self.model.item_vectors(item_ids)


def shaken_sasrec(seed: int, **extra) -> SASRec:
    """A SASRec in eval with every weight moved well away from its small initial values."""
    torch.manual_seed(seed)
    model = make("sasrec", **extra).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return model


@pytest.mark.parametrize("layers, heads", [(2, 1), (1, 2), (3, 4)])
def test_sasrec_cached_state_scores_as_the_whole_encoder(layers, heads):
    model = shaken_sasrec(3, window=4, layers=layers, heads=heads)
    reference = WholeEncoderSASRec(model)
    g = torch.Generator().manual_seed(4)
    items = torch.randint(0, N_ITEMS, (6, 11), generator=g)
    items[torch.rand(items.shape, generator=g) < 0.3] = -1  # no event, anywhere in a row
    items[0] = -1  # a user who never clicks: the start token alone
    items[1, :2] = torch.tensor([3, 9])
    items[1, 2:] = -1  # a window that never fills
    inactive = torch.zeros(6, dtype=torch.bool)
    with torch.no_grad():
        state = model.init_state(torch.arange(6), inactive)
        for t in range(items.shape[1] + 1):
            torch.testing.assert_close(model.score_all(state), reference.score_all(state), rtol=0, atol=1e-5)
            if t < items.shape[1]:
                state = model.step(state, items[:, t], inactive)
        fed = [[i for i in row if i >= 0] for row in items.tolist()]
        assert max(len(f) for f in fed) > 6  # the windows of most users filled and slid
        assert state[0].tolist() == [(f[-4:] + [-1] * 4)[:4] for f in fed]
        # All the items at once, or in two parts, give the state of one step at a time.
        for parts in ([items], [items[:, :5], items[:, 5:]]):
            bulk = model.init_state(torch.arange(6), inactive)
            for part in parts:
                bulk = model.steps(bulk, part, inactive)
            assert torch.equal(bulk[0], state[0])
            torch.testing.assert_close(bulk[1], state[1], rtol=0, atol=1e-5)
        assert model.user_vector(state).abs().mean() > 0.3  # far from zero: the comparisons above are not vacuous


def test_popularity_ranks_by_training_counts():
    model = Popularity(5).set_counts(torch.tensor([3.0, 0.0, 10.0, 1.0, 0.0]))
    state = model.init_state(torch.arange(2), torch.zeros(2, dtype=torch.bool))
    scores = model.score(state, torch.tensor([[0, 1, 2], [4, 3, 2]]))
    assert scores.argmax(1).tolist() == [2, 2]
    assert model.score_all(state)[0].argsort(descending=True)[:2].tolist() == [2, 0]
    with pytest.raises(ValueError, match="non-negative"):
        model.set_counts(torch.tensor([1.0, -1.0, 0, 0, 0]))


@pytest.mark.parametrize("kind", ["popularity"] + TRAINABLE)
def test_save_load_round_trip(kind, tmp_path):
    model = make(kind).eval()
    if kind == "popularity":
        model.set_counts(torch.arange(N_ITEMS, dtype=torch.float32))
    save_model(tmp_path / "m.pt", model)
    loaded = load_model(tmp_path / "m.pt")
    assert type(loaded) is type(model) and loaded.hparams == model.hparams
    items = torch.tensor([[1, 2], [3, 4]])
    state = model.step(model.init_state(torch.arange(2), torch.zeros(2, dtype=torch.bool)),
                       torch.tensor([7, 9]), torch.zeros(2, dtype=torch.bool))
    with torch.no_grad():
        assert torch.allclose(model.score(state, items), loaded.score(state, items))


def train_in_process(model, items, negs, steps=100, batch=64, lr=0.02):
    sparse, dense = split_parameters(model)
    opts = [torch.optim.SparseAdam(sparse, lr=lr), torch.optim.Adam(dense, lr=lr)]
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(items), (batch,), generator=g)
        loss = model(batch_of(items[rows], negs[rows]))
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()
    return loss.item()


def replay_mrr(model, seed=9, n_users=120, history=8, test=4, candidates=49):
    items, _ = cluster_sequences(n_users, history + test, seed)
    g = np.random.default_rng(seed)
    warm = Warmup(np.arange(n_users), np.zeros(n_users, bool), items[:, :history].numpy())
    pos = items[:, history:].reshape(-1).numpy()
    negs = np.stack([g.choice(np.setdiff1d(np.arange(N_ITEMS), [p]), candidates, replace=False) for p in pos])
    users = np.repeat(np.arange(n_users), test)
    ts = np.tile(np.arange(test), n_users)
    result = replay(model, warm, Events(users, ts, np.arange(len(pos)), pos, negs))
    return rank_metrics(result.rank)["mrr"]


def test_each_baseline_beats_popularity_on_a_clear_signal():
    torch.manual_seed(0)
    items, negs = cluster_sequences(600, 12, seed=3)
    counts = torch.bincount(items.reshape(-1), minlength=N_ITEMS).float()
    floor = replay_mrr(Popularity(N_ITEMS).set_counts(counts))
    # 50 candidates, about 6.6 of them in the user's cluster: knowing the cluster alone gives MRR about 0.4.
    assert 0.05 < floor < 0.2
    for kind, extra in [("sumpooling", {}), ("gru4rec", {}), ("sasrec", {"window": 8})]:
        torch.manual_seed(0)
        model = make(kind, **extra)
        loss = train_in_process(model, items, negs)
        mrr = replay_mrr(model)
        assert loss < np.log(P + 1) * 0.8, f"{kind} did not learn: loss {loss:.3f}"
        assert mrr > floor + 0.08, f"{kind}: MRR {mrr:.3f} vs popularity {floor:.3f}"

import json

import numpy as np
import pytest
import torch
from test_baselines import WholeEncoderSASRec

import twots.evaluation.replay
from twots.evaluation.evaluate import load_arrays
from twots.evaluation.metrics import ranks_from_scores, summarize
from twots.evaluation.remap import RemappedModel
from twots.evaluation.replay import Events, History, Warmup, full_batch_for, replay
from twots.models.baselines import SASRec
from twots.models.protocol import SequentialRecommender
from twots.models.stage1 import Stage1Model
from twots.models.two_time_scale import TwoTimeScaleModel, TwoTimeScaleOptions
from twots.training.trainer import split_parameters


class SeenItems(SequentialRecommender):
    """State = the set of items the user has clicked; an item scores 1 once seen, else 0.

    If the replay fed an event's item before scoring it, that event would rank first instead of tying."""

    def __init__(self, n_items: int):
        super().__init__()
        self.hparams = dict(n_items=n_items)
        self.register_buffer("one_hot", torch.eye(n_items))

    def init_state(self, user_ids, is_active):
        return (torch.zeros(len(user_ids), self.hparams["n_items"]),)

    def step(self, state, item_ids, is_active):
        seen = state[0].clone()
        seen[torch.arange(len(item_ids)), item_ids] = 1.0
        return (seen,)

    def user_vector(self, state):
        return state[0]

    def item_vectors(self, item_ids):
        return self.one_hot[item_ids]


def events(rows) -> Events:
    """rows of (user, ts, event_id, item); every event's negatives are the never-clicked items 10..19."""
    user, ts, event_id, item = (np.array(c) for c in zip(*rows))
    return Events(user, ts, event_id, item, np.tile(np.arange(10, 20), (len(rows), 1)))


def test_each_event_is_scored_before_its_item_is_fed_in_time_order():
    warm = Warmup.from_lists([0, 2], [True, False], [[1, 2], [5]])
    evs = events([  # given out of order on purpose
        (0, 20, 9, 4),
        (0, 10, 6, 3),  # same ts as the next row: event_id 5 comes first
        (0, 10, 5, 3),
        (1, 30, 7, 1),  # new user: user 0's clicks are not its own
        (0, 5, 3, 1),  # a warm-up item
        (2, 50, 8, 6),
    ])
    got = replay(SeenItems(20), warm, evs, batch_users=1)
    unseen = 1 + 10 / 2  # ties with all 10 negatives
    assert got.rank.tolist() == [unseen, 1.0, unseen, unseen, 1.0, unseen]
    assert got.step.tolist() == [4, 3, 2, 1, 1, 1]
    assert got.change.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]  # a repeated item changes nothing
    assert got.is_new.tolist() == [False, False, False, True, False, False]
    assert got.is_active.tolist() == [True, True, True, False, True, False]
    records = got.change_records(got.is_active)
    assert records["step"].tolist() == [4, 3, 2, 1] and records["change"].tolist() == [1.0, 0.0, 1.0, 0.0]
    # Place in the rollout from init_state: user 0 warmed up on 2 items, user 2 on 1, user 1 on none.
    assert got.steps.tolist() == [6, 5, 4, 1, 3, 2]
    assert np.isnan(got.gate).all()  # no GRU
    # ||user vector|| = sqrt(items seen): 0 at the start; sqrt(2) for user 0 after its warm-up, 1 for user 2.
    assert got.norms["active"] == {"start": 0.0, "warmed": pytest.approx(2 ** 0.5)}
    assert got.norms["inactive"] == {"start": 0.0, "warmed": 1.0}
    assert got.norms["new"] == {"start": 0.0, "warmed": 0.0}


def start_state(model, warm: Warmup, user: int):
    """One user's state after init_state and its warm-up items, and its is_active flag."""
    rows = np.flatnonzero(warm.user_id == user)
    active = torch.tensor([bool(warm.is_active[rows[0]]) if len(rows) else False])
    state = model.init_state(torch.tensor([user]), active)
    for item in (warm.item_ids[rows[0]] if len(rows) else []):
        if item >= 0:
            state = model.step(state, torch.tensor([item]), active)
    return state, active


def naive_replay(model, warm: Warmup, evs: Events):
    """One user at a time, one event at a time: the definition the batched replay must match."""
    rank, change, step = np.zeros(len(evs)), np.zeros(len(evs)), np.zeros(len(evs), dtype=int)
    for user in np.unique(evs.user_id):
        state, active = start_state(model, warm, user)
        mine = np.flatnonzero(evs.user_id == user)
        mine = mine[np.lexsort((evs.event_id[mine], evs.ts[mine]))]
        for r, e in enumerate(mine):
            candidates = torch.from_numpy(np.concatenate([[evs.item_id[e]], evs.neg_item_ids[e]]))[None]
            scores = model.score(state, candidates)
            rank[e] = ranks_from_scores(scores[:, 0], scores[:, 1:]).item()
            before = model.user_vector(state)
            state = model.step(state, torch.tensor([evs.item_id[e]]), active)
            change[e] = torch.linalg.vector_norm(model.user_vector(state) - before).item()
            step[e] = r + 1
    return rank, change, step


def random_2ts(n_users: int, n_items: int, plus: bool, seed: int) -> tuple[TwoTimeScaleModel, Warmup]:
    """A 2TS model with random weights, and warm-up items for active, inactive and (users 5-7) new users."""
    torch.manual_seed(seed)
    model = TwoTimeScaleModel(n_users, n_items, item_dim=6, feature_dim=2, options=TwoTimeScaleOptions(plus=plus))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    warm = Warmup.from_lists([0, 1, 2, 3, 4, 8], [True, True, False, False, True, False],
                             [[1, 2, 3], [4], [5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15], []])
    return model, warm


@pytest.mark.parametrize("plus", [False, True])
def test_batched_rounds_match_a_naive_per_user_loop(plus, monkeypatch):
    # chunk boundaries in the start states and warm-up too
    monkeypatch.setattr(twots.evaluation.replay, "STATE_CHUNK", 2)
    rng = np.random.default_rng(3)
    n_users, n_items = 9, 40
    model, warm = random_2ts(n_users, n_items, plus, seed=3)
    n = 40
    evs = Events(rng.integers(0, n_users, n), rng.integers(0, 6, n), rng.permutation(n),
                 rng.integers(0, n_items, n), rng.integers(0, n_items, (n, 7)))
    model.train()
    got = replay(model, warm, evs, batch_users=2)
    assert model.training  # the caller's mode is restored
    with torch.no_grad():
        rank, change, step = naive_replay(model, warm, evs)
    assert np.array_equal(got.rank, rank)
    assert np.allclose(got.change, change, atol=1e-6)
    assert np.array_equal(got.step, step)
    assert got.is_new.tolist() == [u in (5, 6, 7) for u in evs.user_id]
    # The update gate of the GRU that fed each event (Theta_2 for active users), recomputed by hand.
    size = model.items.dim
    with torch.no_grad():
        for user in np.unique(evs.user_id):
            state, active = start_state(model, warm, user)
            cell = model.gru_active if active.item() else model.gru_inactive
            mine = np.flatnonzero(evs.user_id == user)
            for e in mine[np.lexsort((evs.event_id[mine], evs.ts[mine]))]:
                x, h = model.items(torch.tensor([evs.item_id[e]])), state[0]
                z = torch.sigmoid(x @ cell.weight_ih[size:2 * size].T + cell.bias_ih[size:2 * size]
                                  + h @ cell.weight_hh[size:2 * size].T + cell.bias_hh[size:2 * size])
                assert got.gate[e] == pytest.approx(z.mean().item(), abs=1e-6)
                state = model.step(state, torch.tensor([evs.item_id[e]]), active)


@torch.no_grad()
def brute_force_full_ranks(model, warm: Warmup, evs: Events, full: np.ndarray, history: History | None):
    """Per user, per event, in numpy float64: every item's score with the user's state at the event, rank =
    1 + #higher + #ties/2 among the other items, leaving out (with `history`) the items clicked before, but not the
    positive."""
    table = model.item_vectors(torch.arange(model.hparams["n_items"])).double().numpy()
    ranks = np.full(len(evs), np.nan)
    for user in np.unique(evs.user_id):
        state, active = start_state(model, warm, user)
        seen = set() if history is None else set(history.item_id[history.user_id == user].tolist())
        mine = np.flatnonzero(evs.user_id == user)
        for e in mine[np.lexsort((evs.event_id[mine], evs.ts[mine]))]:
            if full[e]:
                scores = table @ model.user_vector(state)[0].double().numpy()
                pos = evs.item_id[e]
                others = np.ones(len(table), bool)
                others[pos] = False
                if history is not None:
                    others[list(seen - {pos})] = False
                ranks[e] = 1 + np.sum(scores[others] > scores[pos]) + np.sum(scores[others] == scores[pos]) / 2
            state = model.step(state, torch.tensor([evs.item_id[e]]), active)
            seen.add(int(evs.item_id[e]))
    return ranks


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_full_ranks_match_a_brute_force_over_the_catalogue(exclude_seen):
    rng = np.random.default_rng(5)
    n_users, n_items = 9, 30
    model, warm = random_2ts(n_users, n_items, plus=True, seed=5)
    # Training history: longer than the warm-up (active users warm up on their last K items only), with repeats.
    history = History([0, 0, 0, 0, 0, 1, 1, 2, 3, 4, 7], [20, 21, 20, 1, 2, 4, 25, 5, 10, 12, 29])
    n = 60
    # Few items per user so that repeat clicks (positives seen before) occur.
    evs = Events(rng.integers(0, n_users, n), rng.integers(0, 6, n), rng.permutation(n),
                 rng.integers(0, 8, n) * 3, rng.integers(0, n_items, (n, 7)))
    full = rng.random(n) < 0.7
    got = replay(model, warm, evs, batch_users=3, full=full, full_batch=2, exclude=history if exclude_seen else None)
    expected = brute_force_full_ranks(model, warm, evs, full, history if exclude_seen else None)
    assert np.array_equal(np.isnan(got.full_rank), ~full)
    assert np.allclose(got.full_rank[full], expected[full], atol=1e-9)
    # The sampled ranks are those of the replay without full ranking.
    assert np.array_equal(got.rank, replay(model, warm, evs, batch_users=3).rank)
    if exclude_seen:  # leaving items out only lowers ranks, and did lower some
        plain = replay(model, warm, evs, batch_users=3, full=full, full_batch=5)
        assert np.all(got.full_rank[full] <= plain.full_rank[full])
        assert np.any(got.full_rank[full] < plain.full_rank[full])


def test_sasrec_replays_the_scores_of_its_whole_encoder_on_a_small_folder(spark, small_movielens, monkeypatch):
    """The cached encoding in SASRec's state against the whole encoder rerun for every user vector, on the val and
    test events of 250 MovieLens users after their warm-up, with a window of 8 that most of them fill and slide."""
    data = load_arrays(small_movielens, spark)
    torch.manual_seed(2)
    model = SASRec(json.loads((small_movielens / "manifest.json").read_text())["n_items"], item_dim=12,
                   feature_dim=4, window=8)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)

    def replayed(scorer):
        """The replay through `scorer`, and every candidate score it computed, in order."""
        scores, score = [], scorer.score
        monkeypatch.setattr(scorer, "score", lambda state, items: scores.append(score(state, items)) or scores[-1])
        return replay(scorer, data.warmup, data.events, batch_users=64), torch.cat(scores)

    (cached, cached_scores), (whole, whole_scores) = replayed(model), replayed(WholeEncoderSASRec(model))
    assert len(data.events) > 5000 and np.mean(cached.steps > 8) > 0.8  # most events slide a full window
    torch.testing.assert_close(cached_scores, whole_scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(cached.change, whole.change, rtol=0, atol=1e-5)
    assert np.mean(cached.rank == whole.rank) > 0.999  # equal scores; a rare near-tie may round the other way
    for group, norms in whole.norms.items():
        assert cached.norms[group] == pytest.approx(norms, abs=1e-5)


def test_full_ranks_by_hand_with_ties_and_exclusion():
    """SeenItems scores 1 for items the user clicked, 0 otherwise; 20 items."""
    warm = Warmup.from_lists([0], [False], [[1, 2]])
    evs = Events([0, 0, 0], [1, 2, 3], [0, 1, 2], [3, 1, 3], np.tile(np.arange(10, 20), (3, 1)))
    everything = np.ones(3, bool)
    kept = replay(SeenItems(20), warm, evs, full=everything)
    # item 3 unseen: the 2 seen items above it, 17 unseen ties; item 1 seen: ties with 2 and 3; 3 again: ties 1, 2.
    assert kept.full_rank.tolist() == [1 + 2 + 17 / 2, 1 + 2 / 2, 1 + 2 / 2]
    dropped = replay(SeenItems(20), warm, evs, full=everything, exclude=History([0, 0, 0], [1, 2, 2]))
    # Training items 1, 2 and the replayed 3 are left out, except the positive itself.
    assert dropped.full_rank.tolist() == [1 + 17 / 2, 1, 1]
    # A model with its own score_all (RemappedModel: an unknown item scores -inf) is ranked through it.
    remapped = RemappedModel(SeenItems(20), [0], [False], [*range(19), -1])
    assert replay(remapped, warm, evs, full=everything).full_rank.tolist() == [1 + 2 + 16 / 2, 2, 2]


def test_full_batch_fits_the_memory_budget():
    assert full_batch_for(4_000_000, 512) == 512 * 2**20 // (4_000_000 * 6) == 22
    assert full_batch_for(4_000_000, 1) == 1
    assert full_batch_for(1000, 512) == 89478


def test_ccf_replay_is_static():
    torch.manual_seed(0)
    model = Stage1Model(5, 30, item_dim=6, feature_dim=2)
    model.set_known_users(torch.tensor([True, True, True, False, False]))
    evs = Events([0, 0, 3], [1, 2, 3], [0, 1, 2], [4, 5, 6], [[7, 8], [9, 10], [11, 12]])
    got = replay(model, Warmup.from_lists([0], [True], [[1, 2]]), evs)
    assert got.change.tolist() == [0.0, 0.0, 0.0]
    with torch.no_grad():
        mean_phi = model.phi.weight[:3].mean(0)
        expected = [1 + sum(float(model.items(torch.tensor(j)) @ u > model.items(torch.tensor(i)) @ u) for j in negs)
                    for u, i, negs in zip([model.phi.weight[0], model.phi.weight[0], mean_phi], [4, 5, 6],
                                          [[7, 8], [9, 10], [11, 12]])]
    assert got.rank.tolist() == expected


def test_bad_warmup_and_events_are_rejected():
    with pytest.raises(ValueError, match="padded with -1 at the end"):
        Warmup([0], [True], [[1, -1, 2]])
    with pytest.raises(ValueError, match="appears twice"):
        Warmup([0, 0], [True, True], [[1], [2]])
    with pytest.raises(ValueError, match="neg_item_ids"):
        Events([0], [1], [0], [2], [3, 4])
    with pytest.raises(ValueError, match="integer ids"):
        Events([0], [1], [0], [2], [[3.0, 4.0]])
    with pytest.raises(ValueError, match="one length"):
        History([0, 1], [2])
    with pytest.raises(ValueError, match="one per event"):
        replay(SeenItems(20), Warmup.from_lists([0], [False], [[1]]), events([(0, 1, 0, 2)]), full=[True, False])


def test_trained_2ts_ranks_far_above_random_for_every_user_group():
    """Users click items of their own cluster. Stage 1 learns phi and items; stage 2 must learn to infer an
    inactive or new user's cluster from the items it clicks (psi + GRU); the replay measures it."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n_clusters, per_cluster, negatives, t_star, last_k = 8, 12, 8, 10, 8
    n_items = n_clusters * per_cluster
    n_train = np.array([40] * 40 + [4] * 40 + [0] * 40)  # active, inactive, new
    n_users = len(n_train)
    cluster = rng.integers(0, n_clusters, n_users)

    def clicks(user, n):
        return cluster[user] * per_cluster + rng.integers(0, per_cluster, n)

    def negs(items):
        """Uniform negatives that are never the positive."""
        out = rng.integers(0, n_items - 1, (len(items), negatives))
        return torch.tensor(out + (out >= items[:, None]))

    train = {u: clicks(u, n) for u, n in enumerate(n_train) if n}
    users = np.concatenate([[u] * len(items) for u, items in train.items()])
    items = np.concatenate(list(train.values()))

    stage1 = Stage1Model(n_users, n_items, item_dim=12, feature_dim=4)
    optimizer = torch.optim.SparseAdam(split_parameters(stage1)[0], lr=0.05)
    for _ in range(300):
        rows = rng.integers(0, len(users), 128)
        optimizer.zero_grad()
        stage1({"user_id": torch.tensor(users[rows]), "item_id": torch.tensor(items[rows]),
                "neg_item_ids": negs(items[rows])}).backward()
        optimizer.step()
    stage1.set_known_users(torch.tensor(n_train > 0))

    is_active = torch.tensor(n_train[list(train)] > t_star)
    sequences = [seq[-last_k:] if n_train[u] > t_star else seq for u, seq in train.items()]
    warm = Warmup.from_lists(list(train), is_active.numpy(), sequences)
    item_ids = torch.tensor(warm.item_ids)
    batch = {"user_id": torch.tensor(warm.user_id), "is_active": is_active, "item_ids": item_ids,
             "prev_item_id": torch.tensor([train[u][-last_k - 1] if a else -1 for u, a in zip(train, is_active)])}
    model = TwoTimeScaleModel.from_stage1(stage1, TwoTimeScaleOptions(plus=True))
    optimizer = torch.optim.Adam(split_parameters(model)[1], lr=0.02)
    for _ in range(150):
        batch["neg_item_ids"] = negs(item_ids.clamp(min=0).reshape(-1).numpy()).reshape(*item_ids.shape, -1)
        optimizer.zero_grad()
        model(batch).backward()
        optimizer.step()

    eval_users = np.repeat(np.arange(n_users), 5)
    pos = np.concatenate([clicks(u, 5) for u in range(n_users)])
    evs = Events(eval_users, np.tile(np.arange(5), n_users), np.arange(len(pos)), pos,
                 rng.integers(0, n_items - 1, (len(pos), 49)))
    evs.neg_item_ids += evs.neg_item_ids >= pos[:, None]
    got = replay(model, warm, evs, batch_users=32)
    summary = summarize(got.rank, n_train[eval_users], n_train[eval_users] > t_star)
    random_mrr = np.mean(1 / np.arange(1, 51))  # about 0.09
    for group in ("overall", "active", "inactive", "new"):
        assert summary[group]["mrr"] > 3 * random_mrr, (group, summary[group])
    # Fig. 4's shape: inactive users' (here new users') vectors move more per click than active users'.
    assert got.change[got.is_new].mean() > got.change[got.is_active].mean()

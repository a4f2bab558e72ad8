"""RemappedModel: a model scored through its own id maps ranks as the model itself, treats users as serving does,
and never recommends an item it does not know."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from twots.evaluation.remap import RemappedModel
from twots.evaluation.replay import Events, Warmup, replay
from twots.models.baselines import SASRec
from twots.models.two_time_scale import TwoTimeScaleModel, TwoTimeScaleOptions

N_USERS, N_ITEMS = 7, 12
ACTIVE = np.array([True, False, True, False, True, False, False])  # users 5 and 6 are new in WARMUP


@pytest.fixture(scope="module")
def model() -> TwoTimeScaleModel:
    torch.manual_seed(5)
    model = TwoTimeScaleModel(N_USERS, N_ITEMS, n_features=4, max_features=2, item_dim=6, feature_dim=2,
                              options=TwoTimeScaleOptions(plus=True))
    model.items.set_item_features(torch.randint(-1, 4, (N_ITEMS, 2)).sort(dim=1, descending=True).values)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return model.eval()


WARMUP = Warmup.from_lists(np.arange(5), ACTIVE[:5], [[1, 2, 3], [4], [5, 6, 7, 8], [9, 10], [11, 0, 1]])


def some_events(n: int = 40, seed: int = 1) -> Events:
    rng = np.random.default_rng(seed)
    return Events(rng.integers(0, N_USERS, n), rng.integers(0, 5, n), rng.permutation(n),
                  rng.integers(0, N_ITEMS, n), rng.integers(0, N_ITEMS, (n, 6)))


def assert_same_replay(a, b):
    np.testing.assert_array_equal(a.rank, b.rank)
    np.testing.assert_array_equal(a.change, b.change)
    np.testing.assert_array_equal(a.is_active, b.is_active)
    np.testing.assert_array_equal(a.is_new, b.is_new)


def test_identity_maps_replay_exactly_as_the_model(model):
    events = some_events()
    remapped = RemappedModel(model, np.arange(N_USERS), ACTIVE, np.arange(N_ITEMS))
    assert remapped.hparams == {"n_users": N_USERS, "n_items": N_ITEMS}
    got, expected = replay(remapped, WARMUP, events, batch_users=3), replay(model, WARMUP, events, batch_users=3)
    assert len(np.unique(expected.rank)) > 5  # the ranks tell models apart
    assert_same_replay(got, expected)


def test_a_model_trained_on_shuffled_dense_ids_ranks_as_the_original(model):
    """Same raw users and items, dense ids shuffled: the shuffled model seen through its raw-id maps is the
    original model."""
    rng = np.random.default_rng(2)
    user_perm, item_perm = rng.permutation(N_USERS), rng.permutation(N_ITEMS)  # current id -> shuffled model's id
    shuffled = copy.deepcopy(model)
    with torch.no_grad():
        shuffled.phi.weight[user_perm] = model.phi.weight
        shuffled.items.item.weight[item_perm] = model.items.item.weight
        shuffled.items.item_features[item_perm] = model.items.item_features
    raw_users, raw_items = np.array([f"u{u}" for u in range(N_USERS)]), np.array([f"i{i}" for i in range(N_ITEMS)])
    model_users, model_items, model_active = (np.empty_like(a) for a in (raw_users, raw_items, ACTIVE))
    model_users[user_perm], model_items[item_perm], model_active[user_perm] = raw_users, raw_items, ACTIVE
    remapped = RemappedModel.by_raw_ids(shuffled, model_users, model_active, model_items, raw_users, raw_items)
    assert remapped.user_map.tolist() == user_perm.tolist() and remapped.item_map.tolist() == item_perm.tolist()

    events = some_events(seed=4)
    plain = replay(shuffled, WARMUP, events)  # the shuffled model on ids it reads as other users and items
    expected = replay(model, WARMUP, events)
    assert not np.array_equal(plain.rank, expected.rank)
    assert_same_replay(replay(remapped, WARMUP, events), expected)


def test_users_start_as_the_model_knows_them_not_as_the_current_data_does(model):
    # Current users 0..3 are the model's 2, 0, 1, 3; current user 4 is unknown to it. The model knows 2 and 3 as
    # active, 0 and 1 as inactive.
    model_active = np.array([False, False, True, True, False, False, False])
    remapped = RemappedModel(model, [2, 0, 1, 3, -1], model_active, np.arange(N_ITEMS))
    current_active = torch.tensor([False, True, True, True, True])  # the replay's flags: not to be used
    state = remapped.init_state(torch.arange(5), current_active)
    assert state[0].tolist() == [True, False, False, True, False]
    h = state[1]
    assert torch.equal(h[0], model.phi.weight[2]) and torch.equal(h[3], model.phi.weight[3])
    for row in (1, 2, 4):  # model-inactive (though active now) and unknown users start from psi
        assert torch.equal(h[row], model.psi)

    # Steps use the model's GRU for the model's group: current user 0 (inactive now) runs the active GRU, current
    # users 1 and 2 (active now) the inactive one.
    items = torch.tensor([5, 6, 5, 6, 5])
    stepped = remapped.step(state, items, current_active)
    model_flags = torch.tensor([True, False, False, True, False])
    expected = model.step(model.init_state(torch.tensor([2, 0, 1, 3, 0]), model_flags), items, model_flags)
    assert torch.equal(stepped[1], expected[0]) and stepped[2].tolist() == [5, 6, 5, 6, 5]
    assert not torch.equal(stepped[1], model.step(expected, items, current_active)[0])
    assert torch.equal(remapped.user_vector(stepped), model.user_vector(expected))


def test_unknown_items_leave_the_state_and_score_minus_infinity(model):
    # Current items 0..11 are the model's, shuffled; current items 12 and 13 are unknown to it.
    own = torch.from_numpy(np.concatenate([np.random.default_rng(3).permutation(N_ITEMS), [-1, -1]]))
    remapped = RemappedModel(model, np.arange(N_USERS), ACTIVE, own)
    inactive = torch.zeros(3, dtype=torch.bool)
    state = remapped.step(remapped.init_state(torch.arange(3), inactive), torch.tensor([4, 4, 4]), inactive)
    assert state[2].tolist() == [int(own[4])] * 3  # the model's state holds its own item ids
    for item in (12, -1):  # an unknown item, and padding
        same = remapped.step(state, torch.tensor([item, 7, item]), inactive)
        assert torch.equal(same[1][[0, 2]], state[1][[0, 2]]) and same[2].tolist() == [int(own[i]) for i in (4, 7, 4)]
        assert not torch.equal(same[1][1], state[1][1])

    candidates = torch.tensor([[12, 0, 13, 5], [3, 13, 2, 12], [1, 2, 3, 4]])
    scores = remapped.score(state, candidates)
    known = candidates < N_ITEMS
    assert torch.isneginf(scores[~known]).all()
    assert torch.equal(scores[known], model.score(state[1:], own[candidates].clamp(min=0))[known])
    every_item = torch.arange(N_ITEMS + 2).expand(3, -1)
    torch.testing.assert_close(remapped.score_all(state), remapped.score(state, every_item))
    vectors = remapped.item_vectors(candidates[0])
    assert torch.equal(vectors[[1, 3]], model.item_vectors(own[[0, 5]]))
    assert not vectors[[0, 2]].any()

    # An unknown positive ranks below every known negative, in the middle of the unknown ones: 1 + 3 + 2 / 2.
    events = Events([0, 1], [1, 1], [0, 1], [12, 3], [[0, 13, 5, 12, 6], [0, 13, 5, 12, 6]])
    got = replay(remapped, WARMUP, events)
    assert got.rank[0] == 5.0
    assert got.rank[1] <= 4.0  # a known positive ranks among the known candidates


def test_steps_feed_the_model_its_own_items_and_skip_unknown_ones():
    # SASRec's steps: the last 3 known items of a history, encoded once, whatever the unknown ones between them.
    torch.manual_seed(6)
    sasrec = SASRec(N_ITEMS, item_dim=6, feature_dim=2, window=3).eval()
    own = torch.tensor([4, 2, 9, 0, 11, 7, 1, 3, 10, 5, 6, 8, -1, -1])  # current items 12 and 13 are unknown
    remapped = RemappedModel(sasrec, np.arange(N_USERS), ACTIVE, own)
    inactive = torch.zeros(2, dtype=torch.bool)
    history = torch.tensor([[1, 12, 2, 3, 13, 4, -1], [5, 6, 13, -1, -1, -1, -1]])
    with torch.no_grad():
        at_once = remapped.steps(remapped.init_state(torch.arange(2), inactive), history, inactive)
        one_by_one = remapped.init_state(torch.arange(2), inactive)
        for t in range(history.shape[1]):
            one_by_one = remapped.step(one_by_one, history[:, t], inactive)
    assert at_once[1].tolist() == [[9, 0, 11], [7, 1, -1]]  # the model's ids of current items 2, 3, 4 and 5, 6
    assert torch.equal(at_once[1], one_by_one[1])
    torch.testing.assert_close(remapped.user_vector(at_once), remapped.user_vector(one_by_one), rtol=0, atol=1e-5)


def test_maps_out_of_range_are_rejected(model):
    with pytest.raises(ValueError, match=r"user_map must be 1-d ids in \[-1, 7\)"):
        RemappedModel(model, [0, 7], ACTIVE, np.arange(N_ITEMS))
    with pytest.raises(ValueError, match=r"item_map must be 1-d ids in \[-1, 12\)"):
        RemappedModel(model, [0], ACTIVE, [-2, 3])

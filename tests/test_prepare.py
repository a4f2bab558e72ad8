"""The prepare job on real MovieLens ratings (the session fixture: ml-latest-small's first 250 users): tables,
columns and their invariants."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twots.data.tables import COLUMNS as DESIGN_COLUMNS  # the contract the pipeline must write

N_RATINGS = 37_447  # the ratings of ml-latest-small's users 1-250 (conftest.small_movielens)
N_ITEMS = 6_127    # the movies they rated
N_TRAIN, N_TRAIN_VAL = 26_212, 29_957  # the first 70 % and 80 % of the events in time


@pytest.fixture(scope="module")
def tables(spark, small_movielens):
    return {name: spark.read.format("delta").load(str(small_movielens / name)) for name in DESIGN_COLUMNS}


@pytest.fixture(scope="module")
def frames(tables):
    return {name: df.toPandas() for name, df in tables.items()}


@pytest.fixture(scope="module")
def manifest(small_movielens):
    return json.loads((small_movielens / "manifest.json").read_text())


def test_tables_have_the_design_columns(tables):
    for name, columns in DESIGN_COLUMNS.items():
        assert tables[name].columns == list(columns), name


def test_manifest_counts_match_the_data(manifest, frames):
    assert manifest["input_rows"] == N_RATINGS + 1  # the header line is an input row, rejected as "header"
    assert manifest["accepted"] == N_RATINGS
    assert manifest["rejected"] == {"header": 1}
    assert (manifest["n_users"], manifest["n_items"]) == (250, N_ITEMS)
    assert manifest["splits"] == {"train": N_TRAIN, "val": N_TRAIN_VAL - N_TRAIN, "test": N_RATINGS - N_TRAIN_VAL}
    assert manifest["n_features"] == 20  # 19 genres and "(no genres listed)"
    activity = frames["user_activity"]
    assert manifest["n_active"] == int(activity.is_active.sum())
    assert manifest["n_new"] == int((activity.n_train == 0).sum())
    assert manifest["n_active"] + manifest["n_inactive"] + manifest["n_new"] == 250
    for name, df in frames.items():
        assert manifest["tables"][name]["rows"] == len(df), name
        assert manifest["tables"][name]["version"] == 0
    assert set(manifest["timings_s"]) >= {"parse", "interactions", "sequences"}


def test_event_ids_are_a_global_time_order(frames):
    events = frames["interactions"].sort_values("event_id")
    assert events.event_id.tolist() == list(range(N_RATINGS))
    assert (np.diff(events.ts.to_numpy()) >= 0).all()
    first_val = events.split.tolist().index("val")
    assert events.split.iloc[:first_val].eq("train").all() and first_val == N_TRAIN
    assert events[events.split == "train"].ts.max() <= events[events.split == "val"].ts.min()
    assert events[events.split == "val"].ts.max() <= events[events.split == "test"].ts.min()


def test_ids_map_back_to_raw_ratings(frames, small_movielens):
    import pandas as pd

    raw = pd.read_csv(small_movielens.parent / "raw" / "ratings.csv")
    events = (frames["interactions"].merge(frames["users"], on="user_id").merge(frames["items"], on="item_id"))
    got = set(zip(events.raw_user_id.astype(int), events.raw_item_id.astype(int), events.ts))
    assert got == set(zip(raw.userId, raw.movieId, raw.timestamp))
    toy_story = frames["items"].set_index("raw_item_id").loc["1"]
    assert list(toy_story.raw_features) == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]


def test_user_activity_counts_training_events(frames):
    train = frames["interactions"].query("split == 'train'").groupby("user_id").size()
    activity = frames["user_activity"].set_index("user_id")
    assert (activity.n_train == train.reindex(activity.index, fill_value=0)).all()
    assert (activity.is_active == (activity.n_train > 20)).all()


def test_sequences_hold_last_k_for_active_and_all_for_inactive(frames):
    train = frames["interactions"].query("split == 'train'").sort_values("event_id")
    offers = frames["stage1_offers"].set_index("event_id")
    history = train.groupby("user_id")
    seqs = frames["sequences"].set_index("user_id")
    assert set(seqs.index) == set(frames["user_activity"].query("n_train > 0").user_id)
    for user, row in seqs.iterrows():
        events = history.get_group(user)
        kept = events.tail(10) if row.is_active else events
        assert list(row.item_ids) == kept.item_id.tolist()
        expected_negs = np.concatenate([offers.loc[e].neg_item_ids for e in kept.event_id])
        assert list(row.neg_item_ids) == expected_negs.tolist()
        before = events.item_id.iloc[-11] if row.is_active and len(events) > 10 else -1
        assert row.prev_item_id == before


def _check_negatives(df, p, n_items):
    negs = np.stack(df.neg_item_ids.to_numpy())
    assert negs.shape == (len(df), p)
    assert (negs != df.item_id.to_numpy()[:, None]).all()
    assert negs.min() >= 0 and negs.max() < n_items
    return negs


def test_offer_negatives_are_uniform_and_never_the_positive(frames):
    offers = frames["stage1_offers"]
    assert len(offers) == N_TRAIN
    negs = _check_negatives(offers, 10, N_ITEMS)
    counts = np.bincount(negs.ravel(), minlength=N_ITEMS)
    expected = negs.size / N_ITEMS
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < (N_ITEMS - 1) + 6 * np.sqrt(2 * (N_ITEMS - 1))  # uniform: chi2 ~ dof +- sqrt(2 dof)


def test_eval_candidates_cover_val_and_test(frames):
    cands = frames["eval_candidates"]
    events = frames["interactions"].query("split != 'train'")
    assert sorted(cands.event_id) == sorted(events.event_id)
    _check_negatives(cands, 99, N_ITEMS)
    train_negs = set(map(tuple, frames["stage1_offers"].neg_item_ids.head(100)))
    assert not train_negs & set(map(tuple, cands.neg_item_ids))


def test_side_data_holds_every_items_features_and_the_known_users(spark, small_movielens, manifest, frames, tmp_path):
    """What the ranks load instead of Spark tables (twots.training.launch.write_side_data, read from the tables'
    files): each item's feature ids in its row, -1 padded, and which users have training interactions."""
    from twots.training.launch import write_side_data

    side = np.load(write_side_data(spark, small_movielens, manifest, tmp_path / "side_data.npz"))
    features, known = side["item_features"], side["known_users"]
    assert features.shape == (N_ITEMS, manifest["max_features_per_item"])
    for item_id, ids in zip(frames["items"]["item_id"], frames["items"]["feature_ids"]):
        assert features[item_id].tolist() == list(ids) + [-1] * (features.shape[1] - len(ids))
    activity = frames["user_activity"]
    assert known.shape == (manifest["n_users"],)
    assert known[activity["user_id"]].tolist() == (activity["n_train"] > 0).tolist()
    assert (~known).sum() == manifest["n_new"]  # users whose every event is after the training split

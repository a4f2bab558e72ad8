"""The full-history training rows of the baselines, built by Spark from stage1_offers."""

import pytest

from pipelines.histories import full_sequences, item_counts


def offers_and_activity(spark):
    # user 0: 5 events (active), user 1: 2 events (inactive), user 2: new (no training events).
    events = [(10, 0, 100), (11, 1, 200), (12, 0, 101), (13, 0, 102), (14, 1, 201), (15, 0, 103), (16, 0, 104)]
    offers = spark.createDataFrame([(e, u, i, [i + 1000, i + 2000]) for e, u, i in events],
                                   "event_id long, user_id int, item_id int, neg_item_ids array<int>")
    activity = spark.createDataFrame([(0, 5, True), (1, 2, False), (2, 0, False)],
                                     "user_id int, n_train int, is_active boolean")
    return offers, activity


def test_full_sequences_keep_the_last_max_len_items_with_their_negatives(spark):
    offers, activity = offers_and_activity(spark)
    rows = {r["user_id"]: r for r in full_sequences(offers.repartition(3), activity, max_len=3).collect()}
    assert set(rows) == {0, 1}  # the new user has nothing to train on
    assert rows[0]["is_active"] and not rows[1]["is_active"]
    assert rows[0]["item_ids"] == [102, 103, 104] and rows[0]["prev_item_id"] == 101
    assert rows[0]["neg_item_ids"] == [1102, 2102, 1103, 2103, 1104, 2104]
    assert rows[1]["item_ids"] == [200, 201] and rows[1]["prev_item_id"] == -1
    whole = {r["user_id"]: r["item_ids"] for r in full_sequences(offers, activity, max_len=50).collect()}
    assert whole[0] == [100, 101, 102, 103, 104]
    with pytest.raises(ValueError, match="max_len"):
        full_sequences(offers, activity, max_len=0)


def test_item_counts_count_training_clicks_only(spark):
    interactions = spark.createDataFrame(
        [(0, 5, "train"), (1, 5, "train"), (2, 6, "train"), (3, 5, "test"), (4, 7, "val")],
        "event_id long, item_id int, split string")
    assert {r["item_id"]: r["count"] for r in item_counts(interactions).collect()} == {5: 2, 6: 1}

"""Training data of the full-history baselines (GRU4Rec, SASRec, SumPooling), built from `stage1_offers`.

The `sequences` table keeps only the last K items of active users (2TS encodes the rest in phi). The baselines have no
phi: they train on, and the replay warms them up over, each user's whole training sequence, capped at its last
`max_len` items. The rows have the `sequences` schema, so the same loaders and replay read them, and the negatives
are those of `stage1_offers`, so every model trains on the same offer sets.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.activity import sequences


def full_sequences(offers: DataFrame, activity: DataFrame, max_len: int) -> DataFrame:
    """stage1_offers + user_activity -> rows of the `sequences` schema holding each user's last `max_len` items.

    `prev_item_id` is the training item just before the kept ones (-1 when the whole history fits).
    """
    if max_len < 1:
        raise ValueError(f"full_sequences: max_len must be >= 1, got {max_len}")
    # The pipeline's transform cuts active users to their last K: mark everyone active with K = max_len,
    # then put the real activity back.
    everyone = activity.select("user_id", F.lit(True).alias("is_active"))
    cut = sequences(offers, everyone, max_len).drop("is_active")
    return cut.join(activity.select("user_id", "is_active"), "user_id").select(
        "user_id", "is_active", "item_ids", "neg_item_ids", "prev_item_id")


def item_counts(interactions: DataFrame) -> DataFrame:
    """Training clicks per item (the Popularity model): item_id, count. Items never clicked are absent."""
    return (interactions.where(F.col("split") == "train")
            .groupBy("item_id").agg(F.count("*").cast("long").alias("count")))

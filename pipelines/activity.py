"""Time split, user activity (active iff n_train > t*) and the stage-2 training sequences."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from pipelines.indexing import packed_key


def split_column(event_id: Column, n_events: int, train_fraction: float, val_fraction: float) -> Column:
    """Global time order: the first 70% of events are train, the next 10% val, the rest test (by default)."""
    train_end = int(n_events * train_fraction)
    val_end = int(n_events * (train_fraction + val_fraction))
    return F.when(event_id < train_end, "train").when(event_id < val_end, "val").otherwise("test")


def user_activity(users: DataFrame, interactions: DataFrame, t_star: int) -> DataFrame:
    """Every user with n_train (0 for users seen only in val/test) and is_active = n_train > t*."""
    n_train = (interactions.where(F.col("split") == "train").groupBy("user_id")
               .agg(F.count("*").cast("int").alias("n_train")))
    return (users.select("user_id").join(n_train, "user_id", "left")
            .select("user_id", F.coalesce("n_train", F.lit(0)).alias("n_train"))
            .withColumn("is_active", F.col("n_train") > t_star))


def sequences(offers: DataFrame, activity: DataFrame, last_k: int,
              negatives: Callable[[Column, Column], Column] | None = None) -> DataFrame:
    """Last K training items of each active user, all of an inactive user's, with their offers' negatives.

    `neg_item_ids` is flat (step s's negatives at [s*p, (s+1)*p)); `prev_item_id` is the training item just
    before item_ids[0], -1 if none (an inactive user's sequence starts at the first item).
    With `negatives` (item_id, event_id -> array), `offers` need no `neg_item_ids`: each kept step's are drawn
    after the cut, so only ids are shuffled, not every offer's array (the pipeline passes stage1_offers' draw).
    """
    ranked = _back(offers.join(activity.select("user_id", "is_active"), "user_id"))
    keep = ~F.col("is_active") | (F.col("_back") <= last_k)
    before = F.col("is_active") & (F.col("_back") == last_k + 1)
    negs = negatives(F.col("item_id"), F.col("event_id")) if negatives else F.col("neg_item_ids")
    step = F.when(keep, F.struct("event_id", "item_id", negs.alias("neg_item_ids")))  # collect_list skips nulls
    grouped = ranked.where(keep | before).groupBy("user_id", "is_active").agg(
        F.sort_array(F.collect_list(step)).alias("_steps"), F.max(F.when(before, F.col("item_id"))).alias("_prev"))
    return grouped.select(
        "user_id", "is_active", F.col("_steps.item_id").alias("item_ids"),
        F.flatten("_steps.neg_item_ids").alias("neg_item_ids"),
        F.coalesce("_prev", F.lit(-1)).alias("prev_item_id"),
    )


def _back(rows: DataFrame) -> DataFrame:
    """Add `_back`: 1 for each user's latest event (by event_id), 2 for the one before, and so on.

    Not row_number over a window partitioned by user and ordered by event_id: that sort compares users first,
    and Spark's sort compares an 8-byte prefix of its first key only, so every comparison among one user's rows
    compared whole rows. Here the rows are sorted within partitions of users by one long ordering like (user,
    newest first), their place numbered, and a user's places counted from the first (a window by user alone,
    whose sort is on the prefix). At 10M rows on 2 cores, alone: 7.8-12.3 s against 10.9-17.3 s; inside
    prepare, 15 % less task CPU for the step and the same wall (docs/benchmarks/2026-12-02-prepare-vs-duckdb.md).
    """
    bounds = rows.agg(F.max("user_id"), F.max("event_id")).first()
    user_max, event_max = (bounds[0] or 0), (bounds[1] or 0)
    newest_first = packed_key(F.col("user_id"), F.lit(event_max) - F.col("event_id"), (0, user_max), event_max + 1)
    # monotonically_increasing_id rises along a partition, so after the sort it rises along each user's rows.
    placed = (rows.repartition("user_id").sortWithinPartitions(*newest_first)
              .withColumn("_place", F.monotonically_increasing_id()))
    first = F.min("_place").over(Window.partitionBy("user_id"))
    return placed.withColumn("_back", F.col("_place") - first + 1).drop("_place")


def held_out(offers: DataFrame, activity: DataFrame, last_k: int) -> DataFrame:
    """`offers` without each active user's last `last_k` training events: the rows stage 2 of an out-of-sample phi
    trains on (`sequences` with the same K), which stage 1 then never fits."""
    ranked = _back(offers.join(activity.select("user_id", "is_active"), "user_id"))
    return ranked.where(~F.col("is_active") | (F.col("_back") > last_k)).select(*offers.columns)


def early_sequences(offers: DataFrame, activity: DataFrame, t_star: int) -> DataFrame:
    """Each active user's first t* training items (rows of `offers`, i.e. of the training split only) as a
    `sequences` row of an inactive user: is_active false, prev_item_id -1, the offers' negatives. An active user has
    more than t* training items, so every row holds exactly t* (none at all when t* is 0)."""
    first = Window.partitionBy("user_id").orderBy("event_id")
    active = activity.where(F.col("is_active")).select("user_id", F.lit(False).alias("is_active"))
    early = (offers.join(active.select("user_id"), "user_id")
             .withColumn("_n", F.row_number().over(first)).where(F.col("_n") <= t_star).drop("_n"))
    # As inactive users, sequences() keeps all of their (now first t*) items; its last_k cuts active rows only.
    return sequences(early, active, last_k=t_star)


def coldstart_sequences(seqs: DataFrame, offers: DataFrame, activity: DataFrame, t_star: int) -> DataFrame:
    """The stage-2 rows of the 2ts-coldstart-all kind: `sequences` (`seqs`) plus early_sequences, so psi and the
    inactive GRU learn from every user's first t* training items, the active users' rows unchanged."""
    return seqs.unionByName(early_sequences(offers, activity, t_star))


TRAIN_COUNT_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
NEARLY_EMPTY = 0.01   # a group under 1 % of the users with training events gets a warning


def train_count_quantiles(activity: DataFrame) -> dict[str, int]:
    """Training events per user over the users who have any: {"p10": ..., "p99": ..., "max": ...}, the numbers to
    choose t* from (a user is active when n_train > t*, so t* = p90 makes about 10 % of them active)."""
    trained = activity.where(F.col("n_train") > 0)
    row = trained.agg(F.percentile("n_train", list(TRAIN_COUNT_QUANTILES)).alias("q"), F.max("n_train")).first()
    values = [int(v) for v in row[0] or [0] * len(TRAIN_COUNT_QUANTILES)]
    return {**{f"p{round(q * 100)}": v for q, v in zip(TRAIN_COUNT_QUANTILES, values)}, "max": int(row[1] or 0)}


def group_warning(t_star: int, n_active: int, n_inactive: int, quantiles: dict[str, int]) -> str | None:
    """One line when t* leaves the active or the inactive users (of those with training events) empty or under
    1 %: which group, and the training-count quantiles to choose another t* from. None when both groups hold."""
    trained = n_active + n_inactive
    small = [(name, n) for name, n in (("active", n_active), ("inactive", n_inactive)) if n < NEARLY_EMPTY * trained]
    if not trained or not small:
        return None
    counts = ", ".join(f"{k} {v}" for k, v in quantiles.items())
    groups = " and ".join(f"{n:,} {name}" for name, n in small)
    return (f"t* = {t_star} leaves {groups} of {trained:,} users with training events (a group under "
            f"{NEARLY_EMPTY:.0%}): the model parts of that group learn from nothing. Training events per user: "
            f"{counts}; users with more than t* are active (--t-star).")

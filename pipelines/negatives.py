"""Offer sets: deterministic uniform negatives without UDFs.

Negative k of event e is `pmod(pos + 1 + pmod(xxhash64(seed, salt, e, k), n - 1), n)`: uniform over the n - 1
items that are not the positive, and the same for the same (seed, event, k). Up to ARRAY_DRAWS draws are plain
expressions in one array, compiled by whole-stage codegen: measured at p = 10, 2.5x less CPU than a `transform`
lambda, which Spark interprets row by row. More draws (eval's 499) keep the `transform`: their array is too large
to compile, and Spark's interpreted fallback is slower still. Negatives are drawn independently
(with replacement), as "p items drawn uniformly from all items": an offer set may repeat a negative (rarely:
about p^2 / 2n repeats), never the positive. Training and evaluation use different salts, so their draws are
independent.

Popularity-aware training negatives (prepare's `sampler: popularity`, `popularity_offers`): each of the p
negatives of an offer set is drawn with probability proportional to count_j^alpha among the items clicked in
training other than the positive (count_j: the item's training clicks; items never clicked in training are never
drawn). Still without UDFs and deterministic by (seed, event, k): the weights are integers, item j owns the
interval [lo_j, lo_j + w_j) of [0, total) in item_id order, a draw hashes to a point of [0, total - w_pos) and
skips the positive's interval (so the positive is excluded exactly, with no rejection), and the owner of the point
is found by an equi-join on fixed-width buckets of [0, total) (each item listed under the buckets its interval
meets) and a range filter. Integer sums and the hash do not depend on how Spark partitions, so neither do the
draws. The evaluation candidates stay uniform (the paper's protocol).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

ARRAY_DRAWS = 16
TRAIN_SALT = 1
EVAL_SALT = 2
SAMPLE_SALT = 3
# The most clicked item's integer weight: 2^30 units, so count^alpha is quantised finely (a once-clicked item among
# items clicked a million times still gets 2^30 / 1e6^0.75 = 33k units) and the total stays far below 2^63.
WEIGHT_BITS = 30
SAMPLERS = ("uniform", "popularity")


def negatives(item: Column, event: Column, n_items: int, count: int, seed: int, salt: int) -> Column:
    """array<int> of `count` items drawn uniformly from all items except `item`."""
    if n_items < 2:
        raise ValueError(f"negative sampling needs at least 2 items, got {n_items}")

    def draw(k: Column) -> Column:
        offset = F.pmod(F.xxhash64(F.lit(seed), F.lit(salt), event, k), F.lit(n_items - 1))
        return F.pmod(item.cast("long") + 1 + offset, F.lit(n_items)).cast("int")

    if count <= ARRAY_DRAWS:
        return F.array(*[draw(F.lit(k)) for k in range(count)])
    return F.transform(F.sequence(F.lit(0), F.lit(count - 1)), draw)


def offer_negatives(item: Column, event: Column, n_items: int, p: int, seed: int) -> Column:
    """The p negatives of a training offer set (stage1_offers' `neg_item_ids`)."""
    return negatives(item, event, n_items, p, seed, TRAIN_SALT)


def stage1_offers(interactions: DataFrame, n_items: int, p: int, seed: int, sampler: str = "uniform",
                  alpha: float = 0.75) -> DataFrame:
    """One row per training interaction: the clicked item and p negatives, drawn uniformly or (sampler
    "popularity") in proportion to training count^alpha."""
    train = interactions.where(F.col("split") == "train")
    if sampler == "popularity":
        return popularity_offers(train, p, seed, alpha)
    if sampler != "uniform":
        raise ValueError(f"unknown negative sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
    return train.select(
        "event_id", "user_id", "item_id",
        offer_negatives(F.col("item_id"), F.col("event_id"), n_items, p, seed).alias("neg_item_ids"),
    )


def popularity_weights(train: DataFrame, alpha: float) -> DataFrame:
    """item_id, w, lo for every item clicked in `train`: w, an integer weight proportional to count^alpha (the most
    clicked item's is 2^WEIGHT_BITS, none below 1), and lo, the sum of the weights of the items before it by
    item_id, so the items tile [0, total) with intervals [lo, lo + w)."""
    counts = train.groupBy("item_id").agg(F.count("*").alias("count"))
    top = counts.agg(F.max("count")).first()[0]
    if top is None:
        raise ValueError("popularity negatives need training interactions; there are none")
    scale = float(2 ** WEIGHT_BITS) / float(top) ** alpha
    weights = counts.select("item_id", F.greatest(F.lit(1), F.round(F.pow("count", F.lit(alpha)) * scale))
                            .cast("long").alias("w"))
    before = Window.orderBy("item_id").rowsBetween(Window.unboundedPreceding, -1)  # one row per item
    return weights.withColumn("lo", F.coalesce(F.sum("w").over(before), F.lit(0)).cast("long"))


def popularity_offers(train: DataFrame, p: int, seed: int, alpha: float) -> DataFrame:
    """stage1_offers' rows with p negatives per event drawn in proportion to training count^alpha, never the
    positive (see the module doc)."""
    # Checkpointed: the weights are read three times and must be the same each time.
    weights = popularity_weights(train, alpha).localCheckpoint()
    stats = weights.agg(F.count("*").alias("items"), F.sum("w").alias("total")).first()
    if stats["items"] < 2:
        raise ValueError(f"popularity negatives need at least 2 items clicked in training, got {stats['items']}")
    width = -(-stats["total"] // stats["items"])  # buckets of [0, total): about one interval boundary each
    buckets = weights.select(
        "item_id", "lo", (F.col("lo") + F.col("w")).alias("hi"),
        F.explode(F.sequence(F.expr(f"lo div {width}"), F.expr(f"(lo + w - 1) div {width}"))).alias("bucket"))
    positives = weights.select("item_id", F.col("lo").alias("pos_lo"), F.col("w").alias("pos_w"))
    draws = train.select("event_id", "user_id", "item_id").join(positives, "item_id").select(
        "event_id", "user_id", "item_id", "pos_lo", "pos_w",
        F.explode(F.sequence(F.lit(0), F.lit(p - 1))).alias("k"))
    offset = F.pmod(F.xxhash64(F.lit(seed), F.lit(TRAIN_SALT), F.col("event_id"), F.col("k")),
                    F.lit(stats["total"]) - F.col("pos_w"))
    point = offset + F.when(offset >= F.col("pos_lo"), F.col("pos_w")).otherwise(F.lit(0))
    points = (draws.select("event_id", "user_id", "item_id", "k", point.alias("point"))
              .withColumn("bucket", F.expr(f"point div {width}")))
    hits = points.join(buckets.select("bucket", F.col("item_id").alias("neg"), "lo", "hi"), "bucket").where(
        (F.col("lo") <= F.col("point")) & (F.col("point") < F.col("hi")))
    return hits.groupBy("event_id", "user_id", "item_id").agg(
        F.sort_array(F.collect_list(F.struct("k", "neg"))).alias("_negs")).select(
        "event_id", "user_id", "item_id", F.col("_negs.neg").alias("neg_item_ids"))


def in_eval_sample(user_id: Column, fraction: float, seed: int) -> Column:
    """A reproducible sample of users (all val/test events of a sampled user, so replays stay whole)."""
    if fraction >= 1:
        return F.lit(True)
    buckets = 1_000_000
    return F.pmod(F.xxhash64(F.lit(seed), F.lit(SAMPLE_SALT), user_id), F.lit(buckets)) < int(fraction * buckets)


def eval_candidates(interactions: DataFrame, n_items: int, n_neg: int, seed: int, fraction: float) -> DataFrame:
    """Every val/test event (of the sampled users) with the negatives every model is scored against, and
    `is_repeat`: the user clicked the same item in an earlier event (of any split), so the evaluation can say how
    a model ranks items the user came back to apart from first clicks."""
    sampled = interactions.where(in_eval_sample(F.col("user_id"), fraction, seed))
    first = sampled.groupBy("user_id", "item_id").agg(F.min("event_id").alias("_first"))
    events = sampled.where(F.col("split").isin("val", "test")).join(first, ["user_id", "item_id"])
    return events.select(
        "event_id", "user_id", "item_id", "ts", "split",
        negatives(F.col("item_id"), F.col("event_id"), n_items, n_neg, seed, EVAL_SALT).alias("neg_item_ids"),
        (F.col("event_id") > F.col("_first")).alias("is_repeat"),
    )

"""Synthetic Taobao-format interaction logs at any scale (`jobs/generate.py`), Spark-native.

Generative process (every random number is a hash of (seed, salt, user, event index), so the same seed gives
the same rows however Spark partitions the work):

1. Users. n_users = rows / mean_events. Each user's event count is log-normal with the real log's median (75)
   and mean (101): mu = ln(median), sigma = sqrt(2 ln(mean / median)). On log-log axes its upper tail is the
   straight-ish decay of the paper's Fig. 5 (few users with thousands of events, most with tens). Counts are
   then scaled and the remainder spread (one event each) so that exactly `rows` rows come out.
2. Categories and items. Categories sit at evenly spaced points of a circle of "taste" [0, 1), so neighbouring
   categories are similar. Each category has `items_per_category` items; within a category an item's
   popularity rank is floor(n * u^item_skew) for uniform u, a power law (density ~ r^(1/skew - 1)): a long tail.
3. Tastes. A user's taste centre is the population mean (0.5) plus N(0, taste_spread): users are close to the
   population, so a new user is best served by the population's taste, and each user's history refines it.
   Each centre drifts linearly over the window by N(0, drift): slowly, relative to the event spread.
4. Events. Each event has a uniform time in the window [start_ts, start_ts + days), or, for the `late_share`
   of users who join late, in [their uniform join time, end): the new users of val/test. With probability
   `population_share` its taste point is drawn from the population (0.5 + N(0, taste_spread)), otherwise
   from the user's current taste (centre + drift * time fraction + N(0, taste_width)). The category is the
   one at that point of the circle, the item is drawn within it as in 2, the behaviour is pv/cart/fav/buy
   with the real log's shares (90.5/5.4/2.1/2.0 %).
5. Output: `user_id,item_id,category_id,behavior_type,timestamp` CSV parts (ids 1-based), each user's rows
   together and in time order, like the real log; `_generator.json` beside them (Spark readers skip it).

So a model can learn (items cluster by user and by category neighbourhood, popularity is skewed), and the
active/inactive split matters: the more events a user has, the better their own centre can be estimated
beyond the population's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import GenerateConfig

BEHAVIOR_SHARES = (("pv", 0.905), ("cart", 0.054), ("fav", 0.021), ("buy", 0.020))
_BITS = 1 << 53


def uniform(seed: int, salt: int, *cols: Column) -> Column:
    """A uniform draw in (0, 1), a pure function of (seed, salt, cols)."""
    bits = F.pmod(F.xxhash64(F.lit(seed), F.lit(salt), *cols), F.lit(_BITS))
    return (bits.cast("double") + 0.5) / float(_BITS)


def normal(seed: int, salt: int, *cols: Column) -> Column:
    """A standard normal draw (Box-Muller on two hashed uniforms)."""
    u1, u2 = uniform(seed, salt, *cols), uniform(seed, salt + 1000, *cols)
    return F.sqrt(-2.0 * F.log(u1)) * F.cos(2.0 * math.pi * u2)


def shape(cfg: GenerateConfig) -> dict:
    n_users = max(1, round(cfg.rows / cfg.mean_events))
    n_categories = max(1, round(cfg.rows / cfg.rows_per_item / cfg.items_per_category))
    return {"users": n_users, "categories": n_categories, "items": n_categories * cfg.items_per_category}


def users(spark: SparkSession, cfg: GenerateConfig) -> DataFrame:
    """user, n_events (summing to exactly cfg.rows), taste centre and drift."""
    n_users = shape(cfg)["users"]
    mu, sigma = math.log(cfg.median_events), math.sqrt(2 * math.log(cfg.mean_events / cfg.median_events))
    user = F.col("id")
    raw = spark.range(n_users).select(
        user.alias("user"),
        F.greatest(F.lit(1.0), F.round(F.exp(mu + sigma * normal(cfg.seed, 1, user)))).alias("n"),
        (0.5 + cfg.taste_spread * normal(cfg.seed, 2, user)).alias("centre"),
        (cfg.drift * normal(cfg.seed, 3, user)).alias("drift"),
        F.when(uniform(cfg.seed, 4, user) < cfg.late_share, uniform(cfg.seed, 5, user)).otherwise(0.0).alias("join"),
    )
    total = raw.agg(F.sum("n")).first()[0]
    scaled = raw.withColumn("n", F.greatest(F.lit(1), F.floor(F.col("n") * (cfg.rows / total))).cast("long"))
    remainder = cfg.rows - scaled.agg(F.sum("n")).first()[0]
    if not 0 <= remainder <= n_users:
        raise ValueError(f"cannot spread {cfg.rows} rows over {n_users} users (remainder {remainder})")
    return scaled.withColumn("n", F.col("n") + (F.col("user") < remainder).cast("long"))


def events(user_table: DataFrame, cfg: GenerateConfig) -> DataFrame:
    """One row per event: user, item, category, behaviour, ts (0-based ids)."""
    sizes = shape(cfg)
    seed, span = cfg.seed, cfg.days * 86400
    rows = (user_table.repartitionByRange(cfg.parts, "user")
            .select("user", "centre", "drift", "join", F.explode(F.sequence(F.lit(0), F.col("n") - 1)).alias("k")))
    key = (F.col("user"), F.col("k"))
    when = F.col("join") + (1 - F.col("join")) * uniform(seed, 10, *key)
    own = F.col("centre") + F.col("drift") * when + cfg.taste_width * normal(seed, 11, *key)
    population = 0.5 + cfg.taste_spread * normal(seed, 12, *key)
    point = F.when(uniform(seed, 13, *key) < cfg.population_share, population).otherwise(own)
    category = F.least(F.floor((point - F.floor(point)) * sizes["categories"]), F.lit(sizes["categories"] - 1))
    rank = F.floor(cfg.items_per_category * F.pow(uniform(seed, 14, *key), cfg.item_skew))
    return rows.select(
        "user",
        (category * cfg.items_per_category + rank).cast("long").alias("item"),
        category.cast("long").alias("category"),
        _behavior(uniform(seed, 15, *key)).alias("behavior"),
        (cfg.start_ts + F.floor(when * span)).cast("long").alias("ts"),
    )


def _behavior(u: Column) -> Column:
    choice, edge = None, 0.0
    for name, share in BEHAVIOR_SHARES[:-1]:
        edge += share
        choice = F.when(u < edge, name) if choice is None else choice.when(u < edge, name)
    return choice.otherwise(BEHAVIOR_SHARES[-1][0])


def generate(cfg: GenerateConfig, spark: SparkSession) -> dict:
    """Write the CSV parts under cfg.output and return what was written (also in _generator.json)."""
    user_table = users(spark, cfg).localCheckpoint()
    lines = (events(user_table, cfg).sortWithinPartitions("user", "ts", "item")
             .select(F.concat_ws(",", F.col("user") + 1, F.col("item") + 1, F.col("category") + 1,
                                 "behavior", "ts").alias("value")))
    writer = lines.write.mode("overwrite")
    if cfg.compress:
        writer = writer.option("compression", "gzip")
    writer.text(cfg.output)
    stats = user_table.agg(F.sum("n").alias("rows"), F.count("*").alias("users"), F.mean("n").alias("mean"),
                           F.percentile_approx("n", 0.5).alias("median"), F.max("n").alias("max")).first()
    report = {"config": cfg.model_dump(), **shape(cfg), "rows": stats["rows"],
              "events_per_user": {"mean": round(stats["mean"], 2), "median": stats["median"], "max": stats["max"]}}
    (Path(cfg.output) / "_generator.json").write_text(json.dumps(report, indent=2) + "\n")
    return report

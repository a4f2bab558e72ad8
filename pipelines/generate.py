"""Synthetic Taobao-format interaction logs at any scale (`jobs/generate.py`), Spark-native (no UDFs).

Calibrated to the statistics of the real Taobao rows in ../shared/data/taobao-sample (pipelines/profile.py defines
them; tests/test_generate.py checks them and docs/data.md compares the two profiles). Never to model results.

Every random number is a hash of (seed, salt, and the ids it belongs to: user, event index k, session, category,
item slot), and every sequential quantity is a running sum over one user's events in k order, so the same seed gives
the same rows however Spark partitions the work. Shape: rows / mean_events users, rows / rows_per_item items in
categories of items_per_category items (at 100M rows: 990k users, 4.39M items made of which 4.17M occur, 9.5k
categories).

1. Users. Each user's event count is log-normal with the full log's mean (101) and median 72 (the real sample's
   mean / median ratio, 87.7 / 62.5, at that mean), scaled and the remainder spread (one event each) so that
   exactly `rows` rows come out. A `late_share` of users join at a uniform time in the window (the new users of
   val/test); the others' window is the whole 9 days. Each user has a home point on a circle of taste, the
   population's (0.5) plus a Cauchy draw of scale `taste_spread`; categories are evenly spaced on the circle, so
   neighbouring categories are similar and users near each other share tastes. The Cauchy's heavy tails keep
   every part of the circle visited at any scale: the choices below spread a few dozen categories around a
   point, a fixed share of the circle at 1M rows (95 categories) but 0.3 % of it at 100M (9.5k), where normal
   homes left 40 % of the categories with under 1,600 events and 30 % of the items never drawn.
2. Sessions. Event k > 0 starts a new session with probability p_u (log-normal around `session_rate` per user):
   sessions of a few events (geometric sizes, heavier tailed over users). Inside a session the gaps are
   log-normal (median `gap_median_s`, log-sd `gap_sigma`, below 30 min); sessions start at the order statistics
   of uniform times in the user's window minus the time spent in sessions, so they are hours apart, never
   overlap, and end inside the window.
3. Tastes. A user's sessions form interest episodes of 1 or 2 consecutive sessions (a per-user length). An episode
   has a main category: with probability `favourite_share` one of the user's `favourites` (slot j with weight
   falling in j), else a category explored near the user's current taste (home + a linear drift of N(0, drift)
   over the window + N(0, explore_width categories)). Favourites drift too: slot j's category is replaced every
   `favourite_life` sessions (at a per-slot phase), so tastes drift between sessions and come back within them.
4. Categories. An event is on its episode's main category with probability `session_focus` (runs and A-B-A
   returns within a session, continuity across the sessions of an episode), else on a favourite with probability
   `favourite_share`, else on a category explored near the current taste.
5. Items. A category's items sit in slots, slot r drawn with probability ~ power law (rank floor(slots * u^item_skew)):
   a few popular items and a long tail. Each slot holds `item_turnover` + 1 successive items over the window, at a
   per-slot phase and with a soft handover: items appear, peak and fade within the 9 days.
6. Repeats and funnels. A pv, cart or fav event re-views an item of one of the user's earlier fresh (non-repeat)
   events with probability `repeat_pv` / `repeat_cart` / `repeat_fav`, the one a geometric number (mean
   `repeat_recency`) of fresh events back: items from the current and recent sessions. A buy is on an item the
   user had an event on before with probability `repeat_buy`, preferring (`funnel_share`) an earlier cart or fav
   of it: pv -> cart/fav -> buy on the same item. Like the real log, a repeat never targets the immediately
   preceding event. Behaviours have the real log's shares (90.5/5.4/2.1/2.0 %).
7. Output: `user_id,item_id,category_id,behavior_type,timestamp` CSV parts (ids 1-based), each user's rows
   together and in time order, like the real log; `_generator.json` beside them (Spark readers skip it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipelines.config import GenerateConfig

BEHAVIOR_SHARES = (("pv", 0.905), ("cart", 0.054), ("fav", 0.021), ("buy", 0.020))
MAX_SESSION_GAP_S = 1799  # gaps inside a session stay below the profile's 30-minute session rule
_BITS = 1 << 53


def uniform(seed: int, salt: int, *cols: Column) -> Column:
    """A uniform draw in (0, 1), a pure function of (seed, salt, cols)."""
    bits = F.pmod(F.xxhash64(F.lit(seed), F.lit(salt), *cols), F.lit(_BITS))
    return (bits.cast("double") + 0.5) / float(_BITS)


def normal(seed: int, salt: int, *cols: Column) -> Column:
    """A standard normal draw (Box-Muller on two hashed uniforms)."""
    u1, u2 = uniform(seed, salt, *cols), uniform(seed, salt + 1000, *cols)
    return F.sqrt(-2.0 * F.log(u1)) * F.cos(2.0 * math.pi * u2)


def cauchy(seed: int, salt: int, *cols: Column) -> Column:
    """A standard Cauchy draw (the tangent of a hashed uniform angle): heavy tails, no variance."""
    return F.tan(math.pi * (uniform(seed, salt, *cols) - 0.5))


def geometric(u: Column, mean: float) -> Column:
    """0, 1, 2, ... with P(>= j) = (1 - 1/(mean + 1))^j: mean `mean`."""
    return F.floor(F.log(u) / math.log(1 - 1 / (mean + 1)))


def _slots(cfg: GenerateConfig) -> int:
    """Item slots per category; a category holds slots * (item_turnover + 1) items."""
    return max(1, cfg.items_per_category // (cfg.item_turnover + 1))


def shape(cfg: GenerateConfig) -> dict:
    n_users = max(1, round(cfg.rows / cfg.mean_events))
    n_categories = max(1, round(cfg.rows / cfg.rows_per_item / cfg.items_per_category))
    return {"users": n_users, "categories": n_categories, "items": n_categories * _slots(cfg) * (cfg.item_turnover + 1)}


def users(spark: SparkSession, cfg: GenerateConfig) -> DataFrame:
    """user, n (summing to exactly cfg.rows), join (window fraction), home, drift, session rate, episode length."""
    n_users = shape(cfg)["users"]
    mu, sigma = math.log(cfg.median_events), math.sqrt(2 * math.log(cfg.mean_events / cfg.median_events))
    user, seed = F.col("id"), cfg.seed
    raw = spark.range(n_users).select(
        user.alias("user"),
        F.greatest(F.lit(1.0), F.round(F.exp(mu + sigma * normal(seed, 1, user)))).alias("n"),
        F.when(uniform(seed, 4, user) < cfg.late_share, uniform(seed, 5, user)).otherwise(0.0).alias("join"),
        (0.5 + cfg.taste_spread * cauchy(seed, 2, user)).alias("home"),
        (cfg.drift * normal(seed, 3, user)).alias("drift"),
        F.least(F.lit(0.9), cfg.session_rate * F.exp(0.8 * normal(seed, 6, user) - 0.32)).alias("p_session"),
        (1 + uniform(seed, 7, user)).alias("episode"),
        uniform(seed, 8, user).alias("phase"),
    )
    total = raw.agg(F.sum("n")).first()[0]
    scaled = raw.withColumn("n", F.greatest(F.lit(1), F.floor(F.col("n") * (cfg.rows / total))).cast("long"))
    remainder = cfg.rows - scaled.agg(F.sum("n")).first()[0]
    if not 0 <= remainder <= n_users:
        raise ValueError(f"cannot spread {cfg.rows} rows over {n_users} users (remainder {remainder})")
    return scaled.withColumn("n", F.col("n") + (F.col("user") < remainder).cast("long"))


def _behavior(u: Column) -> Column:
    choice, edge = None, 0.0
    for name, share in BEHAVIOR_SHARES[:-1]:
        edge += share
        choice = F.when(u < edge, name) if choice is None else choice.when(u < edge, name)
    return choice.otherwise(BEHAVIOR_SHARES[-1][0])


def _timeline(user_table: DataFrame, cfg: GenerateConfig) -> DataFrame:
    """One row per (user, k): behaviour, repeat decisions, session index and time (steps 2 and 6)."""
    seed, span = cfg.seed, cfg.days * 86400
    key = (F.col("user"), F.col("k"))
    rows = (user_table.repartitionByRange(cfg.parts, "user")
            .select("*", F.explode(F.sequence(F.lit(0), F.col("n") - 1)).alias("k")))
    starts = (F.col("k") == 0) | (uniform(seed, 20, *key) < F.col("p_session"))
    gap = F.exp(math.log(cfg.gap_median_s) + cfg.gap_sigma * normal(seed, 21, *key))
    behavior = _behavior(uniform(seed, 22, *key))
    copy_share = (F.when(behavior == "pv", cfg.repeat_pv).when(behavior == "cart", cfg.repeat_cart)
                  .when(behavior == "fav", cfg.repeat_fav).otherwise(cfg.repeat_buy))
    rows = rows.select(
        "user", "k", "n", "join", "home", "drift", "episode", "phase", behavior.alias("behavior"),
        starts.alias("start"),
        F.when(starts, 0.0).otherwise(F.least(gap, F.lit(float(MAX_SESSION_GAP_S)))).alias("gap"),
        F.when(starts, -F.log(uniform(seed, 23, *key))).otherwise(0.0).alias("spacing"),
        (uniform(seed, 24, *key) < copy_share).alias("wants_copy"),
    )
    before = Window.partitionBy("user").orderBy("k")
    upto = before.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    older = before.rowsBetween(Window.unboundedPreceding, -2)  # never the immediately preceding event
    whole = Window.partitionBy("user")
    fresh = ~F.col("wants_copy") | F.col("_no_source")
    sources_before = F.coalesce(F.sum((~F.col("wants_copy")).cast("int")).over(older), F.lit(0))
    rows = (rows.withColumn("_no_source", sources_before == 0)
            .withColumn("fresh", fresh))
    # Time: the user's window minus the time spent inside sessions, split at uniform order statistics.
    in_sessions = F.sum("gap").over(whole)
    squeeze = F.least(F.lit(1.0), 0.5 * span * (1 - F.col("join")) / F.greatest(in_sessions, F.lit(1.0)))
    free = span * (1 - F.col("join")) - squeeze * in_sessions
    position = F.sum("spacing").over(upto) / (F.sum("spacing").over(whole) - F.log(uniform(seed, 25, F.col("user"))))
    ts = cfg.start_ts + F.floor(span * F.col("join") + free * position + squeeze * F.sum("gap").over(upto))
    is_cart_fav = F.col("behavior").isin("cart", "fav")
    def count_older(c):
        return F.coalesce(F.sum(c.cast("int")).over(older), F.lit(0))
    return rows.select(
        "user", "k", "home", "drift", "episode", "phase", "behavior", "fresh",
        (F.sum(F.col("start").cast("int")).over(upto) - 1).alias("session"),
        ts.cast("long").alias("ts"),
        count_older(F.col("fresh")).alias("fresh_older"),
        count_older(~(~F.col("fresh") & (F.col("behavior") == "buy"))).alias("resolved_older"),
        count_older(is_cart_fav & F.col("fresh")).alias("funnel_older"),
    )


def _point_category(point: Column, n_categories: int) -> Column:
    return F.least(F.floor((point - F.floor(point)) * n_categories), F.lit(n_categories - 1)).cast("long")


def _fresh_choices(rows: DataFrame, cfg: GenerateConfig) -> DataFrame:
    """The category and item each event would have as a fresh event (steps 3 to 5)."""
    sizes = shape(cfg)
    n_cat, seed = sizes["categories"], cfg.seed
    turnover, slots = cfg.item_turnover, _slots(cfg)
    user, k = F.col("user"), F.col("k")
    t = (F.col("ts") - cfg.start_ts) / (cfg.days * 86400)
    taste = F.col("home") + F.col("drift") * t
    def width(cats):
        return cats / n_cat

    def favourite(slot: Column) -> Column:
        life = F.floor((F.col("session") + uniform(seed, 30, user, slot) * cfg.favourite_life) / cfg.favourite_life)
        return F.col("home") + width(cfg.favourite_width) * normal(seed, 31, user, slot, life)

    def slot_of(u: Column) -> Column:
        return F.floor(cfg.favourites * F.pow(u, 2.0)).cast("long")

    episode = F.floor((F.col("session") + F.col("phase") * F.col("episode")) / F.col("episode")).cast("long")
    episode_main = F.when(uniform(seed, 32, user, episode) < cfg.favourite_share,
                          favourite(slot_of(uniform(seed, 33, user, episode)))).otherwise(
        taste + width(cfg.explore_width) * normal(seed, 34, user, episode))
    event_point = (F.when(uniform(seed, 35, user, k) < cfg.session_focus, episode_main)
                   .when(uniform(seed, 36, user, k) < cfg.favourite_share,
                         favourite(slot_of(uniform(seed, 37, user, k))))
                   .otherwise(taste + width(cfg.explore_width) * normal(seed, 38, user, k)))
    category = _point_category(event_point, n_cat)
    slot = F.floor(slots * F.pow(uniform(seed, 40, user, k), cfg.item_skew)).cast("long")
    # Successive items of a slot: generation g lives around [g - phase, g + 1 - phase) / turnover of the window.
    phase = uniform(seed, 41, category, slot)
    handover = 0.5 * (uniform(seed, 42, user, k) - 0.5)
    generation = F.least(F.greatest(F.floor(turnover * t + phase + handover), F.lit(0)), F.lit(turnover)).cast("long")
    item = (category * slots + slot) * (turnover + 1) + generation
    return rows.withColumn("category", category).withColumn("item", item)


def _resolve_repeats(rows: DataFrame, cfg: GenerateConfig) -> DataFrame:
    """Repeat events take the item (and category) of an earlier event (step 6): per user, as arrays in k order.

    Pass 1 resolves pv/cart/fav repeats (their sources are fresh events); pass 2 resolves buy repeats, whose
    sources are any events resolved by pass 1 (or, for the funnel, a fresh cart or fav).
    """
    seed, user = cfg.seed, F.col("user")
    steps = F.array_sort(F.collect_list(F.struct("k", "behavior", "fresh", "ts", "category", "item", "fresh_older",
                                                 "resolved_older", "funnel_older")))
    def positions(cond):
        return F.array_sort(F.collect_list(F.when(cond, F.col("k")))).alias
    # The position lists are aggregate outputs (computed once per user), never re-evaluated inside the lambdas.
    grouped = rows.groupBy("user").agg(
        steps.alias("e"), positions(F.col("fresh"))("fresh_at"),
        positions(F.col("fresh") | (F.col("behavior") != "buy"))("resolved_at"),
        positions(F.col("fresh") & F.col("behavior").isin("cart", "fav"))("funnel_at"))
    e, fresh_at, resolved_at, funnel_at = (F.col(c) for c in ("e", "fresh_at", "resolved_at", "funnel_at"))
    index = F.sequence(F.lit(0), F.size(e) - 1)

    def back(i: Column, salt: int, count: Column) -> Column:
        """Index into the `count` candidates before event i: the last one, or a geometric number before it."""
        return count - 1 - F.pmod(geometric(uniform(seed, salt, user, i), cfg.repeat_recency), count).cast("int")

    def own(i):
        return F.struct(e[i]["category"].alias("c"), e[i]["item"].alias("i"))
    first = F.transform(index, lambda i: F.when(e[i]["fresh"] | (e[i]["behavior"] == "buy"), own(i))
                        .otherwise(own(fresh_at[back(i, 50, e[i]["fresh_older"])])))
    f = F.col("first")

    def buy_source(i: Column) -> Column:
        via_funnel = (e[i]["funnel_older"] > 0) & (uniform(seed, 51, user, i) < cfg.funnel_share)
        return F.when(via_funnel, funnel_at[back(i, 52, e[i]["funnel_older"])]).otherwise(
            resolved_at[back(i, 53, e[i]["resolved_older"])])

    def row(i: Column) -> Column:
        chosen = F.when(e[i]["fresh"] | (e[i]["behavior"] != "buy"), f[i]).otherwise(f[buy_source(i)])
        return F.struct(user, chosen["i"].alias("item"), chosen["c"].alias("category"),
                        e[i]["behavior"].alias("behavior"), e[i]["ts"].alias("ts"))

    return (grouped.select("user", "e", "resolved_at", "funnel_at", first.alias("first"))
            .select(F.inline(F.transform(index, row))))


def events(user_table: DataFrame, cfg: GenerateConfig) -> DataFrame:
    """One row per event: user, item, category, behaviour, ts (0-based ids)."""
    return _resolve_repeats(_fresh_choices(_timeline(user_table, cfg), cfg), cfg)


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

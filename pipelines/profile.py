"""Data profile of an interaction log: the statistics that separate sequence models (`jobs/data_profile.py`).

Input: a raw log of a supported source (read through `pipelines.readers`; rejected lines are counted, not
profiled) or a prepared output folder (its `interactions`, `items` and `user_activity` Delta tables). Every
statistic is computed on events as rows (user, item, category, ts, behaviour, order), each user's events in
(ts, order) order, where order is the input order of a raw log and event_id of a prepared one.

Definitions (the only place they are written down):
- category: Taobao's category_id; MovieLens the item's genres, Last.fm its artist (the item's sorted features
  joined by "|"; for prepared data its feature ids).
- `category_continuity`: share of events whose category equals the category of the same user's previous event,
  over events that have a previous event.
- `repeat_share`: share of all events on an item the same user had an event on before (any behaviour).
- gap: seconds between a user's consecutive events. `long_gap_share`: share of gaps over `session_gap`
  (30 min); `median_gap_s`: their median.
- session: a user's maximal run of events with every gap <= `session_gap`. `sessions_per_user` and
  `events_per_session` are distributions (median, mean, p90, max; quantiles linearly interpolated).
- `events_per_user`, `categories_per_user` (distinct categories): distributions as above.
- `behaviors`: share of events per behaviour type (Taobao only; absent otherwise).
- item popularity: events per item. `top1_share` / `top10_share`: share of all events on the ceil(1 %) /
  ceil(10 %) items with most events; `gini`: Gini coefficient of events per item over the items that have any
  (0: all equal; close to 1: a few items take everything).
- prepared data only, `eval_events`: for val and test, the share of events by users who are active
  (n_train > t*), inactive (0 < n_train <= t*) and new (n_train = 0).

Concentration and per-user statistics depend on how many users are pooled: `sample_profile` profiles random
samples of a fixed number of users (one pass, grouped by sample) and averages them, so that a generated log can
be compared with a small real sample like with like.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipelines.config import PrepareConfig, ProfileConfig
from pipelines.readers import read_source
from twots.cli import UserError
from twots.data.delta import read_table

SESSION_GAP_S = 1800
# The statistics the generator is calibrated to (docs/data.md, "Calibration"), in the order the summary prints them.
HEADLINE = ("category_continuity", "repeat_share", "long_gap_share", "median_gap_s", "top1_share",
            "events_per_user.median", "events_per_user.mean")
_DISTRIBUTIONS = ("events_per_user", "sessions_per_user", "events_per_session", "categories_per_user")
_BUCKETS = ("active", "inactive", "new")


class ProfileError(UserError):
    """The input cannot be profiled (nothing readable, no events); the message names the cause."""


def is_prepared(path: str) -> bool:
    return (Path(path) / "interactions" / "_delta_log").is_dir()


def raw_events(spark: SparkSession, source: str, path: str) -> tuple[DataFrame, int]:
    """A raw log's accepted rows as profile events, and the number of rejected lines."""
    parsed = read_source(spark, PrepareConfig(source=source, input=path, output=path))
    counts = {r["ok"]: r["count"] for r in parsed.groupBy(F.col("reason").isNull().alias("ok")).count().collect()}
    behavior = F.trim(F.get(F.split("raw", ","), 3)) if source == "taobao" else F.lit(None).cast("string")
    events = parsed.where(F.col("reason").isNull()).select(
        F.col("raw_user_id").alias("user"), F.col("raw_item_id").alias("item"),
        F.concat_ws("|", "raw_features").alias("category"), "ts", behavior.alias("behavior"),
        F.col("line").alias("order"))
    return events, counts.get(False, 0)


def prepared_events(spark: SparkSession, path: str) -> DataFrame:
    interactions = read_table(spark, str(Path(path) / "interactions"))
    return interactions.select(
        F.col("user_id").alias("user"), F.col("item_id").alias("item"),
        F.concat_ws("|", F.col("feature_ids").cast("array<string>")).alias("category"), "ts",
        F.lit(None).cast("string").alias("behavior"), F.col("event_id").alias("order"))


def statistics(events: DataFrame, group: Column | None = None, session_gap: int = SESSION_GAP_S) -> dict:
    """The profile of `events` (see the module docstring), or {group value: profile} when `group` is given."""
    keyed = events.withColumn("_g", F.lit(0) if group is None else group)
    by_user = Window.partitionBy("_g", "user").orderBy("ts", "order")
    by_item = Window.partitionBy("_g", "user", "item").orderBy("ts", "order")
    gap = F.col("ts") - F.lag("ts").over(by_user)
    rows = keyed.select(
        "_g", "user", "item", "category", "behavior", "ts", "order",
        (F.col("category") == F.lag("category").over(by_user)).alias("_same"),
        (F.row_number().over(by_item) > 1).alias("_repeat"),
        gap.alias("_gap"),
    ).withColumn("_session", F.sum((F.col("_gap").isNull() | (F.col("_gap") > session_gap)).cast("int"))
                 .over(Window.partitionBy("_g", "user").orderBy("ts", "order")
                       .rowsBetween(Window.unboundedPreceding, Window.currentRow))).localCheckpoint()
    totals = rows.groupBy("_g").agg(
        F.count("*").alias("events"),
        F.count_distinct("user").alias("users"),
        F.count_distinct("item").alias("items"),
        F.count_distinct("category").alias("categories"),
        F.mean(F.col("_same").cast("double")).alias("category_continuity"),
        F.mean(F.col("_repeat").cast("double")).alias("repeat_share"),
        F.mean((F.col("_gap") > session_gap).cast("double")).alias("long_gap_share"),
        F.percentile("_gap", 0.5).alias("median_gap_s"),
    ).collect()
    profiles = {r["_g"]: {k: r[k] for k in r.asDict() if k != "_g"} for r in totals}
    per_user = rows.groupBy("_g", "user").agg(
        F.count("*").alias("events_per_user"), F.max("_session").alias("sessions_per_user"),
        F.count_distinct("category").alias("categories_per_user"))
    for name in ("events_per_user", "sessions_per_user", "categories_per_user"):
        _add_distribution(profiles, name, per_user.groupBy("_g", name).count())
    sessions = rows.groupBy("_g", "user", "_session").count().withColumnRenamed("count", "events_per_session")
    _add_distribution(profiles, "events_per_session", sessions.groupBy("_g", "events_per_session").count())
    popularity = rows.groupBy("_g", "item").count().groupBy("_g", F.col("count").alias("n")).count()
    for g, counts in _frequencies(popularity, "n").items():
        profiles[g].update(concentration(*counts))
    behaviors = rows.where(F.col("behavior").isNotNull()).groupBy("_g", "behavior").count().collect()
    for r in behaviors:
        profiles[r["_g"]].setdefault("behaviors", {})[r["behavior"]] = r["count"] / profiles[r["_g"]]["events"]
    return profiles[0] if group is None else profiles


def _frequencies(df: DataFrame, value: str) -> dict:
    """{group: (values, how many times each)} of a small (group, value, count) table."""
    out: dict = {}
    for r in df.collect():
        out.setdefault(r["_g"], ([], []))
        out[r["_g"]][0].append(r[value])
        out[r["_g"]][1].append(r["count"])
    return {g: (np.array(v, dtype=float), np.array(c, dtype=np.int64)) for g, (v, c) in out.items()}


def _add_distribution(profiles: dict, name: str, table: DataFrame) -> None:
    for g, (values, counts) in _frequencies(table, name).items():
        profiles[g][name] = distribution(values, counts)


def distribution(values: np.ndarray, counts: np.ndarray) -> dict:
    """Median, mean, p90 and max of a distribution given as distinct values and their counts.

    >>> distribution(np.array([1.0, 2.0, 10.0]), np.array([2, 1, 1]))
    {'median': 1.5, 'mean': 3.5, 'p90': 7.6, 'max': 10.0}
    """
    order = np.argsort(values)
    sample = np.repeat(values[order], counts[order])
    return {"median": float(np.median(sample)), "mean": float(sample.mean()),
            "p90": round(float(np.quantile(sample, 0.9)), 12), "max": float(sample.max())}


def concentration(per_item: np.ndarray, items: np.ndarray) -> dict:
    """Top 1 % / 10 % shares and Gini of item popularity, from (events on an item, how many such items).

    >>> concentration(np.array([1.0, 9.0]), np.array([9, 1]))
    {'top1_share': 0.5, 'top10_share': 0.5, 'gini': 0.4}
    """
    sample = np.repeat(per_item, items)
    desc = np.sort(sample)[::-1]
    n, total = len(desc), desc.sum()
    top = {f"top{p}_share": float(desc[:math.ceil(n * p / 100)].sum() / total) for p in (1, 10)}
    ascending = desc[::-1]
    gini = float(2 * np.sum(np.arange(1, n + 1) * ascending) / (n * total) - (n + 1) / n)
    return {**top, "gini": round(gini, 12)}


def eval_buckets(spark: SparkSession, path: str) -> dict:
    """Prepared data: {split: {active, inactive, new: share of the split's events}} for val and test."""
    interactions = read_table(spark, str(Path(path) / "interactions"))
    activity = read_table(spark, str(Path(path) / "user_activity"))
    bucket = (F.when(F.col("is_active"), "active").when(F.col("n_train") > 0, "inactive").otherwise("new"))
    counts = (interactions.where(F.col("split").isin("val", "test")).join(activity, "user_id")
              .groupBy("split", bucket.alias("bucket")).count().collect())
    out = {s: dict.fromkeys(_BUCKETS, 0.0) for s in ("val", "test")}
    for r in counts:
        out[r["split"]][r["bucket"]] = r["count"]
    return {s: {b: (c / total if (total := sum(v.values())) else 0.0) for b, c in v.items()} for s, v in out.items()}


def sample_groups(events: DataFrame, size: int, samples: int, seed: int) -> DataFrame:
    """`samples` random sets of `size` users each (drawn independently by hash of seed, sample and user), with
    their events and a `sample` column: users may appear in several samples."""
    users = events.select("user").distinct()
    ranked = users.select("user", F.explode(F.sequence(F.lit(0), F.lit(samples - 1))).alias("sample")).withColumn(
        "_rank", F.row_number().over(Window.partitionBy("sample").orderBy(F.xxhash64(F.lit(seed), "sample", "user"),
                                                                          "user")))
    chosen = ranked.where(F.col("_rank") <= size).select("user", "sample")
    return events.join(F.broadcast(chosen), "user")


def sample_profile(events: DataFrame, size: int, samples: int, seed: int = 0) -> dict:
    """Mean over `samples` random samples of `size` users of each numeric statistic (the user count must be
    at least `size`), plus `samples_of`."""
    n_users = events.select("user").distinct().count()
    if n_users < size:
        raise ProfileError(f"cannot draw samples of {size} users from {n_users} users", "--sample-users",
                           f"give --sample-users at most {n_users}")
    per_sample = list(statistics(sample_groups(events, size, samples, seed), F.col("sample")).values())
    return {**mean_profile(per_sample), "samples_of": {"users": size, "samples": samples, "seed": seed}}


def mean_profile(profiles: list[dict]) -> dict:
    """Mean of each numeric leaf over profiles of the same shape (a key a profile lacks counts as 0)."""
    out = {}
    for key, first in profiles[0].items():
        values = [p.get(key) for p in profiles]
        if isinstance(first, dict):
            keys = set().union(*(v or {} for v in values))
            out[key] = mean_profile([{k: (v or {}).get(k, 0.0) for k in sorted(keys)} for v in values])
        else:
            out[key] = float(np.mean([v or 0.0 for v in values]))
    return out


def profile(cfg: ProfileConfig, spark: SparkSession) -> dict:
    """The profile of cfg.input (raw log of cfg.source, or a prepared folder when cfg.source is unset)."""
    if cfg.source is None:
        if not is_prepared(cfg.input):
            raise ProfileError("not a prepared output folder, it has no interactions Delta table", cfg.input,
                               "give --source for a raw log")
        events, rejected = prepared_events(spark, cfg.input), 0
    else:
        events, rejected = raw_events(spark, cfg.source, cfg.input)
    events = events.localCheckpoint()
    if events.isEmpty():
        raise ProfileError(f"no accepted events in the input, {rejected} lines rejected", cfg.input,
                           "check --input and --source")
    out = {"input": cfg.input, "source": cfg.source or "prepared", "rejected_lines": rejected,
           "session_gap_s": cfg.session_gap, **statistics(events, session_gap=cfg.session_gap)}
    if cfg.source is None:
        out["eval_events"] = eval_buckets(spark, cfg.input)
    if cfg.sample_users:
        out["samples"] = sample_profile(events, cfg.sample_users, cfg.samples, cfg.seed)
    return out


def headline(p: dict) -> dict:
    """The calibrated statistics (HEADLINE) of a profile, flat."""
    return {name: _get(p, name) for name in HEADLINE}


def _get(p: dict, dotted: str):
    for part in dotted.split("."):
        p = p[part]
    return p


def summary(p: dict) -> str:
    """A short human-readable print of a profile."""
    lines = [(f"{p['events']:,} events, {p['users']:,} users, {p['items']:,} items, {p['categories']:,} categories"
              f" ({p.get('rejected_lines', 0):,} rejected lines)"),
             (f"category continuity {p['category_continuity']:.3f}   repeats {p['repeat_share']:.3f}   "
              f"gaps > {p.get('session_gap_s', SESSION_GAP_S) // 60} min {p['long_gap_share']:.3f}   "
              f"median gap {p['median_gap_s']:,.0f} s"),
             (f"item popularity: top 1 % {p['top1_share']:.3f}   top 10 % {p['top10_share']:.3f}   "
              f"Gini {p['gini']:.3f}")]
    for name in _DISTRIBUTIONS:
        d = p[name]
        lines.append(f"{name.replace('_', ' ')}: median {d['median']:,.1f}  mean {d['mean']:,.1f}  "
                     f"p90 {d['p90']:,.1f}  max {d['max']:,.0f}")
    if p.get("behaviors"):
        lines.append("behaviours: " + "  ".join(f"{b} {s:.3f}" for b, s in sorted(p["behaviors"].items())))
    for split, shares in p.get("eval_events", {}).items():
        lines.append(f"{split} events: " + "  ".join(f"{b} {shares[b]:.3f}" for b in _BUCKETS))
    if "samples" in p:
        s = p["samples"]
        lines.append(f"mean of {s['samples_of']['samples']} samples of {s['samples_of']['users']} users: "
                     + "  ".join(f"{k} {v:,.3f}" for k, v in headline(s).items()))
    return "\n".join(lines)


def flat_metrics(p: dict, prefix: str = "profile") -> dict:
    """Numeric leaves of a profile as {"profile.a.b": value} (MLflow metrics)."""
    out = {}
    for key, value in p.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            out.update(flat_metrics(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def log_to_mlflow(p: dict, run_id: str, tracking_uri: str | None) -> None:
    """Log the profile to an existing MLflow run: the JSON as an artifact, its numbers as metrics."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_dict(p, "data/profile.json")
        mlflow.log_metrics(flat_metrics(p))


def write_json(p: dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(p, indent=2) + "\n")

"""The prepare job: raw log -> rejects, users, items, interactions, user_activity, stage1_offers, sequences,
eval_candidates (Delta tables under `output`) and manifest.json beside them. See docs/design.md and docs/data.md.

Every check that can fail (unreadable input, nothing accepted, p or eval_negatives too large for the items)
runs before the first table is written, so a failed run leaves the previous tables as they were.

After the parse, every step runs in its own driver thread as soon as the tables it reads are written:
much of a step is driver work (planning, Delta's commit and snapshot) and small jobs that another step's tasks can
overlap. Each step's timing is its own wall from when its inputs were ready; `wall_s` in the manifest is the whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipelines.activity import group_warning, sequences, split_column, train_count_quantiles, user_activity
from pipelines.config import STEPS, PrepareConfig
from pipelines.indexing import dense_ids, packed_key, with_global_index
from pipelines.negatives import eval_candidates, offer_negatives, stage1_offers
from pipelines.readers import read_source
from twots.cli import UserError
from twots.data.delta import read_table, write_table
from twots.data.tables import (
    EVAL_CANDIDATES,
    INTERACTIONS,
    ITEMS,
    REJECTS,
    SEQUENCES,
    STAGE1_OFFERS,
    USER_ACTIVITY,
    USERS,
)
from twots.files import write_json
from twots.spark import progress

# Every Spark job a step starts carries its name in this local property (in the event log's job properties).
STEP_PROPERTY = "twots.prepare.step"
# Each concurrent step's jobs go to a scheduler pool of its own. Under FAIR scheduling (jobs/prepare.py) a free core
# goes to the pool with the fewest running tasks, so a step's small jobs (Delta's snapshot and commit, a count) need
# not queue behind another step's stage as under FIFO. Spark breaks ties by pool name, so the names start with the
# step's priority: the longest chain first (items and users, interactions, user_activity, sequences), then the
# steps nothing waits for, heaviest first.
POOL_PROPERTY = "spark.scheduler.pool"
PRIORITY = (ITEMS, USERS, INTERACTIONS, USER_ACTIVITY, SEQUENCES, EVAL_CANDIDATES, STAGE1_OFFERS, REJECTS)


def pool(step: str) -> str | None:
    """The scheduler pool of a concurrent step: its place in PRIORITY, then its name (None: the default pool)."""
    return f"{PRIORITY.index(step):02d}-{step}" if step in PRIORITY else None


class PrepareError(UserError):
    """The input or config cannot give valid tables; the message names the key or the cause."""


def check_output(output: str) -> Path:
    """Fail early (before Spark starts, when called from the job) if the output folder is not writable."""
    path = Path(output)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".twots-write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PrepareError(f"the output folder is not writable: {err.strerror}", output,
                           "give --output a folder this user can write") from None
    return path


def _parse_once(spark: SparkSession, cfg: PrepareConfig) -> DataFrame:
    """Read and check the input in one pass; later steps read the checkpointed rows, not the text again.

    The raw line and file are kept for rejected rows only (they go to `rejects`), which keeps the checkpoint small.
    """
    parsed = read_source(spark, cfg)
    if cfg.dedup:
        parsed = mark_duplicates(parsed)
    rejected = F.col("reason").isNotNull()
    return parsed.select(
        F.when(rejected, F.col("raw")).alias("raw"), F.when(rejected, F.col("source_file")).alias("source_file"),
        "line", "reason", "raw_user_id", "raw_item_id", "ts", "raw_features",
    ).localCheckpoint()


def mark_duplicates(parsed: DataFrame) -> DataFrame:
    """Reject repeats of an accepted (user, item, ts), keeping the first in input order."""
    first = Window.partitionBy("raw_user_id", "raw_item_id", "ts").orderBy("line")
    accepted = parsed.where(F.col("reason").isNull())
    marked = accepted.withColumn(
        "reason", F.when(F.row_number().over(first) > 1, F.lit("duplicate")).cast("string"))
    return parsed.where(F.col("reason").isNotNull()).unionByName(marked)


class _Run:
    """Timings and table facts of one prepare run, printed as progress: a line when a step is done, and while it
    runs, one every 30 s (twots.spark.progress)."""

    def __init__(self, output: Path, spark: SparkSession):
        self.output, self.spark = output, spark
        self.timings: dict[str, float] = {}
        self.tables: dict[str, dict] = {}
        self.started = time.perf_counter()

    @contextmanager
    def step(self, name: str):
        start = time.perf_counter()
        sc = self.spark.sparkContext
        # Local properties belong to the calling thread (PySpark's pinned threads), so concurrent steps keep theirs.
        sc.setJobGroup(f"prepare-{name}", f"prepare: {name}")  # the Spark UI groups stages by step
        sc.setLocalProperty(STEP_PROPERTY, name)  # kept on Delta's own jobs, which replace the description
        sc.setLocalProperty(POOL_PROPERTY, pool(name))
        try:
            with progress(self.spark, f"[prepare] {name}", group=f"prepare-{name}"):
                yield
        finally:
            sc.setLocalProperty("spark.jobGroup.id", None)
            sc.setJobDescription(None)
            sc.setLocalProperty(STEP_PROPERTY, None)
            sc.setLocalProperty(POOL_PROPERTY, None)
        self.timings[name] = round(time.perf_counter() - start, 3)
        print(f"[prepare] {name} done in {self.timings[name]:.1f}s", flush=True)

    def write(self, spark: SparkSession, name: str, df: DataFrame) -> DataFrame:
        path = str(self.output / name)
        version, rows = write_table(df, path)
        self.tables[name] = {"path": path, "version": version, "rows": rows}
        return read_table(spark, path)


def prepare(cfg: PrepareConfig, spark: SparkSession) -> dict:
    """Run the whole pipeline; returns the manifest (also written to <output>/manifest.json)."""
    output = check_output(cfg.output)
    run = _Run(output, spark)

    with run.step("parse"):
        parsed, tally, accepted, rejected = _parse(spark, cfg)
        input_rows = accepted + sum(rejected.values())
        good = parsed.where(F.col("reason").isNull())
        raw_items = _raw_items(good)
        n_items = raw_items.count()
        _check_sizes(cfg, accepted, n_items, rejected)

    # Each step runs in its own driver thread and waits for the tables it reads (`table`, another step's result), so
    # one step's driver work and small jobs overlap another's tasks. The tables are read back from Delta, not passed
    # as checkpoints: Delta's file sizes let the planner broadcast small tables, a checkpoint's unknown size does not.
    def write_rejects(table):
        with run.step(REJECTS):
            rejects = parsed.where(F.col("reason").isNotNull()).select("raw", "reason", "source_file")
            # None rejected (counted above): an empty table without scanning every parsed row for none.
            run.write(spark, REJECTS, rejects if rejected else rejects.limit(0))

    def write_users(table):
        with run.step(USERS):
            return run.write(spark, USERS, dense_ids(good, "raw_user_id", "user_id"))

    def write_items(table):
        with run.step(ITEMS):
            return run.write(spark, ITEMS, _items(raw_items))

    def write_interactions(table):
        users, items = table(USERS), table(ITEMS)
        with run.step(INTERACTIONS):
            bucket_counts = tally.where(F.col("reason").isNull()).select("bucket", "count")
            rows = _interactions(good, users, items, bucket_counts, accepted, run.tables[USERS]["rows"], cfg)
            return run.write(spark, INTERACTIONS, rows)

    def write_activity(table):
        users, interactions = table(USERS), table(INTERACTIONS)
        with run.step(USER_ACTIVITY):
            return run.write(spark, USER_ACTIVITY, user_activity(users, interactions, cfg.t_star))

    def write_offers(table):
        interactions = table(INTERACTIONS)
        with run.step(STAGE1_OFFERS):
            return run.write(spark, STAGE1_OFFERS, stage1_offers(interactions, n_items, cfg.negatives, cfg.seed,
                                                                 cfg.sampler, cfg.alpha))

    def write_candidates(table):
        interactions = table(INTERACTIONS)
        with run.step(EVAL_CANDIDATES):
            run.write(spark, EVAL_CANDIDATES,
                      eval_candidates(interactions, n_items, cfg.eval_negatives, cfg.seed, cfg.eval_sample))

    def write_sequences(table):
        interactions, activity = table(INTERACTIONS), table(USER_ACTIVITY)
        offers = table(STAGE1_OFFERS) if cfg.sampler != "uniform" else None
        with run.step(SEQUENCES):
            run.write(spark, SEQUENCES, _sequences(cfg, interactions, activity, offers, n_items))

    steps = {ITEMS: write_items, USERS: write_users, INTERACTIONS: write_interactions, USER_ACTIVITY: write_activity,
             SEQUENCES: write_sequences, EVAL_CANDIDATES: write_candidates, STAGE1_OFFERS: write_offers,
             REJECTS: write_rejects}
    tables = concurrently({name: steps[name] for name in PRIORITY})
    items, interactions, activity = tables[ITEMS], tables[INTERACTIONS], tables[USER_ACTIVITY]

    with run.step("manifest"):
        written = run.tables[INTERACTIONS]["rows"] + run.tables[REJECTS]["rows"]
        if written != input_rows or run.tables[INTERACTIONS]["rows"] != accepted:
            raise RuntimeError(f"row check failed: {input_rows} input rows, but interactions "
                               f"{run.tables[INTERACTIONS]['rows']} + rejects {run.tables[REJECTS]['rows']}")
        manifest = _manifest(cfg, run, input_rows, accepted, rejected, items, activity, interactions)
        write_json(output / "manifest.json", manifest)
    print(f"[prepare] wrote {len(run.tables)} tables and manifest.json under {output} in {manifest['wall_s']:.1f}s",
          flush=True)
    return manifest


def _sequences(cfg: PrepareConfig, interactions: DataFrame, activity: DataFrame, offers: DataFrame | None,
               n_items: int) -> DataFrame:
    """The `sequences` rows: with uniform negatives (offers None) each kept step's are drawn again, being
    expressions, instead of copying arrays; popularity draws take a join, so the kept steps copy stage1_offers'."""
    if offers is None:
        train = interactions.where(F.col("split") == "train").select("event_id", "user_id", "item_id")
        draw = partial(offer_negatives, n_items=n_items, p=cfg.negatives, seed=cfg.seed)
        return sequences(train, activity, cfg.last_k, draw)
    return sequences(offers, activity, cfg.last_k)


def _parse(spark: SparkSession, cfg: PrepareConfig):
    """Parse and check every input row once: (the parsed rows with their reject reason, the accepted rows per hour
    of ts (interactions' global order needs those counts), accepted rows, rejected rows per reason)."""
    parsed = _parse_once(spark, cfg)
    tally = parsed.groupBy("reason", F.when(F.col("reason").isNull(), _order_bucket()).alias("bucket")).count()
    tally = tally.localCheckpoint()
    counts = {r["reason"]: r["count"] for r in tally.groupBy("reason").agg(F.sum("count").alias("count")).collect()}
    accepted = counts.pop(None, 0)
    rejected = dict(sorted(counts.items()))
    print(f"[prepare] input rows {accepted + sum(rejected.values())}: accepted {accepted}, rejected "
          f"{sum(rejected.values())} {rejected}", flush=True)
    return parsed, tally, accepted, rejected


def concurrently(steps: dict[str, Callable]) -> dict:
    """Run each step in a driver thread; a step gets `table(name)`, which waits for step `name` and returns its
    result or raises its error. Once every step has ended, raise the first error, else return the results by name."""
    from pyspark import InheritableThread

    ended = {name: Future() for name in steps}
    errors = []

    def run(name, step):
        try:
            ended[name].set_result(step(lambda other: ended[other].result()))
        except BaseException as err:  # noqa: BLE001 - re-raised below, in the caller's thread
            ended[name].set_exception(err)  # the steps waiting for this one raise it too
            errors.append(err)

    threads = [InheritableThread(target=run, args=item) for item in steps.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return {name: future.result() for name, future in ended.items()}


def _check_sizes(cfg: PrepareConfig, accepted: int, n_items: int, rejected: dict) -> None:
    if accepted == 0:
        raise PrepareError("no accepted interactions in the input", cfg.input,
                           f"check --input and --source {cfg.source} (lines rejected, by reason: {rejected or 'none'})")
    for key in ("negatives", "eval_negatives"):
        value = getattr(cfg, key)
        if value > n_items - 1:
            raise PrepareError(f"prepare.{key}={value} is larger than the {n_items - 1} items available as "
                               f"negatives", cfg.input, f"give --{key.replace('_', '-')} at most {n_items - 1}")


def _raw_items(good: DataFrame) -> DataFrame:
    """raw_item_id and its sorted distinct features over all its accepted rows (checkpointed: used thrice).

    Distinct (item, feature) pairs first: a hash aggregate that shrinks every partition before the shuffle,
    where collect_list over every row would shuffle them all.
    """
    pairs = good.select("raw_item_id", F.explode("raw_features").alias("_feature")).distinct()
    features = F.sort_array(F.collect_list("_feature")).alias("raw_features")
    return pairs.groupBy("raw_item_id").agg(features).localCheckpoint()


def _items(raw: DataFrame) -> DataFrame:
    """Dense item ids by raw id; feature ids by raw feature name, so both sorted arrays are in the same order."""
    items = dense_ids(raw, "raw_item_id", "item_id").join(raw, "raw_item_id")
    features = dense_ids(raw.select(F.explode("raw_features").alias("raw_feature")), "raw_feature", "feature_id")
    feature_ids = (items.select("item_id", F.explode("raw_features").alias("raw_feature"))
                   .join(F.broadcast(features), "raw_feature")
                   .groupBy("item_id").agg(F.sort_array(F.collect_list("feature_id")).alias("feature_ids")))
    return items.join(feature_ids, "item_id").select("item_id", "raw_item_id", "feature_ids", "raw_features")


HOUR = 3600


def _order_bucket() -> Column:
    """The hour of ts: interactions' global order is ranked within each hour (pipelines.indexing)."""
    return F.floor(F.col("ts") / HOUR)


def _sort_tasks(spark: SparkSession) -> int:
    """spark.sql.shuffle.partitions, or the cores where it is not a number (Databricks' "auto")."""
    value = spark.conf.get("spark.sql.shuffle.partitions")
    return int(value) if value.isdigit() else spark.sparkContext.defaultParallelism


def _interactions(good: DataFrame, users: DataFrame, items: DataFrame, bucket_counts: DataFrame, n_events: int,
                  n_users: int, cfg: PrepareConfig) -> DataFrame:
    """Accepted rows with dense ids, ranked by (ts, user, item, input order) into event_id, then split."""
    # Dense ids follow the raw ids' sort order, so ordering by them is ordering by the raw ids.
    rows = (good.join(users, "raw_user_id").join(items.select("raw_item_id", "item_id", "feature_ids"), "raw_item_id")
            .select("ts", "user_id", "item_id", "feature_ids", "line"))
    hours = bucket_counts.agg(F.min("bucket"), F.max("bucket")).first()
    ts_range = (hours[0] * HOUR, hours[1] * HOUR + HOUR - 1)
    order = [*packed_key(F.col("ts"), F.col("user_id"), ts_range, n_users), "item_id", "line"]
    ranked = with_global_index(rows, order, "event_id", _order_bucket(), bucket_counts, _sort_tasks(good.sparkSession))
    return ranked.select(
        "event_id", "user_id", "item_id", "ts",
        split_column(F.col("event_id"), n_events, cfg.train_fraction, cfg.val_fraction).alias("split"),
        "feature_ids",
    )


def _manifest(cfg, run, input_rows, accepted, rejected, items, activity, interactions) -> dict:
    item_stats = items.agg(F.max(F.size("feature_ids")).alias("max_features"),
                           F.size(F.array_distinct(F.flatten(F.collect_list("feature_ids")))).alias("features")).first()
    users = activity.agg(
        F.count("*").alias("users"),
        F.count_if(F.col("is_active")).alias("active"),
        F.count_if(~F.col("is_active") & (F.col("n_train") > 0)).alias("inactive"),
        F.count_if(F.col("n_train") == 0).alias("new")).first()
    splits = {r["split"]: r["count"] for r in interactions.groupBy("split").count().collect()}
    quantiles = train_count_quantiles(activity)
    warnings = [w for w in [group_warning(cfg.t_star, users["active"], users["inactive"], quantiles)] if w]
    for warning in warnings:
        print(f"[prepare] warning: {warning}", flush=True)
    return {
        "config": cfg.model_dump(),
        "input_rows": input_rows,
        "accepted": accepted,
        "rejected": rejected,
        "n_users": users["users"],
        "n_items": run.tables[ITEMS]["rows"],
        "n_features": item_stats["features"],
        "max_features_per_item": item_stats["max_features"],
        "n_active": users["active"],
        "n_inactive": users["inactive"],
        "n_new": users["new"],
        "n_train_quantiles": quantiles,
        "warnings": warnings,
        "splits": {s: splits.get(s, 0) for s in ("train", "val", "test")},
        "eval_sample": {"fraction": cfg.eval_sample, "seed": cfg.seed, "unit": "user",
                        "events": run.tables[EVAL_CANDIDATES]["rows"]},
        "tables": {name: run.tables[name] for name in STEPS if name in run.tables},  # in step order, however they ran
        "timings_s": {name: run.timings[name] for name in STEPS if name in run.timings},
        "wall_s": round(time.perf_counter() - run.started, 3),
    }

"""Views of a prepared folder: a folder holding some tables rebuilt (another t*, full histories) or added (cold-start
rows) and links to every other entry of the prepared one, so the trainer and the evaluation read it like any prepared
folder. Used by the comparison (experiments.compare) and by jobs/train.py for the kinds whose rows no prepared folder
holds (`stage_view`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pyspark.sql import functions as F

from pipelines.activity import coldstart_sequences, sequences, user_activity
from pipelines.histories import full_sequences
from twots.data.tables import (
    COLDSTART_SEQUENCES,
    FULL_HISTORIES,
    INTERACTIONS,
    SEQUENCES,
    STAGE1_OFFERS,
    USER_ACTIVITY,
    USERS,
)
from twots.evaluation.evaluate import read_delta

# What a view never links: the outputs of runs on the base folder, and other views.
NOT_LINKED = ("runs", "views", "mlflow.db", "mlartifacts")


def make_view(spark, base: str | Path, view: str | Path, tables: dict) -> Path:
    """A folder that reads like `base` with some tables replaced: writes `tables` (name -> DataFrame) as Delta
    and links every other entry of `base` (tables, manifest.json)."""
    base, view = Path(base).resolve(), Path(view)
    if view.exists():
        shutil.rmtree(view)
    view.mkdir(parents=True)
    for entry in base.iterdir():
        if entry.name not in tables and entry.name not in NOT_LINKED:
            os.symlink(entry, view / entry.name)
    for name, df in tables.items():
        df.write.format("delta").mode("overwrite").save(str(view / name))
    return view


def threshold_view(spark, base: str | Path, view: str | Path, t_star: int, last_k: int) -> Path:
    """`base` with user_activity and sequences rebuilt for another t* (K = min(last_k, t*), as K <= t*)."""
    activity = user_activity(read_delta(spark, base, USERS), read_delta(spark, base, INTERACTIONS), t_star)
    activity = activity.localCheckpoint()
    seqs = sequences(read_delta(spark, base, STAGE1_OFFERS), activity, min(last_k, t_star))
    return make_view(spark, base, view, {USER_ACTIVITY: activity, SEQUENCES: seqs})


def full_history_view(spark, base: str | Path, view: str | Path, max_len: int) -> Path:
    """`base` whose `sequences` are each user's last `max_len` training items (pipelines.histories)."""
    seqs = full_sequences(read_delta(spark, base, STAGE1_OFFERS), read_delta(spark, base, USER_ACTIVITY), max_len)
    return make_view(spark, base, view, {SEQUENCES: seqs})


def coldstart_view(spark, base: str | Path, view: str | Path, t_star: int) -> Path:
    """`base` plus COLDSTART_SEQUENCES: its `sequences` and each active user's first t* training items as an
    inactive user's row (pipelines.activity.coldstart_sequences), with their stage1_offers negatives. `sequences` stays
    as it is, so the replay warms users up as on `base`. `t_star` must be the one `base`'s user_activity holds."""
    activity = read_delta(spark, base, USER_ACTIVITY)
    wrong = activity.where(F.col("is_active") != (F.col("n_train") > t_star)).count()
    if wrong:
        raise ValueError(f"coldstart_view: {base}/{USER_ACTIVITY} was not built with t* = {t_star} ({wrong} users "
                         "are active or inactive by another threshold); pass its t*, or make a threshold_view first")
    rows = coldstart_sequences(read_delta(spark, base, SEQUENCES), read_delta(spark, base, STAGE1_OFFERS), activity,
                               t_star)
    return make_view(spark, base, view, {COLDSTART_SEQUENCES: rows})


def stage_view(spark, table: str, base: str | Path, views: str | Path, *, t_star: int, max_len: int) -> Path:
    """The folder whose `table` a training stage reads (StagePlan.table): `base` for the prepared tables, else a view
    of `base` under `views` (full histories of `max_len` items, cold-start rows for `t_star`)."""
    if table == FULL_HISTORIES:
        return full_history_view(spark, base, Path(views) / f"full-{max_len}", max_len)
    if table == COLDSTART_SEQUENCES:
        return coldstart_view(spark, base, Path(views) / f"coldstart-t{t_star}", t_star)
    return Path(base)

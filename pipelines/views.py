"""Views of a prepared folder: a folder holding some tables rebuilt (another t* or K, full histories, stage 1's rows
without what stage 2 trains on) or added (cold-start rows) and links to every other entry of the prepared one, so
the trainer and the evaluation read it like any prepared folder. Used by the comparison (experiments.compare) and by
jobs/train.py (`training_folders`: the folder each training table of a run is read from)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pyspark.sql import functions as F

from pipelines.activity import coldstart_sequences, held_out, sequences, user_activity
from pipelines.histories import full_sequences
from twots.data.snapshot import read_delta
from twots.data.tables import (
    COLDSTART_SEQUENCES,
    FULL_HISTORIES,
    INTERACTIONS,
    SEQUENCES,
    STAGE1_OFFERS,
    USER_ACTIVITY,
    USERS,
    read_manifest,
)
from twots.models.kinds import KINDS

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


def sequences_view(spark, base: str | Path, view: str | Path, t_star: int, last_k: int) -> Path:
    """`base` with user_activity and sequences rebuilt for t* and K (active users keep their last K items)."""
    activity = user_activity(read_delta(spark, base, USERS), read_delta(spark, base, INTERACTIONS), t_star)
    activity = activity.localCheckpoint()
    seqs = sequences(read_delta(spark, base, STAGE1_OFFERS), activity, last_k)
    return make_view(spark, base, view, {USER_ACTIVITY: activity, SEQUENCES: seqs})


def held_out_view(spark, base: str | Path, view: str | Path, last_k: int) -> Path:
    """`base` whose stage1_offers lack each active user's last K training events (pipelines.activity.held_out):
    stage 1 on it never fits what stage 2 trains on (`base`'s sequences, built with the same K)."""
    offers = held_out(read_delta(spark, base, STAGE1_OFFERS), read_delta(spark, base, USER_ACTIVITY), last_k)
    return make_view(spark, base, view, {STAGE1_OFFERS: offers})


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
                         "are active or inactive by another t*); pass its t*, or make a sequences_view first")
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


def training_folders(spark, base: str | Path, views: str | Path, tables, *, t_star: int, last_k: int,
                     held_out_phi: bool, max_len: int) -> tuple[Path, dict[str, Path]]:
    """Where a run's training tables are read from: (the folder of its `sequences` and user_activity, which the
    replay warms users up on; {table: folder} for `tables`). `base` itself when t* and K are its own, else a
    sequences_view; stage 1's rows from a held_out_view of it with `held_out_phi`; full histories and cold-start rows
    from views of it (stage_view). Views are named by what they hold, under `views`."""
    base, views = Path(base), Path(views)
    config = read_manifest(base)["config"]
    name = f"t{t_star}-k{last_k}"
    folder = base if (t_star, last_k) == (config["t_star"], config["last_k"]) else \
        sequences_view(spark, base, views / name, t_star, last_k)
    folders = {table: stage_view(spark, table, folder, views / name, t_star=t_star, max_len=max_len)
               for table in set(tables) - {STAGE1_OFFERS}}
    if STAGE1_OFFERS in tables:
        folders[STAGE1_OFFERS] = (held_out_view(spark, folder, views / f"{name}-held-out", last_k) if held_out_phi
                                  else folder)
    return folder, folders


def run_folders(spark, data: str | Path, model: str, settings, max_len: int) -> tuple[Path, dict[str, Path]]:
    """training_folders of one training run of kind `model` on the prepared folder `data` with its rows (Kind.rows and
    the run's `train.two_time_scale` settings): (the folder its evaluation replays, {table: folder} of its stages)."""
    kind = KINDS[model]
    config = read_manifest(data)["config"]
    rows = kind.rows_with(settings.last_k, settings.held_out)
    view, folders = training_folders(spark, data, Path(data) / "views", {plan.table for plan in kind.stages},
                                     t_star=config["t_star"], last_k=rows.last_k or config["last_k"],
                                     held_out_phi=rows.held_out, max_len=max_len)
    last = kind.stages[-1].table
    return (view if last == STAGE1_OFFERS else folders[last]), folders

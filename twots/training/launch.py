"""One training launch, on the driver: the side data and rows the ranks read, then the ranks under TorchDistributor.

`Launcher(spark, cfg, work_dir)` reads the prepared folder's manifest, writes the ranks' side data and holds the
builders' inputs; `source(table)` turns a training table into rows the ranks can read (petastorm or plain
Parquet, once per folder and table); `run(jobs)` trains StageJobs (twots.training.runs) in one launch: one set of
rank processes and one process group. jobs/train.py (through twots.training.train), the comparison's tuning and
bench/train.py all launch through it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from twots.cli import UserError
from twots.data.snapshot import read_snapshot
from twots.data.tables import FULL_HISTORIES, ITEMS, SEQUENCES, STAGE1_OFFERS, USER_ACTIVITY, read_manifest
from twots.training import distributed, loaders
from twots.training.config import TrainConfig
from twots.training.runs import StageJob
from twots.training.trainer import run_stages


def write_side_data(spark, data_dir: str | Path, manifest: dict, path: Path) -> Path:
    """The model's non-trained inputs as one .npz the ranks load without Spark: each item's feature ids
    ([n_items, max_features], -1 padded) and which users have training interactions. The tables' files are read here
    in Arrow batches (twots.data.snapshot), not collected through the driver JVM: the items grow with the catalogue
    (4.16M at Taobao scale)."""
    items = read_snapshot(spark, data_dir, ITEMS, ("item_id", "feature_ids"), purpose="the ranks' side data")
    features = np.full((manifest["n_items"], max(manifest["max_features_per_item"], 1)), -1, dtype=np.int64)
    features[items["item_id"], :items["feature_ids"].shape[1]] = items["feature_ids"]
    users = read_snapshot(spark, data_dir, USER_ACTIVITY, ("user_id", "n_train"), purpose="the ranks' side data")
    known = np.zeros(manifest["n_users"], dtype=bool)
    known[users["user_id"]] = users["n_train"] > 0
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, item_features=features, known_users=known)
    return path


def make_source(spark, cfg: TrainConfig, data: str | Path, table: str, cache_dir: Path):
    """The rows of `table` in the folder `data` for the ranks. FULL_HISTORIES are the `sequences` of a full-history
    view (pipelines.views.full_history_view); every table but stage1_offers has the `sequences` schema."""
    folder = SEQUENCES if table == FULL_HISTORIES else table
    df = spark.read.format("delta").load(str(Path(data) / folder))
    layout = STAGE1_OFFERS if table == STAGE1_OFFERS else SEQUENCES
    if cfg.loader == "petastorm":
        return loaders.petastorm_source(spark, df, layout, cache_dir / "petastorm-cache", cfg.num_processes)
    return loaders.export_parquet(df, layout, cache_dir / "parquet" / folder)


def check_batches(job: StageJob, world: int) -> None:
    """A stage whose rows hold less than one batch per rank fails here, before any rank starts."""
    shares, batch = job.source.shares(world), job.settings.batch_size
    try:
        loaders.steps_per_epoch(shares, batch)
    except ValueError:
        section = "stage1" if job.source.layout.columns == loaders.STAGE1_COLUMNS else "stage2"
        raise UserError(f"{job.name}'s {sum(shares):,} training rows (per rank: {shares}) are fewer than one batch "
                        f"per rank", f"--{section}.batch-size {batch}",
                        f"lower it, or train on fewer than {world} processes") from None


class Launcher:
    """The driver's side of training launches on one prepared folder (see the module doc). `extra` are per-kind
    constructor arguments (twots.models.kinds.BuildInputs); sources are cached under `work_dir/sources`."""

    def __init__(self, spark, cfg: TrainConfig, work_dir: Path, extra: dict | None = None):
        self.spark, self.cfg, self.work_dir = spark, cfg, Path(work_dir)
        self.manifest = read_manifest(cfg.data)
        side_data = write_side_data(spark, cfg.data, self.manifest, self.work_dir / "side_data.npz")
        self.inputs = cfg.build_inputs(self.manifest, side_data, extra)
        self._sources: dict[tuple[str, str], object] = {}

    def source(self, table: str, data: str | Path | None = None):
        """The rows of `table` in `data` (default: the config's folder), made once per folder and table."""
        key = (str(data or self.cfg.data), table)
        if key not in self._sources:
            cache = self.work_dir / "sources" / str(len(self._sources))
            self._sources[key] = make_source(self.spark, self.cfg, key[0], table, cache)
        return self._sources[key]

    def run(self, jobs: list[StageJob], error_dir: Path, train: Callable = run_stages) -> list[dict]:
        """Train `jobs` in one launch (`train` on every rank: run_stages, or a function that calls it); one result
        per job, the same on every rank."""
        for job in jobs:
            check_batches(job, self.cfg.num_processes)
        return distributed.run(train, jobs, num_processes=self.cfg.num_processes, local_mode=self.cfg.local_mode,
                               use_gpu=self.cfg.use_gpu, error_dir=error_dir,
                               timeout_s=self.cfg.collective_timeout_s)["stages"]

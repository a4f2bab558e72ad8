"""Tuning: every (lr, l2) of a model's grid trains epoch by epoch, val MRR replayed after each, stopped early after
`patience` epochs without a better val MRR; the best (lr, l2, epoch) on val is the model.

A trial is one TorchDistributor launch: after every epoch rank 0 replays val (twots.evaluation.evaluate.ValMRR on
the view's val events, pickled once per view) and the ranks stop together (twots.training.trainer). Every epoch's
checkpoint is kept, so the best epoch's weights are the model. Trials share petastorm sources and evaluation arrays
(read once per view); the training processes' peak memory is sampled while they run.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from experiments.config import CompareConfig, Grid
from experiments.memory import PeakRSS
from twots.models.kinds import KINDS, STAGE1, StagePlan


@dataclass
class Trial:
    """One trained (model, lr, l2): val MRR after each epoch trained, the best epoch, time and memory."""

    model: str
    lr: float
    l2: float
    max_epochs: int
    model_path: str = ""
    checkpoints: list[str] = field(default_factory=list)
    seconds: float = 0.0           # the launch's wall time without the val replays
    peak_rss: int = 0
    history: list[dict] = field(default_factory=list)
    val_mrr: list[float] = field(default_factory=list)

    @property
    def best_epoch(self) -> int:
        return max(range(len(self.val_mrr)), key=lambda e: self.val_mrr[e])  # the first of equal ones

    @property
    def best_val_mrr(self) -> float:
        return self.val_mrr[self.best_epoch]

    def as_dict(self) -> dict:
        return {"lr": self.lr, "l2": self.l2, "val_mrr_by_epoch": self.val_mrr, "best_epoch": self.best_epoch + 1,
                "stopped_early": len(self.val_mrr) < self.max_epochs, "seconds": self.seconds}


def load_epoch(trial: Trial, epoch: int):
    """The model of one epoch's checkpoint (the trainer saves the whole state after every epoch)."""
    from twots.models.kinds import load_model
    from twots.training.trainer import load_checkpoint

    model = load_model(trial.model_path)
    model.load_state_dict(load_checkpoint(trial.checkpoints[epoch])["model"])
    return model.eval()


class Runner:
    """Trains and evaluates trials, sharing petastorm sources and evaluation arrays (read once per view) between
    them. `extra` are per-kind extra constructor arguments (twots.models.kinds.BuildInputs)."""

    def __init__(self, spark, tcfg, out: Path, log=print, extra: dict | None = None):
        from twots.training.train import read_manifest, write_side_data

        self.spark, self.tcfg, self.out, self.log = spark, tcfg, out, log
        self.manifest = read_manifest(tcfg.data)
        side_data = write_side_data(spark, tcfg.data, self.manifest, out / "runs" / "side_data.npz")
        self.inputs = tcfg.build_inputs(self.manifest, side_data, extra)
        self._sources: dict = {}
        self._eval_data: dict = {}
        self._val_checks: dict = {}

    def source(self, view: Path, table: str):
        from twots.training.train import make_source

        key = (str(view), table)
        if key not in self._sources:
            cache = self.out / "runs" / "sources" / f"{len(self._sources)}"
            self._sources[key] = make_source(self.spark, self.tcfg.model_copy(update={"data": str(view)}), table,
                                             cache)
        return self._sources[key]

    def eval_data(self, view: Path):
        from twots.evaluation.evaluate import SPLITS, load_arrays

        # Keyed by the tables the arrays come from, resolved through a view's links: a view that only adds a table
        # (cold-start rows) shares its base's arrays instead of holding a second copy.
        key = self._eval_key(view)
        if key not in self._eval_data:
            self._eval_data[key] = load_arrays(view, self.spark, SPLITS)
        return self._eval_data[key]

    @staticmethod
    def _eval_key(view: Path) -> tuple[str, ...]:
        from twots.data.tables import EVAL_CANDIDATES, SEQUENCES, USER_ACTIVITY

        return tuple(os.path.realpath(Path(view) / table) for table in (SEQUENCES, EVAL_CANDIDATES, USER_ACTIVITY))

    def val_check(self, view: Path):
        """The ranks' per-epoch val MRR on `view` (its val events pickled once)."""
        from twots.evaluation.evaluate import ValMRR

        key = self._eval_key(view)
        if key not in self._val_checks:
            path = self.out / "runs" / "val" / f"{len(self._val_checks)}.pkl"
            self._val_checks[key] = ValMRR.write(self.eval_data(view), path)
        return self._val_checks[key]

    def train(self, name: str, plan: StagePlan, view: Path, lr: float, l2: float, max_epochs: int, patience: int,
              previous: str | None, run_name: str) -> Trial:
        """One stage on `view` (for full histories, a full-history view: its `sequences` are the histories) at one
        (lr, l2), in one launch: val replayed after each epoch, until max_epochs or `patience` epochs without a
        better val MRR."""
        from twots.training import distributed
        from twots.training.runs import StageSettings, stage_job
        from twots.training.trainer import run_stage

        run_dir = self.out / "runs" / run_name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        trial = Trial(name, lr, l2, max_epochs)
        self.log(f"[compare] training {run_name}: up to {max_epochs} epochs at lr {lr:g}, l2 {l2:g}")
        settings = StageSettings(max_epochs, lr, self.tcfg.settings()[plan.settings].batch_size, l2)
        job = replace(stage_job(plan, self.inputs, self.source(view, plan.table), settings, run_dir, previous,
                                self.tcfg.options(), name=name), validate=self.val_check(view), patience=patience)
        started = time.perf_counter()
        with PeakRSS() as memory:
            result = distributed.run(run_stage, job, num_processes=self.tcfg.num_processes,
                                     local_mode=self.tcfg.local_mode, use_gpu=self.tcfg.use_gpu,
                                     error_dir=run_dir / "rank-errors", timeout_s=self.tcfg.collective_timeout_s)
        trial.history = result["history"]
        trial.val_mrr = [h["val_score"] for h in trial.history]
        trial.seconds = time.perf_counter() - started - sum(h["val_seconds"] for h in trial.history)
        trial.peak_rss = memory.peak
        trial.model_path = job.model_path
        trial.checkpoints = sorted(str(p) for p in (run_dir / "checkpoints").glob(f"{name}-epoch*.pt"))
        self.log(f"[compare] {run_name}: val MRR by epoch " + ", ".join(f"{m:.4f}" for m in trial.val_mrr)
                 + (f"; stopped early, best epoch {trial.best_epoch + 1}" if len(trial.val_mrr) < max_epochs else ""))
        return trial

    def evaluate(self, model, view: Path, splits: tuple[str, ...]) -> dict:
        from twots.evaluation.evaluate import evaluate_loaded

        return evaluate_loaded(model, self.eval_data(view), splits)

    def tune(self, name: str, plan: StagePlan, view: Path, grid: Grid,
             previous: str | None = None) -> tuple[Trial, list[Trial]]:
        """Every (lr, l2) of the grid with early stopping; the best (lr, l2, epoch) on val and all trials."""
        trials = [self.train(name, plan, view, lr, l2, grid.max_epochs, grid.patience, previous,
                             f"{name}/lr{lr:g}-l2{l2:g}") for lr, l2 in grid.points()]
        return max(trials, key=lambda t: t.best_val_mrr), trials


def popularity(runner: Runner, view: Path) -> tuple[object, float]:
    """The Popularity model from the training click counts, and the seconds Spark took to count."""
    import torch

    from pipelines.histories import item_counts
    from twots.data.tables import INTERACTIONS
    from twots.evaluation.evaluate import read_delta
    from twots.models.baselines import Popularity

    started = time.perf_counter()
    counts = item_counts(read_delta(runner.spark, view, INTERACTIONS)).toPandas()
    dense = torch.zeros(runner.manifest["n_items"])
    dense[torch.as_tensor(counts["item_id"].to_numpy())] = torch.as_tensor(counts["count"].to_numpy()).float()
    return Popularity(runner.manifest["n_items"]).set_counts(dense), time.perf_counter() - started


def setting(trial: Trial) -> dict:
    """The chosen setting of a tuned stage: lr, l2, epoch (1-based) and its val MRR."""
    return {"lr": trial.lr, "l2": trial.l2, "epochs": trial.best_epoch + 1, "val_mrr": trial.best_val_mrr}


def fit(name: str, cfg: CompareConfig, runner: Runner, view: Path, views: dict[str, Path], stage1) -> tuple:
    """Train (tune) one model; returns (model, the view it is replayed on, its result row without test metrics).
    `views` maps the table a model's last stage reads to the folder holding it (pipelines.views.stage_view).
    `stage1` is CCF's (best trial, trials, saved model path), shared by the models built on it: a two-stage model's
    grid is its stage 2's, on the stage 1 CCF chose."""
    if name == "popularity":
        model, seconds = popularity(runner, view)
        return model, view, {"lr": None, "l2": None, "epochs": None, "val_mrr": None, "train_seconds": seconds,
                             "tuning_seconds": seconds, "peak_memory_mb": None, "grid": None, "stage1": None,
                             "trials": []}
    kind = KINDS[name]
    plan = kind.stages[-1]
    on = kind.on_stage1 and plan != STAGE1  # built on CCF's stage 1 (CCF itself is that stage 1)
    model_view = views[plan.table]
    grid = cfg.grid("ccf" if plan == STAGE1 else name)
    if plan == STAGE1:
        best, trials, _ = stage1
    else:
        best, trials = runner.tune(name, plan, model_view, grid, stage1[2] if on else None)
    used = [stage1[0], best] if on else [best]
    return load_epoch(best, best.best_epoch), model_view, {
        **setting(best), "epochs_trained": len(best.val_mrr),
        "train_seconds": sum(t.seconds for t in used),      # the chosen setting's training (stage 1 included)
        "tuning_seconds": sum(t.seconds for t in trials),   # the whole grid of this model's own stage
        "peak_memory_mb": max(t.peak_rss for t in used) / 2**20,
        "grid": grid.as_dict(), "stage1": setting(stage1[0]) if on else None,
        "trials": [t.as_dict() for t in trials]}

"""Tuning: every (lr, l2) of a model's grid trains epoch by epoch, val MRR replayed after each, stopped early after
`patience` epochs without a better val MRR; the best (lr, l2, epoch) on val is the model.

Each epoch is one TorchDistributor launch resuming from the last epoch's checkpoint (weights and optimizer state,
so the epochs are those of one uninterrupted run), and the driver replays val between launches. Trainer runs share
petastorm sources and evaluation arrays (read once per view); the training processes' peak memory is sampled while
they run.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from experiments.config import CompareConfig, Grid
from twots.models.kinds import KINDS, STAGE1, StagePlan


class PeakRSS:
    """Peak resident memory (bytes) of the training processes, sampled while open: every `torch.distributed.run`
    (torchrun) process below this one and its ranks. Local mode only: Spark-task ranks are not our children."""

    def __init__(self, every_s: float = 0.2):
        import psutil

        self.me, self.every_s, self.peak = psutil.Process(), every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for proc in self.me.children(recursive=True):
                try:
                    if "torch.distributed.run" in " ".join(proc.cmdline()):
                        total += sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
                except psutil.Error:
                    pass  # the process ended between listing and reading it
            self.peak = max(self.peak, total)
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@dataclass
class Trial:
    """One trained (model, lr, l2): val MRR after each epoch trained, the best epoch, time and memory."""

    model: str
    lr: float
    l2: float
    max_epochs: int
    model_path: str = ""
    checkpoints: list[str] = field(default_factory=list)
    seconds: float = 0.0
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


def should_stop(val_mrr: list[float], patience: int) -> bool:
    """True once the last `patience` epochs brought no val MRR above the best before them."""
    best = max(range(len(val_mrr)), key=lambda e: val_mrr[e])
    return len(val_mrr) - 1 - best >= patience


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

    def source(self, view: Path, table: str):
        from twots.training.train import make_source

        key = (str(view), table)
        if key not in self._sources:
            cache = self.out / "runs" / "sources" / f"{len(self._sources)}"
            self._sources[key] = make_source(self.spark, self.tcfg.model_copy(update={"data": str(view)}), table,
                                             cache)
        return self._sources[key]

    def _launch(self, name: str, plan: StagePlan, view: Path, trial: Trial, epochs: int, previous: str | None,
                run_dir: Path) -> None:
        """Train `trial` up to `epochs` epochs, resuming from its last checkpoint when it has one."""
        from twots.training import distributed
        from twots.training.runs import StageSettings, stage_job
        from twots.training.trainer import run_stage

        settings = StageSettings(epochs, trial.lr, self.tcfg.settings()[plan.settings].batch_size, trial.l2)
        job = stage_job(plan, self.inputs, self.source(view, plan.table), settings, run_dir, previous,
                        replace(self.tcfg.options(), resume=bool(trial.checkpoints)), name=name)
        started = time.perf_counter()
        with PeakRSS() as memory:
            result = distributed.run(run_stage, job, num_processes=self.tcfg.num_processes,
                                     local_mode=self.tcfg.local_mode, use_gpu=self.tcfg.use_gpu,
                                     error_dir=run_dir / "rank-errors", timeout_s=self.tcfg.collective_timeout_s)
        trial.seconds += time.perf_counter() - started
        trial.peak_rss = max(trial.peak_rss, memory.peak)
        trial.model_path, trial.history = job.model_path, result["history"]
        trial.checkpoints = sorted(str(p) for p in (run_dir / "checkpoints").glob(f"{name}-epoch*.pt"))

    def train(self, name: str, plan: StagePlan, view: Path, lr: float, l2: float, max_epochs: int, patience: int,
              previous: str | None, run_name: str) -> Trial:
        """One stage on `view` (for full histories, a full-history view: its `sequences` are the histories) at one
        (lr, l2): an epoch at a time, val replayed after each, until max_epochs or `patience` epochs without a
        better val MRR."""
        run_dir = self.out / "runs" / run_name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        trial = Trial(name, lr, l2, max_epochs)
        self.log(f"[compare] training {run_name}: up to {max_epochs} epochs at lr {lr:g}, l2 {l2:g}")
        for epoch in range(max_epochs):
            self._launch(name, plan, view, trial, epoch + 1, previous, run_dir)
            trial.val_mrr.append(self.evaluate(load_epoch(trial, epoch), view, ("val",))
                                 ["metrics"]["val"]["overall"]["mrr"])
            self.log(f"[compare] {run_name}: val MRR by epoch " + ", ".join(f"{m:.4f}" for m in trial.val_mrr))
            if should_stop(trial.val_mrr, patience):
                self.log(f"[compare] {run_name}: stopped after epoch {epoch + 1}, best epoch {trial.best_epoch + 1}")
                break
        return trial

    def evaluate(self, model, view: Path, splits: tuple[str, ...]) -> dict:
        from twots.evaluation.evaluate import SPLITS, evaluate_loaded, load_arrays

        if str(view) not in self._eval_data:
            self._eval_data[str(view)] = load_arrays(view, self.spark, SPLITS)
        return evaluate_loaded(model, self._eval_data[str(view)], splits)

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


def fit(name: str, cfg: CompareConfig, runner: Runner, view: Path, full: Path | None, stage1) -> tuple:
    """Train (tune) one model; returns (model, the view it is replayed on, its result row without test metrics).
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
    model_view = full if kind.full_histories else view
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

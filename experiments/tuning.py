"""Tuning: train each (model, learning rate), replay val after every epoch, keep the best (lr, epoch).

Trainer runs share petastorm sources and evaluation arrays (read once per view); the training processes' peak
memory is sampled while they run.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments.config import CompareConfig
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
    """One trained (model, learning rate): per-epoch val MRR, the best epoch, time and memory."""

    model: str
    lr: float
    model_path: str
    checkpoints: list[str]
    seconds: float
    peak_rss: int
    history: list[dict]
    val_mrr: list[float] = field(default_factory=list)

    @property
    def best_epoch(self) -> int:
        return max(range(len(self.val_mrr)), key=lambda e: self.val_mrr[e])

    @property
    def best_val_mrr(self) -> float:
        return self.val_mrr[self.best_epoch]


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
        from twots.models.kinds import BuildInputs
        from twots.training.train import read_manifest, write_side_data

        self.spark, self.tcfg, self.out, self.log = spark, tcfg, out, log
        self.manifest = read_manifest(tcfg.data)
        side_data = write_side_data(spark, tcfg.data, self.manifest, out / "runs" / "side_data.npz")
        self.inputs = BuildInputs(tcfg.dims(self.manifest), str(side_data), extra or {})
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

    def train(self, name: str, plan: StagePlan, view: Path, lr: float, epochs: int, previous: str | None,
              run_name: str) -> Trial:
        """One stage on `view` (for full histories, a full-history view: its `sequences` are the histories)."""
        from twots.training import distributed
        from twots.training.runs import StageSettings, stage_job
        from twots.training.trainer import run_stage

        run_dir = self.out / "runs" / run_name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        settings = StageSettings(epochs, lr, self.tcfg.settings()[plan.settings].batch_size)
        job = stage_job(plan, self.inputs, self.source(view, plan.table), settings, run_dir, previous,
                        self.tcfg.options(), name=name)
        self.log(f"[compare] training {run_name}: {epochs} epochs at lr {lr}")
        started = time.perf_counter()
        with PeakRSS() as memory:
            result = distributed.run(run_stage, job, num_processes=self.tcfg.num_processes,
                                     local_mode=self.tcfg.local_mode, use_gpu=self.tcfg.use_gpu,
                                     error_dir=run_dir / "rank-errors", timeout_s=self.tcfg.collective_timeout_s)
        seconds = time.perf_counter() - started
        checkpoints = sorted(str(p) for p in (run_dir / "checkpoints").glob(f"{name}-epoch*.pt"))
        return Trial(name, lr, job.model_path, checkpoints, seconds, memory.peak, result["history"])

    def evaluate(self, model, view: Path, splits: tuple[str, ...]) -> dict:
        from twots.evaluation.evaluate import SPLITS, evaluate_loaded, load_arrays

        if str(view) not in self._eval_data:
            self._eval_data[str(view)] = load_arrays(view, self.spark, SPLITS)
        return evaluate_loaded(model, self._eval_data[str(view)], splits)

    def score_epochs(self, trial: Trial, view: Path) -> Trial:
        """Replay val with the checkpoint of every epoch."""
        trial.val_mrr = [self.evaluate(load_epoch(trial, epoch), view, ("val",))["metrics"]["val"]["overall"]["mrr"]
                         for epoch in range(len(trial.checkpoints))]
        self.log(f"[compare] {trial.model} lr {trial.lr:g}: val MRR by epoch "
                 + ", ".join(f"{m:.4f}" for m in trial.val_mrr))
        return trial

    def tune(self, name: str, plan: StagePlan, view: Path, lrs: list[float], epochs: int,
             previous: str | None = None) -> tuple[Trial, list[Trial]]:
        """Every learning rate of the grid; val MRR after each epoch; the best (lr, epoch) trial first."""
        trials = [self.score_epochs(self.train(name, plan, view, lr, epochs, previous, f"{name}/lr{lr:g}"), view)
                  for lr in lrs]
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


def fit(name: str, cfg: CompareConfig, runner: Runner, view: Path, full: Path | None, stage1) -> tuple:
    """Train (tune) one model; returns (model, the view it is replayed on, its result row without test metrics).
    `stage1` is CCF's (best trial, trials, saved model path), shared by the models built on it."""
    if name == "popularity":
        model, seconds = popularity(runner, view)
        return model, view, {"lr": None, "epochs": None, "val_mrr": None, "train_seconds": seconds,
                             "peak_memory_mb": None, "trials": []}
    kind = KINDS[name]
    on, plan = kind.on_stage1, kind.stages[-1]
    model_view = full if kind.full_histories else view
    if plan == STAGE1:
        best, trials, _ = stage1
    else:
        best, trials = runner.tune(name, plan, model_view, cfg.lrs(name), cfg.epochs_of(name),
                                   stage1[2] if on else None)
    used = [stage1[0], best] if on else [best]
    return load_epoch(best, best.best_epoch), model_view, {
        "lr": best.lr, "epochs": best.best_epoch + 1, "val_mrr": best.best_val_mrr,
        "train_seconds": sum(t.seconds for t in used),
        "peak_memory_mb": max(t.peak_rss for t in used) / 2**20,
        "trials": [{"lr": t.lr, "val_mrr_by_epoch": t.val_mrr, "seconds": t.seconds} for t in trials]}

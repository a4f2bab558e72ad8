"""Tuning: every (lr, l2) of a model's grid trains epoch by epoch, val MRR replayed after each, stopped early after
`patience` epochs without a better val MRR; the best (lr, l2, epoch) on val is the model.

A trial is one stage of a TorchDistributor launch (twots.training.trainer.run_stages): after every epoch rank 0
replays val (twots.evaluation.evaluate.ValMRR on the view's val events, pickled once per view) and the ranks stop
together. A model's whole grid is one launch, and with `compare.launch: all` every model built after stage 1 shares
one: a launch costs seconds of process starts and imports (about 8 s on a 2-core box), the epochs of small data
less than one. Every epoch's checkpoint is kept, so the best epoch's weights are the model. Trials share petastorm
sources and evaluation arrays (read once per view). A trial's seconds and peak memory are its stage's, measured
by the ranks (twots.training.trainer.train_stage), so they do not depend on what else shared the launch.

Resuming (`compare.resume`): before a launch, each trial's folder (runs/<model>/<point>) gets `trial-key.json`,
what defines the trial: the model, stage, view, lr, l2, epochs, patience, the training settings, the prepared
data's manifest and a digest of the stage-1 model it builds on. Rank 0 writes `stage.json`, the stage's result, once
the stage is complete. A later run with `resume` keeps every trial whose folder holds both with the same key and
trains the others from their start (a trial cut off mid-way is trained again whole), so a grid longer than a
session finishes over several.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from experiments.config import CompareConfig, Grid
from pipelines.histories import item_counts
from twots.data.snapshot import read_delta
from twots.data.tables import EVAL_CANDIDATES, INTERACTIONS, SEQUENCES, USER_ACTIVITY
from twots.evaluation.evaluate import SPLITS, ValMRR, evaluate_loaded, load_arrays
from twots.files import write_json
from twots.models.baselines import Popularity
from twots.models.kinds import KINDS, STAGE1, StagePlan, load_model
from twots.training.config import TrainConfig
from twots.training.launch import Launcher
from twots.training.runs import StageSettings, checkpoint_dir, model_path, stage_job
from twots.training.trainer import load_checkpoint

# TrainConfig fields that do not change what a trial learns (where it runs and logs, how long ranks wait); its
# stage1 / stage2 sections come from the spec (lr, l2, epochs) or enter the key as the stage's batch size.
NOT_IN_TRIAL_KEY = ("data", "model", "run_dir", "local_mode", "threads", "collective_timeout_s", "resume",
                    "log_every_s", "evaluate", "tracking_uri", "experiment", "stage1", "stage2")


@dataclass(frozen=True)
class TrialSpec:
    """What to train: one model's last stage (`plan`) on `view` at (lr, l2), up to max_epochs with early stopping,
    on the stage-1 model `previous` (None when the stage has none), saved under runs/<run_name>."""

    name: str
    plan: StagePlan
    view: Path
    lr: float
    l2: float
    max_epochs: int
    patience: int
    previous: str | None
    run_name: str


@dataclass
class Trial:
    """One trained (model, lr, l2): val MRR after each epoch trained, the best epoch, time and memory."""

    model: str
    lr: float
    l2: float
    max_epochs: int
    model_path: str = ""
    checkpoints: list[str] = field(default_factory=list)
    seconds: float = 0.0           # the stage's wall time (build, rows, epochs, saves) without the val replays
    peak_rss: int = 0              # bytes: the ranks' peak resident memory during the stage, summed over ranks
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
    model = load_model(trial.model_path)
    model.load_state_dict(load_checkpoint(trial.checkpoints[epoch])["model"])
    return model.eval()


class Runner:
    """Trains and evaluates trials through one Launcher (twots.training.launch: the side data and the rows of each
    view, made once), sharing evaluation arrays (read once per view) between them. `extra` are per-kind extra
    constructor arguments (twots.models.kinds.BuildInputs); with `resume`, trials an earlier run finished with the
    same key are kept (module doc)."""

    def __init__(self, spark, tcfg: TrainConfig, out: Path, log=print, extra: dict | None = None,
                 resume: bool = False):
        self.spark, self.tcfg, self.out, self.log, self.extra, self.resume = spark, tcfg, out, log, extra, resume
        self.launcher = Launcher(spark, tcfg, out / "runs", extra)
        self.manifest = self.launcher.manifest
        self.manifest_sha256 = hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()
        self._eval_data: dict = {}
        self._val_checks: dict = {}

    def eval_data(self, view: Path):
        # Keyed by the tables the arrays come from, resolved through a view's links: a view that only adds a table
        # (cold-start rows) shares its base's arrays instead of holding a second copy.
        key = self._eval_key(view)
        if key not in self._eval_data:
            self._eval_data[key] = load_arrays(view, self.spark, SPLITS)
        return self._eval_data[key]

    @staticmethod
    def _eval_key(view: Path) -> tuple[str, ...]:
        return tuple(os.path.realpath(Path(view) / table) for table in (SEQUENCES, EVAL_CANDIDATES, USER_ACTIVITY))

    def val_check(self, view: Path):
        """The ranks' per-epoch val MRR on `view` (its val events pickled once)."""
        key = self._eval_key(view)
        if key not in self._val_checks:
            path = self.out / "runs" / "val" / f"{len(self._val_checks)}.pkl"
            self._val_checks[key] = ValMRR.write(self.eval_data(view), path)
        return self._val_checks[key]

    def train(self, specs: list[TrialSpec]) -> list[Trial]:
        """Train `specs` one after another in one launch, each up to its max_epochs with val replayed after every
        epoch and stopped after `patience` epochs without a better val MRR (twots.training.trainer). With `resume`,
        the trials finished before under the same key are read back instead (module doc)."""
        stages: dict[int, dict] = {}
        jobs = {}
        for i, spec in enumerate(specs):
            run_dir = self.out / "runs" / spec.run_name
            key = self.trial_key(spec)
            stages[i] = self._finished(spec, run_dir, key) if self.resume else None
            if stages[i] is not None:
                continue
            if run_dir.exists():
                shutil.rmtree(run_dir)
            write_json(run_dir / "trial-key.json", key)  # whole or absent: a resumed run reads it
            settings = StageSettings(spec.max_epochs, spec.lr, self.tcfg.settings()[spec.plan.settings].batch_size,
                                     spec.l2)
            jobs[i] = replace(stage_job(spec.plan, self.launcher.inputs,
                                        self.launcher.source(spec.plan.table, spec.view), settings, run_dir,
                                        spec.previous, self.tcfg.options(), name=spec.name),
                              val_check=self.val_check(spec.view), patience=spec.patience,
                              result_path=str(run_dir / "stage.json"))
        if jobs:
            todo = [specs[i] for i in jobs]
            self.log("[compare] training in one launch: " + "; ".join(
                f"{s.run_name} (up to {s.max_epochs} epochs at lr {s.lr:g}, l2 {s.l2:g})" for s in todo))
            stages.update(zip(jobs, self.launcher.run(list(jobs.values()), self.out / "runs" / "rank-errors")))
        trials = []
        for i, spec in enumerate(specs):
            stage, run_dir = stages[i], self.out / "runs" / spec.run_name
            trial = Trial(spec.name, spec.lr, spec.l2, spec.max_epochs, model_path=str(model_path(run_dir, spec.name)),
                          history=stage["history"], peak_rss=int(stage["peak_rss_total_mb"] * 2**20))
            trial.val_mrr = [h["val_score"] for h in trial.history]
            trial.seconds = stage["wall_s"] - sum(h["val_seconds"] for h in trial.history)
            trial.checkpoints = sorted(str(p) for p in checkpoint_dir(run_dir).glob(f"{spec.name}-epoch*.pt"))
            self.log(f"[compare] {spec.run_name}{'' if i in jobs else ' (finished before, kept)'}: val MRR by epoch "
                     + ", ".join(f"{m:.4f}" for m in trial.val_mrr)
                     + (f"; stopped early, best epoch {trial.best_epoch + 1}"
                        if len(trial.val_mrr) < spec.max_epochs else ""))
            trials.append(trial)
        return trials

    def trial_key(self, spec: TrialSpec) -> dict:
        """What defines a trial's result: resuming keeps a finished trial only under the same key."""
        out, view = self.out.resolve(), Path(spec.view).resolve()
        train = {k: v for k, v in self.tcfg.model_dump(mode="json").items() if k not in NOT_IN_TRIAL_KEY}
        if KINDS[spec.name].options is None:  # the 2TS settings change the 2TS kinds only (their data: the view)
            train.pop("two_time_scale")
        return {"model": spec.name, "stage": spec.plan.name, "lr": spec.lr, "l2": spec.l2,
                "max_epochs": spec.max_epochs, "patience": spec.patience,
                # a view this run built is named inside --output: the key holds wherever the folder is moved
                "view": str(view.relative_to(out)) if view.is_relative_to(out) else str(view),
                "stage1_sha256": file_sha256(spec.previous) if spec.previous else None,
                "train": {**train, "batch_size": self.tcfg.settings()[spec.plan.settings].batch_size},
                "extra": self.extra,
                "data_manifest_sha256": self.manifest_sha256}

    def _finished(self, spec: TrialSpec, run_dir: Path, key: dict) -> dict | None:
        """The stage result of the trial an earlier run finished in `run_dir` under `key`, or None (and why)."""
        stored_key, stage = run_dir / "trial-key.json", run_dir / "stage.json"
        if not (stored_key.exists() and stage.exists() and model_path(run_dir, spec.name).exists()):
            if run_dir.exists():
                self.log(f"[compare] {spec.run_name}: the earlier run did not finish it; training it again")
            return None
        stored = json.loads(stored_key.read_text())
        differs = sorted(k for k in set(key) | set(stored) if key.get(k) != stored.get(k))
        if differs:
            self.log(f"[compare] {spec.run_name}: the earlier run's trial differs in {', '.join(differs)}; "
                     "training it again")
            return None
        return json.loads(stage.read_text())

    def evaluate(self, model, view: Path, splits: tuple[str, ...]) -> dict:
        return evaluate_loaded(model, self.eval_data(view), splits)

    def grid(self, name: str, plan: StagePlan, view: Path, grid: Grid, previous: str | None = None
             ) -> list[TrialSpec]:
        """The trials of one model's grid: every (lr, l2), up to the grid's max_epochs with its patience."""
        return [TrialSpec(name, plan, view, lr, l2, grid.max_epochs, grid.patience, previous,
                          f"{name}/lr{lr:g}-l2{l2:g}") for lr, l2 in grid.points()]

    def tune(self, specs: dict[str, list[TrialSpec]]) -> dict[str, tuple[Trial, list[Trial]]]:
        """Every model's trials in one launch: per model, its best trial (the best val MRR at any epoch) and all."""
        trials = iter(self.train([spec for group in specs.values() for spec in group]))
        tuned = {}
        for name, group in specs.items():
            mine = [next(trials) for _ in group]
            tuned[name] = max(mine, key=lambda t: t.best_val_mrr), mine
        return tuned


def file_sha256(path: str | Path) -> str:
    """The file's SHA-256, read once per version of the file: every grid point of every model on stage 1 asks for
    the same stage-1 model's (a gigabyte at Taobao scale)."""
    stat = os.stat(path)
    return _sha256(os.path.realpath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def popularity(runner: Runner, view: Path) -> tuple[object, float]:
    """The Popularity model from the training click counts, and the seconds Spark took to count."""
    import torch

    started = time.perf_counter()
    counts = item_counts(read_delta(runner.spark, view, INTERACTIONS)).toPandas()
    dense = torch.zeros(runner.manifest["n_items"])
    dense[torch.as_tensor(counts["item_id"].to_numpy())] = torch.as_tensor(counts["count"].to_numpy()).float()
    return Popularity(runner.manifest["n_items"]).set_counts(dense), time.perf_counter() - started


def setting(trial: Trial) -> dict:
    """The chosen setting of a tuned stage: lr, l2, epoch (1-based) and its val MRR."""
    return {"lr": trial.lr, "l2": trial.l2, "epochs": trial.best_epoch + 1, "val_mrr": trial.best_val_mrr}


def own_stage_trials(name: str, cfg: CompareConfig, runner: Runner, views: dict[str, Path], stage1
                     ) -> list[TrialSpec]:
    """The grid of a trained model's own (last) stage; [] for popularity and CCF (stage 1 is tuned first, as CCF).
    `views` maps the table the stage reads to the folder holding it (pipelines.views.stage_view); models built on
    stage 1 train on CCF's chosen one, `stage1` = (best trial, trials, saved model path) or None."""
    kind = KINDS[name]
    if not kind.stages or kind.stages[-1] == STAGE1:
        return []
    plan = kind.stages[-1]
    return runner.grid(name, plan, views[plan.table], cfg.grid(name), stage1[2] if kind.on_stage1 else None)


def fit(name: str, cfg: CompareConfig, runner: Runner, view: Path, views: dict[str, Path], stage1,
        tuned: tuple[Trial, list[Trial]] | None = None) -> tuple:
    """Train (tune) one model; returns (model, the view it is replayed on, its result row without test metrics).
    `views` maps the table a model's last stage reads to the folder holding it (pipelines.views.stage_view).
    `stage1` is CCF's (best trial, trials, saved model path), shared by the models built on it: a two-stage model's
    grid is its stage 2's, on the stage 1 CCF chose. `tuned` is the model's (best trial, trials) when its grid was
    trained already (compare.launch: all); otherwise its grid is one launch here."""
    if name == "popularity":
        model, seconds = popularity(runner, view)
        return model, view, {"lr": None, "l2": None, "epochs": None, "val_mrr": None, "train_seconds": seconds,
                             "tuning_seconds": seconds, "peak_memory_mb": None, "grid": None, "stage1": None,
                             "trials": []}
    kind = KINDS[name]
    plan = kind.stages[-1]
    on = kind.on_stage1 and plan != STAGE1  # built on CCF's stage 1 (CCF itself is that stage 1)
    if plan == STAGE1:
        best, trials, _ = stage1
    elif tuned is not None:
        best, trials = tuned
    else:
        specs = own_stage_trials(name, cfg, runner, views, stage1)
        best, trials = runner.tune({name: specs})[name]
    used = [stage1[0], best] if on else [best]
    return load_epoch(best, best.best_epoch), views[plan.table], {
        **setting(best), "epochs_trained": len(best.val_mrr),
        "train_seconds": sum(t.seconds for t in used),      # the chosen setting's training (stage 1 included)
        "stage1_seconds": stage1[0].seconds if on else None,
        "tuning_seconds": sum(t.seconds for t in trials),   # the whole grid of this model's own stage
        "peak_memory_mb": max(t.peak_rss for t in used) / 2**20,
        "grid": cfg.grid("ccf" if plan == STAGE1 else name).as_dict(), "stage1": setting(stage1[0]) if on else None,
        "trials": [t.as_dict() for t in trials]}

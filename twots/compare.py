"""The paper's comparison (section 5) on your data: 2TS and 2TS-Plus against baselines and ablations.

Every model reads the same tables, trains with the same DDP trainer (twots.trainer under TorchDistributor) on the
same offer sets, and is replayed online on the same val/test candidates (twots.evaluate). Per model:

  popularity        training click counts (Spark), nothing to train
  ccf               stage 1 alone (twots.models.Stage1Model)
  2ts, 2ts-plus     stage 2 on `sequences` from the selected stage-1 model (shared, its time counted in each)
  2gru              the same, without phi: active users start from a learned common state (ablation)
  2ts-singlestage   the 2TS architecture, every parameter trained jointly from scratch on full histories (ablation)
  sumpooling, gru4rec, sasrec   full histories (twots.baselines)

"Full histories" are each user's last `max_len` training items (twots.baselines.sequences); models trained on them
are also warmed up on them before the replay. Tables that differ from the prepared ones (full histories, another
t*) live in a *view*: a folder holding the new Delta tables and links to the prepared ones, so the trainer and the
evaluation read it like any prepared folder.

Tuning: for each model, each learning rate of its grid is trained for its epochs; every epoch's checkpoint is
replayed on val, and the (learning rate, epoch) with the best val MRR is the model. Only then is test replayed.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from twots.config import Section
from twots.stages import FULL_HISTORIES, MODELS, STAGE1, StagePlan

MODEL_NAMES = ("popularity", *MODELS)  # the trainable kinds and their stages: twots.stages


class CompareConfig(Section):
    """Train and evaluate 2TS, 2TS-Plus, baselines and ablations on one data set; results table, MLflow, plots."""

    data: str | None = Field(None, description="prepared Delta tables (prepare's --output); or give --input")
    input: str | None = Field(None, description="raw data to prepare first into <output>/data (with --source)")
    source: Literal["taobao", "movielens", "lastfm"] | None = Field(None, description="format of --input")
    output: str = Field("compare-output", description="results, plots, runs and the MLflow store")
    models: list[str] = Field(["all"], description="'all' or a list of: " + ", ".join(MODEL_NAMES))
    lr_grid: dict[str, list[float]] = Field(default_factory=dict, description="model -> learning rates tried")
    default_lrs: list[float] = Field([0.003, 0.01], min_length=1, description="grid of models not in lr_grid")
    epochs: dict[str, int] = Field(default_factory=dict, description="model -> epochs of its trained stage")
    default_epochs: int = Field(3, ge=1, description="epochs of models not in `epochs`")
    max_len: int = Field(200, ge=1, description="full histories keep each user's last max_len training items")
    sasrec_window: int = Field(50, ge=1, description="SASRec attends over the last N items")
    threshold: Annotated[int, Field(ge=0)] | Literal["auto"] | None = Field(
        None, description="t*: None keeps the prepared one; an int rebuilds activity and sequences; 'auto' sweeps")
    threshold_candidates: list[int] = Field([5, 10, 20, 40, 80], description="t* values the 'auto' sweep tries")
    theory_users: int = Field(256, ge=2, description="active users sampled to estimate t** (Theorem 2.1)")
    theory_max_events: int = Field(128, ge=4, description="training interactions per sampled user for t**")
    theory_l2: float = Field(0.1, gt=0, description="L2 of the per-user fits behind t**")
    train: dict = Field(default_factory=dict, description="overrides of the `train` section for every model "
                        "(dimensions, batch sizes, processes, loader); checked like that section")
    tracking_uri: str | None = Field(None, description="MLflow URI; default sqlite:///<output>/mlflow.db")
    experiment: str = Field("twots-compare", description="MLflow experiment")

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        if models == ["all"]:
            return list(MODEL_NAMES)
        if not models:
            raise ValueError(f"the list is empty; choose 'all' or from {', '.join(MODEL_NAMES)}")
        unknown = [m for m in models if m not in MODEL_NAMES]
        if unknown:
            raise ValueError(f"unknown models {unknown}; choose 'all' or from {', '.join(MODEL_NAMES)}")
        return [m for m in MODEL_NAMES if m in models]  # a fixed order: stage 1 (ccf) before what builds on it

    @field_validator("lr_grid", "epochs")
    @classmethod
    def _keys_are_models(cls, value: dict) -> dict:
        unknown = [k for k in value if k not in MODEL_NAMES or k == "popularity"]
        if unknown:
            raise ValueError(f"keys {unknown} are not trainable models ({', '.join(MODEL_NAMES[1:])})")
        for key, item in value.items():
            if isinstance(item, list) and (not item or min(item) <= 0):
                raise ValueError(f"{key}: learning rates must be a non-empty list of positive numbers")
            if isinstance(item, int) and item < 1:
                raise ValueError(f"{key}: epochs must be >= 1")
        return value

    @field_validator("train")
    @classmethod
    def _train_overrides(cls, value: dict) -> dict:
        """Checked like the `train` section now, not after prepare."""
        from pydantic import ValidationError

        from twots.train import TrainConfig

        try:
            TrainConfig(**{**value, "data": "."})
        except ValidationError as err:
            raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))} = {e.get('input')!r}: {e['msg']}"
                                       for e in err.errors())) from None
        return value

    @model_validator(mode="after")
    def _one_data_source(self):
        if (self.data is None) == (self.input is None):
            raise ValueError("give exactly one of --data (prepared tables) or --input (raw data, with --source)")
        if self.input is not None and self.source is None:
            raise ValueError("--input needs --source (taobao, movielens or lastfm)")
        if self.threshold == "auto" and (not self.threshold_candidates or min(self.threshold_candidates) < 1):
            raise ValueError("threshold_candidates must be a non-empty list of t* >= 1")
        return self

    def lrs(self, model: str) -> list[float]:
        return self.lr_grid.get(model, self.default_lrs)

    def epochs_of(self, model: str) -> int:
        return self.epochs.get(model, self.default_epochs)


# ---- data views ----------------------------------------------------------------------------------------------------

def make_view(spark, base: str | Path, view: str | Path, tables: dict) -> Path:
    """A folder that reads like `base` with some tables replaced: writes `tables` (name -> DataFrame) as Delta
    and links every other entry of `base` (tables, manifest.json)."""
    base, view = Path(base).resolve(), Path(view)
    if view.exists():
        shutil.rmtree(view)
    view.mkdir(parents=True)
    for entry in base.iterdir():
        if entry.name not in tables and entry.name not in ("runs", "mlflow.db", "mlartifacts"):
            os.symlink(entry, view / entry.name)
    for name, df in tables.items():
        df.write.format("delta").mode("overwrite").save(str(view / name))
    return view


def threshold_view(spark, base: str | Path, view: str | Path, t_star: int, last_k: int) -> Path:
    """`base` with user_activity and sequences rebuilt for another t* (K = min(last_k, t*), as K <= t*)."""
    from pipelines.activity import sequences, user_activity
    from twots.evaluate import read_delta

    activity = user_activity(read_delta(spark, base, "users"), read_delta(spark, base, "interactions"), t_star)
    activity = activity.localCheckpoint()
    seqs = sequences(read_delta(spark, base, "stage1_offers"), activity, min(last_k, t_star))
    return make_view(spark, base, view, {"user_activity": activity, "sequences": seqs})


def full_history_view(spark, base: str | Path, view: str | Path, max_len: int) -> Path:
    from twots.baselines.sequences import full_sequences
    from twots.evaluate import read_delta

    seqs = full_sequences(read_delta(spark, base, "stage1_offers"), read_delta(spark, base, "user_activity"), max_len)
    return make_view(spark, base, view, {"sequences": seqs})


# ---- one training run ----------------------------------------------------------------------------------------------

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
    import torch

    import twots.baselines  # noqa: F401  (registers the baseline kinds for load_model)
    from twots.models import load_model

    model = load_model(trial.model_path)
    model.load_state_dict(torch.load(trial.checkpoints[epoch], map_location="cpu", weights_only=False)["model"])
    return model.eval()


class Runner:
    """Trains and evaluates trials, sharing petastorm sources and evaluation arrays (read once per view) between
    them. `extra_hparams` join the builders' hparams (twots.stages: e.g. a baseline's constructor arguments)."""

    def __init__(self, spark, tcfg, out: Path, log=print, extra_hparams: dict | None = None):
        from twots.train import read_manifest, write_side_data

        self.spark, self.tcfg, self.out, self.log = spark, tcfg, out, log
        self.manifest = read_manifest(tcfg.data)
        self.hparams = {**tcfg.hparams(self.manifest, write_side_data(spark, tcfg.data, self.manifest,
                                                                      out / "runs" / "side_data.npz")),
                        **(extra_hparams or {})}
        self._sources: dict = {}
        self._eval_data: dict = {}

    def source(self, view: Path, table: str):
        from twots.train import make_source

        key = (str(view), table)
        if key not in self._sources:
            cache = self.out / "runs" / "sources" / f"{len(self._sources)}"
            self._sources[key] = make_source(self.spark, self.tcfg.model_copy(update={"data": str(view)}), table,
                                             cache)
        return self._sources[key]

    def train(self, name: str, plan: StagePlan, view: Path, lr: float, epochs: int, previous: str | None,
              run_name: str) -> Trial:
        """One stage on `view` (for full histories, a full-history view: its `sequences` are the histories)."""
        from twots import distributed
        from twots.trainer import StageJob, run_stage

        run_dir = self.out / "runs" / run_name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        table = "sequences" if plan.table == FULL_HISTORIES else plan.table
        job = StageJob(name=name, build=partial(plan.build, self.hparams), source=self.source(view, table),
                       previous_model=previous, model_path=str(run_dir / "model.pt"),
                       checkpoint_dir=str(run_dir / "checkpoints"), epochs=epochs, lr=lr,
                       batch_size=getattr(self.tcfg, f"{plan.settings}_batch_size"), seed=self.tcfg.seed,
                       use_gpu=self.tcfg.use_gpu, log_every_s=self.tcfg.log_every_s, threads=self.tcfg.threads)
        self.log(f"[compare] training {run_name}: {epochs} epochs at lr {lr}")
        started = time.perf_counter()
        with PeakRSS() as memory:
            result = distributed.run(run_stage, job, num_processes=self.tcfg.num_processes,
                                     local_mode=self.tcfg.local_mode, use_gpu=self.tcfg.use_gpu)
        seconds = time.perf_counter() - started
        checkpoints = sorted(str(p) for p in (run_dir / "checkpoints").glob(f"{name}-epoch*.pt"))
        return Trial(name, lr, job.model_path, checkpoints, seconds, memory.peak, result["history"])

    def evaluate(self, model, view: Path, splits: tuple[str, ...]) -> dict:
        from twots.evaluate import SPLITS, evaluate_loaded, load_arrays

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


# ---- the comparison ------------------------------------------------------------------------------------------------

def prepared_data(cfg: CompareConfig, spark, out: Path, log=print) -> Path:
    """--data as given, or --input prepared into <output>/data with the `prepare` section's settings."""
    if cfg.data is not None:
        return Path(cfg.data)
    from pipelines import PrepareConfig, prepare
    from twots.config import resolve

    target = out / "data"
    log(f"[compare] preparing {cfg.input} ({cfg.source}) into {target}")
    prepare(resolve(PrepareConfig, "prepare", {"source": cfg.source, "input": cfg.input, "output": str(target)}),
            spark)
    return target


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def popularity(runner: Runner, view: Path) -> tuple[object, float]:
    """The Popularity model from the training click counts, and the seconds Spark took to count."""
    import torch

    from twots.baselines import Popularity
    from twots.baselines.sequences import item_counts
    from twots.evaluate import read_delta

    started = time.perf_counter()
    counts = item_counts(read_delta(runner.spark, view, "interactions")).toPandas()
    dense = torch.zeros(runner.manifest["n_items"])
    dense[torch.as_tensor(counts["item_id"].to_numpy())] = torch.as_tensor(counts["count"].to_numpy()).float()
    return Popularity(runner.manifest["n_items"]).set_counts(dense), time.perf_counter() - started


def choose_threshold(cfg: CompareConfig, runner: Runner, base: Path, stage1_path: str, out: Path, log=print) -> dict:
    """The 'auto' t*: the theoretical guide t** and the val sweep over the candidates (stage 1 shared)."""
    import torch

    from twots.models import load_model
    from twots.threshold import active_user_sample, sweep, theory_guide

    manifest = runner.manifest
    prepared_t, last_k = manifest["config"]["threshold"], manifest["config"]["last_k"]
    stage1 = load_model(stage1_path)
    sample = active_user_sample(runner.spark, str(base), prepared_t, cfg.theory_users, cfg.theory_max_events,
                                runner.tcfg.seed)
    with torch.no_grad():
        item_vectors = stage1.items(torch.arange(manifest["n_items"]))
    guide = theory_guide(item_vectors, sample["item_ids"], sample["neg_item_ids"], sample["lengths"],
                         stage1.phi.weight[torch.as_tensor(sample["user_id"])], l2=cfg.theory_l2)
    log(f"[threshold] t** = Q / Var_m - 1 = {guide.q:.4f} / {guide.var_m:.4f} - 1 = {guide.t_star:.1f} "
        f"({guide.users} active users)")
    lr, epochs = cfg.lrs("2ts")[0], cfg.epochs_of("2ts")

    def val_mrr(t: int) -> float:
        view = threshold_view(runner.spark, base, out / "views" / f"t{t}", t, last_k)
        trial = runner.train("2ts", MODELS["2ts"][-1], view, lr, epochs, stage1_path, f"sweep/t{t}")
        return runner.score_epochs(trial, view).best_val_mrr

    best, curve = sweep(cfg.threshold_candidates, val_mrr, log)
    return {"t_star": best, "curve": curve, "theory": guide.as_dict(), "lr": lr, "epochs": epochs}


def fit(name: str, cfg: CompareConfig, runner: Runner, view: Path, full: Path | None, stage1) -> tuple:
    """Train (tune) one model; returns (model, the view it is replayed on, its result row without test metrics).
    `stage1` is CCF's (best trial, trials, saved model path), shared by the models built on it."""
    if name == "popularity":
        model, seconds = popularity(runner, view)
        return model, view, {"lr": None, "epochs": None, "val_mrr": None, "train_seconds": seconds,
                             "peak_memory_mb": None, "trials": []}
    *on, plan = MODELS[name]  # `on`: [STAGE1] for the kinds built on stage 1
    model_view = full if plan.table == FULL_HISTORIES else view
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


def log_threshold(info: dict, out: Path) -> None:
    """The sweep curve, t* and t** to the active (parent) MLflow run, and the sweep plot."""
    import mlflow

    from twots.plots import plot_threshold_sweep

    png = plot_threshold_sweep(info["curve"], info["t_star"], out / "threshold_sweep.png",
                               theory=info["theory"]["t_star"])
    mlflow.log_dict(info, "threshold.json")
    mlflow.log_artifact(str(png), "plots")
    mlflow.log_metrics({"t_star": info["t_star"], "t_star_theory": info["theory"]["t_star"]})
    for t, mrr in info["curve"].items():
        mlflow.log_metric("sweep_val_mrr", mrr, step=t)


def log_model_run(row: dict) -> None:
    import mlflow

    from twots.metrics import flatten

    mlflow.log_params({"model": row["model"], "lr": row["lr"], "epochs": row["epochs"]})
    mlflow.log_metrics({k: v for k, v in {
        **flatten(row["test"], "test"), "val_mrr": row["val_mrr"], "train_seconds": row["train_seconds"],
        "peak_memory_mb": row["peak_memory_mb"], "params": row["params"]}.items() if v is not None})
    mlflow.log_dict(row, "result.json")


def figures(results: dict, changes: dict, n_train, t_star: int, out: Path) -> list[Path]:
    """Fig. 3 (test MRR per activity bucket), Fig. 5 (activity distribution), Fig. 4 (2TS, else 2TS-Plus)."""
    from twots import plots

    paths = [plots.plot_mrr_by_bucket(
        {m: {b: s["mrr"] for b, s in r["test"]["buckets"].items() if s["count"]} for m, r in results.items()},
        t_star, out / "fig3_mrr_by_activity.png"),
        plots.plot_activity_distribution(n_train, t_star, out / "fig5_activity_distribution.png")]
    if changes:
        name = "2ts" if "2ts" in changes else "2ts-plus"
        paths.append(plots.plot_embedding_change(changes[name], out / "fig4_embedding_change.png",
                                                 title=f"User embedding change per step ({name})"))
    return paths


def compare(cfg: CompareConfig, spark, log=print) -> dict:
    """Run the whole comparison; returns {model: result} (also results.json and results.md under --output)."""
    import mlflow

    from twots import tracking
    from twots.config import resolve
    from twots.evaluate import read_delta
    from twots.models import save_model
    from twots.train import TrainConfig

    train_overrides = {k: v for k, v in cfg.train.items() if k != "data"}
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    base = prepared_data(cfg, spark, out, log)
    runner = Runner(spark, resolve(TrainConfig, "train", {**train_overrides, "data": str(base)}), out, log,
                    extra_hparams={"sasrec": {"window": cfg.sasrec_window}})
    prepared_t, last_k = runner.manifest["config"]["threshold"], runner.manifest["config"]["last_k"]
    experiment_id = tracking.use_tracking(cfg.tracking_uri or tracking.default_tracking_uri(out), out, cfg.experiment)

    results, changes = {}, {}
    with mlflow.start_run(run_name="compare", experiment_id=experiment_id) as parent:
        mlflow.log_params({**{k: json.dumps(v) if isinstance(v, (list, dict)) else v
                              for k, v in cfg.model_dump().items()}, "data_dir": str(base)})
        mlflow.log_dict(runner.manifest, "data/manifest.json")

        stage1, trained = None, [MODELS[m] for m in cfg.models if m in MODELS]
        if cfg.threshold == "auto" or any(plans[0] == STAGE1 for plans in trained):
            best, trials = runner.tune("ccf", STAGE1, base, cfg.lrs("ccf"), cfg.epochs_of("ccf"))
            stage1 = (best, trials, str(out / "models" / "stage1.pt"))
            save_model(stage1[2], load_epoch(best, best.best_epoch))

        threshold = {"t_star": prepared_t, "source": "prepared"}
        if cfg.threshold == "auto":
            threshold = {**choose_threshold(cfg, runner, base, stage1[2], out, log), "source": "auto"}
            log_threshold(threshold, out)
        elif cfg.threshold is not None:
            threshold = {"t_star": cfg.threshold, "source": "config"}
        t_star = threshold["t_star"]
        view = base if t_star == prepared_t else threshold_view(spark, base, out / "views" / f"t{t_star}", t_star,
                                                                last_k)
        full = (full_history_view(spark, view, out / "views" / "full", cfg.max_len)
                if any(plans[-1].table == FULL_HISTORIES for plans in trained) else None)
        log(f"[compare] t* = {t_star} ({threshold['source']}); models: {', '.join(cfg.models)}")

        for name in cfg.models:
            with mlflow.start_run(run_name=name, nested=True, experiment_id=experiment_id):
                model, model_view, row = fit(name, cfg, runner, view, full, stage1)
                report = runner.evaluate(model, model_view, ("val", "test"))
                if name in ("2ts", "2ts-plus"):
                    changes[name] = report["changes"]
                results[name] = row = {"model": name, "test": report["metrics"]["test"], "params": n_params(model),
                                       **row}
                log_model_run(row)
                log(f"[compare] {name}: test MRR {row['test']['overall']['mrr']:.4f}, "
                    f"trained in {row['train_seconds']:.1f}s")

        n_train = read_delta(spark, view, "user_activity").select("n_train").toPandas()["n_train"].to_numpy()
        written = figures(results, changes, n_train, t_star, out)
        write_results(results, threshold, out)
        for path in written + [out / "results.md", out / "results.json"]:
            mlflow.log_artifact(str(path), "results")
        log(f"[compare] results under {out} (MLflow run {parent.info.run_id})")
    return results


COLUMNS = (("MRR", ("overall", "mrr")), ("Recall@10", ("overall", "recall@10")), ("NDCG@10", ("overall", "ndcg@10")),
           ("MRR active", ("active", "mrr")), ("MRR inactive", ("inactive", "mrr")), ("MRR new", ("new", "mrr")))


def results_table(results: dict[str, dict], threshold: dict) -> str:
    """The Markdown results table (test split)."""
    def cell(value, fmt):
        return "-" if value is None else format(value, fmt)

    head = ["model", *(c for c, _ in COLUMNS), "train s", "peak MB", "params", "lr", "epochs"]
    lines = [f"t* = {threshold['t_star']} ({threshold['source']})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in results.items():
        metrics = [cell(row["test"][group][key], ".4f") for _, (group, key) in COLUMNS]
        lines.append("| " + " | ".join([name, *metrics, cell(row["train_seconds"], ".1f"),
                                        cell(row["peak_memory_mb"], ".0f"), f"{row['params']:,}",
                                        cell(row["lr"], "g"), cell(row["epochs"], "d")]) + " |")
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, dict], threshold: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "threshold.json").write_text(json.dumps(threshold, indent=2) + "\n")
    (out / "results.md").write_text(results_table(results, threshold))

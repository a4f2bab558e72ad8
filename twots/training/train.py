"""Training of one model kind on the driver: Delta tables -> one launch of its stages -> evaluation -> MLflow.

`train(cfg, spark)` trains each stage of the chosen model kind (twots.models.kinds.KINDS) in one TorchDistributor
launch (twots.training.launch), evaluates the final model on val/test with the `evaluate:` section's replay settings
and logs config, data versions, losses, throughput, metrics, plots and the model to one MLflow run.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import functions as F

from twots.cli import UserError
from twots.data.snapshot import read_delta
from twots.data.tables import USER_ACTIVITY, read_manifest
from twots.evaluation.evaluate import ReplaySettings, evaluate
from twots.mlops import tracking
from twots.models.kinds import KINDS, load_model, parts_without_data
from twots.training.config import TrainConfig
from twots.training.launch import Launcher
from twots.training.runs import run_jobs


@dataclass
class TrainResult:
    run_id: str
    model_path: str
    metrics: dict = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)


def check_stage1_model(cfg: TrainConfig) -> None:
    """A given stage-1 model must exist, fit a kind built on stage 1 and carry the run's item_bias."""
    if cfg.stage1_model is None:
        return
    where = f"--stage1-model {cfg.stage1_model}"
    if not Path(cfg.stage1_model).exists():
        raise UserError("no such file", where, "give the stage1.pt of an earlier run (<data>/runs/<model>/)")
    if not KINDS[cfg.model].on_stage1:
        raise UserError(f"model {cfg.model!r} has no stage 1 to skip", where, "train it without --stage1-model")
    given = load_model(cfg.stage1_model).hparams.get("item_bias", False)
    if given != cfg.item_bias:
        raise UserError(f"the stage-1 model has item_bias={given}, the run item_bias={cfg.item_bias}", where,
                        f"stage 2 takes b_i from its stage-1 model; set --item-bias {str(given).lower()}")


def untrained_parts(spark, data: str | Path, model: str) -> list[str]:
    """parts_without_data of `model` by the user groups of the folder `data` (a view's t* can differ from its
    manifest's, so the groups are counted in its user_activity)."""
    groups = read_delta(spark, data, USER_ACTIVITY).agg(
        F.count_if("is_active"), F.count_if(~F.col("is_active") & (F.col("n_train") > 0))).first()
    return parts_without_data(model, groups[0], groups[1])


def train(cfg: TrainConfig, spark, replay: ReplaySettings | None = None,
          folders: dict[str, Path] | None = None) -> TrainResult:
    """Train, evaluate (`replay`: default the `evaluate:` section of the same config files) and track one run.
    The stages read their tables from `cfg.data`, or from `folders` (table -> folder: views of it,
    pipelines.views.run_folders); the evaluation replays `cfg.data`."""
    read_manifest(cfg.data)  # a folder prepare did not write fails here, before anything is written
    check_stage1_model(cfg)
    run_dir = cfg.run_dir_path()
    if not cfg.resume and run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run never picks up another run's checkpoints
    run_dir.mkdir(parents=True, exist_ok=True)
    for part in untrained_parts(spark, cfg.data, cfg.model):
        print(f"[train] warning: {part}", flush=True)
    launcher = Launcher(spark, cfg, run_dir)
    with tracking.pipeline_run(cfg, run_dir, launcher.manifest, spark) as tracker:
        plans = [plan for plan in KINDS[cfg.model].stages if not (plan.name == "stage1" and cfg.stage1_model)]
        sources = {plan.table: launcher.source(plan.table, (folders or {}).get(plan.table)) for plan in plans}
        jobs, _ = run_jobs([cfg.model], launcher.inputs, sources, cfg.settings(), lambda model: run_dir,
                           cfg.options(), cfg.stage1_model)
        previous = jobs[-1].model_path
        stages = launcher.run(jobs, run_dir / "rank-errors")
        for result in stages:
            tracker.log_stage(result)
        metrics = {}
        if cfg.evaluate:
            report = evaluate(load_model(previous), cfg.data, spark,
                              replay or cfg.sibling(ReplaySettings, "evaluate"))
            metrics = report["metrics"]
            tracker.log_evaluation(report, run_dir)
        tracker.log_model(previous, cfg.model, cfg.data, spark)
        return TrainResult(tracker.run_id, previous, metrics, stages)

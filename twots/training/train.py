"""Two-stage training on the driver: Delta tables -> distributed stages -> evaluation -> MLflow.

`train(cfg, spark)` runs each stage of the chosen model kind (twots.models.kinds.KINDS) under TorchDistributor
(twots.training.trainer.run_stages on every rank, the jobs from twots.training.runs), then evaluates the final
model on val/test and logs config, data versions,
losses, throughput, metrics, plots and the model to one MLflow run.

Driver-side packages (pyspark, petastorm, mlflow) are imported inside functions.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from twots.config import Section
from twots.data.tables import FULL_HISTORIES, ITEMS, MANIFEST, SEQUENCES, STAGE1_OFFERS, USER_ACTIVITY
from twots.models.kinds import KINDS, TRAINABLE, BuildInputs, ModelDims
from twots.training.runs import RunOptions, StageSettings


class TrainConfig(Section):
    """Two-stage 2TS training with TorchDistributor, evaluation and MLflow tracking."""

    data: str = Field(description="folder of the prepared Delta tables and manifest.json (prepare's --output)")
    model: str = Field("2ts", description="model kind: a trainable kind of twots.models.kinds.KINDS (the "
                                          "full-history and cold-start-all kinds train on a view: jobs/train.py "
                                          "makes it)")
    run_dir: str | None = Field(None, description="checkpoints and models; default <data>/runs/<model>")
    item_dim: int = Field(48, ge=1, description="dimension of the transductive item embedding x_i")
    feature_dim: int = Field(16, ge=0, description="dimension of the item feature embedding g(f_i)")
    item_bias: bool = Field(False, description="stage 1 learns a scalar b_i per item, added to every score: "
                                               "phi_u . [x_i, g(f_i)] + b_i; 2TS, 2TS-Plus and 2-GRU keep it frozen "
                                               "from stage 1, 2TS-SingleStage learns it, the baselines have none")
    stage1_epochs: int = Field(3, ge=1)
    stage1_lr: float = Field(0.01, gt=0)
    stage1_batch_size: int = Field(1024, ge=1, description="stage1_offers rows per batch per process")
    stage1_l2: float = Field(0.0, ge=0, description="L2 of stage 1 (twots.training.trainer: touched rows, dense)")
    stage2_epochs: int = Field(3, ge=1)
    stage2_lr: float = Field(0.005, gt=0)
    stage2_batch_size: int = Field(64, ge=1, description="sequences rows (users) per batch per process")
    stage2_l2: float = Field(0.0, ge=0, description="L2 of stage 2 and of one-stage kinds")
    max_len: int = Field(200, ge=1, description="full histories keep each user's last max_len training items")
    num_processes: int = Field(2, ge=1, description="training processes (ranks)")
    local_mode: bool = Field(True, description="TorchDistributor local_mode: ranks on the driver, else Spark tasks")
    use_gpu: bool = Field(False, description="one GPU per rank and NCCL; else CPU and gloo")
    threads: int = Field(0, ge=0, description="torch threads per rank; 0 keeps torchrun's OMP_NUM_THREADS=1")
    collective_timeout_s: float = Field(600, gt=0, description="a rank waiting longer than this in a collective "
                                                               "fails the run (another rank is stuck or gone)")
    loader: Literal["petastorm", "parquet"] = Field("petastorm", description="how rows reach the ranks")
    seed: int = Field(0)
    resume: bool = Field(False, description="continue the run in run_dir from its last epoch checkpoint")
    stage1_model: str | None = Field(None, description="a trained stage-1 model file to build on instead of "
                                                       "training stage 1 (e.g. another kind's <run_dir>/stage1.pt)")
    log_every_s: float = Field(10.0, gt=0, description="seconds between progress lines (rank 0), and one at the "
                                                          "end of each epoch")
    evaluate: bool = Field(True, description="evaluate val/test at the end and log the metrics")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///<data>/mlflow.db")
    experiment: str = Field("twots", description="MLflow experiment name")

    @field_validator("model")
    @classmethod
    def _known_model(cls, kind: str) -> str:
        if kind not in TRAINABLE:
            raise ValueError(f"unknown model {kind!r}; known: {', '.join(TRAINABLE)}")
        return kind

    def dims(self, manifest: dict) -> ModelDims:
        return ModelDims.of(manifest, self.item_dim, self.feature_dim)

    def build_inputs(self, manifest: dict, side_data: str | Path, extra: dict | None = None) -> BuildInputs:
        """What every stage builder of a run gets (twots.models.kinds.BuildInputs)."""
        return BuildInputs(self.dims(manifest), str(side_data), extra or {}, item_bias=self.item_bias)

    def settings(self) -> dict[str, StageSettings]:
        """StagePlan.settings -> how such a stage trains."""
        return {which: StageSettings(getattr(self, f"{which}_epochs"), getattr(self, f"{which}_lr"),
                                     getattr(self, f"{which}_batch_size"), getattr(self, f"{which}_l2"))
                for which in ("stage1", "stage2")}

    def options(self) -> RunOptions:
        return RunOptions(seed=self.seed, use_gpu=self.use_gpu, resume=self.resume, log_every_s=self.log_every_s,
                          threads=self.threads)


@dataclass
class TrainResult:
    run_id: str
    model_path: str
    metrics: dict = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)


def run_dir_of(cfg: TrainConfig) -> Path:
    return Path(cfg.run_dir) if cfg.run_dir else Path(cfg.data) / "runs" / cfg.model


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run jobs/prepare.py with --output {data_dir} first")
    return json.loads(path.read_text())


def write_side_data(spark, data_dir: str | Path, manifest: dict, path: Path) -> Path:
    """The model's non-trained inputs as one .npz the ranks load without Spark: each item's feature ids
    ([n_items, max_features], -1 padded) and which users have training interactions. The tables' files are read here
    in Arrow batches (twots.data.snapshot), not collected through the driver JVM: the items grow with the catalogue
    (4.16M at Taobao scale)."""
    import numpy as np

    from twots.data.snapshot import read_snapshot

    items = read_snapshot(spark, data_dir, ITEMS, ("item_id", "feature_ids"), purpose="the ranks' side data")
    features = np.full((manifest["n_items"], max(manifest["max_features_per_item"], 1)), -1, dtype=np.int64)
    features[items["item_id"], :items["feature_ids"].shape[1]] = items["feature_ids"]
    users = read_snapshot(spark, data_dir, USER_ACTIVITY, ("user_id", "n_train"), purpose="the ranks' side data")
    known = np.zeros(manifest["n_users"], dtype=bool)
    known[users["user_id"]] = users["n_train"] > 0
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, item_features=features, known_users=known)
    return path


def make_source(spark, cfg: TrainConfig, table: str, run_dir: Path):
    """The rows of `table` for the ranks. FULL_HISTORIES are the `sequences` of a full-history view
    (pipelines.views.full_history_view); every table but stage1_offers has the `sequences` schema."""
    from twots.training import loaders

    folder = SEQUENCES if table == FULL_HISTORIES else table
    df = spark.read.format("delta").load(str(Path(cfg.data) / folder))
    layout = STAGE1_OFFERS if table == STAGE1_OFFERS else SEQUENCES
    if cfg.loader == "petastorm":
        return loaders.petastorm_source(spark, df, layout, run_dir / "petastorm-cache", cfg.num_processes)
    return loaders.export_parquet(df, layout, run_dir / "parquet" / folder)


def train(cfg: TrainConfig, spark) -> TrainResult:
    from twots.mlops import tracking
    from twots.training import distributed
    from twots.training.runs import run_jobs
    from twots.training.trainer import run_stages

    manifest = read_manifest(cfg.data)
    if cfg.stage1_model is not None and not Path(cfg.stage1_model).exists():
        raise FileNotFoundError(f"--stage1-model {cfg.stage1_model}: no such file")
    if cfg.stage1_model is not None and not KINDS[cfg.model].on_stage1:
        raise ValueError(f"--stage1-model: model {cfg.model!r} has no stage 1 to skip")
    if cfg.stage1_model is not None:
        from twots.models.kinds import load_model

        given = load_model(cfg.stage1_model).hparams.get("item_bias", False)
        if given != cfg.item_bias:
            raise ValueError(f"--stage1-model {cfg.stage1_model} has item_bias={given}, the run item_bias="
                             f"{cfg.item_bias}: stage 2 takes b_i from its stage-1 model; set --item-bias "
                             f"{str(given).lower()}")
    run_dir = run_dir_of(cfg)
    if not cfg.resume and run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run never picks up another run's checkpoints
    run_dir.mkdir(parents=True, exist_ok=True)
    inputs = cfg.build_inputs(manifest, write_side_data(spark, cfg.data, manifest, run_dir / "side_data.npz"))
    with tracking.pipeline_run(cfg, run_dir, manifest, spark) as tracker:
        plans = KINDS[cfg.model].stages
        sources = {plan.table: make_source(spark, cfg, plan.table, run_dir) for plan in plans
                   if not (plan.name == "stage1" and cfg.stage1_model)}
        jobs, _ = run_jobs([cfg.model], inputs, sources, cfg.settings(), lambda model: run_dir, cfg.options(),
                           cfg.stage1_model)
        previous = jobs[-1].model_path
        # All stages in one launch: one set of rank processes and one process group.
        stages = distributed.run(run_stages, jobs, num_processes=cfg.num_processes, local_mode=cfg.local_mode,
                                 use_gpu=cfg.use_gpu, error_dir=run_dir / "rank-errors",
                                 timeout_s=cfg.collective_timeout_s)["stages"]
        for result in stages:
            tracker.log_stage(result)
        metrics = {}
        if cfg.evaluate:
            from twots.evaluation.evaluate import evaluate
            from twots.models.kinds import load_model

            report = evaluate(load_model(previous), cfg.data, spark)
            metrics = report["metrics"]
            tracker.log_evaluation(report, run_dir)
        tracker.log_model(previous, cfg.model, cfg.data, spark)
        return TrainResult(tracker.run_id, previous, metrics, stages)

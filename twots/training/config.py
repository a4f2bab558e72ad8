"""The `train:` section: which model kind, its sizes, how each stage trains, where the ranks run.

`stage1` and `stage2` are nested sections (`train.stage1.lr`, flag `--stage1.lr`): stage 1 (offer rows:
`stage1_offers`) and every stage that trains on sequence rows (2TS's stage 2, the one-stage kinds) take their epochs,
learning rate, batch size and L2 from them (StagePlan.settings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from twots.config import Section
from twots.models.kinds import KINDS, TRAINABLE, BuildInputs, ModelDims
from twots.models.two_time_scale import ItemMode, MixMode
from twots.training.runs import RunOptions, StageSettings


class StageConfig(Section):
    """How one training stage trains."""

    epochs: int = Field(3, ge=1, description="epochs (without a val check: all of them)")
    lr: float = Field(0.01, gt=0, description="learning rate of Adam and SparseAdam")
    batch_size: int = Field(64, ge=1, description="rows per batch per process: offers in stage 1, users in stage 2")
    l2: float = Field(0.0, ge=0, description="L2 on the embedding rows a step touches and on dense weights "
                                             "(twots.training.trainer)")

    def settings(self) -> StageSettings:
        """The ranks' copy (torch-side code does not import pydantic)."""
        return StageSettings(**self.model_dump())


class TwoTimeScaleSettings(Section):
    """Settings of the 2TS family beyond the paper (docs/model.md), for the ablation: each key left at null keeps
    every kind's own (TwoTimeScaleOptions); what is set applies to every 2TS kind of the run."""

    last_k: int | None = Field(None, ge=1, description="K: active users' stage-2 rows and warm-up are their last K "
                               "training items (null: the prepared sequences' K; above t* allowed)")
    held_out: bool = Field(False, description="out-of-sample phi: stage 1 never sees each active user's last K "
                           "training events, the rows stage 2 trains on")
    items: ItemMode | None = Field(None, description="stage 1's items in stage 2: frozen, finetune (at "
                                   "item_lr_scale x lr) or input (a trainable GRU input table, frozen scoring vectors)")
    item_lr_scale: float | None = Field(None, gt=0, description="items: finetune trains them at this x lr")
    mix: MixMode | None = Field(None, description="2TS-Plus's W: shared, per_group, residual (h + W2 x_prev) or "
                                "residual_per_group")
    phi_scale: bool | None = Field(None, description="the active GRU runs on phi / max|phi| and scores with the "
                                   "scale put back")
    bptt_window: int | None = Field(None, ge=0, description="cut the gradient through the GRUs every this many "
                                    "steps of a row (0: never)")

    def options(self) -> dict:
        """The TwoTimeScaleOptions fields this section sets."""
        return {k: v for k, v in self.model_dump(exclude={"last_k", "held_out"}).items() if v is not None}


class TrainConfig(Section):
    """Two-stage 2TS training with TorchDistributor, evaluation and MLflow tracking."""

    data: str = Field(description="folder of the prepared Delta tables and manifest.json (prepare's --output)")
    model: str = Field("2ts-oos", description="model kind: a trainable kind of twots.models.kinds.KINDS (the "
                                              "full-history, cold-start and out-of-sample kinds train on views: "
                                              "jobs/train.py makes them)")
    run_dir: str | None = Field(None, description="checkpoints and models; default <data>/runs/<model>")
    item_dim: int = Field(48, ge=1, description="dimension of the transductive item embedding x_i")
    feature_dim: int = Field(16, ge=0, description="dimension of the item feature embedding g(f_i)")
    item_bias: bool = Field(False, description="stage 1 learns a scalar b_i per item, added to every score: "
                                               "phi_u . [x_i, g(f_i)] + b_i; 2TS, 2TS-Plus and 2-GRU keep it frozen "
                                               "from stage 1, 2TS-SingleStage learns it, the baselines have none")
    stage1: StageConfig = Field(StageConfig(epochs=3, lr=0.01, batch_size=1024),
                                description="stage 1 (stage1_offers rows)")
    stage2: StageConfig = Field(StageConfig(epochs=3, lr=0.005, batch_size=64),
                                description="stage 2 and the one-stage kinds (sequence rows: one user each)")
    two_time_scale: TwoTimeScaleSettings = Field(TwoTimeScaleSettings(),
                                                 description="settings of the 2TS family beyond the paper")
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
    evaluate: bool = Field(True, description="replay val/test at the end (with the `evaluate:` section's settings) "
                                             "and log the metrics")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///<data>/mlflow.db")
    experiment: str = Field("twots", description="MLflow experiment name")

    @field_validator("model")
    @classmethod
    def _known_model(cls, kind: str) -> str:
        if kind not in TRAINABLE:
            raise ValueError(f"unknown model {kind!r}; known: {', '.join(TRAINABLE)}")
        return kind

    @model_validator(mode="after")
    def _settings_fit_the_model(self):
        KINDS[self.model].options_with(self.two_time_scale.options())
        return self

    def dims(self, manifest: dict) -> ModelDims:
        return ModelDims.of(manifest, self.item_dim, self.feature_dim)

    def build_inputs(self, manifest: dict, side_data: str | Path, extra: dict | None = None) -> BuildInputs:
        """What every stage builder of a run gets (twots.models.kinds.BuildInputs)."""
        return BuildInputs(self.dims(manifest), str(side_data), extra or {}, item_bias=self.item_bias,
                           two_time_scale=self.two_time_scale.options())

    def settings(self) -> dict[str, StageSettings]:
        """StagePlan.settings -> how such a stage trains."""
        return {"stage1": self.stage1.settings(), "stage2": self.stage2.settings()}

    def options(self) -> RunOptions:
        return RunOptions(seed=self.seed, use_gpu=self.use_gpu, resume=self.resume, log_every_s=self.log_every_s,
                          threads=self.threads)

    def run_dir_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path(self.data) / "runs" / self.model

"""The comparison's configuration (the `compare:` section of conf/default.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from twots.config import Section
from twots.models.kinds import KINDS

MODEL_NAMES = tuple(KINDS)  # in the order of the paper's tables


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
    threshold: int | Literal["auto"] | None = Field(
        None, description="t*: None keeps the prepared one; an int rebuilds activity and sequences; 'auto' sweeps")
    threshold_candidates: list[int] = Field([5, 10, 20, 40, 80], description="t* values the 'auto' sweep tries")
    theory_users: int = Field(256, ge=2, description="active users sampled to estimate t** (Theorem 2.1)")
    theory_max_events: int = Field(128, ge=4, description="training interactions per sampled user for t**")
    theory_l2: float = Field(0.1, gt=0, description="L2 of the per-user fits behind t**")
    train: dict = Field(default_factory=dict, description="overrides of the `train` section for every model "
                        "(dimensions, batch sizes, processes, loader); checked like that section")
    tracking_uri: str | None = Field(None, description="MLflow URI; default sqlite:///<output>/mlflow.db")
    register_models: Literal["none", "best", "all"] = Field(
        "none", description="log every model as the served pyfunc and register the val-best one (best) or all under "
        "--model-name, tagged with kind, settings and metrics, for validate/promote")
    model_name: str = Field("twots", description="registered model name of --register-models")
    experiment: str = Field("twots-compare", description="MLflow experiment")

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        if models == ["all"]:
            return list(MODEL_NAMES)
        unknown = [m for m in models if m not in MODEL_NAMES]
        if unknown or not models:
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

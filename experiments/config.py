"""The comparison's configuration (the `compare:` section of conf/default.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, field_validator, model_validator

from twots.config import Section
from twots.models.kinds import KINDS
from twots.training.config import TrainConfig, TwoTimeScaleSettings

MODEL_NAMES = tuple(KINDS)  # in the order of the paper's tables, then ours
# The kind beyond the paper that combines what the ablation found to help (docs/results.md).
COMBINED = "2ts-oos"
# Our other 2TS variants (docs/model.md): run by name, not in 'all'.
VARIANTS = ("2ts-plus-gw", "2ts-coldstart-all", "2ts-tuned-items", "2ts-singlestage-k")
PAPER_MODELS = tuple(m for m in MODEL_NAMES if m not in (*VARIANTS, COMBINED))  # the paper's nine
ALL_MODELS = (*PAPER_MODELS, COMBINED)  # 'all'
# compare ignores train.model (each model of the run is checked against the train section's 2TS settings); the
# section is resolved with a kind that takes any of them.
TRAIN_MODEL = "ccf"



class GridOverride(Section):
    """Another tuning budget for one model (`compare.overrides`); what it leaves out is the common grid's."""

    lrs: list[PositiveFloat] | None = Field(None, min_length=1)
    l2s: list[NonNegativeFloat] | None = Field(None, min_length=1)
    max_epochs: int | None = Field(None, ge=1)


class CompareConfig(Section):
    """Train and evaluate 2TS, 2TS-Plus, baselines and ablations on one data set; results table, MLflow, plots."""

    data: str | None = Field(None, description="prepared Delta tables (prepare's --output); or give --input")
    input: str | None = Field(None, description="raw data to prepare first into <output>/data (with --source)")
    source: Literal["taobao", "movielens", "lastfm"] | None = Field(None, description="format of --input")
    output: str = Field("compare-output", description="results, plots, runs and the MLflow store")
    models: list[str] = Field(["all"], description="'all' (" + ", ".join(ALL_MODELS) + ") or a list "
                              "of those and: " + ", ".join(VARIANTS)
                              + "; they run in the order above, whatever the order given")
    lrs: list[PositiveFloat] = Field([0.001, 0.003, 0.01], min_length=1,
                                     description="learning rates every model tries")
    l2s: list[NonNegativeFloat] = Field([0.0, 1e-6], min_length=1, description="L2 values every model tries "
                                        "(embedding rows a step touches and dense weights; twots.training.trainer)")
    max_epochs: int = Field(20, ge=1, description="epochs per grid point at most; val MRR is replayed after each")
    patience: int = Field(2, ge=1, description="stop a grid point after this many epochs without a better val MRR")
    overrides: dict[str, GridOverride] = Field(default_factory=dict, description="model -> {lrs, l2s, max_epochs}: "
                                               "another budget for that model (none by default: one grid for all)")
    launch: Literal["model", "all"] = Field(
        "model", description="TorchDistributor launches: one per model (its whole grid), or all: one for every "
        "model after stage 1 (saves a launch's process starts, about 8 s each, on small data; a failure stops all)")
    resume: bool = Field(False, description="keep the trials an earlier run under the same --output finished with "
                         "the same data, settings and stage 1; train only the others (experiments.tuning)")
    max_len: int = Field(200, ge=1, description="full histories keep each user's last max_len training items")
    sasrec_window: int = Field(50, ge=1, description="SASRec attends over the last N items")
    t_star: Annotated[int, Field(ge=0)] | Literal["auto"] | None = Field(
        None, description="t*: None keeps the prepared one; an int rebuilds activity and sequences; 'auto' sweeps")
    t_star_candidates: list[int] = Field([5, 10, 20, 40, 80], description="t* values the 'auto' sweep tries")
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
            return list(ALL_MODELS)
        if not models:
            raise ValueError(f"the list is empty; choose 'all' or from {', '.join(MODEL_NAMES)}")
        unknown = [m for m in models if m not in MODEL_NAMES]
        if unknown:
            raise ValueError(f"unknown models {unknown}; choose 'all' or from {', '.join(MODEL_NAMES)}")
        return [m for m in MODEL_NAMES if m in models]  # a fixed order: stage 1 (ccf) before what builds on it

    @field_validator("overrides")
    @classmethod
    def _overrides_are_models(cls, value: dict) -> dict:
        unknown = [k for k in value if k not in MODEL_NAMES or k == "popularity"]
        if unknown:
            raise ValueError(f"keys {unknown} are not trainable models ({', '.join(MODEL_NAMES[1:])})")
        return value

    @field_validator("train")
    @classmethod
    def _train_overrides(cls, value: dict) -> dict:
        """Checked like the `train` section now, not after prepare."""
        from pydantic import ValidationError

        try:
            TrainConfig(**{**value, "model": TRAIN_MODEL, "data": "."})
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
        if self.t_star == "auto" and (not self.t_star_candidates or min(self.t_star_candidates) < 1):
            raise ValueError("t_star_candidates must be a non-empty list of t* >= 1")

        settings = TwoTimeScaleSettings(**self.train.get("two_time_scale", {}))
        for model in self.models:  # the train section's 2TS settings fit every model of the run
            KINDS[model].options_with(settings.options())
        return self

    def grid(self, model: str) -> Grid:
        """The tuning budget of `model`: the common grid unless `overrides` names the model."""
        mine = self.overrides.get(model, GridOverride())
        return Grid(tuple(mine.lrs or self.lrs), tuple(mine.l2s or self.l2s), mine.max_epochs or self.max_epochs,
                    self.patience)


@dataclass(frozen=True)
class Grid:
    """One model's tuning budget: every (lr, l2), each up to max_epochs with early stopping on val MRR."""

    lrs: tuple[float, ...]
    l2s: tuple[float, ...]
    max_epochs: int
    patience: int

    def points(self) -> list[tuple[float, float]]:
        return [(lr, l2) for lr in self.lrs for l2 in self.l2s]

    def as_dict(self) -> dict:
        return {"lrs": list(self.lrs), "l2s": list(self.l2s), "max_epochs": self.max_epochs,
                "patience": self.patience}

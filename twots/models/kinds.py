"""The stages of each trainable model kind: which training rows each stage reads and how its model is built.

`MODELS` maps a model kind to its stages, in order; a new kind is one entry. A kind is either stage 1 alone (CCF),
stage 1 then one stage on the saved stage-1 model (2TS, 2TS-Plus, 2-GRU), or one stage from scratch (the
full-history baselines and 2TS-SingleStage). Every kind that starts with `STAGE1` can share one trained stage 1
(experiments.compare and bench/train.py train it once). jobs/train.py trains the kinds of `twots.training.train.MODELS`, a subset;
experiments.compare trains them all.

A builder is called on every rank as `build(hparams, previous_model_path)` and returns the nn.Module to train
(`forward(batch) -> loss`); `hparams` is `twots.training.train.TrainConfig.hparams(...)`, plus optional extra constructor
arguments per baseline kind (e.g. `{"sasrec": {"window": 50}}`, set by experiments.compare). This module needs only torch
and numpy, so the rank side (TorchDistributor or plain torchrun) imports it without Spark, pydantic or MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from twots.models.baselines import KINDS
from twots.models.two_time_scale import Stage1Model, TwoTimeScaleModel, load_model

# The training rows a stage reads. The first two are Delta tables of a prepared folder; full histories are rows of
# the `sequences` schema holding each user's last max_len training items (pipelines.histories.full_sequences),
# a table the consumer builds: a view's `sequences` (experiments.compare), an exported folder (bench/train.py).
STAGE1_OFFERS, SEQUENCES, FULL_HISTORIES = "stage1_offers", "sequences", "full_sequences"


@dataclass(frozen=True)
class StagePlan:
    """One training stage of a model kind: its name, the rows it trains on, and how to build its model."""

    name: str                                   # "stage1", "stage2" (on stage 1) or "train" (a one-stage kind)
    table: str                                  # STAGE1_OFFERS, SEQUENCES or FULL_HISTORIES
    build: Callable[..., object]                # (hparams: dict, previous model path | None) -> nn.Module

    @property
    def settings(self) -> str:
        """Whose training settings (epochs, learning rate, batch size) it takes: offer rows are trained like stage 1,
        sequence rows like stage 2."""
        return "stage1" if self.table == STAGE1_OFFERS else "stage2"


def _side_data(hparams: dict):
    return np.load(hparams["side_data"])


def _with_item_features(model, hparams: dict):
    model.items.set_item_features(torch.from_numpy(_side_data(hparams)["item_features"]))
    return model


def build_stage1(hparams: dict, previous: str | None):
    """Stage 1: phi_u and items from scratch, with the item features and known users of the side data."""
    model = _with_item_features(Stage1Model(**hparams["stage1"]), hparams)
    model.set_known_users(torch.from_numpy(_side_data(hparams)["known_users"]))
    return model


def build_two_time_scale(hparams: dict, previous: str | None, plus: bool = False, use_phi: bool = True):
    """Stage 2: 2TS (2TS-Plus with `plus`, 2-GRU without `use_phi`) on the frozen embeddings of the stage-1 model
    saved at `previous`."""
    return TwoTimeScaleModel.from_stage1(load_model(previous), plus=plus, use_phi=use_phi)


def build_single_stage(hparams: dict, previous: str | None):
    """2TS-SingleStage: the 2TS architecture with every parameter trained jointly from scratch."""
    return _with_item_features(TwoTimeScaleModel(**hparams["stage1"], freeze_stage1=False), hparams)


def build_baseline(hparams: dict, previous: str | None, kind: str):
    """A baseline of twots.models.baselines with the item sizes of stage 1 and its extra arguments `hparams[kind]`."""
    dims = {k: hparams["stage1"][k] for k in ("n_items", "n_features", "max_features", "item_dim", "feature_dim")}
    return _with_item_features(KINDS[kind](**dims, **hparams.get(kind, {})), hparams)


STAGE1 = StagePlan("stage1", STAGE1_OFFERS, build_stage1)


def _on_stage1(**kwargs) -> list[StagePlan]:
    return [STAGE1, StagePlan("stage2", SEQUENCES, partial(build_two_time_scale, **kwargs))]


def _one_stage(build) -> list[StagePlan]:
    return [StagePlan("train", FULL_HISTORIES, build)]


# In the order of the paper's tables (experiments.compare reports them so).
MODELS: dict[str, list[StagePlan]] = {
    "ccf": [STAGE1],
    "sumpooling": _one_stage(partial(build_baseline, kind="sumpooling")),
    "gru4rec": _one_stage(partial(build_baseline, kind="gru4rec")),
    "sasrec": _one_stage(partial(build_baseline, kind="sasrec")),
    "2gru": _on_stage1(use_phi=False),
    "2ts-singlestage": _one_stage(build_single_stage),
    "2ts": _on_stage1(),
    "2ts-plus": _on_stage1(plus=True),
}

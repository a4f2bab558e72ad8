"""The stages of each trainable model kind: which table each stage trains on and how its model is built.

`MODELS` maps a model kind (the `--model` of jobs/train.py) to its stages, in order; a new kind is one entry.
A builder is called on every rank as `build(hparams, previous_model_path)` and returns the nn.Module to train
(`forward(batch) -> loss`); `hparams` is `twots.train.TrainConfig.hparams(...)`. This module needs only torch and
numpy, so the rank side (TorchDistributor or plain torchrun) imports it without Spark, pydantic or MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from twots.models import Stage1Model, TwoTimeScaleModel, load_model


@dataclass(frozen=True)
class StagePlan:
    """One training stage of a model kind: its name, the Delta table it trains on, and how to build its model."""

    name: str
    table: str                                  # "stage1_offers" or "sequences"
    build: Callable[..., object]                # (hparams: dict, previous model path | None) -> nn.Module


def build_stage1(hparams: dict, previous: str | None):
    """Stage 1: phi_u and items from scratch, with the item features and known users of the side data."""
    model = Stage1Model(**hparams["stage1"])
    side = np.load(hparams["side_data"])
    model.items.set_item_features(torch.from_numpy(side["item_features"]))
    model.set_known_users(torch.from_numpy(side["known_users"]))
    return model


def build_two_time_scale(hparams: dict, previous: str | None, plus: bool):
    """Stage 2: 2TS (or 2TS-Plus) on the frozen embeddings of the stage-1 model saved at `previous`."""
    return TwoTimeScaleModel.from_stage1(load_model(previous), plus=plus)


MODELS: dict[str, list[StagePlan]] = {
    "2ts": [StagePlan("stage1", "stage1_offers", build_stage1),
            StagePlan("stage2", "sequences", partial(build_two_time_scale, plus=False))],
    "2ts-plus": [StagePlan("stage1", "stage1_offers", build_stage1),
                 StagePlan("stage2", "sequences", partial(build_two_time_scale, plus=True))],
}

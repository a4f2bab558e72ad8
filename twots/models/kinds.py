"""The table of model kinds: name -> model class, training stages, and how the saved file names its class.

`KINDS` is the one list (in the order of the paper's tables); jobs/train.py, the comparison, the demo, bench and
serving read it. A kind is either not trained by gradient (Popularity: Spark counts), stage 1 alone (CCF), stage 1
then one stage on the saved stage-1 model (2TS, 2TS-Plus, 2-GRU and our two variants), or one stage from scratch on
full histories (the sequence baselines and 2TS-SingleStage). Every kind that starts with `STAGE1` can share one
trained stage 1 (twots.training.runs builds such runs). Every kind serves through the same pyfunc
(twots.mlops.pyfunc): the protocol of twots.models.protocol.SequentialRecommender is all serving uses.

Variants beyond the paper, each a 2TS kind on the same stage 1 (TwoTimeScaleOptions says what each is):
- `2ts-plus-gw`: 2TS-Plus with one W per user group (mix "per_group"): active users' state lives near phi,
  inactive and new users' near psi, and one shared W has to serve both.
- `2ts-coldstart-all`: 2TS whose cold-start side (psi and the inactive GRU Theta_1, which new users run) trains on
  the inactive users' sequences plus the first t* training items of every active user, as each active user was once
  an inactive one; the active users' rows are unchanged. Its stage 2 reads COLDSTART_SEQUENCES, a table of a view
  (pipelines.views.coldstart_view).
- `2ts-tuned-items`: 2TS whose stage 2 also trains the item encoder (items "finetune") while phi stays frozen: of
  stage 1's two frozen parts, it frees the items only (2-GRU drops phi only).
- `2ts-singlestage-k`: 2TS-SingleStage on 2TS's own rows (`sequences`: active users' last K items) instead of full
  histories, so that the paper's single-stage ablation compares training schemes on the same data.
- `2ts-oos`: 2TS on an out-of-sample phi. Stage 1 is fit without each active user's last 40 training events; stage 2
  trains the active GRU on exactly those 40 steps from phi, the inactive GRU from psi on the inactive users'
  sequences and on every active user's first t* items (as 2ts-coldstart-all), and fine-tunes stage 1's item vectors
  with both (docs/model.md has why each part is there).

`BuildInputs.two_time_scale` overrides options of every 2TS-family kind of a run (the `train.two_time_scale`
section: the ablation of docs/results.md; docs/model.md describes each option).

A stage's builder is called on every rank as `build(inputs, previous_model_path)` and returns the nn.Module to
train (`forward(batch) -> loss`). Saved models are tagged with their class name (`save_model` / `load_model`), not
with the recipe that trained them: 2TS, 2TS-Plus, 2-GRU and 2TS-SingleStage all save a TwoTimeScaleModel.
Torch and numpy only: the rank side imports this module without Spark, pydantic or MLflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from twots.data.tables import COLDSTART_SEQUENCES, FULL_HISTORIES, SEQUENCES, STAGE1_OFFERS
from twots.models.baselines import GRU4Rec, Popularity, SASRec, SumPooling
from twots.models.protocol import SequentialRecommender
from twots.models.stage1 import Stage1Model
from twots.models.two_time_scale import TwoTimeScaleModel, TwoTimeScaleOptions


@dataclass(frozen=True)
class ModelDims:
    """The sizes every trained model is built with: the data's (from prepare's manifest) and the embedding dims."""

    n_users: int
    n_items: int
    n_features: int
    max_features: int
    item_dim: int
    feature_dim: int

    @classmethod
    def of(cls, manifest: dict, item_dim: int, feature_dim: int) -> ModelDims:
        return cls(n_users=manifest["n_users"], n_items=manifest["n_items"], n_features=manifest["n_features"],
                   max_features=manifest["max_features_per_item"], item_dim=item_dim, feature_dim=feature_dim)

    def item_side(self) -> dict:
        """The constructor arguments of a model without user embeddings (the baselines)."""
        return {k: v for k, v in asdict(self).items() if k != "n_users"}


@dataclass(frozen=True)
class BuildInputs:
    """What a stage builder needs besides the previous stage's model: the dimensions, the side-data file (item
    features, known users; twots.training.launch.write_side_data), per-kind extra constructor arguments
    (e.g. {"sasrec": {"window": 50}}), `item_bias` (train.item_bias: stage 1 and 2TS-SingleStage learn a b_i;
    the kinds built on a stage-1 model take it from that model) and `two_time_scale`, TwoTimeScaleOptions fields that
    override every 2TS-family kind's own."""

    dims: ModelDims
    side_data: str
    extra: dict[str, dict] = field(default_factory=dict)
    item_bias: bool = False
    two_time_scale: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Rows:
    """What a 2TS kind's stage 2 trains on beyond the prepared tables: each active user's last `last_k` training items
    (None: the prepared sequences' K) and, with `held_out`, from a stage 1 that never saw them (an out-of-sample
    phi: pipelines.views.held_out_view). The replay warms active users up on the same last K items."""

    last_k: int | None = None
    held_out: bool = False


@dataclass(frozen=True)
class StagePlan:
    """One training stage of a model kind: its name, the rows it trains on, and how to build its model."""

    name: str                                   # "stage1", "stage2" (on stage 1) or "train" (a one-stage kind)
    table: str                                  # STAGE1_OFFERS, SEQUENCES, FULL_HISTORIES or COLDSTART_SEQUENCES
    build: Callable[..., object]                # (inputs: BuildInputs, previous model path | None) -> nn.Module

    @property
    def settings(self) -> str:
        """Whose training settings (epochs, learning rate, batch size) it takes: offer rows are trained like stage 1,
        sequence rows like stage 2."""
        return "stage1" if self.table == STAGE1_OFFERS else "stage2"


def _with_item_features(model, inputs: BuildInputs):
    model.items.set_item_features(torch.from_numpy(np.load(inputs.side_data)["item_features"]))
    return model


def build_stage1(inputs: BuildInputs, previous: str | None):
    """Stage 1: phi_u and items (and b_i with `inputs.item_bias`) from scratch, with the item features and known
    users of the side data."""
    model = _with_item_features(Stage1Model(**asdict(inputs.dims), item_bias=inputs.item_bias), inputs)
    model.set_known_users(torch.from_numpy(np.load(inputs.side_data)["known_users"]))
    return model


def build_two_time_scale(inputs: BuildInputs, previous: str | None, options: TwoTimeScaleOptions):
    """Stage 2 of a 2TS kind (`options`, with the run's overrides: Kind.options_with checks them at start) on the
    embeddings (and item biases, if it has them) of the stage-1 model saved at `previous`."""
    return TwoTimeScaleModel.from_stage1(load_model(previous), replace(options, **inputs.two_time_scale))


def build_single_stage(inputs: BuildInputs, previous: str | None, options: TwoTimeScaleOptions):
    """2TS-SingleStage: the 2TS architecture with every parameter trained jointly from scratch."""
    return _with_item_features(TwoTimeScaleModel(**asdict(inputs.dims), item_bias=inputs.item_bias,
                                                 options=replace(options, **inputs.two_time_scale)), inputs)


def build_baseline(inputs: BuildInputs, previous: str | None, kind: str):
    """A sequence baseline with the item sizes of the run and its extra arguments `inputs.extra[kind]`."""
    return _with_item_features(KINDS[kind].model_class(**inputs.dims.item_side(), **inputs.extra.get(kind, {})),
                               inputs)


STAGE1 = StagePlan("stage1", STAGE1_OFFERS, build_stage1)


def _one_stage(build, table: str = FULL_HISTORIES) -> tuple[StagePlan, ...]:
    return (StagePlan("train", table, build),)


@dataclass(frozen=True)
class Kind:
    """A model kind: its class (the saved file's tag) and its training stages, in order (none: not trained by
    gradient)."""

    name: str
    model_class: type[SequentialRecommender]
    stages: tuple[StagePlan, ...]
    options: TwoTimeScaleOptions | None = None   # what a kind of the 2TS family is
    rows: Rows = Rows()

    def rows_with(self, last_k: int | None, held_out: bool) -> Rows:
        """Its rows with a run's settings (train.two_time_scale): a K given wins, held_out adds to the kind's."""
        if self.options is None:
            return Rows()
        return Rows(last_k or self.rows.last_k, held_out or self.rows.held_out)

    def options_with(self, overrides: dict) -> TwoTimeScaleOptions | None:
        """Its options with a run's overrides (BuildInputs.two_time_scale), checked: ValueError names the kind."""
        if self.options is None:
            return None
        try:
            return replace(self.options, **overrides)
        except ValueError as err:
            raise ValueError(f"model {self.name}: {err}") from None

    @property
    def on_stage1(self) -> bool:
        return bool(self.stages) and self.stages[0] == STAGE1

    @property
    def full_histories(self) -> bool:
        return bool(self.stages) and self.stages[-1].table == FULL_HISTORIES

    @property
    def takes_item_bias(self) -> bool:
        """Whether train.item_bias changes this kind: stage 1, the kinds built on it, 2TS-SingleStage."""
        return self.model_class in (Stage1Model, TwoTimeScaleModel)


def _kinds(*kinds: Kind) -> dict[str, Kind]:
    return {k.name: k for k in kinds}


def _two_time_scale(name: str, table: str = SEQUENCES, rows: Rows = Rows(), **options) -> Kind:
    """A kind of the 2TS family: stage 2 on stage 1 reading `table`, or with single_stage one stage from scratch."""
    opts = TwoTimeScaleOptions(**options)
    if opts.single_stage:
        return Kind(name, TwoTimeScaleModel, _one_stage(partial(build_single_stage, options=opts), table), opts,
                    rows)
    return Kind(name, TwoTimeScaleModel, (STAGE1, StagePlan("stage2", table,
                                                            partial(build_two_time_scale, options=opts))), opts,
                rows)


# In the order of the paper's tables (the comparison reports them so).
KINDS: dict[str, Kind] = _kinds(
    Kind("popularity", Popularity, ()),
    Kind("ccf", Stage1Model, (STAGE1,)),
    Kind("sumpooling", SumPooling, _one_stage(partial(build_baseline, kind="sumpooling"))),
    Kind("gru4rec", GRU4Rec, _one_stage(partial(build_baseline, kind="gru4rec"))),
    Kind("sasrec", SASRec, _one_stage(partial(build_baseline, kind="sasrec"))),
    _two_time_scale("2gru", start="learned"),
    _two_time_scale("2ts-singlestage", FULL_HISTORIES, single_stage=True),
    _two_time_scale("2ts"),
    _two_time_scale("2ts-plus", plus=True),
    _two_time_scale("2ts-plus-gw", plus=True, mix="per_group"),
    _two_time_scale("2ts-coldstart-all", COLDSTART_SEQUENCES),
    _two_time_scale("2ts-tuned-items", items="finetune"),
    _two_time_scale("2ts-singlestage-k", single_stage=True),
    _two_time_scale("2ts-oos", COLDSTART_SEQUENCES, rows=Rows(last_k=40, held_out=True), items="finetune"),
)
TRAINABLE = tuple(name for name, kind in KINDS.items() if kind.stages)


def parts_without_data(name: str, n_active: int, n_inactive: int) -> list[str]:
    """What of kind `name` gets no training rows when a user group is empty (n_active, n_inactive: users with
    training events, by the t* of the folder it trains on): the 2TS family's two GRUs and the starts they run from."""
    kind = KINDS[name]
    if kind.options is None:
        return []
    parts = []
    if n_active == 0:
        start = "; no user starts from phi" if kind.options.start == "phi" else ""
        parts.append(f"{name}: no active users (none has more than t* training events): the active GRU gets no "
                     f"training rows{start}")
    if n_inactive == 0 and kind.stages[-1].table != COLDSTART_SEQUENCES:
        parts.append(f"{name}: no inactive users: psi and the inactive GRU get no training rows, and new users start "
                     "from the untrained psi")
    return parts

# ---- saved models ---------------------------------------------------------------------------------------------------

_CLASSES: dict[str, type[SequentialRecommender]] = {k.model_class.__name__: k.model_class for k in KINDS.values()}
# Files saved before the tag named the class carried the recipe's name.
_LEGACY_TAGS = {"ccf": "Stage1Model", "2ts": "TwoTimeScaleModel", "popularity": "Popularity",
                "sumpooling": "SumPooling", "gru4rec": "GRU4Rec", "sasrec": "SASRec"}


def register_model_class(cls: type[SequentialRecommender]) -> None:
    """Make save_model/load_model know a model class outside KINDS; its constructor must accept its own `hparams`."""
    if _CLASSES.get(cls.__name__, cls) is not cls:
        raise ValueError(f"another model class named {cls.__name__} is already registered")
    _CLASSES[cls.__name__] = cls


def save_model(path: str | Path, model: SequentialRecommender) -> None:
    """One torch.save file {"class", "hparams", "state_dict"} (docs/design.md): tensors and plain values only, so it
    loads with weights_only=True."""
    name = type(model).__name__
    if _CLASSES.get(name) is not type(model):
        raise ValueError(f"{name} is not a registered model class; call register_model_class first")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"class": name, "hparams": model.hparams, "state_dict": model.state_dict()}, path)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> SequentialRecommender:
    """Rebuild a saved model (in eval mode) from its class and hparams, then load its weights and buffers."""
    saved = torch.load(path, map_location=map_location, weights_only=True)
    name = saved["class"] if "class" in saved else _LEGACY_TAGS.get(saved.get("kind"), saved.get("kind"))
    cls = _CLASSES.get(name)
    if cls is None:
        raise ValueError(f"{path}: unknown model class {name!r} (known: {sorted(_CLASSES)})")
    model = cls(**_current_hparams(name, saved["hparams"]))
    model.load_state_dict(saved["state_dict"])
    return model.to(map_location).eval()


def _current_hparams(name: str, hparams: dict) -> dict:
    """Files saved before TwoTimeScaleModel took one options record carry its five flags instead."""
    flags = ("plus", "use_phi", "freeze_stage1", "group_mix", "train_items")
    if name != "TwoTimeScaleModel" or "options" in hparams:
        return hparams
    old = {k: hparams[k] for k in flags if k in hparams}
    options = {"plus": old.get("plus", False), "start": "phi" if old.get("use_phi", True) else "learned",
               "single_stage": not old.get("freeze_stage1", True),
               "mix": "per_group" if old.get("group_mix", False) else "shared",
               "items": "finetune" if old.get("train_items", False) else "frozen"}
    return {**{k: v for k, v in hparams.items() if k not in flags}, "options": options}

"""Online evaluation of a trained model on the prepared tables (paper section 5).

`evaluate(model, data_dir, spark)` reads `sequences` (each user's warm-up items), `user_activity` and the val/test
rows of `eval_candidates` from their Delta snapshots' files into arrays, batch by batch (`load_arrays`; callers
replaying many models on one folder load them once and call `evaluate_loaded`), replays val then test in time order
through `twots.evaluation.replay`
(score the 1 + 499 candidates with the user's current state, then feed the true item), and summarizes the ranks
with `twots.evaluation.metrics` per split: overall, active / inactive / new users, per activity bucket, and repeat
clicks (an item the user clicked before) apart from first clicks. It also
returns the per-step embedding changes of the test replay (the paper's Fig. 4).

Beside the paper's sampled metrics, the events of `full_splits` of a sample of users (all users when the model is on
a GPU) are ranked against the whole catalogue in the same replay (FullRankingConfig): full_mrr, full_recall@10,
full_ndcg@10 and full_count in each group's metrics.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field, field_validator

from twots.config import Section
from twots.data.snapshot import read_snapshot
from twots.data.tables import EVAL_CANDIDATES, INTERACTIONS, SEQUENCES, USER_ACTIVITY
from twots.evaluation import metrics
from twots.evaluation.replay import Events, History, Warmup, full_batch_for, model_device, replay

SPLITS = ("val", "test")


def known_splits(splits) -> list[str]:
    """`splits` if each is one the evaluation replays, else ValueError naming the others."""
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown splits {unknown}; evaluation replays {SPLITS}")
    return list(splits)


class FullRankingConfig(Section):
    """Full-ranking metrics: which replayed events are also ranked against the whole catalogue, and how."""

    full_users: int | None = Field(1000, ge=0, description="users whose events are ranked against the whole "
                                   "catalogue on CPU, sampled by full_seed (0: none, None: all); on a GPU all "
                                   "users unless 0")
    full_splits: list[str] = Field(["test"], description="splits whose events are ranked against the catalogue")
    exclude_seen: bool = Field(False, description="leave the items a user clicked before the event (training and "
                               "earlier replayed events) out of its full ranking; off: repeat clicks are real")
    full_memory_mb: float = Field(512, gt=0, description="memory of one full-ranking chunk of users "
                                  "(users per chunk = this / (n_items x 6 bytes))")
    full_seed: int = Field(0, description="seed of the full-ranking user sample")

    _full_splits_known = field_validator("full_splits")(known_splits)


class ReplaySettings(FullRankingConfig):
    """How a trained model is replayed on val/test: the `evaluate:` section, for jobs/evaluate.py and for the
    evaluation at the end of training."""

    splits: list[str] = Field(list(SPLITS), min_length=1, description="splits replayed, in this order of time")
    batch_users: int = Field(1024, ge=1, description="users scored per call")
    threads: int = Field(1, ge=1, description="torch threads of the replay")

    _splits_known = field_validator("splits")(known_splits)


class EvaluateConfig(ReplaySettings):
    """Evaluate a model logged to MLflow on the val/test rows of the prepared tables, and log the metrics."""

    data: str = Field(description="folder of the prepared Delta tables (prepare's --output)")
    run_id: str = Field(description="MLflow run holding the model")
    model_name: str = Field("model", description="the model's name inside the run")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///<data>/mlflow.db")


@dataclass
class EvalData:
    """A folder's replay inputs as arrays: warm-up items, the events of some splits with each event's split, and
    user_activity (n_train, is_active) indexed by user id; is_repeat per event (None from a folder prepared before
    eval_candidates had it)."""

    warmup: Warmup
    events: Events
    split: np.ndarray
    activity: dict[str, np.ndarray]
    is_repeat: np.ndarray | None = None

    def only(self, splits) -> EvalData:
        """The same data restricted to the events of `splits`."""
        missing = set(splits) - set(self.split)
        if missing:
            raise ValueError(f"no events of splits {sorted(missing)} were loaded")
        keep = np.isin(self.split, list(splits))
        return EvalData(self.warmup, self.events.subset(keep), self.split[keep], self.activity,
                        None if self.is_repeat is None else self.is_repeat[keep])


@dataclass(frozen=True)
class ValMRR:
    """The trainer's per-epoch check in tuning (twots.training.runs.StageJob.val_check): the overall MRR of the val
    replay of the EvalData pickled at `path` (written once by `write`, read once per process)."""

    path: str

    @classmethod
    def write(cls, data: EvalData, path: str | Path) -> ValMRR:
        import pickle

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(data.only(("val",)), f, protocol=pickle.HIGHEST_PROTOCOL)
        return cls(str(path))

    def __call__(self, model) -> float:
        return evaluate_loaded(model, _val_data(self.path), ("val",))["metrics"]["val"]["overall"]["mrr"]


@functools.cache
def _val_data(path: str) -> EvalData:
    import pickle

    with open(path, "rb") as f:
        return pickle.load(f)


def load_arrays(data_dir: str | Path, spark, splits=SPLITS) -> EvalData:
    """Warm-up items, the events of `splits`, the split of each event and user_activity as arrays by user id.

    The tables are read from their Delta snapshots' Parquet files in Arrow batches by this Python process
    (`read_snapshot`), never collected through the driver JVM: eval_candidates holds 1 + C ids per event, which
    outgrows the driver's default 1 GB heap long before it outgrows this process (146k events x 500 ids did).
    """
    import pyarrow.dataset as ds

    known_splits(splits)
    warm = read_snapshot(spark, data_dir, SEQUENCES, ("user_id", "is_active", "item_ids"))
    warmup = Warmup(warm["user_id"], warm["is_active"], warm["item_ids"])
    rows = read_snapshot(spark, data_dir, EVAL_CANDIDATES,
                         ("user_id", "ts", "event_id", "item_id", "split", "neg_item_ids"),
                         ds.field("split").isin(list(splits)), optional=("is_repeat",))
    if "is_repeat" not in rows:
        print(f"[evaluate] {data_dir}/eval_candidates has no is_repeat column (prepared by an older version): no "
              "repeat / first-click metrics; rerun jobs/prepare.py for them", flush=True)
    if len(rows["user_id"]) == 0:
        raise ValueError(f"{data_dir}/eval_candidates has no rows in splits {list(splits)}")
    events = Events(rows["user_id"], rows["ts"], rows["event_id"], rows["item_id"], rows["neg_item_ids"])
    act = read_snapshot(spark, data_dir, USER_ACTIVITY, ("user_id", "n_train", "is_active"))
    activity = {"n_train": np.zeros(int(act["user_id"].max()) + 1, dtype=np.int64)}
    activity["is_active"] = np.zeros_like(activity["n_train"], dtype=bool)
    activity["n_train"][act["user_id"]] = act["n_train"]
    activity["is_active"][act["user_id"]] = act["is_active"]
    return EvalData(warmup, events, rows["split"].astype(str), activity,
                    rows["is_repeat"].astype(bool) if "is_repeat" in rows else None)


def load_history(data_dir: str | Path, spark) -> History:
    """Every user's training clicks (interactions of split 'train'): what exclude_seen leaves out."""
    import pyarrow.dataset as ds

    rows = read_snapshot(spark, data_dir, INTERACTIONS, ("user_id", "item_id"), ds.field("split") == "train")
    return History(rows["user_id"], rows["item_id"])


def full_ranked(events: Events, split: np.ndarray, full: FullRankingConfig, on_gpu: bool) -> np.ndarray:
    """[N] bool: the events ranked against the whole catalogue, those of full_splits of the sampled users."""
    in_splits = np.isin(split, full.full_splits) & (full.full_users != 0)
    users = np.unique(events.user_id[in_splits])
    if not on_gpu and full.full_users is not None and full.full_users < len(users):
        users = np.random.default_rng(full.full_seed).choice(users, full.full_users, replace=False)
    return in_splits & np.isin(events.user_id, users)


def evaluate(model, data_dir: str | Path, spark, settings: ReplaySettings | None = None) -> dict:
    """Replay the splits of the prepared folder `data_dir` in time order through `model` (see evaluate_loaded), as
    `settings` say (default ReplaySettings())."""
    settings = ReplaySettings() if settings is None else settings
    splits = tuple(settings.splits)
    return evaluate_loaded(model, load_arrays(data_dir, spark, splits), splits, batch_users=settings.batch_users,
                           threads=settings.threads, full=settings,
                           history=load_history(data_dir, spark) if settings.exclude_seen else None)


def evaluate_loaded(model, data: EvalData, splits=SPLITS, *, batch_users: int = 1024, threads: int = 1,
                    full: FullRankingConfig | None = None, history: History | None = None) -> dict:
    """Replay the events of `splits` in time order through `model`; returns {"metrics": {split: summary},
    "changes": Fig. 4 records of the last split, "events", "seconds", "events_per_s", "full": what was ranked
    against the whole catalogue and how long it took}. `full`: default FullRankingConfig(); with its exclude_seen,
    `history` is load_history's.

    `threads`: torch threads during the replay. Its rounds are many small ops; on a busy CPU more than one thread
    spins in OpenMP barriers, so 1 is the default.
    """
    full = FullRankingConfig() if full is None else full
    if full.exclude_seen and history is None:
        raise ValueError("exclude_seen needs the users' training items: pass history=load_history(data_dir, spark)")
    data = data.only(splits)
    events, split, activity = data.events, data.split, data.activity
    ranked = full_ranked(events, split, full, on_gpu=model_device(model).type == "cuda")
    n_items = model.hparams["n_items"]
    full_batch = full_batch_for(n_items, full.full_memory_mb)
    print(f"[evaluate] replaying {len(events):,} events of {len(np.unique(events.user_id)):,} users "
          f"({', '.join(splits)}); {ranked.sum():,} events of {len(np.unique(events.user_id[ranked])):,} users "
          f"also ranked against all {n_items:,} items, {full_batch} users at a time"
          + (", clicked items excluded" if full.exclude_seen else ""), flush=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        result = replay(model, data.warmup, events, batch_users=batch_users, full=ranked, full_batch=full_batch,
                        exclude=history if full.exclude_seen else None)
    finally:
        torch.set_num_threads(previous_threads)
    seconds = time.perf_counter() - started
    n_train = activity["n_train"][events.user_id]
    is_active = activity["is_active"][events.user_id]
    summaries = {}
    for name in splits:
        mask = split == name
        summaries[name] = metrics.summarize(result.rank[mask], n_train[mask], is_active[mask], result.is_new[mask],
                                            full_ranks=result.full_rank[mask],
                                            is_repeat=None if data.is_repeat is None else data.is_repeat[mask],
                                            steps=result.steps[mask], gate=result.gate[mask])
    last = split == splits[-1]
    overall = summaries[splits[-1]]["overall"]
    print(f"[evaluate] {len(events):,} events in {seconds:.1f}s ({len(events) / seconds:,.0f} events/s, full "
          f"ranking {result.full_seconds:.1f}s); {splits[-1]} MRR {overall['mrr']:.4f}"
          + (f", full-ranking MRR {overall['full_mrr']:.4f}" if overall["full_count"] else ""), flush=True)
    return {"metrics": summaries, "changes": result.change_records(last), "state_norms": result.norms,
            "events": len(events),
            "seconds": seconds, "events_per_s": len(events) / seconds,
            "full": {"users": len(np.unique(events.user_id[ranked])), "events": int(ranked.sum()),
                     "seconds": result.full_seconds, "exclude_seen": full.exclude_seen, "n_items": n_items}}

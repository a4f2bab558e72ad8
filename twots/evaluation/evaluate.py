"""Online evaluation of a trained model on the prepared tables (paper section 5).

`evaluate(model, data_dir, spark)` reads `sequences` (each user's warm-up items), `user_activity` and the val/test
rows of `eval_candidates` from Delta into arrays (`load_arrays`; callers replaying many models on one folder load them
once and call `evaluate_loaded`), replays val then test in time order through `twots.evaluation.replay`
(score the 1 + 499 candidates with the user's current state, then feed the true item), and summarizes the ranks
with `twots.evaluation.metrics` per split: overall, active / inactive / new users and per activity bucket. It also
returns the per-step embedding changes of the test replay (the paper's Fig. 4).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field

from twots.config import Section
from twots.data.tables import EVAL_CANDIDATES, SEQUENCES, USER_ACTIVITY
from twots.evaluation import metrics
from twots.evaluation.replay import Events, Warmup, replay
from twots.training.loaders import arrow_columns, fixed_shape

SPLITS = ("val", "test")


class EvaluateConfig(Section):
    """Evaluate a model logged to MLflow on the val/test rows of the prepared tables, and log the metrics."""

    data: str = Field(description="folder of the prepared Delta tables (prepare's --output)")
    run_id: str = Field(description="MLflow run holding the model")
    model_name: str = Field("model", description="the model's name inside the run")
    splits: list[str] = Field(list(SPLITS), min_length=1, description="splits replayed, in this order of time")
    batch_users: int = Field(1024, ge=1, description="users scored per call")
    threads: int = Field(1, ge=1, description="torch threads of the replay")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///<data>/mlflow.db")


def read_delta(spark, data_dir: str | Path, table: str):
    path = Path(data_dir) / table
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {data_dir} the output of jobs/prepare.py?")
    return spark.read.format("delta").load(str(path))


@dataclass
class EvalData:
    """A folder's replay inputs as arrays: warm-up items, the events of some splits with each event's split, and
    user_activity (n_train, is_active) indexed by user id."""

    warmup: Warmup
    events: Events
    split: np.ndarray
    activity: dict[str, np.ndarray]

    def only(self, splits) -> EvalData:
        """The same data restricted to the events of `splits`."""
        missing = set(splits) - set(self.split)
        if missing:
            raise ValueError(f"no events of splits {sorted(missing)} were loaded")
        keep = np.isin(self.split, list(splits))
        return EvalData(self.warmup, self.events.subset(keep), self.split[keep], self.activity)


def load_arrays(data_dir: str | Path, spark, splits=SPLITS) -> EvalData:
    """Warm-up items, the events of `splits`, the split of each event and user_activity as arrays by user id."""
    from pyspark.sql import functions as F

    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; evaluation replays {SPLITS}")
    sequences, _ = fixed_shape(read_delta(spark, data_dir, SEQUENCES), SEQUENCES)
    warm = arrow_columns(sequences.select("user_id", "is_active", "item_ids").toArrow())
    warmup = Warmup(warm["user_id"], warm["is_active"], warm["item_ids"])
    rows = arrow_columns(read_delta(spark, data_dir, EVAL_CANDIDATES).where(F.col("split").isin(list(splits)))
                         .select("user_id", "ts", "event_id", "item_id", "split", "neg_item_ids").toArrow())
    if len(rows["user_id"]) == 0:
        raise ValueError(f"{data_dir}/eval_candidates has no rows in splits {list(splits)}")
    events = Events(rows["user_id"], rows["ts"], rows["event_id"], rows["item_id"], rows["neg_item_ids"])
    act = arrow_columns(read_delta(spark, data_dir, USER_ACTIVITY).select("user_id", "n_train", "is_active")
                        .toArrow())
    activity = {"n_train": np.zeros(int(act["user_id"].max()) + 1, dtype=np.int64)}
    activity["is_active"] = np.zeros_like(activity["n_train"], dtype=bool)
    activity["n_train"][act["user_id"]] = act["n_train"]
    activity["is_active"][act["user_id"]] = act["is_active"]
    return EvalData(warmup, events, rows["split"].astype(str), activity)


def evaluate(model, data_dir: str | Path, spark, splits=SPLITS, *, batch_users: int = 1024, threads: int = 1) -> dict:
    """Replay `splits` of the prepared folder `data_dir` in time order through `model` (see evaluate_loaded)."""
    return evaluate_loaded(model, load_arrays(data_dir, spark, splits), tuple(splits), batch_users=batch_users,
                           threads=threads)


def evaluate_loaded(model, data: EvalData, splits=SPLITS, *, batch_users: int = 1024, threads: int = 1) -> dict:
    """Replay the events of `splits` in time order through `model`; returns {"metrics": {split: summary},
    "changes": Fig. 4 records of the last split, "events", "seconds", "events_per_s"}.

    `threads`: torch threads during the replay. Its rounds are many small ops; on a shared CPU more than one
    thread spins in OpenMP barriers (measured 30x slower with 2 threads than 1 on the 2-core box under load).
    """
    data = data.only(splits)
    events, split, activity = data.events, data.split, data.activity
    print(f"[evaluate] replaying {len(events):,} events of {len(np.unique(events.user_id)):,} users "
          f"({', '.join(splits)})", flush=True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    started = time.perf_counter()
    try:
        result = replay(model, data.warmup, events, batch_users=batch_users)
    finally:
        torch.set_num_threads(previous_threads)
    seconds = time.perf_counter() - started
    n_train = activity["n_train"][events.user_id]
    is_active = activity["is_active"][events.user_id]
    summaries = {}
    for name in splits:
        mask = split == name
        summaries[name] = metrics.summarize(result.rank[mask], n_train[mask], is_active[mask], result.is_new[mask])
    last = split == splits[-1]
    print(f"[evaluate] {len(events):,} events in {seconds:.1f}s ({len(events) / seconds:,.0f} events/s); "
          f"{splits[-1]} MRR {summaries[splits[-1]]['overall']['mrr']:.4f}", flush=True)
    return {"metrics": summaries, "changes": result.change_records(last), "events": len(events),
            "seconds": seconds, "events_per_s": len(events) / seconds}


def evaluate_logged(cfg: EvaluateConfig, spark) -> dict:
    """Evaluate the model logged in MLflow run `cfg.run_id` and log the metrics and Fig. 4 to that run."""
    import mlflow

    from twots.mlops.tracking import default_tracking_uri, log_evaluation

    mlflow.set_tracking_uri(cfg.tracking_uri or default_tracking_uri(cfg.data))
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{cfg.run_id}/{cfg.model_name}")
    report = evaluate(pyfunc.unwrap_python_model().model, cfg.data, spark, tuple(cfg.splits),
                      batch_users=cfg.batch_users, threads=cfg.threads)
    with mlflow.start_run(run_id=cfg.run_id), tempfile.TemporaryDirectory() as tmp:
        log_evaluation(report, Path(tmp))
    return report

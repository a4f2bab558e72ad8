"""twots.evaluation.evaluate on the pipeline's real Delta tables (prepared_movielens: 99 negatives per event)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F

from twots.evaluation.evaluate import evaluate, evaluate_loaded, load_arrays
from twots.models.two_time_scale import Stage1Model, TwoTimeScaleModel


@pytest.fixture(scope="module")
def blind_model(prepared_movielens) -> TwoTimeScaleModel:
    """A 2TS model whose item vectors are all zero: every candidate ties, so every rank is 1 + 99/2."""
    manifest = json.loads((prepared_movielens / "manifest.json").read_text())
    stage1 = Stage1Model(manifest["n_users"], manifest["n_items"], item_dim=8, feature_dim=4)
    with torch.no_grad():
        for p in stage1.parameters():
            p.zero_()
    return TwoTimeScaleModel.from_stage1(stage1)


def test_evaluate_replays_val_then_test_and_groups_events(spark, prepared_movielens, blind_model):
    report = evaluate(blind_model, prepared_movielens, spark, batch_users=64)
    candidates = spark.read.format("delta").load(str(prepared_movielens / "eval_candidates"))
    activity = spark.read.format("delta").load(str(prepared_movielens / "user_activity"))
    per_split = {r["split"]: r["count"] for r in candidates.groupBy("split").count().collect()}
    assert report["events"] == per_split["val"] + per_split["test"]

    test = report["metrics"]["test"]
    assert test["overall"]["count"] == per_split["test"]
    assert test["overall"]["mrr"] == pytest.approx(1 / 50.5)
    assert test["overall"]["recall@10"] == 0.0
    # Group and bucket counts, counted independently with Spark.
    joined = candidates.where("split = 'test'").join(activity, "user_id")
    groups = joined.agg(F.sum(F.col("is_active").cast("int")).alias("active"),
                        F.sum((F.col("n_train") == 0).cast("int")).alias("new"),
                        F.sum(((F.col("n_train") > 100) & (F.col("n_train") <= 200)).cast("int")).alias("b")).first()
    assert test["active"]["count"] == groups["active"]
    assert test["new"]["count"] == groups["new"]
    assert test["buckets"]["101-200"]["count"] == groups["b"]
    assert sum(b["count"] for b in test["buckets"].values()) == test["overall"]["count"]

    # Fig. 4 records cover the test events, and a user's first test step comes after all of their val events.
    changes = report["changes"]
    assert len(changes["step"]) == per_split["test"]
    assert np.all(changes["change"] >= 0) and changes["change"].max() > 0
    first_test_step = int(changes["step"].min())
    val_counts = candidates.where("split = 'val'").groupBy("user_id").count()
    test_users = candidates.where("split = 'test'").select("user_id").distinct()
    fewest_val = test_users.join(val_counts, "user_id", "left").fillna(0).agg(F.min("count")).first()[0]
    assert first_test_step == fewest_val + 1


def test_unknown_split_is_an_error(spark, prepared_movielens, blind_model):
    with pytest.raises(ValueError, match="unknown splits"):
        evaluate(blind_model, prepared_movielens, spark, splits=("train",))


def test_arrays_loaded_once_replay_like_a_fresh_read(spark, prepared_movielens):
    """compare loads val + test once and replays val alone per checkpoint: same ranks as reading val alone."""
    manifest = json.loads((prepared_movielens / "manifest.json").read_text())
    torch.manual_seed(0)
    model = TwoTimeScaleModel.from_stage1(Stage1Model(manifest["n_users"], manifest["n_items"], item_dim=8,
                                                      feature_dim=4))
    loaded = load_arrays(prepared_movielens, spark)
    from_loaded = evaluate_loaded(model, loaded, ("val",), batch_users=64)
    fresh = evaluate(model, prepared_movielens, spark, splits=("val",), batch_users=64)
    assert from_loaded["events"] == fresh["events"] == int((loaded.split == "val").sum())
    assert from_loaded["metrics"] == fresh["metrics"]
    assert 0 < fresh["metrics"]["val"]["overall"]["mrr"] != pytest.approx(1 / 50.5)  # real scores, not all ties
    with pytest.raises(ValueError, match="no events of splits"):
        evaluate_loaded(model, loaded.only(("val",)), ("test",))

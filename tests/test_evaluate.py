"""twots.evaluation.evaluate on the pipeline's real Delta tables (small_movielens: 99 negatives per event)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F

from pipelines.views import make_view
from twots.config import ConfigError, resolve
from twots.evaluation.evaluate import (
    EvaluateConfig,
    FullRankingConfig,
    ReplaySettings,
    evaluate,
    evaluate_loaded,
    full_ranked,
    load_arrays,
    load_history,
)
from twots.evaluation.metrics import BUCKETS
from twots.models.stage1 import Stage1Model
from twots.models.two_time_scale import TwoTimeScaleModel


@pytest.fixture(scope="module")
def blind_model(small_movielens) -> TwoTimeScaleModel:
    """A 2TS model whose item vectors are all zero: every candidate ties, so every rank is 1 + 99/2."""
    manifest = json.loads((small_movielens / "manifest.json").read_text())
    stage1 = Stage1Model(manifest["n_users"], manifest["n_items"], item_dim=8, feature_dim=4)
    with torch.no_grad():
        for p in stage1.parameters():
            p.zero_()
    return TwoTimeScaleModel.from_stage1(stage1)


def test_evaluate_replays_val_then_test_and_groups_events(spark, small_movielens, blind_model):
    report = evaluate(blind_model, small_movielens, spark, ReplaySettings(batch_users=64))
    candidates = spark.read.format("delta").load(str(small_movielens / "eval_candidates"))
    activity = spark.read.format("delta").load(str(small_movielens / "user_activity"))
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
    # MovieLens holds one rating per (user, film): no repeat clicks, every event a first click.
    assert test["repeat"]["count"] == candidates.where("split = 'test' AND is_repeat").count() == 0
    assert test["first_click"]["count"] == test["overall"]["count"]

    # Fig. 4 records cover the test events, and a user's first test step comes after all of their val events.
    changes = report["changes"]
    assert len(changes["step"]) == per_split["test"]
    assert np.all(changes["change"] >= 0) and changes["change"].max() > 0
    first_test_step = int(changes["step"].min())
    val_counts = candidates.where("split = 'val'").groupBy("user_id").count()
    test_users = candidates.where("split = 'test'").select("user_id").distinct()
    fewest_val = test_users.join(val_counts, "user_id", "left").fillna(0).agg(F.min("count")).first()[0]
    assert first_test_step == fewest_val + 1

    # Diagnostics, counted by hand: a test event's place in its user's rollout is the user's warm-up items
    # (`sequences`) + its place among the user's val and test events in time order.
    events = candidates.select("user_id", "ts", "event_id", "split").toPandas()
    warm = spark.read.format("delta").load(str(small_movielens / "sequences")).select(
        "user_id", F.size("item_ids").alias("warm")).toPandas()
    events = events.merge(warm, on="user_id", how="left").fillna({"warm": 0}).sort_values(["ts", "event_id"])
    events["place"] = events["warm"] + events.groupby("user_id").cumcount() + 1
    events = events.merge(activity.select("user_id", "is_active").toPandas(), on="user_id")
    tested = events[events["split"] == "test"]
    for label, lo, hi in (("1-10", 1, 10), ("21-50", 21, 50), (">50", 51, 10**9)):
        inside = tested["place"].between(lo, hi)
        assert test["by_steps"]["overall"][label]["count"] == inside.sum()
        assert test["by_steps"]["active"][label]["count"] == (inside & tested["is_active"]).sum()
    assert 0 < test["gate"]["active"] < 1 and 0 < test["gate"]["new"] < 1  # the GRUs' update gates
    # phi is all zero; the GRU's biases move the state over the warm-up though every item vector is zero.
    assert report["state_norms"]["active"]["start"] == 0.0 < report["state_norms"]["active"]["warmed"]


def test_a_folder_prepared_before_is_repeat_evaluates_without_it(spark, small_movielens, blind_model, tmp_path,
                                                                 capsys):
    old = spark.read.format("delta").load(str(small_movielens / "eval_candidates")).drop("is_repeat")
    view = make_view(spark, small_movielens, tmp_path / "old", {"eval_candidates": old})
    test = evaluate(blind_model, view, spark, ReplaySettings(splits=["test"]))["metrics"]["test"]
    assert "repeat" not in test and "first_click" not in test
    assert test["overall"]["count"] == old.where("split = 'test'").count()
    assert "no is_repeat column" in capsys.readouterr().out


def test_unknown_split_is_an_error(spark, small_movielens, blind_model):
    with pytest.raises(ValueError, match="unknown splits"):
        ReplaySettings(splits=["train"])
    with pytest.raises(ValueError, match="unknown splits"):
        load_arrays(small_movielens, spark, ("train",))


def test_arrays_loaded_once_replay_like_a_fresh_read(spark, small_movielens):
    """compare loads val + test once and replays val alone per checkpoint: same ranks as reading val alone."""
    manifest = json.loads((small_movielens / "manifest.json").read_text())
    torch.manual_seed(0)
    model = TwoTimeScaleModel.from_stage1(Stage1Model(manifest["n_users"], manifest["n_items"], item_dim=8,
                                                      feature_dim=4))
    loaded = load_arrays(small_movielens, spark)
    from_loaded = evaluate_loaded(model, loaded, ("val",), batch_users=64)
    fresh = evaluate(model, small_movielens, spark, ReplaySettings(splits=["val"], batch_users=64))
    assert from_loaded["events"] == fresh["events"] == int((loaded.split == "val").sum())
    assert from_loaded["metrics"] == fresh["metrics"]
    assert 0 < fresh["metrics"]["val"]["overall"]["mrr"] != pytest.approx(1 / 50.5)  # real scores, not all ties
    with pytest.raises(ValueError, match="no events of splits"):
        evaluate_loaded(model, loaded.only(("val",)), ("test",))


@pytest.fixture(scope="module")
def integer_ccf(small_movielens) -> Stage1Model:
    """A random CCF model with small integer phi and item vectors and zero feature vectors: every score is an exact
    integer, so ties are many and a float64 brute force must agree to the last bit. Every user is known (its own
    random phi, new users included)."""
    manifest = json.loads((small_movielens / "manifest.json").read_text())
    model = Stage1Model(manifest["n_users"], manifest["n_items"], n_features=manifest["n_features"],
                        max_features=manifest["max_features_per_item"], item_dim=8, feature_dim=4)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        model.items.item.weight.copy_(torch.randint(-2, 3, model.items.item.weight.shape, generator=generator))
        model.items.feature.weight.zero_()
        model.phi.weight.copy_(torch.randint(-2, 3, model.phi.weight.shape, generator=generator))
    model.items.features_set = True
    model.set_known_users(torch.ones(manifest["n_users"], dtype=torch.bool))
    return model.eval()


@pytest.fixture(scope="module")
def brute_force(spark, small_movielens, integer_ccf) -> dict:
    """Independent of the replay: each test event's rank among every item, by numpy over the Delta tables, kept or
    with the items clicked before (training, then val/test events in (ts, event_id) order) left out."""
    def read(table):
        return spark.read.format("delta").load(str(small_movielens / table))

    events = read("eval_candidates").select("user_id", "ts", "event_id", "item_id", "split").toPandas()
    events = events.sort_values(["user_id", "ts", "event_id"]).reset_index(drop=True)
    train = read("interactions").where("split = 'train'").select("user_id", "item_id").toPandas()
    activity = read("user_activity").select("user_id", "n_train", "is_active").toPandas().set_index("user_id")
    with torch.no_grad():
        items = integer_ccf.items(torch.arange(integer_ccf.hparams["n_items"])).double().numpy()
        phi = integer_ccf.phi.weight.double().numpy()
    seen_in_training = train.groupby("user_id")["item_id"].agg(set).to_dict()
    ranks = {"kept": [], "excluded": []}
    for user, rows in events.groupby("user_id", sort=False):
        scores = items @ phi[user]
        seen = set(seen_in_training.get(user, ()))
        for item, split in zip(rows["item_id"], rows["split"]):
            if split == "test":
                higher, ties = scores > scores[item], scores == scores[item]
                ties[item] = False
                left_out = np.zeros(len(scores), bool)
                left_out[list(seen - {item})] = True
                ranks["kept"].append(1 + higher.sum() + ties.sum() / 2)
                ranks["excluded"].append(1 + (higher & ~left_out).sum() + (ties & ~left_out).sum() / 2)
            seen.add(item)
    test = events[events["split"] == "test"].reset_index(drop=True)
    test["n_train"] = activity["n_train"].reindex(test["user_id"]).to_numpy()
    test["is_active"] = activity["is_active"].reindex(test["user_id"]).to_numpy()
    return {"test": test, **{k: np.array(v) for k, v in ranks.items()}}


def by_hand(ranks: np.ndarray) -> dict:
    top = ranks <= 10
    return {"full_mrr": np.mean(1 / ranks), "full_recall@10": np.mean(top),
            "full_ndcg@10": np.mean(np.where(top, 1 / np.log2(ranks + 1), 0))}


def assert_full_metrics(summary: dict, test, ranks: np.ndarray, chosen: np.ndarray) -> None:
    """The full-ranking metrics of every group and bucket equal the brute force's over the `chosen` test events."""
    groups = {"overall": np.ones(len(test), bool), "active": test["is_active"].to_numpy(),
              "inactive": ~test["is_active"].to_numpy() & (test["n_train"] > 0).to_numpy(),
              "new": (test["n_train"] == 0).to_numpy()}
    masks = dict(groups)
    for label, lo, hi in BUCKETS:
        masks[label] = ((test["n_train"] >= lo) & (test["n_train"] <= hi)).to_numpy()
    got = {**{g: summary[g] for g in groups}, **summary["buckets"]}
    for group, mask in masks.items():
        assert got[group]["full_count"] == (mask & chosen).sum(), group
        if (mask & chosen).any():
            want = by_hand(ranks[mask & chosen])
            for name in ("full_mrr", "full_recall@10", "full_ndcg@10"):
                assert got[group][name] == pytest.approx(want[name], rel=1e-12), (group, name)


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_full_ranking_of_every_user_matches_a_brute_force(spark, small_movielens, integer_ccf, brute_force,
                                                           exclude_seen):
    full = ReplaySettings(full_users=None, exclude_seen=exclude_seen, full_memory_mb=4,  # chunks of 70 users
                          batch_users=256)
    report = evaluate(integer_ccf, small_movielens, spark, full)
    test = brute_force["test"]
    ranks = brute_force["excluded" if exclude_seen else "kept"]
    assert_full_metrics(report["metrics"]["test"], test, ranks, np.ones(len(test), bool))
    assert report["full"]["users"] == test["user_id"].nunique() and report["full"]["events"] == len(test)
    assert report["full"]["exclude_seen"] is exclude_seen and report["full"]["seconds"] > 0
    # val is replayed (its clicks are excluded later) but not ranked against the catalogue by default.
    assert report["metrics"]["val"]["overall"]["full_count"] == 0 and report["metrics"]["val"]["overall"]["count"]
    # A MovieLens user rates a movie once, so no positive was clicked before; leaving clicks out lowers most ranks.
    assert np.mean(brute_force["excluded"] < brute_force["kept"]) > 0.5


def test_full_ranking_of_a_user_sample(spark, small_movielens, integer_ccf, brute_force):
    loaded = load_arrays(small_movielens, spark)
    full = FullRankingConfig(full_users=40, full_seed=3, exclude_seen=True)
    test_only = loaded.only(("test",))
    chosen = full_ranked(test_only.events, test_only.split, full, on_gpu=False)
    users = np.unique(test_only.events.user_id[chosen])
    assert len(users) == 40 and np.array_equal(chosen, np.isin(test_only.events.user_id, users))
    assert np.array_equal(chosen, full_ranked(test_only.events, test_only.split, full, on_gpu=False))  # by seed
    assert full_ranked(test_only.events, test_only.split, full, on_gpu=True).all()  # a GPU ranks every user
    off = full.model_copy(update={"full_users": 0})
    assert not full_ranked(test_only.events, test_only.split, off, on_gpu=True).any()
    report = evaluate_loaded(integer_ccf, loaded, ("val", "test"), full=full,
                             history=load_history(small_movielens, spark))
    test = brute_force["test"]
    sampled = test["user_id"].isin(users).to_numpy()
    assert_full_metrics(report["metrics"]["test"], test, brute_force["excluded"], sampled)
    # The sampled metrics cover every test event whatever the full-ranking sample.
    assert report["metrics"]["test"]["overall"]["count"] == len(test)
    with pytest.raises(ValueError, match="history=load_history"):
        evaluate_loaded(integer_ccf, loaded, ("test",), full=full)


def test_full_ranking_settings_are_checked_and_on_the_command_line():
    with pytest.raises(ConfigError, match="evaluate.full_splits"):
        resolve(EvaluateConfig, "evaluate", {"data": "d", "run_id": "r", "full_splits": "train"})
    with pytest.raises(ConfigError, match="evaluate.full_users"):
        resolve(EvaluateConfig, "evaluate", {"data": "d", "run_id": "r", "full_users": "-1"})
    cfg = resolve(EvaluateConfig, "evaluate", {"data": "d", "run_id": "r", "full_users": "none",
                                               "exclude_seen": "true", "full_splits": "val,test"})
    assert cfg.full_users is None and cfg.exclude_seen and cfg.full_splits == ["val", "test"]

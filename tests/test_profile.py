"""The data profile: its definitions on hand-made events, the real Taobao sample against an independent pandas
computation, a prepared folder (val/test activity shares), samples of users, the job, MLflow logging."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import run_job_here
from pyspark.sql import functions as F

from pipelines.config import ProfileConfig
from pipelines.profile import (
    ProfileError,
    log_to_mlflow,
    profile,
    sample_profile,
    statistics,
    summary,
)


def test_definitions_on_hand_made_events(spark):
    rows = [  # user, item, category, ts, behaviour, order
        ("a", "i1", "c1", 0, "pv", 0), ("a", "i2", "c1", 10, "pv", 1), ("a", "i1", "c2", 4000, "pv", 2),
        ("a", "i3", "c2", 4000, "pv", 3), ("b", "i1", "c1", 100, "buy", 4)]
    events = spark.createDataFrame(rows, "user string, item string, category string, ts long, behavior string, "
                                         "order long")
    p = statistics(events)
    assert (p["events"], p["users"], p["items"], p["categories"]) == (5, 2, 3, 2)
    assert p["category_continuity"] == pytest.approx(2 / 3)  # a: c1 c1 c2 c2; b has no previous event
    assert p["repeat_share"] == pytest.approx(1 / 5)  # a's second i1
    assert p["long_gap_share"] == pytest.approx(1 / 3) and p["median_gap_s"] == 10  # gaps 10, 3990, 0
    assert p["events_per_user"] == {"median": 2.5, "mean": 2.5, "p90": pytest.approx(3.7), "max": 4.0}
    assert p["sessions_per_user"]["mean"] == 1.5 and p["sessions_per_user"]["max"] == 2
    assert p["events_per_session"]["mean"] == pytest.approx(5 / 3)  # sessions of 2, 2 and 1 events
    assert p["categories_per_user"]["max"] == 2
    assert p["top1_share"] == p["top10_share"] == pytest.approx(3 / 5)  # ceil(3 items * 1 %) = the top item, i1
    assert p["gini"] == pytest.approx(2 * (1 + 2 + 9) / 15 - 4 / 3)  # items with 1, 1, 3 events
    assert p["behaviors"] == {"pv": 0.8, "buy": 0.2}


def test_real_taobao_sample_matches_an_independent_computation(spark, shared_data):
    path = shared_data / "taobao-sample" / "UserBehavior.csv"
    p = profile(ProfileConfig(source="taobao", input=str(path)), spark)
    df = pd.read_csv(path, names=["u", "i", "c", "b", "t"]).reset_index().sort_values(["u", "t", "index"])
    by_user = df.groupby("u")
    gaps = (df.t - by_user.t.shift()).dropna()
    same = (df.c == by_user.c.shift())[by_user.c.shift().notna()]
    counts = np.sort(df.i.value_counts().to_numpy())[::-1]
    assert p["rejected_lines"] == 0 and p["events"] == len(df) == 10_000 and p["users"] == 114
    assert p["category_continuity"] == pytest.approx(same.mean())
    assert p["repeat_share"] == pytest.approx(df.duplicated(["u", "i"]).mean())
    assert p["long_gap_share"] == pytest.approx((gaps > 1800).mean())
    assert p["median_gap_s"] == gaps.median()
    assert p["top1_share"] == pytest.approx(counts[:int(np.ceil(len(counts) / 100))].sum() / len(df))
    assert p["events_per_user"]["median"] == by_user.size().median() == 62.5
    assert p["events_per_user"]["mean"] == pytest.approx(by_user.size().mean())
    assert p["sessions_per_user"]["mean"] == pytest.approx(((gaps > 1800).groupby(df.u).sum() + 1).mean())
    assert p["categories_per_user"]["median"] == by_user.c.nunique().median()
    assert p["behaviors"]["pv"] == pytest.approx((df.b == "pv").mean())
    assert "category continuity 0.409" in summary(p)


def test_samples_of_every_user_give_the_full_profile(spark, shared_data):
    path = str(shared_data / "lastfm-1k-sample")
    from pipelines.profile import raw_events

    events, _ = raw_events(spark, "lastfm", path)
    full = statistics(events)
    assert "behaviors" not in full  # Last.fm has no behaviour types
    sampled = sample_profile(events, size=full["users"], samples=2, seed=3)
    for key in ("category_continuity", "repeat_share", "long_gap_share", "top1_share", "gini"):
        assert sampled[key] == pytest.approx(full[key])
    assert sampled["events_per_user"] == pytest.approx(full["events_per_user"])
    smaller = sample_profile(events, size=1, samples=3, seed=3)  # the Last.fm sample has 2 users
    assert full["users"] == 2 and smaller["users"] == 1 and smaller["events"] < full["events"]
    with pytest.raises(ProfileError, match="cannot draw samples"):
        sample_profile(events, size=full["users"] + 1, samples=1)


def test_prepared_folder_has_the_activity_shares_of_val_and_test(spark, small_movielens):
    p = profile(ProfileConfig(input=str(small_movielens)), spark)
    manifest = json.loads((small_movielens / "manifest.json").read_text())
    assert p["events"] == manifest["accepted"] and p["users"] == manifest["n_users"]
    interactions = spark.read.format("delta").load(str(small_movielens / "interactions"))
    activity = spark.read.format("delta").load(str(small_movielens / "user_activity"))
    df = interactions.where(F.col("split") != "train").join(activity, "user_id").select(
        "split", "is_active", "n_train").toPandas()
    for split in ("val", "test"):
        part = df[df.split == split]
        shares = p["eval_events"][split]
        assert shares["active"] == pytest.approx(part.is_active.mean())
        assert shares["new"] == pytest.approx((part.n_train == 0).mean())
        assert sum(shares.values()) == pytest.approx(1.0)
    with pytest.raises(ProfileError, match="not a prepared output folder"):
        profile(ProfileConfig(input=str(small_movielens / "interactions")), spark)


def test_logged_to_an_mlflow_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("profile", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    p = {"events": 10, "category_continuity": 0.4, "events_per_user": {"median": 2.5}, "source": "taobao"}
    log_to_mlflow(p, run.info.run_id, uri)
    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.metrics == {"profile.events": 10.0, "profile.category_continuity": 0.4,
                                   "profile.events_per_user.median": 2.5}
    assert mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/data/profile.json") == p


def test_job_writes_json_and_prints_a_summary(spark, shared_data, tmp_path, capsys, monkeypatch):
    """jobs/data_profile.py run in this process: the JSON it writes, its summary line, and a bad flag's exit 2
    naming the key."""
    out = tmp_path / "profile.json"
    sample = shared_data / "taobao-sample" / "UserBehavior.csv"
    run_job_here(monkeypatch, "data_profile", "--source", "taobao", "--output", str(out), "--input", str(sample),
                 "--sample-users", "50", "--samples", "2")
    printed = capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["events"] == 10_000 and written["samples"]["samples_of"] == {"users": 50, "samples": 2, "seed": 0}
    assert "10,000 events, 114 users" in printed and "mean of 2 samples of 50 users" in printed
    with pytest.raises(SystemExit) as bad:
        run_job_here(monkeypatch, "data_profile", "--input", "x", "--session-gap", "0")
    assert bad.value.code == 2 and "profile.session_gap" in capsys.readouterr().err

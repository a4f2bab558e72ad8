"""Views of a prepared folder (the real Taobao sample), checked against pandas: the 2ts-coldstart-all kind's rows
(each active user's first t* training items added as an inactive user's row; then trained through TorchDistributor
and replayed like any 2TS model), sequences cut at another K, and stage 1's rows without what stage 2 trains on
(the out-of-sample phi of train.two_time_scale.held_out)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines import PrepareConfig, prepare
from pipelines.views import (
    coldstart_view,
    held_out_view,
    run_folders,
    sequences_view,
    stage_view,
    training_folders,
)
from twots.data.tables import COLDSTART_SEQUENCES, INTERACTIONS, SEQUENCES, STAGE1_OFFERS, TRAIN, USER_ACTIVITY
from twots.evaluation.evaluate import load_arrays
from twots.models.kinds import load_model
from twots.models.two_time_scale import TwoTimeScaleModel

T_STAR, NEGATIVES = 40, 3


@pytest.fixture(scope="module")
def prepared(spark, shared_data, tmp_path_factory):
    output = tmp_path_factory.mktemp("coldstart") / "data"
    prepare(PrepareConfig(source="taobao", input=str(shared_data / "taobao-sample" / "UserBehavior.csv"),
                          output=str(output), t_star=T_STAR, last_k=10, negatives=NEGATIVES, eval_negatives=20,
                          seed=3, min_ts=1511539200, max_ts=1512316799), spark)
    return output


@pytest.fixture(scope="module")
def view(spark, prepared):
    return coldstart_view(spark, prepared, prepared.parent / "views" / "coldstart", T_STAR)


def frame(spark, folder, table) -> pd.DataFrame:
    return spark.read.format("delta").load(str(folder / table)).toPandas()


def as_lists(df: pd.DataFrame) -> dict[int, tuple]:
    return {int(r.user_id): (list(r.item_ids), list(r.neg_item_ids), int(r.prev_item_id)) for r in df.itertuples()}


def test_inactive_rows_are_inactive_users_plus_each_active_users_first_t_star_training_items(spark, prepared, view):
    rows = frame(spark, view, COLDSTART_SEQUENCES)
    base = frame(spark, prepared, SEQUENCES)
    activity = frame(spark, prepared, USER_ACTIVITY).set_index("user_id")
    events = frame(spark, prepared, INTERACTIONS)
    offers = frame(spark, prepared, STAGE1_OFFERS).set_index("event_id")
    active_users = activity.index[activity["is_active"]]
    assert 5 <= len(active_users) < len(activity)  # both groups exist on the sample at t* = 40

    # Active users' rows: the prepared ones, untouched.
    assert as_lists(rows[rows["is_active"]]) == as_lists(base[base["is_active"]])

    # The inactive group: every inactive user's prepared row, plus one row per active user.
    inactive = rows[~rows["is_active"]]
    assert inactive["user_id"].value_counts().max() == 1
    prepared_inactive = as_lists(base[~base["is_active"]])
    early = as_lists(inactive[inactive["user_id"].isin(active_users)])
    assert as_lists(inactive[~inactive["user_id"].isin(active_users)]) == prepared_inactive
    assert sorted(early) == sorted(active_users.tolist())

    # Independently: an active user's first t* events of the training split by event_id, with the negatives
    # stage1_offers drew for those very events, and no previous item.
    train = events[events["split"] == TRAIN].sort_values("event_id")
    for user in active_users:
        first = train[train["user_id"] == user].head(T_STAR)
        assert len(first) == T_STAR
        expected_negs = np.concatenate([offers.loc[e, "neg_item_ids"] for e in first["event_id"]]).tolist()
        assert early[int(user)] == (first["item_id"].tolist(), expected_negs, -1), user
    # Every extra step is a training event; the users' later events (val/test included) never appear.
    later = events[events["user_id"].isin(active_users) & (events["split"] != TRAIN)]
    assert len(later) > 0
    assert len(rows) == len(base) + len(active_users)


def last_training_events(spark, folder, k: int) -> pd.DataFrame:
    """Each active user's last k training events (interactions), in time order."""
    events = frame(spark, folder, INTERACTIONS)
    events = events[events["split"] == TRAIN].sort_values("event_id")
    active = frame(spark, folder, USER_ACTIVITY).query("is_active")["user_id"]
    return events[events["user_id"].isin(active)].groupby("user_id").tail(k)


def test_held_out_stage1_rows_lack_exactly_what_stage2_trains_on(spark, prepared, tmp_path):
    """Out-of-sample phi: the held-out view's stage1_offers are the prepared ones without each active user's last K
    training events, and those events' items are the user's stage-2 row (`sequences`, K = 10), in order."""
    view = held_out_view(spark, prepared, tmp_path / "held", last_k=10)
    offers, held = frame(spark, prepared, STAGE1_OFFERS), frame(spark, view, STAGE1_OFFERS)
    last = last_training_events(spark, prepared, 10)
    assert set(offers["event_id"]) - set(held["event_id"]) == set(last["event_id"])
    assert set(held["event_id"]) < set(offers["event_id"]) and len(last) >= 5 * 10
    kept = offers[~offers["event_id"].isin(last["event_id"])].sort_values("event_id")
    pd.testing.assert_frame_equal(kept.reset_index(drop=True), held.sort_values("event_id").reset_index(drop=True),
                                  check_like=True)
    rows = frame(spark, view, SEQUENCES).set_index("user_id")
    for user, events in last.groupby("user_id"):
        assert list(rows.loc[user, "item_ids"]) == list(events["item_id"])


def test_sequences_view_cuts_active_users_at_k_even_above_t_star(spark, prepared, tmp_path):
    view = sequences_view(spark, prepared, tmp_path / "k60", T_STAR, 60)
    rows = frame(spark, view, SEQUENCES).set_index("user_id")
    activity = frame(spark, view, USER_ACTIVITY).set_index("user_id")
    for user, events in last_training_events(spark, view, 60).groupby("user_id"):
        assert list(rows.loc[user, "item_ids"]) == list(events["item_id"])
        assert len(events) == min(60, activity.loc[user, "n_train"])
    assert any(len(events) > T_STAR for _, events in last_training_events(spark, view, 60).groupby("user_id"))
    base = frame(spark, prepared, SEQUENCES).set_index("user_id")
    inactive = activity.index[~activity["is_active"] & (activity["n_train"] > 0)]
    assert all(list(rows.loc[u, "item_ids"]) == list(base.loc[u, "item_ids"]) for u in inactive)


def test_training_folders_are_the_prepared_folder_unless_a_setting_differs(spark, prepared, tmp_path):
    folder, folders = training_folders(spark, prepared, tmp_path / "views", {STAGE1_OFFERS, SEQUENCES},
                                       t_star=T_STAR, last_k=10, held_out_phi=False, max_len=50)
    assert folder == prepared and folders == {STAGE1_OFFERS: prepared, SEQUENCES: prepared}
    folder, folders = training_folders(spark, prepared, tmp_path / "views", {STAGE1_OFFERS, SEQUENCES},
                                       t_star=T_STAR, last_k=20, held_out_phi=True, max_len=50)
    assert folder == folders[SEQUENCES] == tmp_path / "views" / f"t{T_STAR}-k20"
    assert folders[STAGE1_OFFERS] == tmp_path / "views" / f"t{T_STAR}-k20-held-out"
    assert frame(spark, folders[STAGE1_OFFERS], STAGE1_OFFERS)["event_id"].nunique() == len(
        frame(spark, prepared, STAGE1_OFFERS)) - len(last_training_events(spark, prepared, 20))


def test_the_view_replays_like_its_base_and_refuses_another_t_star(spark, prepared, view):
    # `sequences` is the base's: the replay warms users up as on the prepared folder (one row per user).
    on_view, on_base = load_arrays(view, spark), load_arrays(prepared, spark)
    assert np.array_equal(on_view.warmup.user_id, on_base.warmup.user_id)
    assert np.array_equal(on_view.warmup.item_ids, on_base.warmup.item_ids)
    assert np.array_equal(on_view.events.neg_item_ids, on_base.events.neg_item_ids)
    with pytest.raises(ValueError, match="not built with t\\* = 20"):
        coldstart_view(spark, prepared, prepared.parent / "views" / "wrong", 20)
    assert stage_view(spark, SEQUENCES, prepared, prepared.parent / "views", t_star=T_STAR, max_len=50) == prepared
    made = stage_view(spark, COLDSTART_SEQUENCES, prepared, prepared.parent / "views", t_star=T_STAR, max_len=50)
    assert made == prepared.parent / "views" / f"coldstart-t{T_STAR}" and (made / COLDSTART_SEQUENCES).is_dir()


@pytest.mark.distributed
@pytest.mark.mlflow
@pytest.mark.slow
def test_2ts_oos_trains_on_its_views_as_jobs_train_builds_them(spark, prepared, tmp_path):
    """2ts-oos the way jobs/train.py runs it (pipelines.views.run_folders): stage 1 on the held-out view (without each
    active user's last 40 training events), stage 2 on the cold-start rows of the K = 40 view, the replay on that
    view's sequences."""
    from twots.config import resolve
    from twots.training.config import TrainConfig
    from twots.training.train import train

    cfg = resolve(TrainConfig, "train", dict(
        data=str(prepared), run_dir=str(tmp_path / "run"), model="2ts-oos", num_processes=2,
        stage1={"epochs": 1, "batch_size": 256}, stage2={"epochs": 1, "batch_size": 8}, item_dim=8, feature_dim=4,
        loader="parquet", log_every_s=1000, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    replayed, folders = run_folders(spark, prepared, "2ts-oos", cfg.two_time_scale, cfg.max_len)
    views = prepared / "views" / f"t{T_STAR}-k40"
    assert folders == {STAGE1_OFFERS: views.parent / f"t{T_STAR}-k40-held-out",
                       COLDSTART_SEQUENCES: views / f"coldstart-t{T_STAR}"}
    assert replayed == folders[COLDSTART_SEQUENCES]
    result = train(cfg.model_copy(update={"data": str(replayed)}), spark, folders=folders)
    stage1, stage2 = result.stages
    held = len(frame(spark, folders[STAGE1_OFFERS], STAGE1_OFFERS))
    assert held == len(frame(spark, prepared, STAGE1_OFFERS)) - len(last_training_events(spark, prepared, 40))
    assert stage1["steps_per_epoch"] == -(-held // (256 * 2))
    rows = frame(spark, replayed, COLDSTART_SEQUENCES)
    assert stage2["steps_per_epoch"] == -(-len(rows) // (8 * 2))
    active = rows[rows["is_active"]]
    assert active["item_ids"].map(len).max() == 40  # the active rows: the last 40 items, which stage 1 never saw
    model = load_model(result.model_path)
    assert isinstance(model, TwoTimeScaleModel) and model.options.items == "finetune"
    assert result.metrics["test"]["overall"]["count"] > 0 and 0 < result.metrics["test"]["overall"]["mrr"] < 1

"""Every model kind of twots.models.kinds logged as the one served pyfunc: raw ids in, the same answer as the model's
protocol with each user started as the replay starts them (new and unknown users included), top k out."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from test_baselines import WholeEncoderSASRec
from test_serving import expected, pick_user

from twots.mlops.packaging import log_model
from twots.mlops.pyfunc import ServeConfig
from twots.mlops.registry import use_registry
from twots.models.baselines import Popularity
from twots.models.kinds import KINDS, STAGE1, BuildInputs, ModelDims, save_model
from twots.training.launch import write_side_data

pytestmark = pytest.mark.mlflow


def untrained(kind: str, data, tmp_path, seed: int = 5):
    """A model of `kind` as its own stage builders make it (small dims, random weights); Popularity from the
    training click counts. Stage-2 kinds are built on an untrained stage-1 model."""
    manifest = json.loads((data / "manifest.json").read_text())
    torch.manual_seed(seed)
    if not KINDS[kind].stages:
        counts = torch.zeros(manifest["n_items"])
        counts[: manifest["n_items"] // 2] = torch.arange(manifest["n_items"] // 2, dtype=torch.float32)
        return Popularity(manifest["n_items"]).set_counts(counts)
    side = tmp_path / "side.npz"
    if not side.exists():
        from twots.spark import get_spark

        write_side_data(get_spark(), data, manifest, side)
    inputs = BuildInputs(ModelDims.of(manifest, item_dim=12, feature_dim=4), str(side), {"sasrec": {"window": 8}})
    previous = None
    if KINDS[kind].on_stage1 and len(KINDS[kind].stages) > 1:
        previous = str(tmp_path / "stage1.pt")
        save_model(previous, STAGE1.build(inputs, None))
    model = KINDS[kind].stages[-1].build(inputs, previous)
    with torch.no_grad():  # zero-initialised starts (psi, h0) would make every new user's scores tie
        for name, parameter in model.named_parameters():
            if name in ("psi", "psi_active", "h0"):
                parameter.normal_(std=0.3)
            if name == "mix_active.weight":  # [I, 0] like `mix` at start: make the active users' W its own
                parameter.add_(torch.randn_like(parameter) * 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def tables(spark, small_movielens):
    read = lambda t: spark.read.format("delta").load(str(small_movielens / t)).toPandas()  # noqa: E731
    users = read("users").merge(read("user_activity"), on="user_id").set_index("user_id").sort_index()
    items = read("items").set_index("item_id").sort_index()
    return users, items


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_serves_like_its_replay(spark, small_movielens, tables, kind, tmp_path):
    data, (users, items) = small_movielens, tables
    use_registry(f"sqlite:///{tmp_path}/mlflow.db", None, str(data))
    model = untrained(kind, data, tmp_path)
    experiment = mlflow.create_experiment("kinds", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        info = log_model(model, str(data), kind=kind, spark=spark, limits=ServeConfig(max_k=50, max_history=30))
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    assert pyfunc.metadata.metadata["kind"] == kind
    # A catalogue this small gets the exact flat index (serve.index auto), built at load over the scoring vectors.
    assert pyfunc.metadata.metadata["index"] == "flat" and pyfunc.unwrap_python_model().index is not None
    assert mlflow.get_run(run.info.run_id).data.tags["model_kind"] == kind

    active = pick_user(users, True)
    inactive = int(users.index[~users["is_active"] & (users["n_train"] > 0)][0])
    new = users.index[users["n_train"] == 0]
    rows = [(active, True), (inactive, False)] + [(int(u), False) for u in new[:1]] + [(None, False), (None, False)]
    raw = [None if u is None else users.raw_user_id[u] for u, _ in rows]
    raw[-1] = "no-such-user"
    history = [5, 17, 230]
    answer = pyfunc.predict(pd.DataFrame({
        "user_id": raw, "recent_items": [[items.raw_item_id[i] for i in history]] * len(rows),
        "k": [10] * len(rows), "exclude_clicked": [True] * len(rows)}))
    for row, (user, is_active) in enumerate(rows):
        ids, scores = expected(model, user, is_active, history, 10, exclude=True)
        assert answer["items"][row] == [items.raw_item_id[i] for i in ids], (kind, row)
        assert answer["scores"][row] == pytest.approx(scores, rel=1e-5, abs=1e-6)
        assert not set(answer["items"][row]) & {items.raw_item_id[i] for i in history}
    own = {"ccf": ["phi", "phi"], "2ts": ["phi", "psi"], "2ts-plus": ["phi", "psi"], "2ts-plus-gw": ["phi", "psi"],
           "2ts-coldstart-all": ["phi", "psi"], "2ts-tuned-items": ["phi", "psi"], "2ts-oos": ["phi", "psi"],
           "2ts-singlestage": ["phi", "psi"], "2ts-singlestage-k": ["phi", "psi"]}.get(kind, ["psi", "psi"])
    assert answer["start"].tolist() == own + ["psi"] * (len(rows) - 2)
    # Users the tables do not know (absent, unknown id) start like the model's new users.
    assert answer["items"][len(rows) - 1] == answer["items"][len(rows) - 2]
    if len(new):
        assert answer["items"][2] == answer["items"][len(rows) - 1]


def test_ccf_serves_unknown_users_the_mean_phi_not_user_0s(spark, small_movielens, tables, tmp_path):
    data, (users, items) = small_movielens, tables
    model = untrained("ccf", data, tmp_path)
    use_registry(f"sqlite:///{tmp_path}/mlflow.db", None, str(data))
    with mlflow.start_run():
        info = log_model(model, str(data), kind="ccf", spark=spark)
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    answer = pyfunc.predict(pd.DataFrame({
        "user_id": ["no-such-user", users.raw_user_id[0]], "recent_items": [[], []], "k": [5, 5]}))
    known = model.known_users.numpy()
    mean_phi = model.phi.weight[torch.from_numpy(known)].mean(0)
    top = (model.items.table() @ mean_phi).topk(5).indices.tolist()
    assert answer["items"][0] == [items.raw_item_id[i] for i in top]
    assert answer["items"][0] != answer["items"][1]
    assert answer["start"].tolist() == ["psi", "phi" if known[0] else "psi"]
    assert np.isfinite(answer["scores"][0]).all()


def test_sasrec_serves_the_scores_of_its_whole_encoder(spark, small_movielens, tables, tmp_path):
    """Histories longer than SASRec's window (8), with unknown and repeated items, served from the encoding in the
    state: the answers of the whole encoder over the last 8 known items."""
    data, (users, items) = small_movielens, tables
    model = untrained("sasrec", data, tmp_path)
    use_registry(f"sqlite:///{tmp_path}/mlflow.db", None, str(data))
    with mlflow.start_run():
        info = log_model(model, str(data), kind="sasrec", spark=spark, limits=ServeConfig(max_k=50, max_history=30))
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    histories = [[5, 17, 230, 5, 41, 8, 99, 120, 17, 64, 3, 77], [230, 41], []]
    rows = [pick_user(users, True), None, pick_user(users, False)]
    answer = pyfunc.predict(pd.DataFrame({
        "user_id": [None if u is None else users.raw_user_id[u] for u in rows],
        "recent_items": [[items.raw_item_id[i] for i in histories[0][:6]] + ["no-such-item"]
                         + [items.raw_item_id[i] for i in histories[0][6:]]]
                        + [[items.raw_item_id[i] for i in h] for h in histories[1:]],
        "k": [10] * 3, "exclude_clicked": [False] * 3}))
    assert answer["unknown_items"].tolist() == [["no-such-item"], [], []]
    for row, (user, history) in enumerate(zip(rows, histories)):
        ids, scores = expected(WholeEncoderSASRec(model), user, False, history, 10, exclude=False)
        assert answer["items"][row] == [items.raw_item_id[i] for i in ids], row
        assert answer["scores"][row] == pytest.approx(scores, rel=1e-5, abs=1e-5)
    assert answer["items"][0] != answer["items"][1] != answer["items"][2]


def test_log_model_refuses_a_model_of_another_kind(spark, small_movielens, tmp_path):
    model = untrained("popularity", small_movielens, tmp_path)
    with pytest.raises(ValueError, match="kind 'gru4rec' needs a GRU4Rec, got a Popularity"):
        log_model(model, str(small_movielens), kind="gru4rec", spark=spark)
    with pytest.raises(ValueError, match="kind 'knn' needs one of"):
        log_model(model, str(small_movielens), kind="knn", spark=spark)

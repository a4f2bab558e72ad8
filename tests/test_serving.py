"""The served pyfunc against the torch model it wraps, the real `mlflow models serve` over HTTP, and batch recommend."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import faiss
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException

from twots.mlops.batch import RecommendConfig, batch_recommend
from twots.mlops.packaging import log_model
from twots.mlops.pyfunc import RecommenderPyfunc, ServeConfig
from twots.mlops.registry import use_registry
from twots.mlops.scan import QUANTISE_BLOCK, ItemScan, block_topk
from twots.mlops.server import local_server
from twots.models.two_time_scale import TwoTimeScaleModel
from twots.training.launch import write_side_data

pytestmark = pytest.mark.mlflow

NAME = "twots-serving-test"
URI = f"models:/{NAME}@champion"


def random_model(spark, data, tmp_path) -> TwoTimeScaleModel:
    """An untrained 2TS model over the prepared tables (item features set), with a non-zero psi so that psi users
    get distinct scores."""
    manifest = json.loads((data / "manifest.json").read_text())
    side = np.load(write_side_data(spark, data, manifest, tmp_path / "side.npz"))
    torch.manual_seed(3)
    model = TwoTimeScaleModel(n_users=manifest["n_users"], n_items=manifest["n_items"],
                              n_features=manifest["n_features"], max_features=manifest["max_features_per_item"])
    model.items.set_item_features(torch.from_numpy(side["item_features"]))
    with torch.no_grad():
        model.psi.normal_(std=0.3)
    return model.eval()


@pytest.fixture(scope="module")
def served(spark, small_movielens, tmp_path_factory):
    """A random model logged as the pyfunc with an ivf index, registered and set @champion, and again with an hnsw
    index as the next version (`hnsw`: its URI); the tables' id maps as pandas. The ivf index probes every list
    (ivf_nprobe above its lists), so its answers are the exact ones; bench/serve.py measures the approximate search."""
    data = small_movielens
    read = lambda t: spark.read.format("delta").load(str(data / t)).toPandas()  # noqa: E731
    users = read("users").merge(read("user_activity"), on="user_id").set_index("user_id").sort_index()
    items = read("items").set_index("item_id").sort_index()
    root = tmp_path_factory.mktemp("serving-mlflow")
    tracking = f"sqlite:///{root}/mlflow.db"
    client = use_registry(tracking, None, str(data))
    model = random_model(spark, data, root)
    experiment = mlflow.create_experiment("serving-test", artifact_location=(root / "artifacts").as_uri())
    versions = {}
    for index in ("ivf", "hnsw"):
        with mlflow.start_run(experiment_id=experiment):
            info = log_model(model, str(data), kind="2ts", spark=spark, registered_model_name=NAME,
                             limits=ServeConfig(max_k=len(items), max_history=30, index=index, ivf_nprobe=1000))
        versions[index] = info.registered_model_version
    client.set_registered_model_alias(NAME, "champion", versions["ivf"])
    return dict(data=data, tracking=tracking, model=model, users=users, items=items,
                pyfunc=mlflow.pyfunc.load_model(URI), hnsw=f"models:/{NAME}/{versions['hnsw']}")


def all_scores(model, user: int | None, active: bool, history: list[int], exclude: bool) -> torch.Tensor:
    """Every item's score computed directly with the model's protocol: init_state (as the replay starts the user; -1
    for a user missing from the tables), step, score_all; clicked items at -inf when excluded."""
    active_t = torch.tensor([active])
    state = model.init_state(torch.tensor([-1 if user is None else user]), active_t)
    for item in history:
        state = model.step(state, torch.tensor([item]), active_t)
    with torch.no_grad():
        scores = model.score_all(state)[0]
    if exclude and history:
        scores[history] = float("-inf")
    return scores


def expected(model, user: int | None, active: bool, history: list[int], k: int, exclude: bool):
    """Top k (dense ids, scores) computed directly with the model's protocol."""
    top = all_scores(model, user, active, history, exclude).topk(k)
    return top.indices.tolist(), top.values.tolist()


def pick_user(users, active: bool) -> int:
    return int(users.index[users["is_active"] == active][0])


def test_pyfunc_matches_the_model_for_phi_and_psi_starts(served):
    users, items, model = served["users"], served["items"], served["model"]
    active_user, inactive_user = pick_user(users, True), pick_user(users, False)
    history = [5, 17, 230]
    request = pd.DataFrame({
        "user_id": [users.raw_user_id[active_user], users.raw_user_id[inactive_user], None, "no-such-user"],
        "recent_items": [[items.raw_item_id[i] for i in history]] * 4,
        "k": [10, 7, 5, 3],
        "exclude_clicked": [False] * 4,
    })
    answer = served["pyfunc"].predict(request)
    assert answer["start"].tolist() == ["phi", "psi", "psi", "psi"]
    for row, (user, active, k) in enumerate([(active_user, True, 10), (inactive_user, False, 7),
                                             (None, False, 5), (None, False, 3)]):
        ids, scores = expected(model, user, active, history, k, exclude=False)
        assert answer["items"][row] == [items.raw_item_id[i] for i in ids]
        assert answer["scores"][row] == pytest.approx(scores, rel=1e-5, abs=1e-6)
        assert answer["unknown_items"][row] == []
    # psi users with the same history get the same answer; the active user's phi start differs from psi.
    assert answer["items"][2] == answer["items"][1][:5]
    assert answer["items"][0][:5] != answer["items"][2]


def test_the_champion_ships_and_serves_its_ivf_index(served):
    info = mlflow.models.get_model_info(URI)
    assert info.metadata["index"] == "ivf" and info.metadata["index_build_s"] >= 0
    assert info.flavors["python_function"]["config"]["index"] == "ivf"
    assert "faiss-cpu==1.15.1" in Path(mlflow.artifacts.download_artifacts(f"{URI}/requirements.txt")).read_text()
    served_by = served["pyfunc"].unwrap_python_model()
    assert isinstance(served_by.index.index, faiss.IndexIVFScalarQuantizer) and served_by.scan is None


@pytest.mark.parametrize("setting", [{}, {"index": "hnsw"}, {"index": "flat"}, {"index": "scan", "scan": "bfloat16"},
                                     {"index": "scan", "scan": "int8"}], ids=lambda s: "-".join(s.values()) or "ivf")
def test_index_and_rough_scans_return_the_exact_top_k(served, setting):
    """The ivf index (the champion), the hnsw one (its own version), the flat one (built at load) and the rough
    scans propose candidates, rescored exactly in float32: for 40 random users with up to 25 clicked items excluded
    and k up to 300, the answer is the exact top k (items and float32 scores), k items, none of them clicked."""
    users, items, model = served["users"], served["items"], served["model"]
    uri = served["hnsw"] if setting.get("index") == "hnsw" else URI
    pyfunc = mlflow.pyfunc.load_model(uri, model_config=setting)
    served_by = pyfunc.unwrap_python_model()
    if setting.get("index") == "scan":
        assert served_by.index is None and served_by.scan.matrix.dtype == getattr(torch, setting["scan"])
    else:
        assert served_by.scan is None and served_by.index is not None
    rng = np.random.default_rng(0)
    picked = rng.choice(users.index.to_numpy(), size=40, replace=False)
    histories = [rng.choice(len(items), size=int(rng.integers(0, 25)), replace=False).tolist() for _ in picked]
    request = pd.DataFrame({"user_id": [users.raw_user_id[u] for u in picked],
                            "recent_items": [[items.raw_item_id[i] for i in h] for h in histories],
                            "k": [int(k) for k in rng.integers(1, 300, size=len(picked))]})
    answer = pyfunc.predict(request)
    dense = {raw: i for i, raw in items.raw_item_id.items()}
    for row, (user, history) in enumerate(zip(picked, histories)):
        truth = all_scores(model, int(user), bool(users.is_active[user]), history, exclude=True)
        best = truth.topk(int(request.k[row])).values.tolist()
        got = [dense[raw] for raw in answer["items"][row]]
        assert len(set(got)) == len(got) == len(best) and not set(got) & set(history)
        # Exact up to ties: the item at each position has the float32 score of the k-th best there (score() and
        # score_all() may round a near-tie apart, so two tied items can come in either order).
        assert truth[got].tolist() == pytest.approx(best, rel=1e-5, abs=1e-6)
        assert answer["scores"][row] == pytest.approx(best, rel=1e-5, abs=1e-6)


def test_a_model_without_its_index_artifact(served):
    """A model logged before the index (no index in its config) serves by its scan; one whose config names a
    shipped index it lacks fails at load, saying how to serve it."""
    local = Path(mlflow.artifacts.download_artifacts(URI)) / "artifacts"
    artifacts = {name: str(local / f"{name}{suffix}")
                 for name, suffix in (("model", ".pt"), ("users", ".parquet"), ("items", ".parquet"))}
    old = RecommenderPyfunc()
    old.load_context(SimpleNamespace(artifacts=artifacts, model_config={"max_k": 100, "scan": "float32"}))
    assert old.index is None and old.scan.exact
    request = pd.DataFrame({"recent_items": [[served["items"].raw_item_id[3]]], "k": [10]})
    assert old.predict(None, request)["items"][0] == served["pyfunc"].predict(request)["items"][0]
    with pytest.raises(MlflowException, match="asks for index 'ivf' but the model ships no index artifact"):
        RecommenderPyfunc().load_context(SimpleNamespace(artifacts=artifacts, model_config={"index": "ivf"}))


@pytest.mark.parametrize("dim", [24, 64, 100])
def test_int8_scan_scores_close_to_float32(dim):
    """Widths the int8 kernel cannot take as they are (24, 100: not multiples of 16) are padded: every score is
    within 1 % of its row's largest |score| of the float32 product, for an odd catalogue size and a zero vector."""
    generator = torch.Generator().manual_seed(dim)
    vectors = torch.randn(3001, dim, generator=generator) * torch.rand(3001, 1, generator=generator)
    vectors[7] = 0
    users = torch.randn(5, dim, generator=generator)
    scan = ItemScan(vectors, "int8")
    assert scan.matrix.dtype == torch.int8 and not scan.exact
    exact = users @ vectors.T
    error = (scan(users).float() - exact).abs().amax(dim=1) / exact.abs().amax(dim=1)
    assert error.max() < 0.01
    assert torch.equal(scan(users)[:, 7].float(), torch.zeros(5))


def test_int8_quantisation_is_per_row_across_blocks():
    """The int8 matrix is built a block of rows at a time (bounded memory); each row, the last partial block's
    included, holds round(v / s) with s its own largest |value| / 127, and zeros in the padding."""
    generator = torch.Generator().manual_seed(3)
    vectors = torch.randn(QUANTISE_BLOCK + 1001, 24, generator=generator) * torch.rand(QUANTISE_BLOCK + 1001, 1,
                                                                                        generator=generator)
    scan = ItemScan(vectors, "int8")
    scale = vectors.abs().amax(dim=1, keepdim=True) / 127
    assert scan.matrix.shape == (QUANTISE_BLOCK + 1001, 32)
    assert torch.equal(scan.matrix[:, :24], torch.round(vectors / scale).to(torch.int8))
    assert not scan.matrix[:, 24:].any()
    assert torch.equal(scan.scale, scale.squeeze(1).to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 10, 300])
def test_block_topk_is_topk(dtype, k):
    """Rows wide enough for the block path, with ties (rounded scores) and a row almost all -inf (excluded items:
    fewer finite blocks than k), give topk's values, each at a distinct id holding that value."""
    generator = torch.Generator().manual_seed(k)
    scores = (torch.randn(3, 50_000, generator=generator) * 8).round().to(dtype)
    scores[2, 100:] = float("-inf")
    values, ids = block_topk(scores, k, block=64)
    assert values.dtype == dtype and ids.shape == (3, k)
    assert torch.equal(values, scores.topk(k, dim=1).values)
    for row in range(3):
        assert len(set(ids[row].tolist())) == k
        assert torch.equal(scores[row, ids[row]], values[row])


def test_exclude_clicked_and_unknown_items(served):
    items, model, n_items = served["items"], served["model"], len(served["items"])
    history = [int(i) for i in items.index[:4]]
    raw = [items.raw_item_id[i] for i in history]
    request = pd.DataFrame({
        "recent_items": [raw[:2] + ["unknown-a"] + raw[2:] + ["unknown-b"]] * 2,
        "k": [n_items, n_items],
        "exclude_clicked": [False, True],
    })
    full, excluded = served["pyfunc"].predict(request).to_dict("records")
    assert full["unknown_items"] == excluded["unknown_items"] == ["unknown-a", "unknown-b"]
    assert sorted(full["items"]) == sorted(items.raw_item_id)  # the whole catalogue, ranked
    assert excluded["scores"] == sorted(excluded["scores"], reverse=True)
    full_scores = dict(zip(full["items"], full["scores"]))
    assert dict(zip(excluded["items"], excluded["scores"])) == {i: v for i, v in full_scores.items() if i not in raw}
    ids, _ = expected(model, None, False, history, 20, exclude=True)
    assert excluded["items"][:20] == [items.raw_item_id[i] for i in ids]


@pytest.mark.parametrize("request_rows, message", [
    ({"k": [0]}, r"row 0: k must be an integer in \[1, "),
    ({"k": [10**9]}, r"k must be an integer in \[1, "),
    ({"k": [5], "recent_items": [["x"] * 31]}, "recent_items holds 31 ids, more than the limit max_history=30"),
    ({"k": [5], "recent_items": [[1, 2]]}, "(?s)Failed to enforce schema.*Incompatible input types"),
    ({"k": [5], "user_id": [3]}, "Incompatible input types for column user_id"),
    ({"k": [5], "recent_items": ["abc"]}, "Expected data to be list"),
    ({"k": ["ten"]}, "Failed to enforce schema"),
    ({"user_id": ["a"]}, r"Model is missing inputs \['k'\]"),
])
def test_malformed_requests_raise_invalid_parameter(served, request_rows, message):
    with pytest.raises(MlflowException, match=message) as err:
        served["pyfunc"].predict(pd.DataFrame(request_rows))
    assert err.value.get_http_status_code() == 400


def post(url: str, payload) -> tuple[int, dict]:
    body = json.dumps(payload).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def server(served):
    with local_server(URI, tracking_uri=served["tracking"]) as url:
        yield url


def test_http_server_answers_good_and_bad_requests(served, server):
    users, items = served["users"], served["items"]
    user = pick_user(users, True)
    history = [int(i) for i in items.index[10:13]]
    good = {"dataframe_records": [
        {"user_id": users.raw_user_id[user], "recent_items": [items.raw_item_id[i] for i in history] + ["nope"],
         "k": 5, "exclude_clicked": True},
        {"recent_items": [], "k": 2},
    ]}
    status, body = post(f"{server}/invocations", good)
    assert status == 200, body
    first, second = body["predictions"]
    ids, scores = expected(served["model"], user, True, history, 5, exclude=True)
    assert first["start"] == "phi" and first["items"] == [items.raw_item_id[i] for i in ids]
    assert first["scores"] == pytest.approx(scores, rel=1e-5, abs=1e-6)
    assert first["unknown_items"] == ["nope"]
    assert second["start"] == "psi" and len(second["items"]) == 2

    for payload, message in [
        ({"dataframe_records": [{"k": 0}]}, "k must be an integer in [1, "),
        ({"dataframe_records": [{"k": 3, "recent_items": ["x"] * 31}]}, "max_history=30"),
        ({"dataframe_records": [{"k": "many"}]}, "Failed to convert column k"),
        ({"dataframe_records": [{"user_id": "1"}]}, "Model is missing inputs ['k']"),
        ({"dataframe_records": [{"k": 2, "user_id": 7}]}, "user_id must be a string or absent, got 7"),
    ]:
        status, body = post(f"{server}/invocations", payload)
        assert status == 400, (payload, body)
        assert body["error_code"] in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")
        assert message in body["message"], body["message"]


def test_batch_recommend_writes_every_users_top_k(spark, served, tmp_path):
    data, users, items = served["data"], served["users"], served["items"]
    output = str(tmp_path / "recommendations")
    cfg = RecommendConfig(data=str(data), output=output, model_uri=URI, k=4, batch_size=100)
    version, rows = batch_recommend(spark, cfg)
    table = spark.read.format("delta").load(output).toPandas().set_index("user_id")
    assert rows == len(table) == len(users) and version == 0
    assert set(table.index) == set(users.raw_user_id)
    assert (table["items"].map(len) == 4).all() and (table["unknown_items"].map(len) == 0).all()
    assert (table["start"] == users.set_index("raw_user_id")["is_active"].map({True: "phi", False: "psi"})
            .reindex(table.index)).all()

    # One user by hand: their last max_history=30 interactions, oldest first, through the model.
    clicks = spark.read.format("delta").load(str(data / "interactions")).toPandas()
    user = pick_user(users, True)
    history = clicks[clicks.user_id == user].sort_values("event_id")["item_id"].tolist()[-30:]
    ids, _ = expected(served["model"], user, True, history, 4, exclude=True)
    assert list(table.loc[users.raw_user_id[user], "items"]) == [items.raw_item_id[i] for i in ids]

    listed = RecommendConfig(data=str(data), output=output, model_uri=URI, k=2,
                             users=[users.raw_user_id[user], "ghost"])
    batch_recommend(spark, listed)
    table = spark.read.format("delta").load(output).toPandas().set_index("user_id")
    assert sorted(table.index) == sorted([users.raw_user_id[user], "ghost"])
    assert table.loc["ghost", "start"] == "psi"
    assert list(table.loc[users.raw_user_id[user], "items"]) == [items.raw_item_id[i] for i in ids[:2]]

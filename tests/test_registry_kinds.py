"""Validate / promote across model kinds on a real sqlite registry: a GRU4Rec challenger against a 2TS champion,
gated on real val replays of the same candidates, then both served by a real `mlflow models serve`."""

from __future__ import annotations

import json
import urllib.request

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from test_registry import fresh_registry, log_runs, popularity_model, random_model, train_clicks
from test_serving import expected
from test_serving_kinds import untrained

from twots.mlops.registry import (
    CHAMPION,
    KIND,
    STATUS,
    RegistryConfig,
    promote,
    register,
    validate,
)
from twots.mlops.server import local_server

pytestmark = pytest.mark.mlflow


def gru4rec_by_popularity(data, tmp_path, clicks, sign: float):
    """A GRU4Rec that ranks items by training popularity (sign=1) or unpopularity (sign=-1) for every user: h0 = e_0,
    item i = sign * log(1 + clicks_i) e_0, and a GRU whose update gate is shut (z = 1), so a step keeps h."""
    model = untrained("gru4rec", data, tmp_path)
    popularity = torch.zeros(model.hparams["n_items"])
    popularity[torch.from_numpy(clicks["item_id"].to_numpy())] = torch.from_numpy(
        np.log1p(clicks["count"].to_numpy())).float()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        dim = model.h0.shape[0]
        model.gru.bias_ih_l0[dim:2 * dim] = 100.0  # gates r, z, n: sigmoid(100) is 1.0 in float32
        model.items.item.weight[:, 0] = sign * popularity
        model.h0[0] = 1.0
    return model


@pytest.fixture(scope="module")
def runs(spark, small_movielens, tmp_path_factory):
    """Four logged runs: 2TS and GRU4Rec, each ranking popular or unpopular items first."""
    data = small_movielens
    root = tmp_path_factory.mktemp("registry-kinds")
    tracking, client, experiment = fresh_registry(data, root, "kinds")
    clicks = train_clicks(spark, data)
    base = random_model(spark, data, root)
    models = {("2ts", sign): popularity_model(base, clicks, sign) for sign in (1.0, -1.0)}
    models.update({("gru4rec", sign): gru4rec_by_popularity(data, root, clicks, sign) for sign in (1.0, -1.0)})
    ids = log_runs(spark, data, experiment, models, kind=lambda key: key[0])
    return dict(client=client, data=data, tracking=tracking, ids=ids, models=models)


def gate(spark, runs, name: str, champion: tuple, challenger: tuple) -> tuple[str, str, dict]:
    """`champion`'s run registered and promoted under `name`, then `challenger`'s validated on val and promoted
    if it passes; returns both versions and the challenger's tags."""
    client, cfg = runs["client"], RegistryConfig(data=str(runs["data"]), model_name=name,
                                                 tracking_uri=runs["tracking"], split="val")
    first = register(client, name, runs["ids"][champion])
    assert validate(client, cfg, spark, first)
    assert promote(client, name, first) == first
    second = register(client, name, runs["ids"][challenger])
    validate(client, cfg, spark, second)
    promote(client, name, second)
    return first, second, client.get_model_version(name, second).tags


def test_gru4rec_challenger_is_promoted_over_a_2ts_champion_only_when_better(spark, runs):
    client = runs["client"]
    champion, challenger, tags = gate(spark, runs, "cross-worse", ("2ts", 1.0), ("gru4rec", -1.0))
    assert tags[STATUS] == "failed" and tags[KIND] == "gru4rec"
    assert tags["validation_kind"] == "gru4rec" and tags["validation_champion_kind"] == "2ts"
    popular_mrr, unpopular_mrr = float(tags["validation_champion_mrr"]), float(tags["validation_val_mrr"])
    assert unpopular_mrr < popular_mrr
    assert str(client.get_model_version_by_alias("cross-worse", CHAMPION).version) == champion

    champion, challenger, tags = gate(spark, runs, "cross-better", ("2ts", -1.0), ("gru4rec", 1.0))
    assert tags[STATUS] == "passed" and tags["validation_champion_kind"] == "2ts"
    assert str(client.get_model_version_by_alias("cross-better", CHAMPION).version) == challenger
    # Both kinds rank by the same popularity on the same candidates: the same MRR whichever the kind.
    assert float(tags["validation_val_mrr"]) == pytest.approx(popular_mrr, abs=1e-9)
    assert float(tags["validation_champion_mrr"]) == pytest.approx(unpopular_mrr, abs=1e-9)

    # Both served over HTTP: the GRU4Rec @champion and the 2TS it replaced, each as its pyfunc answers.
    local_top = float(np.log1p(train_clicks(spark, runs["data"])["count"].max()))
    request = pd.DataFrame({"user_id": ["no-such-user", None], "recent_items": [[], []], "k": [5, 5]})
    for uri, kind, sign in ((f"models:/cross-better@{CHAMPION}", "gru4rec", 1.0),
                            (f"models:/cross-better/{champion}", "2ts", -1.0)):
        local = mlflow.pyfunc.load_model(uri).predict(request)
        with local_server(uri, tracking_uri=runs["tracking"]) as url:
            body = json.dumps({"dataframe_split": json.loads(request.to_json(orient="split", index=False))})
            post = urllib.request.Request(f"{url}/invocations", body.encode(),
                                          {"Content-Type": "application/json"})
            with urllib.request.urlopen(post, timeout=60) as response:
                served = json.loads(response.read())["predictions"]
        assert [row["items"] for row in served] == local["items"].tolist(), kind
        _, scores = expected(runs["models"][kind, sign], None, False, [], 5, exclude=True)
        assert served[0]["scores"] == pytest.approx(scores, abs=1e-6) and served[0]["start"] == "psi", kind
    assert served[0]["scores"][0] == 0.0 < local_top  # the unpopular 2TS's best items have no clicks

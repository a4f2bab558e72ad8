"""Register -> validate -> promote on a real sqlite registry, with models of known quality scored by
twots.evaluation.evaluate."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import run_job_here
from test_serving import random_model

from twots.mlops.packaging import log_model
from twots.mlops.registry import (
    CHALLENGER,
    CHAMPION,
    REASON,
    STATUS,
    RegistryConfig,
    promote,
    register,
    release,
    serve_command,
    use_registry,
    validate,
    verdict,
)

pytestmark = pytest.mark.mlflow

NAME = "twots-registry-test"


def popularity_model(base, clicks, sign: float):
    """A copy of `base` that ranks items by training popularity (sign=1) or by unpopularity (sign=-1).

    Every start vector is e_0 and item i's vector is sign * log(1 + clicks_i) e_0; with all GRU weights zero but the
    update gate's input bias (z = 1, n = 0) a step keeps the state, so every user's scores are sign * popularity.
    """
    model = copy.deepcopy(base)
    popularity = torch.zeros(model.hparams["n_items"])
    popularity[torch.from_numpy(clicks["item_id"].to_numpy())] = torch.from_numpy(
        np.log1p(clicks["count"].to_numpy())).float()
    with torch.no_grad():
        for parameter in [*model.gru_active.parameters(), *model.gru_inactive.parameters(),
                          model.items.item.weight, model.items.feature.weight, model.phi.weight, model.psi]:
            parameter.zero_()
        dim = model.psi.shape[0]
        for gru in (model.gru_active, model.gru_inactive):
            gru.bias_ih[dim:2 * dim] = 100.0  # sigmoid(100) is 1.0 in float32
        model.items.item.weight[:, 0] = sign * popularity
        model.phi.weight[:, 0] = 1.0
        model.psi[0] = 1.0
    return model


def read(spark, data, table: str):
    return spark.read.format("delta").load(str(data / table))


def train_clicks(spark, data):
    """item_id, count: the training clicks of each clicked item."""
    return read(spark, data, "interactions").where("split = 'train'").groupBy("item_id").count().toPandas()


def fresh_registry(data, root, experiment: str) -> tuple[str, object, str]:
    """A sqlite registry under `root` for the tables of `data`: (tracking URI, client, id of a new experiment)."""
    tracking = f"sqlite:///{root}/mlflow.db"
    client = use_registry(tracking, None, str(data))
    return tracking, client, mlflow.create_experiment(experiment, artifact_location=(root / "artifacts").as_uri())


def log_runs(spark, data, experiment: str, models: dict, kind) -> dict:
    """Each model logged as the served pyfunc in a run of its own: key -> run id (`kind(key)`: its model kind)."""
    ids = {}
    for key, model in models.items():
        with mlflow.start_run(experiment_id=experiment) as run:
            log_model(model, str(data), kind=kind(key), spark=spark)
        ids[key] = run.info.run_id
    return ids


@pytest.fixture(scope="module")
def registry(spark, small_movielens, tmp_path_factory):
    """A fresh sqlite registry and three logged runs: random, popular and unpopular items first."""
    data = small_movielens
    root = tmp_path_factory.mktemp("registry")
    tracking, client, experiment = fresh_registry(data, root, "registry-test")
    base = random_model(spark, data, root)
    clicks = train_clicks(spark, data)
    models = {"random": base, "popular": popularity_model(base, clicks, 1.0),
              "unpopular": popularity_model(base, clicks, -1.0)}
    runs = log_runs(spark, data, experiment, models, kind=lambda name: "2ts")
    # Validation replays the val split only, to keep the test short; the default (test) replays val then test.
    cfg = RegistryConfig(data=str(data), model_name=NAME, tracking_uri=tracking, split="val")
    return dict(client=client, cfg=cfg, runs=runs, tracking=tracking, experiment=experiment)


def aliases(client, name: str = NAME) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}


def run_job(job: str, registry, capsys, monkeypatch, *flags: str) -> dict:
    """Run jobs/<job>.py in this process (the README's chain runs each as a process) and return the values it
    published (the JSON lines it prints)."""
    cfg = registry["cfg"]
    capsys.readouterr()
    run_job_here(monkeypatch, job, "--data", cfg.data, "--model-name", NAME, "--tracking-uri", registry["tracking"],
                 "--split", cfg.split, *flags)
    values = {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("{"):
            values.update(json.loads(line))
    return values


def test_verdict_floor_and_relative_gain():
    assert verdict(0.30, None, floor=0.2, min_gain=0.05) is None
    assert "below the floor 0.2500" in verdict(0.20, None, floor=0.25, min_gain=0.0)
    assert verdict(0.315, 0.30, floor=0.0, min_gain=0.05) is None
    reason = verdict(0.314, 0.30, floor=0.0, min_gain=0.05)
    assert "does not beat the champion's 0.3000 by the required 5.0% (needs >= 0.3150)" in reason


def test_register_validate_promote_never_promotes_a_worse_model(spark, registry, capsys, monkeypatch):
    client, cfg, runs = registry["client"], registry["cfg"], registry["runs"]

    # register is idempotent per run: the job prints the version as a task value.
    assert run_job("register", registry, capsys, monkeypatch, "--run-id", runs["random"]) == {"model_version": "1"}
    assert register(client, NAME, runs["random"]) == "1"

    # No champion yet: the first version passing the floor becomes challenger, then champion.
    assert validate(client, cfg, spark, "1")
    assert aliases(client) == {CHALLENGER: "1"}
    assert run_job("promote", registry, capsys, monkeypatch) == {"champion_version": "1"}
    assert aliases(client) == {CHAMPION: "1"}
    assert promote(client, NAME) == "1"  # rerun: nothing to promote
    assert aliases(client) == {CHAMPION: "1"}

    # A better model (popularity beats random) passes against the champion and is promoted, in one call.
    popular = release(client, cfg, spark, runs["popular"])
    assert popular == register(client, NAME, runs["popular"]) == "2"
    tags = client.get_model_version(NAME, popular).tags
    assert tags[STATUS] == "passed" and tags["validation_champion_version"] == "1"
    assert float(tags["validation_val_mrr"]) > float(tags["validation_champion_mrr"])
    assert aliases(client) == {CHAMPION: popular}
    assert serve_command(cfg).startswith(f"MLFLOW_TRACKING_URI={registry['tracking']} bin/mlflow models serve "
                                         f"-m models:/{NAME}@champion --env-manager local")

    # A worse model fails: why is in its tags and description; the champion stays, also on reruns.
    unpopular = register(client, NAME, runs["unpopular"])
    for _ in range(2):
        assert not validate(client, cfg, spark, unpopular)
        version = client.get_model_version(NAME, unpopular)
        assert version.tags[STATUS] == "failed"
        assert "does not beat the champion's" in version.tags[REASON]
        assert f"against @champion v{popular}" in version.description and version.tags[REASON] in version.description
        assert promote(client, NAME, unpopular) == popular
        assert aliases(client) == {CHAMPION: popular}


def test_promote_refuses_a_challenger_validated_against_another_champion(spark, registry):
    client, cfg, runs = registry["client"], registry["cfg"], registry["runs"]
    random_version, popular, unpopular = (register(client, NAME, runs[name])
                                          for name in ("random", "popular", "unpopular"))
    client.set_registered_model_alias(NAME, CHAMPION, random_version)
    assert validate(client, cfg, spark, popular)                  # validated against the random champion
    client.set_registered_model_alias(NAME, CHAMPION, unpopular)  # the champion moved meanwhile
    with pytest.raises(RuntimeError, match="rerun validate"):
        promote(client, NAME, popular)
    assert aliases(client) == {CHAMPION: unpopular, CHALLENGER: popular}


@pytest.fixture(scope="module")
def last_week(spark, shared_data, small_movielens, tmp_path_factory):
    """The tables of a week ago: ml-latest-small prepared as the session's tables are, up to the last training event
    of those, so the users and items first seen after it are missing and the dense ids of the others shift."""
    from pipelines import PrepareConfig, prepare

    train = read(spark, small_movielens, "interactions").where("split = 'train'")
    last_train_ts = train.agg({"ts": "max"}).first()[0]
    output = tmp_path_factory.mktemp("last_week")
    prepare(PrepareConfig(source="movielens", input=str(shared_data / "ml-latest-small"), output=str(output),
                          t_star=20, last_k=10, negatives=10, eval_negatives=99, seed=7, max_ts=last_train_ts),
            spark)
    return output


def expected_against_last_week(spark, data, old):
    """Independently of twots.evaluation.remap: the val users and candidate items of `data` unknown to the tables
    `old` (as
    "unknown/total"), and the val MRR of the popularity model of `old` (popularity_model) when items it does not
    know score -inf."""
    from twots.evaluation.metrics import ranks_from_scores

    users, items = (read(spark, data, t).toPandas().set_index(key) for t, key in (("users", "user_id"),
                                                                                    ("items", "item_id")))
    old_users, old_items = read(spark, old, "users").toPandas(), read(spark, old, "items").toPandas()
    val = read(spark, data, "eval_candidates").where("split = 'val'").toPandas()
    negatives = np.stack(val["neg_item_ids"].to_numpy())
    val_users = users.loc[val["user_id"].unique(), "raw_user_id"]
    candidates = items.loc[np.unique(np.concatenate([val["item_id"].to_numpy(), negatives.ravel()])), "raw_item_id"]
    unknown_users = f"{(~val_users.isin(old_users['raw_user_id'])).sum()}/{len(val_users)}"
    unknown_items = f"{(~candidates.isin(old_items['raw_item_id'])).sum()}/{len(candidates)}"

    clicks = train_clicks(spark, old).merge(old_items, on="item_id")
    popularity = dict(zip(old_items["raw_item_id"], np.zeros(len(old_items), dtype=np.float32)))
    popularity.update(zip(clicks["raw_item_id"], np.log1p(clicks["count"].to_numpy()).astype(np.float32)))
    score = np.array([popularity.get(raw, -np.inf) for raw in items["raw_item_id"]], dtype=np.float32)
    mrr = float(np.mean(1.0 / ranks_from_scores(score[val["item_id"].to_numpy()], score[negatives])))
    return unknown_users, unknown_items, mrr


def test_a_champion_trained_on_last_weeks_tables_is_scored_through_its_own_id_maps(spark, registry, last_week,
                                                                                   tmp_path):
    client, runs, name = registry["client"], registry["runs"], f"{NAME}-refresh"
    cfg = registry["cfg"].model_copy(update={"model_name": name})
    old_model = popularity_model(random_model(spark, last_week, tmp_path), train_clicks(spark, last_week), 1.0)
    with mlflow.start_run(experiment_id=registry["experiment"]) as run:
        log_model(old_model, str(last_week), kind="2ts", spark=spark)
    unknown_users, unknown_items, old_mrr = expected_against_last_week(spark, Path(cfg.data), last_week)
    assert int(unknown_users.split("/")[0]) > 0 and int(unknown_items.split("/")[0]) > 0

    # Last week's model, validated on this week's tables with no champion yet: through its own id maps.
    old = register(client, name, run.info.run_id)
    assert validate(client, cfg, spark, old)
    tags = client.get_model_version(name, old).tags
    assert (tags["validation_id_maps"], tags["validation_unknown_users"], tags["validation_unknown_items"]) == (
        "own", unknown_users, unknown_items)
    assert float(tags["validation_val_mrr"]) == pytest.approx(old_mrr, abs=1e-6)
    assert tags["validation_champion_id_maps"] == tags["validation_champion_unknown_users"] == ""
    assert promote(client, name) == old

    # This week's random model cannot beat it; this week's popularity model does and is promoted.
    random_version, popular = register(client, name, runs["random"]), register(client, name, runs["popular"])
    assert not validate(client, cfg, spark, random_version)
    version = client.get_model_version(name, random_version)
    assert "does not beat the champion's" in version.tags[REASON]
    assert float(version.tags["validation_champion_mrr"]) == pytest.approx(old_mrr, abs=1e-6)
    assert version.tags["validation_id_maps"] == "same" and version.tags["validation_unknown_users"] == ""
    assert (version.tags["validation_champion_id_maps"], version.tags["validation_champion_unknown_users"],
            version.tags["validation_champion_unknown_items"]) == ("own", unknown_users, unknown_items)
    users_unknown, users_total = unknown_users.split("/")
    items_unknown, items_total = unknown_items.split("/")
    assert (f"@champion v{old} was trained on other users/items tables and scored through its own id maps: "
            f"{users_unknown} of {users_total} replayed users and {items_unknown} of {items_total} candidate items "
            "are unknown to it.") in version.description
    assert release(client, cfg, spark, runs["popular"]) == popular
    assert aliases(client, name) == {CHAMPION: popular}

    # Revalidated against the new champion, of this week's tables: no trace of the old champion's id maps is left.
    assert not validate(client, cfg, spark, random_version)
    tags = client.get_model_version(name, random_version).tags
    assert tags["validation_champion_version"] == popular
    assert (tags["validation_champion_id_maps"], tags["validation_champion_unknown_items"]) == ("same", "")
    assert "own id maps" not in client.get_model_version(name, random_version).description

"""Register -> validate -> promote on a real sqlite registry, with models of known quality scored by twots.evaluate."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
from test_serving import random_model

from twots.registry import (CHALLENGER, CHAMPION, REASON, STATUS, RegistryConfig, promote, register, release,
                            serve_command, use_registry, validate, verdict)
from twots.serving import log_model

NAME = "twots-registry-test"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def popularity_model(base, clicks, sign: float):
    """A copy of `base` that ranks items by training popularity (sign=1) or by unpopularity (sign=-1).

    Every start vector is e_0 and item i's vector is sign * log(1 + clicks_i) e_0; with all GRU weights zero a step
    halves the state (r = z = 1/2, n = 0), so every user's scores stay proportional to sign * popularity.
    """
    model = copy.deepcopy(base)
    popularity = torch.zeros(model.hparams["n_items"])
    popularity[torch.from_numpy(clicks["item_id"].to_numpy())] = torch.from_numpy(
        np.log1p(clicks["count"].to_numpy())).float()
    with torch.no_grad():
        for parameter in [*model.gru_active.parameters(), *model.gru_inactive.parameters(),
                          model.items.item.weight, model.items.feature.weight, model.phi.weight, model.psi]:
            parameter.zero_()
        model.items.item.weight[:, 0] = sign * popularity
        model.phi.weight[:, 0] = 1.0
        model.psi[0] = 1.0
    return model


@pytest.fixture(scope="module")
def registry(spark, prepared_movielens, tmp_path_factory):
    """A fresh sqlite registry and three logged runs: random, popular and unpopular items first."""
    data = prepared_movielens
    root = tmp_path_factory.mktemp("registry")
    tracking = f"sqlite:///{root}/mlflow.db"
    client = use_registry(tracking, None, str(data))
    experiment = mlflow.create_experiment("registry-test", artifact_location=(root / "artifacts").as_uri())
    runs = {}
    base = random_model(spark, data, root)
    clicks = (spark.read.format("delta").load(str(data / "interactions")).where("split = 'train'")
              .groupBy("item_id").count().toPandas())
    models = {"random": base, "popular": popularity_model(base, clicks, 1.0),
              "unpopular": popularity_model(base, clicks, -1.0)}
    for name, model in models.items():
        with mlflow.start_run(experiment_id=experiment) as run:
            log_model(model, str(data), spark=spark)
        runs[name] = run.info.run_id
    # Validation replays the val split only, to keep the test short; the default (test) replays val then test.
    cfg = RegistryConfig(data=str(data), model_name=NAME, tracking_uri=tracking, split="val")
    return dict(client=client, cfg=cfg, runs=runs, tracking=tracking)


def aliases(client) -> dict[str, str]:
    return {alias: str(version) for alias, version in client.get_registered_model(NAME).aliases.items()}


def run_job(job: str, registry, *flags: str) -> dict:
    """Run jobs/<job>.py as a process and return its published values (the JSON lines it prints)."""
    cfg = registry["cfg"]
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "jobs", f"{job}.py"), "--data", cfg.data, "--model-name", NAME,
         "--tracking-uri", registry["tracking"], "--split", cfg.split, *flags],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    values = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            values.update(json.loads(line))
    return values


def test_verdict_floor_and_relative_gain():
    assert verdict(0.30, None, floor=0.2, min_gain=0.05) is None
    assert "below the floor 0.2500" in verdict(0.20, None, floor=0.25, min_gain=0.0)
    assert verdict(0.315, 0.30, floor=0.0, min_gain=0.05) is None
    reason = verdict(0.314, 0.30, floor=0.0, min_gain=0.05)
    assert "does not beat the champion's 0.3000 by the required 5.0% (needs >= 0.3150)" in reason


def test_register_validate_promote_never_promotes_a_worse_model(spark, registry):
    client, cfg, runs = registry["client"], registry["cfg"], registry["runs"]

    # register is idempotent per run: the job prints the version as a task value.
    assert run_job("register", registry, "--run-id", runs["random"]) == {"model_version": "1"}
    assert register(client, NAME, runs["random"]) == "1"

    # No champion yet: the first version passing the floor becomes challenger, then champion.
    assert validate(client, cfg, spark, "1")
    assert aliases(client) == {CHALLENGER: "1"}
    assert run_job("promote", registry) == {"champion_version": "1"}
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
    assert serve_command(cfg).startswith(f"MLFLOW_TRACKING_URI={registry['tracking']} mlflow models serve "
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

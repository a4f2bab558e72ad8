"""compare --register-models: the comparison's models logged as the served pyfunc and registered with their kind,
settings and metrics; the registered versions then gated across kinds by validate / promote on a real sqlite
registry."""

import mlflow
import pytest
from test_compare import prepared_clusters  # noqa: F401 (the module's prepared data fixture)

from experiments.compare import CompareConfig, compare
from experiments.registering import chosen
from twots.config import ConfigError, resolve
from twots.mlops.registry import CHAMPION, KIND, STATUS, RegistryConfig, promote, use_registry, validate


def test_chosen_is_the_val_best_or_all():
    val = {"popularity": 0.2, "gru4rec": 0.31, "2ts": 0.31, "sasrec": 0.1}
    assert chosen(val, "best") == ["gru4rec"]  # a tie goes to the first in the paper's order
    assert chosen(val, "all") == list(val)
    with pytest.raises(ConfigError, match="compare.register_models"):
        resolve(CompareConfig, "compare", {"data": "x", "register_models": "yes"})


@pytest.mark.timeout(1800)
@pytest.mark.distributed
@pytest.mark.mlflow
@pytest.mark.slow
def test_compare_registers_every_kind_and_validate_promotes_across_kinds(spark, prepared_clusters,  # noqa: F811
                                                                         tmp_path):
    out = tmp_path / "compare"
    cfg = resolve(CompareConfig, "compare", {
        "data": str(prepared_clusters), "output": str(out), "models": "popularity,gru4rec", "lrs": "[0.03]",
        "l2s": "[0]", "max_epochs": "1", "max_len": "60", "register_models": "all", "model_name": "picked",
        "train": '{"item_dim": 16, "feature_dim": 4, "stage2": {"batch_size": 16}, "loader": "parquet"}'})
    results = compare(cfg, spark)

    tracking = f"sqlite:///{out.resolve() / 'mlflow.db'}"
    client = use_registry(tracking, None, str(prepared_clusters))
    versions = {v.tags[KIND]: v for v in client.search_model_versions("name='picked'")}
    assert sorted(versions) == ["gru4rec", "popularity"]
    gru = versions["gru4rec"].tags
    assert gru["compare_lr"] == "0.03" and gru["compare_epochs"] == "1" and gru["compare_max_len"] == "60"
    assert gru["compare_item_dim"] == "16" and gru["compare_feature_dim"] == "4"
    assert float(gru["test_recall_at_10"]) == pytest.approx(results["gru4rec"]["test"]["overall"]["recall@10"],
                                                            abs=1e-6)
    assert float(gru["test_mrr"]) == pytest.approx(results["gru4rec"]["test"]["overall"]["mrr"], abs=1e-6)
    val = {kind: float(v.tags["val_mrr"]) for kind, v in versions.items()}
    assert mlflow.pyfunc.load_model(f"models:/picked/{versions['gru4rec'].version}").metadata.metadata["kind"] \
        == "gru4rec"

    # Popularity @champion, then the GRU4Rec gated against it on the same val candidates.
    cfg = RegistryConfig(data=str(prepared_clusters), model_name="picked", tracking_uri=tracking, split="val")
    popularity, gru4rec = str(versions["popularity"].version), str(versions["gru4rec"].version)
    assert validate(client, cfg, spark, popularity)
    promote(client, "picked", popularity)
    passed = validate(client, cfg, spark, gru4rec)
    tags = client.get_model_version("picked", gru4rec).tags
    # Popularity ignores warm-up, so the gate's val MRR of it is compare's exactly.
    assert float(tags["validation_champion_mrr"]) == pytest.approx(val["popularity"], abs=1e-6)
    assert passed == (float(tags["validation_val_mrr"]) >= val["popularity"]) and passed, tags
    assert tags[STATUS] == "passed" and tags["validation_champion_kind"] == "popularity"
    assert promote(client, "picked", gru4rec) == gru4rec
    assert str(client.get_model_version_by_alias("picked", CHAMPION).version) == gru4rec

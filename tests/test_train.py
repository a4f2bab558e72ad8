"""Two-stage training end to end: real Spark + Delta tables from the pipeline, TorchDistributor with 2 CPU
processes (gloo), petastorm or Parquet loaders, real MLflow sqlite store."""

from __future__ import annotations

import mlflow
import pytest
import torch

from twots.config import ConfigError, resolve
from twots.models import TwoTimeScaleModel, load_model
from twots.train import TrainConfig, train


def config(data, run_dir, **overrides) -> TrainConfig:
    values = dict(data=str(data), run_dir=str(run_dir), num_processes=2, stage1_epochs=2, stage2_epochs=2,
                  stage1_batch_size=512, stage2_batch_size=32, log_every=1000, seed=3)
    values.update(overrides)
    return resolve(TrainConfig, "train", values)


def weights(path) -> dict[str, torch.Tensor]:
    return load_model(path).state_dict()


def test_two_stage_training_is_tracked_in_mlflow(spark, prepared_movielens, tmp_path):
    cfg = config(prepared_movielens, tmp_path / "run", model="2ts-plus", loader="petastorm")
    result = train(cfg, spark)

    stage1, stage2 = result.stages
    assert [s["stage"] for s in result.stages] == ["stage1", "stage2"]
    assert stage1["history"][1]["loss"] < stage1["history"][0]["loss"]
    assert stage2["history"][1]["loss"] < stage2["history"][0]["loss"]
    # Every training row is one interaction: steps x batch x ranks of them per stage-1 epoch.
    assert stage1["history"][0]["interactions"] == stage1["steps_per_epoch"] * 512 * 2

    model = load_model(result.model_path)
    assert isinstance(model, TwoTimeScaleModel) and model.hparams["plus"]
    phi_stage1 = load_model(tmp_path / "run" / "stage1.pt").phi.weight
    assert torch.equal(model.phi.weight, phi_stage1), "stage 2 must not change the frozen stage-1 embeddings"

    test = result.metrics["test"]
    random_mrr = sum(1 / r for r in range(1, 101)) / 100  # 1 positive + 99 negatives, ranked at random
    assert test["overall"]["mrr"] > 2 * random_mrr
    assert test["overall"]["count"] == test["active"]["count"] + test["inactive"]["count"] + test["new"]["count"]

    client = mlflow.MlflowClient()
    assert mlflow.get_tracking_uri() == f"sqlite:///{prepared_movielens.resolve()}/mlflow.db"
    run = client.get_run(result.run_id)
    assert run.data.params["model"] == "2ts-plus" and run.data.params["stage1_epochs"] == "2"
    assert run.data.params["data.stage1_offers.version"] == "0"
    assert run.data.metrics["test/mrr"] == pytest.approx(test["overall"]["mrr"])
    losses = [m.value for m in client.get_metric_history(result.run_id, "stage1_loss")]
    assert losses == pytest.approx([e["loss"] for e in stage1["history"]])
    assert run.data.metrics["stage2_throughput"] > 0
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"data", "plots", "stages", "evaluation"} <= artifacts  # the model is an MLflow 3 logged model
    assert run.info.artifact_uri.startswith((prepared_movielens / "mlartifacts").resolve().as_uri())
    served = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    assert served.metadata.metadata["n_items"] == model.hparams["n_items"]


def test_same_seed_same_model_and_resume_equals_uninterrupted(spark, prepared_movielens, tmp_path):
    common = dict(model="2ts", loader="parquet", evaluate=False, stage1_epochs=2, stage2_epochs=2)
    first = train(config(prepared_movielens, tmp_path / "a", **common), spark)
    again = train(config(prepared_movielens, tmp_path / "b", **common), spark)
    final = weights(first.model_path)
    assert all(torch.equal(final[k], v) for k, v in weights(again.model_path).items())
    assert [e["loss"] for s in first.stages for e in s["history"]] == \
        [e["loss"] for s in again.stages for e in s["history"]]

    # Leave run b as a run killed during stage 1's second epoch would: only the first checkpoint on disk.
    run_b = tmp_path / "b"
    for path in list((run_b / "checkpoints").iterdir()) + [run_b / "stage1.pt", run_b / "stage2.pt"]:
        if path.name != "stage1-epoch000.pt":
            path.unlink()
    resumed = train(config(prepared_movielens, run_b, resume=True, **common), spark)
    assert resumed.run_id == again.run_id, "a resumed run continues its MLflow run"
    assert all(torch.equal(final[k], v) for k, v in weights(resumed.model_path).items())
    assert [e["loss"] for e in resumed.stages[0]["history"]] == [e["loss"] for e in first.stages[0]["history"]]


def test_bad_config_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="train.model"):
        config(tmp_path, tmp_path, model="3ts")
    with pytest.raises(ConfigError, match="train.stage1_epochs"):
        config(tmp_path, tmp_path, stage1_epochs=0)


def test_missing_data_fails_before_training(spark, tmp_path):
    with pytest.raises(FileNotFoundError, match="run jobs/prepare.py"):
        train(config(tmp_path / "nowhere", tmp_path / "run"), spark)
    assert not (tmp_path / "run").exists()

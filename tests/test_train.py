"""Two-stage training end to end: real Spark + Delta tables from the pipeline, TorchDistributor with 2 CPU
processes (gloo), petastorm or Parquet loaders, real MLflow sqlite store."""

from __future__ import annotations

import mlflow
import pytest
import torch
from conftest import run_job_here

from twots.cli import UserError
from twots.config import ConfigError, resolve
from twots.models.kinds import load_model
from twots.models.two_time_scale import TwoTimeScaleModel
from twots.training.config import TrainConfig
from twots.training.train import train


def config(data, run_dir, **overrides) -> TrainConfig:
    values = dict(data=str(data), run_dir=str(run_dir), num_processes=2, stage1={"epochs": 2, "batch_size": 512},
                  stage2={"epochs": 2, "batch_size": 32}, log_every_s=1000, seed=3)
    values.update(overrides)
    return resolve(TrainConfig, "train", values)


def weights(path) -> dict[str, torch.Tensor]:
    return load_model(path).state_dict()


@pytest.mark.distributed
@pytest.mark.mlflow
@pytest.mark.slow
def test_two_stage_training_tracking_determinism_and_resume(spark, small_movielens, tmp_path, monkeypatch, capsys):
    cfg = config(small_movielens, tmp_path / "a", model="2ts-plus", loader="petastorm")
    result = train(cfg, spark)

    stage1, stage2 = result.stages
    assert [s["stage"] for s in result.stages] == ["stage1", "stage2"]
    assert stage1["history"][1]["loss"] < stage1["history"][0]["loss"]
    assert stage2["history"][1]["loss"] < stage2["history"][0]["loss"]
    # Every training row is one interaction: steps x batch x ranks of them per stage-1 epoch.
    assert stage1["history"][0]["interactions"] == stage1["steps_per_epoch"] * 512 * 2

    model = load_model(result.model_path)
    assert isinstance(model, TwoTimeScaleModel) and model.options.plus
    phi_stage1 = load_model(tmp_path / "a" / "stage1.pt").phi.weight
    assert torch.equal(model.phi.weight, phi_stage1), "stage 2 must not change the frozen stage-1 embeddings"

    test = result.metrics["test"]
    random_mrr = sum(1 / r for r in range(1, 101)) / 100  # 1 positive + 99 negatives, ranked at random
    assert test["overall"]["mrr"] > 2 * random_mrr
    assert test["overall"]["count"] == test["active"]["count"] + test["inactive"]["count"] + test["new"]["count"]

    client = mlflow.MlflowClient()
    assert mlflow.get_tracking_uri() == f"sqlite:///{small_movielens.resolve()}/mlflow.db"
    run = client.get_run(result.run_id)
    assert run.data.params["model"] == "2ts-plus" and run.data.params["stage1.epochs"] == "2"
    assert run.data.params["data.stage1_offers.version"] == "0"
    assert run.data.metrics["test/mrr"] == pytest.approx(test["overall"]["mrr"])
    losses = [m.value for m in client.get_metric_history(result.run_id, "stage1_loss")]
    assert losses == pytest.approx([e["loss"] for e in stage1["history"]])
    assert run.data.metrics["stage2_throughput"] > 0
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"data", "plots", "stages", "evaluation"} <= artifacts  # the model is an MLflow 3 logged model
    assert run.info.artifact_uri.startswith((small_movielens / "mlartifacts").resolve().as_uri())
    served = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    assert served.metadata.metadata["n_items"] == model.hparams["n_items"]

    # The README's evaluate job on the logged run replays the logged model like training's own evaluation did.
    capsys.readouterr()
    run_job_here(monkeypatch, "evaluate", "--data", str(small_movielens), "--run-id", result.run_id)
    printed = capsys.readouterr().out.splitlines()
    for split in ("val", "test"):
        overall = result.metrics[split]["overall"]
        line = f"{split}: MRR {overall['mrr']:.4f}  Recall@10 {overall['recall@10']:.4f}  "
        assert any(p.startswith(line) for p in printed), printed[-20:]
    assert client.get_run(result.run_id).data.metrics["test/mrr"] == pytest.approx(test["overall"]["mrr"])

    # Same seed, data and process count: the same weights, losses and metrics.
    again = train(cfg.model_copy(update={"run_dir": str(tmp_path / "b")}), spark)
    final = weights(result.model_path)
    assert all(torch.equal(final[k], v) for k, v in weights(again.model_path).items())
    assert losses == [e["loss"] for e in again.stages[0]["history"]]
    assert again.metrics == result.metrics

    # Leave run b as a run killed during stage 1's second epoch would: only the first checkpoint on disk.
    run_b = tmp_path / "b"
    for path in list((run_b / "checkpoints").iterdir()) + [run_b / "stage1.pt", run_b / "stage2.pt"]:
        if path.stem != "stage1-epoch000":  # its .pt and the .json beside it
            path.unlink()
    resumed = train(cfg.model_copy(update={"run_dir": str(run_b), "resume": True}), spark)
    assert resumed.run_id == again.run_id, "a resumed run continues its MLflow run"
    assert all(torch.equal(final[k], v) for k, v in weights(resumed.model_path).items())
    assert resumed.metrics == result.metrics


@pytest.mark.distributed
@pytest.mark.mlflow
def test_stage2_on_a_given_stage1_model(spark, small_movielens, tmp_path):
    base = config(small_movielens, tmp_path / "s1", model="2ts", stage1={"epochs": 1}, stage2={"epochs": 1},
                  loader="parquet", evaluate=False)
    first = train(base, spark)
    stage1 = tmp_path / "s1" / "stage1.pt"
    plus = train(base.model_copy(update={"model": "2ts-plus", "run_dir": str(tmp_path / "plus"),
                                         "stage1_model": str(stage1)}), spark)
    assert [s["stage"] for s in plus.stages] == ["stage2"]
    model = load_model(plus.model_path)
    assert model.options.plus and not load_model(first.model_path).options.plus
    assert torch.equal(model.phi.weight, load_model(stage1).phi.weight)
    assert not (tmp_path / "plus" / "stage1.pt").exists()


def test_bad_config_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="train.model"):
        config(tmp_path, tmp_path, model="3ts")
    with pytest.raises(ConfigError, match="train.model"):  # a kind not trained by gradient (Spark counts)
        config(tmp_path, tmp_path, model="popularity")
    assert config(tmp_path, tmp_path, model="gru4rec").model == "gru4rec"  # every trainable kind
    with pytest.raises(ConfigError, match="train.stage1.epochs"):
        config(tmp_path, tmp_path, stage1={"epochs": 0})


def test_missing_inputs_fail_before_training(spark, small_movielens, tmp_path):
    with pytest.raises(UserError, match="no such folder .*: run jobs/prepare.py"):
        train(config(tmp_path / "nowhere", tmp_path / "run"), spark)
    with pytest.raises(UserError, match="no such file .--stage1-model"):
        train(config(small_movielens, tmp_path / "run", model="2ts", stage1_model=str(tmp_path / "none.pt")), spark)
    assert not (tmp_path / "run").exists()

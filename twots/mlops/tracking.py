"""MLflow on the driver: one run per training pipeline run; the ranks never talk to MLflow.

The run holds the full config (params), the data manifest and the Delta table versions that trained the model,
per-epoch losses and throughput of each stage, the final metrics, the plots (PNG) and the model (the served
pyfunc of twots.mlops.pyfunc). Tracking and registry default to `sqlite:///<data>/mlflow.db` with artifacts in
`<data>/mlartifacts`; any tracking URI works (a Databricks workspace: `databricks`). A resumed training run
(`--resume`) continues the MLflow run recorded in `<run_dir>/run.json`.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from twots.cli import UserError
from twots.config import flat
from twots.evaluation.evaluate import EvaluateConfig, evaluate
from twots.evaluation.metrics import flatten
from twots.evaluation.plots import plot_embedding_change
from twots.mlops.packaging import log_model
from twots.models.kinds import load_model


def default_tracking_uri(data_dir: str | Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'mlflow.db'}"


def use_tracking(tracking_uri: str | None, data_dir: str | Path, experiment: str) -> str:
    """Point MLflow at the store and return the experiment id (created with an explicit artifact location)."""
    uri = tracking_uri or default_tracking_uri(data_dir)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = (Path(data_dir).resolve() / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    return mlflow.create_experiment(experiment, artifact_location=location)


def table_versions(spark, data_dir: str | Path, tables) -> dict[str, int]:
    """Current Delta version of each table: which data trained the model."""
    versions = {}
    for table in tables:
        path = Path(data_dir) / table
        row = spark.sql(f"DESCRIBE HISTORY delta.`{path.resolve()}` LIMIT 1").first()
        versions[table] = int(row["version"])
    return versions


def training_run(client: MlflowClient, run_id: str):
    """The MLflow run `run_id` of the store `client` talks to; a UserError when that store has no such run."""
    try:
        return client.get_run(run_id)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise UserError("no such MLflow run", f"run {run_id} in {mlflow.get_tracking_uri()}",
                        "give the run id jobs/train.py printed ('run <id>: model ...') and the same --data or "
                        "--tracking-uri") from None


def logged_model_uri(client: MlflowClient, run_id: str, name: str) -> str:
    """`models:/<model id>` of the model called `name` that run `run_id` logged (the last one, when a resumed run
    logged it again): MLflow 3 keeps a model's files under its model id, not under the run's artifacts."""
    outputs = training_run(client, run_id).outputs
    models = [client.get_logged_model(output.model_id) for output in (outputs.model_outputs if outputs else [])]
    named = sorted((m for m in models if m.name == name), key=lambda m: m.creation_timestamp)
    if not named:
        raise UserError(f"the run logged no model named {name!r}", f"run {run_id}",
                        "give the run of a jobs/train.py that finished (it logs the model last)")
    return f"models:/{named[-1].model_id}"


class Tracker:
    def __init__(self, run_id: str):
        self.run_id = run_id

    def log_stage(self, result: dict) -> None:
        stage = result["stage"]
        for entry in result["history"]:
            mlflow.log_metrics({f"{stage}_loss": entry["loss"],
                                f"{stage}_interactions_per_s": entry["interactions_per_s"]}, step=entry["epoch"])
        seconds = sum(e["seconds"] for e in result["history"])
        clicks = sum(e["interactions"] for e in result["history"])
        if seconds > 0:  # zero when a resumed run found the stage already finished
            mlflow.log_metric(f"{stage}_throughput", clicks / seconds)
        mlflow.log_dict(result, f"stages/{stage}.json")

    def log_evaluation(self, report: dict, run_dir: Path) -> None:
        log_evaluation(report, run_dir)

    def log_model(self, model_path: str, kind: str, data_dir: str, spark) -> None:
        log_model(load_model(model_path), data_dir, kind=kind, spark=spark)


def run_model(cfg: EvaluateConfig):
    """The model logged in MLflow run `cfg.run_id`, loaded from its store (no Spark needed)."""
    mlflow.set_tracking_uri(cfg.tracking_uri or default_tracking_uri(cfg.data))
    return mlflow.pyfunc.load_model(logged_model_uri(MlflowClient(), cfg.run_id, cfg.model_name)
                                    ).unwrap_python_model().model


def evaluate_run(cfg: EvaluateConfig, model, spark) -> dict:
    """Evaluate `model`, the model of MLflow run `cfg.run_id` (run_model; jobs/evaluate.py), and log the metrics and
    Fig. 4 to that run."""
    report = evaluate(model, cfg.data, spark, cfg)
    with mlflow.start_run(run_id=cfg.run_id), tempfile.TemporaryDirectory() as tmp:
        log_evaluation(report, Path(tmp))
    return report


def log_evaluation(report: dict, out_dir: Path) -> None:
    """Metrics of twots.evaluation.evaluate.evaluate (flat names per split), its JSON and the Fig. 4 plot, to the
    active run."""
    for split, summary in report["metrics"].items():
        mlflow.log_metrics(flatten(summary, prefix=split))
    mlflow.log_metric("evaluate_events_per_s", report["events_per_s"])
    full = report["full"]
    mlflow.log_metrics({"evaluate_full_users": full["users"], "evaluate_full_events": full["events"],
                        "evaluate_full_seconds": full["seconds"]})
    mlflow.log_param("evaluate_full_exclude_seen", full["exclude_seen"])
    mlflow.log_dict(report["metrics"], "evaluation/metrics.json")
    if len(report["changes"]["step"]):
        png = plot_embedding_change(report["changes"], Path(out_dir) / "embedding_change.png")
        mlflow.log_artifact(str(png), "plots")


@contextmanager
def pipeline_run(cfg, run_dir: Path, manifest: dict, spark):
    """Open (or, on resume, reopen) the run of this training pipeline and log what defines it."""
    experiment_id = use_tracking(cfg.tracking_uri, cfg.data, cfg.experiment)
    marker = run_dir / "run.json"
    run_id = json.loads(marker.read_text())["run_id"] if cfg.resume and marker.exists() else None
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, run_name=cfg.model) as run:
        if run_id is None:
            marker.write_text(json.dumps({"run_id": run.info.run_id}))
            mlflow.log_params(flat(cfg))
            mlflow.log_dict(manifest, "data/manifest.json")
            versions = table_versions(spark, cfg.data, manifest.get("tables", {}))
            mlflow.log_params({f"data.{t}.version": v for t, v in versions.items()})
            mlflow.set_tag("data", str(Path(cfg.data).resolve()))
        yield Tracker(run.info.run_id)

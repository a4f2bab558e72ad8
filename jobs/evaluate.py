"""Online evaluation of a model logged by jobs/train.py: replay val then test, log the metrics to its run.

    bin/spark-submit jobs/evaluate.py --data /data/twots --run-id <mlflow run id>
"""

from twots.cli import run_job
from twots.config import load
from twots.data.tables import read_manifest
from twots.evaluation.evaluate import EvaluateConfig
from twots.evaluation.metrics import summary_line
from twots.mlops.tracking import evaluate_run, run_model
from twots.spark import get_spark


def main() -> None:
    cfg = load(EvaluateConfig, "evaluate", description=__doc__)
    read_manifest(cfg.data)
    report = evaluate_run(cfg, run_model(cfg), get_spark("twots-evaluate"))
    for split, summary in report["metrics"].items():
        print(f"{split}: {summary_line(summary)}")


if __name__ == "__main__":
    run_job(main)

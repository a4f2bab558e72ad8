"""Training of any trainable model kind (twots.models.kinds) with TorchDistributor, then evaluation, all tracked
in one MLflow run.

    bin/spark-submit jobs/train.py --data /data/twots --model 2ts-plus --num-processes 2
    bin/spark-submit jobs/train.py --data /data/twots --model 2ts-plus --resume true     # continue a killed run
    bin/spark-submit jobs/train.py --data /data/twots --model gru4rec --max-len 200     # on full histories
    bin/spark-submit jobs/train.py --data /data/twots --model 2ts --two-time-scale.last-k 40  # on a view
"""

from pipelines.views import run_folders
from twots.cli import run_job
from twots.config import load
from twots.data.tables import read_manifest
from twots.evaluation.metrics import summary_line
from twots.mlops.registry import publish
from twots.mlops.tracking import default_tracking_uri
from twots.spark import get_spark
from twots.training.config import TrainConfig
from twots.training.train import check_stage1_model, train


def main() -> None:
    cfg = load(TrainConfig, "train", description=__doc__)
    read_manifest(cfg.data)
    check_stage1_model(cfg)
    spark = get_spark("twots-train")
    # Full histories, cold-start rows, another K or a held-out stage 1: views of the prepared folder. The run goes
    # to the MLflow store of the folder given, where evaluate, register and validate look for it.
    replayed, folders = run_folders(spark, cfg.data, cfg.model, cfg.two_time_scale, cfg.max_len)
    tracking_uri = cfg.tracking_uri or default_tracking_uri(cfg.data)
    result = train(cfg.model_copy(update={"data": str(replayed), "tracking_uri": tracking_uri}), spark,
                   folders=folders)
    print(f"run {result.run_id}: model {result.model_path}")
    publish("run_id", result.run_id)  # the bundle's register task reads it (a Databricks task value)
    for split, summary in result.metrics.items():
        print(f"{split}: {summary_line(summary)}")


if __name__ == "__main__":
    run_job(main)

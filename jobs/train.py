"""Training of any trainable model kind (twots.models.kinds) with TorchDistributor, then evaluation, all tracked
in one MLflow run.

    bin/spark-submit jobs/train.py --data /data/twots --model 2ts-plus --num-processes 2
    bin/spark-submit jobs/train.py --data /data/twots --model 2ts-plus --resume true     # continue a killed run
    bin/spark-submit jobs/train.py --data /data/twots --model gru4rec --max-len 200     # on full histories
    bin/spark-submit jobs/train.py --data /data/twots --model 2ts --two-time-scale.last-k 40  # on a view
"""

from pipelines.views import run_folders
from twots.config import load
from twots.evaluation.metrics import summary_line
from twots.mlops.registry import publish
from twots.spark import get_spark
from twots.training.config import TrainConfig
from twots.training.train import train


def main() -> None:
    cfg = load(TrainConfig, "train", description=__doc__)
    spark = get_spark("twots-train")
    # Full histories, cold-start rows, another K or a held-out stage 1: views of the prepared folder.
    replayed, folders = run_folders(spark, cfg.data, cfg.model, cfg.two_time_scale, cfg.max_len)
    result = train(cfg.model_copy(update={"data": str(replayed)}), spark, folders=folders)
    print(f"run {result.run_id}: model {result.model_path}")
    publish("run_id", result.run_id)  # the bundle's register task reads it (a Databricks task value)
    for split, summary in result.metrics.items():
        print(f"{split}: {summary_line(summary)}")


if __name__ == "__main__":
    main()

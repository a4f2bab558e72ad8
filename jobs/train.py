"""Two-stage 2TS training with TorchDistributor, then evaluation, all tracked in one MLflow run.

    bin/spark-submit jobs/train.py --data /data/twots --model 2ts-plus --num-processes 2
    bin/spark-submit jobs/train.py --data /data/twots --model 2ts-plus --resume true     # continue a killed run
"""

from twots.config import load
from twots.registry import publish
from twots.spark import get_spark
from twots.train import TrainConfig, train


def main() -> None:
    cfg = load(TrainConfig, "train", description=__doc__)
    result = train(cfg, get_spark("twots-train"))
    print(f"run {result.run_id}: model {result.model_path}")
    publish("run_id", result.run_id)  # the bundle's register task reads it (a Databricks task value)
    for split, summary in result.metrics.items():
        print(f"{split}: MRR {summary['overall']['mrr']:.4f}  Recall@10 {summary['overall']['recall@10']:.4f}")


if __name__ == "__main__":
    main()

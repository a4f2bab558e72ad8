"""Training of any trainable model kind (twots.models.kinds) with TorchDistributor, then evaluation, all tracked
in one MLflow run.

    bin/spark-submit jobs/train.py --data /data/twots --model 2ts-plus --num-processes 2
    bin/spark-submit jobs/train.py --data /data/twots --model 2ts-plus --resume true     # continue a killed run
    bin/spark-submit jobs/train.py --data /data/twots --model gru4rec --max-len 200     # on full histories
    bin/spark-submit jobs/train.py --data /data/twots --model 2ts-coldstart-all         # on a cold-start view
"""

from pathlib import Path

from pipelines.views import stage_view
from twots.config import load
from twots.mlops.registry import publish
from twots.models.kinds import KINDS
from twots.spark import get_spark
from twots.training.train import TrainConfig, read_manifest, train


def main() -> None:
    cfg = load(TrainConfig, "train", description=__doc__)
    spark = get_spark("twots-train")
    kind = KINDS[cfg.model]
    if kind.on_view:  # full histories (sequence baselines, 2TS-SingleStage) or cold-start rows (2ts-coldstart-all)
        view = stage_view(spark, kind.stages[-1].table, cfg.data, Path(cfg.data) / "views",
                          t_star=read_manifest(cfg.data)["config"]["threshold"], max_len=cfg.max_len)
        cfg = cfg.model_copy(update={"data": str(view)})
    result = train(cfg, spark)
    print(f"run {result.run_id}: model {result.model_path}")
    publish("run_id", result.run_id)  # the bundle's register task reads it (a Databricks task value)
    for split, summary in result.metrics.items():
        print(f"{split}: MRR {summary['overall']['mrr']:.4f}  Recall@10 {summary['overall']['recall@10']:.4f}")


if __name__ == "__main__":
    main()

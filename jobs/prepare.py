"""Raw interaction logs to validated, time-split Delta tables with offer sets.

    bin/spark-submit jobs/prepare.py --source movielens --input ../shared/data/ml-latest-small --output /data/twots \
        --t-star 20 --last-k 10 --negatives 10 --eval-negatives 499 --seed 7
"""

from pipelines.config import PrepareConfig
from pipelines.pipeline import check_output, prepare
from pipelines.readers import check_input
from twots.cli import run_job
from twots.config import load
from twots.spark import get_spark


def main() -> None:
    cfg = load(PrepareConfig, "prepare", description=__doc__)
    check_input(cfg.input)
    check_output(cfg.output)
    # At least `partitions` input splits too: Spark's default (one per core, at most 128 MB each) cuts a 311 MB
    # file into 3 splits for 2 cores, so the parse, and every scan of its checkpoint, ends with one task alone.
    # Shuffles keep their `partitions` tasks: adaptive execution coalesced sequences' last stage into 3 tasks on
    # 2 cores, the third alone. FAIR: concurrent steps share the cores (pipelines.pipeline.POOL_PROPERTY).
    keys = ("spark.sql.shuffle.partitions", "spark.sql.files.minPartitionNum")
    conf = {key: str(cfg.partitions) for key in keys} | {
        "spark.sql.adaptive.coalescePartitions.enabled": "false", "spark.scheduler.mode": "FAIR"}
    prepare(cfg, get_spark("twots-prepare", conf=conf))


if __name__ == "__main__":
    run_job(main)

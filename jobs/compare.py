"""The paper's comparison on your data: baselines, ablations, 2TS and 2TS-Plus; results table, MLflow, plots.

    bin/spark-submit jobs/compare.py --data /data/twots --models all
    bin/spark-submit jobs/compare.py --source movielens --input ../shared/data/ml-latest-small --output compare-output
    bin/spark-submit jobs/compare.py --data /data/twots --models ccf,2ts,2ts-plus --t-star auto
    bin/spark-submit jobs/compare.py --data /data/twots --output cmp --resume true   # keep the grid points cmp has
"""

from experiments.compare import CompareConfig, check_inputs, compare
from twots.cli import run_job
from twots.config import load
from twots.spark import get_spark


def main() -> None:
    cfg = load(CompareConfig, "compare", description=__doc__)
    check_inputs(cfg)
    results = compare(cfg, get_spark("twots-compare"))
    for name, row in results.items():
        print(f"{name:>16}: test MRR {row['test']['overall']['mrr']:.4f}  "
              f"Recall@10 {row['test']['overall']['recall@10']:.4f}  trained in {row['train_seconds']:.1f}s")


if __name__ == "__main__":
    run_job(main)

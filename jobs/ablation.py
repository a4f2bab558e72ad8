"""The ablation behind the 2TS verdict: 2TS with each setting of train.two_time_scale alone, then combined, each
tuned on compare's grid on the same data and stage 1 (experiments.ablation).

    bin/python jobs/ablation.py --data /data/twots --output ablation --t-star 80
    bin/python jobs/ablation.py --data /data/twots --output ablation --rows 2ts,held-out,finetune
"""

from experiments.ablation import AblationConfig, run
from experiments.compare import check_inputs
from twots.cli import run_job
from twots.config import load
from twots.spark import get_spark


def main() -> None:
    cfg = load(AblationConfig, "compare", description=__doc__)
    check_inputs(cfg)
    run(cfg, get_spark("twots-ablation"))
    print(f"[ablation] table: {cfg.output}/ablation.md")


if __name__ == "__main__":
    run_job(main)

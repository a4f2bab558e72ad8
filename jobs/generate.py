"""Synthetic Taobao-format interaction log (see pipelines/generate.py for the generative process).

    bin/spark-submit jobs/generate.py --rows 10000000 --output /data/taobao-10m --seed 7
"""

import json

from pipelines.config import GenerateConfig
from pipelines.generate import generate
from pipelines.pipeline import check_output
from twots.cli import run_job
from twots.config import load
from twots.spark import get_spark


def main() -> None:
    cfg = load(GenerateConfig, "generate", description=__doc__)
    check_output(cfg.output)
    report = generate(cfg, get_spark("twots-generate"))
    print(json.dumps({k: v for k, v in report.items() if k != "config"}), flush=True)


if __name__ == "__main__":
    run_job(main)

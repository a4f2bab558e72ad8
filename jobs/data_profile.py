"""Profile a raw log or a prepared output folder (statistics defined in pipelines/profile.py); JSON out.

Not `jobs/profile.py`: a script's folder comes first on sys.path, and a `profile.py` there would shadow the
standard library's `profile`, which pyspark imports (through cProfile), breaking every job in jobs/.

    bin/spark-submit jobs/data_profile.py --source taobao --input ../shared/data/taobao-sample/UserBehavior.csv \
        --output profile.json
    bin/spark-submit jobs/data_profile.py --input /data/twots --run-id <mlflow run id>   # prepared folder, to MLflow
"""

import json
from pathlib import Path

from pipelines.config import ProfileConfig
from pipelines.profile import log_to_mlflow, profile, summary, write_json
from pipelines.readers import check_input
from twots.cli import run_job
from twots.config import load
from twots.spark import get_spark


def main() -> None:
    cfg = load(ProfileConfig, "profile", description=__doc__)
    check_input(cfg.input)
    result = profile(cfg, get_spark("twots-profile"))
    print(summary(result), flush=True)
    if cfg.output:
        write_json(result, cfg.output)
        print(f"wrote {cfg.output}", flush=True)
    else:
        print(json.dumps(result), flush=True)
    if cfg.run_id:
        default = f"sqlite:///{Path(cfg.input).resolve() / 'mlflow.db'}" if cfg.source is None else None
        log_to_mlflow(result, cfg.run_id, cfg.tracking_uri or default)
        print(f"logged to MLflow run {cfg.run_id}", flush=True)


if __name__ == "__main__":
    run_job(main)

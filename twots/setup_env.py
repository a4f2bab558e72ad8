"""`make setup`'s last step: point the venv's Spark at Delta and fetch the Delta JARs once.

Writing spark-defaults.conf inside the venv's pyspark makes `spark-submit jobs/x.py` resolve Delta before the
JVM starts (settings given to SparkSession.builder come too late under spark-submit). Starting one local session
then makes Ivy download the JARs into its cache, so tests and jobs start offline afterwards.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twots.spark import DELTA_CONF, DELTA_PACKAGE


def write_spark_defaults(path: Path) -> bool:
    text = "# written by `make setup` (twots.setup_env)\n" + "".join(
        f"{key} {value}\n" for key, value in DELTA_CONF.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def delta_jars_cached() -> bool:
    _, artifact, version = DELTA_PACKAGE.split(":")
    cache = Path.home() / ".ivy2.5.2" / "jars"
    return any(cache.glob(f"io.delta_{artifact}-{version}.jar"))


def warm_ivy_cache() -> None:
    from twots.spark import get_spark

    spark = get_spark("twots-setup", master="local[1]")
    spark.range(1).count()
    spark.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spark-defaults", type=Path, required=True)
    args = parser.parse_args()
    if write_spark_defaults(args.spark_defaults):
        print(f"setup: wrote {args.spark_defaults}")
    if not delta_jars_cached():
        print(f"setup: resolving {DELTA_PACKAGE} from Maven Central into ~/.ivy2.5.2 (once)")
        warm_ivy_cache()


if __name__ == "__main__":
    main()

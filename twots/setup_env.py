"""`make setup`'s last step: point the venv's Spark at Delta, quiet its log, and fetch the Delta JARs once.

Writing spark-defaults.conf inside the venv's pyspark makes `spark-submit jobs/x.py` resolve Delta before the
JVM starts (settings given to SparkSession.builder come too late under spark-submit); log4j2.properties beside it
makes every JVM of this venv log at WARN unless $TWOTS_SPARK_LOG_LEVEL says otherwise (twots.spark.LOG4J2).
Starting one local session then makes Ivy download the JARs into its cache, so tests and jobs start offline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twots.spark import DELTA_CONF, DELTA_PACKAGE, LOG4J2, get_spark


def write_spark_conf(conf_dir: Path) -> list[Path]:
    """spark-defaults.conf and log4j2.properties in `conf_dir`; returns the files that changed."""
    defaults = "# written by `make setup` (twots.setup_env)\n" + "".join(
        f"{key} {value}\n" for key, value in DELTA_CONF.items())
    files = {conf_dir / "spark-defaults.conf": defaults, conf_dir / "log4j2.properties": LOG4J2}
    return [path for path, text in files.items() if _write(path, text)]


def _write(path: Path, text: str) -> bool:
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
    spark = get_spark("twots-setup", master="local[1]")
    spark.range(1).count()
    spark.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spark-defaults", type=Path, required=True,
                        help="pyspark/conf/spark-defaults.conf of the venv; log4j2.properties goes beside it")
    args = parser.parse_args()
    for path in write_spark_conf(args.spark_defaults.parent):
        print(f"setup: wrote {path}")
    if not delta_jars_cached():
        print(f"setup: resolving {DELTA_PACKAGE} from Maven Central into ~/.ivy2.5.2 (once)")
        warm_ivy_cache()


if __name__ == "__main__":
    main()

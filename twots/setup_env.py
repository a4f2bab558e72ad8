"""`make setup`'s last step: resolve the Delta JARs once, point the venv's Spark at them and at Delta, quiet its log.

The JARs are resolved from Maven Central by Ivy, through one local session, and copied into a folder of the venv's
Spark (twots.spark.delta_jars_dir). spark-defaults.conf inside the venv's pyspark then names those files
(`spark.jars`) with Delta's settings, so `spark-submit jobs/x.py` has Delta before the JVM starts (settings given to
SparkSession.builder come too late under spark-submit) and no start resolves anything or prints Ivy's report;
log4j2.properties beside it makes every JVM of this venv log at WARN unless $TWOTS_SPARK_LOG_LEVEL says otherwise
(twots.spark.LOG4J2). Each step does nothing when it is done.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from urllib.parse import urlparse

from twots.spark import DELTA_PACKAGE, LOG4J2, delta_conf, delta_jars_dir, get_spark


def write_spark_conf(conf_dir: Path) -> list[Path]:
    """spark-defaults.conf and log4j2.properties in `conf_dir`; returns the files that changed."""
    defaults = "# written by `make setup` (twots.setup_env)\n" + "".join(
        f"{key} {value}\n" for key, value in delta_conf().items())
    files = {conf_dir / "spark-defaults.conf": defaults, conf_dir / "log4j2.properties": LOG4J2}
    return [path for path, text in files.items() if _write(path, text)]


def _write(path: Path, text: str) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.read_text() == text:
        return False
    partial = path.with_name(path.name + ".partial")  # renamed into place: a JVM starting meanwhile reads it whole
    partial.write_text(text)
    partial.replace(path)
    return True


def resolve_delta_jars() -> Path:
    """delta_jars_dir(), filled with DELTA_PACKAGE's JARs and its dependencies' as Ivy resolves them in a local
    session, unless it exists. The folder appears whole (renamed into place), so it exists only complete."""
    folder = delta_jars_dir()
    if folder.is_dir():
        return folder
    spark = get_spark("twots-setup", master="local[1]")  # with spark.jars.packages: the folder is not there yet
    resolved = [Path(urlparse(uri).path) for uri in spark.sparkContext.getConf().get("spark.jars").split(",")]
    spark.stop()
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for jar in resolved:
        shutil.copyfile(jar, partial / jar.name)
    partial.rename(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spark-defaults", type=Path, required=True,
                        help="pyspark/conf/spark-defaults.conf of the venv; log4j2.properties goes beside it")
    args = parser.parse_args()
    if not delta_jars_dir().is_dir():
        print(f"setup: resolving {DELTA_PACKAGE} from Maven Central (once) into {delta_jars_dir()}")
        resolve_delta_jars()
    for path in write_spark_conf(args.spark_defaults.parent):
        print(f"setup: wrote {path}")


if __name__ == "__main__":
    main()

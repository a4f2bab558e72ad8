"""One way to get a SparkSession with Delta, locally or on Databricks.

On Databricks (DATABRICKS_RUNTIME_VERSION is set) Delta is built in and the session exists: we add nothing.
Locally, `make setup` writes the Delta settings into the venv's `pyspark/conf/spark-defaults.conf`, so that
`spark-submit jobs/x.py` resolves the Delta JARs before the JVM starts; the same settings are applied here too,
so a plain `python jobs/x.py` from any pyspark install works. Ivy caches the JARs in ~/.ivy2.5.2 between runs.

Spark logs at WARN: `make setup` writes LOG4J2 (the level read from $TWOTS_SPARK_LOG_LEVEL, default warn) beside
spark-defaults.conf, so the JVM is quiet from its first line, and every session gets `setLogLevel` of that
variable. A job's `--verbose` (or `spark: {log_level: INFO}` in a config file) sets it before Spark starts.
"""

from __future__ import annotations

import os
import sys
from typing import Literal

from pydantic import Field

from twots.config import Section

DELTA_PACKAGE = "io.delta:delta-spark_2.13:4.0.1"

DELTA_CONF = {
    "spark.jars.packages": DELTA_PACKAGE,
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}

LOCAL_CONF = {
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.databricks.delta.schema.autoMerge.enabled": "false",
    # Delta rebuilds each snapshot with 50 tasks by default; our tables have short logs (each run overwrites),
    # and on a 2-core box those tasks cost more than the reads (taobao-sample prepare: 120 s -> 77 s).
    "spark.databricks.delta.snapshotPartitions": "2",
}


LOG_LEVEL_ENV = "TWOTS_SPARK_LOG_LEVEL"
LOG_LEVELS = ("ERROR", "WARN", "INFO", "DEBUG")

# Spark's conf/log4j2.properties.template with the root level from the environment, and the WARN lines every
# local run prints (no native Hadoop, loopback address, no executor metrics on this OS) silenced.
LOG4J2 = f"""# written by `make setup` (twots.setup_env): Spark's log at ${LOG_LEVEL_ENV} (default warn)
rootLogger.level = ${{env:{LOG_LEVEL_ENV}:-warn}}
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
logger.hadoop.name = org.apache.hadoop.util.NativeCodeLoader
logger.hadoop.level = error
logger.loopback.name = org.apache.spark.util.Utils
logger.loopback.level = error
"""


class SparkSettings(Section):
    """The `spark` section of the config files: what every job's Spark session gets."""

    log_level: Literal[LOG_LEVELS] = Field("WARN", description="Spark's log level (a job's --verbose: INFO)")


def set_log_level(level: str) -> None:
    """The level of the Spark sessions (and JVMs) this process starts from now on."""
    os.environ[LOG_LEVEL_ENV] = level


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def get_spark(app_name: str = "twots", master: str | None = None, conf: dict[str, str] | None = None):
    from pyspark.sql import SparkSession

    if on_databricks():
        return SparkSession.builder.getOrCreate()
    # Python workers run PYSPARK_PYTHON, by default the `python3` on PATH, which lacks this venv's packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    for key, value in {**DELTA_CONF, **LOCAL_CONF, **(conf or {})}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(os.environ.get(LOG_LEVEL_ENV, "WARN").upper())
    return session

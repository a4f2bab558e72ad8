"""One way to get a SparkSession with Delta, locally or on Databricks.

On Databricks (DATABRICKS_RUNTIME_VERSION is set) Delta is built in and the session exists: we add nothing.
Locally, `make setup` writes the Delta settings into the venv's `pyspark/conf/spark-defaults.conf`, so that
`spark-submit jobs/x.py` resolves the Delta JARs before the JVM starts; the same settings are applied here too,
so a plain `python jobs/x.py` from any pyspark install works. Ivy caches the JARs in ~/.ivy2.5.2 between runs.
"""

from __future__ import annotations

import os
import sys

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
    return builder.getOrCreate()

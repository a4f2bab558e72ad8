"""Delta table writes: a rerun replaces a table atomically (overwrite), so a failed run leaves the last version."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession


def write_table(df: DataFrame, path: str) -> tuple[int, int]:
    """Overwrite the Delta table at `path` (schema included); returns (version, rows written)."""
    from delta.tables import DeltaTable

    df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)
    commit = DeltaTable.forPath(df.sparkSession, path).history(1).select("version", "operationMetrics").first()
    return int(commit["version"]), int(commit["operationMetrics"]["numOutputRows"])


def read_table(spark: SparkSession, path: str) -> DataFrame:
    return spark.read.format("delta").load(path)

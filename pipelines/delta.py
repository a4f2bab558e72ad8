"""Delta table writes: a rerun replaces a table atomically (overwrite), so a failed run leaves the last version."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession


def write_table(df: DataFrame, path: str) -> int:
    """Overwrite the Delta table at `path` (schema included) and return the version written."""
    df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)
    return table_version(df.sparkSession, path)


def table_version(spark: SparkSession, path: str) -> int:
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, path).history(1).select("version").first()[0])


def read_table(spark: SparkSession, path: str) -> DataFrame:
    return spark.read.format("delta").load(path)

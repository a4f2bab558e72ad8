"""Dense 0-based ids and ranks over a global sort order.

`dense_ids` numbers the distinct values of a key (users, items, features: at most a few million) with one
sorted window. `with_global_index` ranks every event (10M+ rows), where a window without `partitionBy` sorts
everything in one task; at 10M+ rows that is the bottleneck. Instead we range-partition on the sort keys, sort
within each partition, number its rows (the low 33 bits of monotonically_increasing_id are the row's position in
its partition: one shuffle, where a row_number window over the partition id would shuffle again by that id),
and add the sizes of the partitions before it. The numbered rows are checkpointed first, so the partition sizes
and the numbers come from one computation (range bounds are sampled, and a recomputation is not guaranteed to
sample the same ones).
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


def dense_ids(df: DataFrame, key: str, name: str) -> DataFrame:
    """Distinct values of `key` with `name`: int ids 0..n-1 in the sort order of `key`."""
    order = Window.orderBy(key)
    return df.select(key).distinct().select((F.row_number().over(order) - 1).cast("int").alias(name), key)


def with_global_index(df: DataFrame, order: list[str], name: str, partitions: int) -> tuple[DataFrame, int]:
    """Add column `name`, the 0-based rank by `order` (keys must be unique); returns (df, row count)."""
    ranged = df.repartitionByRange(partitions, *order).sortWithinPartitions(*order)
    local = ranged.select("*", F.spark_partition_id().alias("_part"),
                          F.monotonically_increasing_id().bitwiseAND((1 << 33) - 1).alias("_local"))
    local = local.localCheckpoint(eager=True)
    sizes = sorted((r["_part"], r["count"]) for r in local.groupBy("_part").count().collect())
    offsets, total = [], 0
    for part, size in sizes:
        offsets.append((part, total))
        total += size
    offset_df = df.sparkSession.createDataFrame(offsets or [(0, 0)], "_part int, _offset long")
    indexed = (local.join(F.broadcast(offset_df), "_part")
               .withColumn(name, F.col("_local") + F.col("_offset"))
               .drop("_part", "_local", "_offset"))
    return indexed, total

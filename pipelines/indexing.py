"""Dense 0-based ids and ranks over a global sort order.

`dense_ids` numbers the distinct values of a key (users, items, features: at most a few million) with one
sorted window. `with_global_index` ranks every event (10M+ rows), where a window without `partitionBy` sorts
everything in one task; at 10M+ rows that is the bottleneck. Instead the rank is split at a coarse bucket that
never decreases along the order (the pipeline's: the hour of ts), and the caller already has the rows per bucket
(prepare counts them in the parse's pass over the rows). The rows are hash-partitioned by bucket and sorted
within each partition; a row's rank is its place in its sorted partition plus the rows of earlier buckets minus
those earlier buckets that share its partition (both sums over the small table of bucket counts). One shuffle, no
sampling pass (a range partitioner computes its whole input once more to sample bounds), no checkpoint.

Why not a window partitioned by bucket (the rank within the bucket): its sort orders by the bucket first, and
Spark's sort compares an 8-byte prefix of the first key only, falling back to whole rows on ties, so every
comparison within an hour compared rows. Sorting within partitions by the caller's order lets the prefix be a key
with few ties (`packed_key`). At 10M rows on 2 cores, rows in random order, in a warm Spark session: 8.6-10.3 s
against 23.3-25.8 s (ranking only), 19.3-21.5 s against 29.5-37.4 s with the Delta write
(docs/benchmarks/2026-12-02-prepare-vs-duckdb.md).
The cost: one bucket's rows are sorted in one task, so a log whose events mostly fall in one hour ranks them in
one task (still correct).
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F


def dense_ids(df: DataFrame, key: str, name: str) -> DataFrame:
    """Distinct values of `key` with `name`: int ids 0..n-1 in the sort order of `key`."""
    order = Window.orderBy(key)
    return df.select(key).distinct().select((F.row_number().over(order) - 1).cast("int").alias(name), key)


def packed_key(major: Column, minor: Column, major_range: tuple[int, int], minor_count: int) -> list[Column]:
    """Sort keys ordering like (major, minor): one long, (major - lo) * minor_count + minor, when it fits (major
    in [lo, hi] of `major_range`, minor in [0, minor_count)); else the two columns."""
    lo, hi = major_range
    if (hi - lo + 1) * minor_count >= 2**63:
        return [major, minor]
    return [((major.cast("long") - lo) * minor_count + minor.cast("long"))]


def with_global_index(df: DataFrame, order: list[str | Column], name: str, bucket: Column,
                      bucket_counts: DataFrame, partitions: int) -> DataFrame:
    """Add column `name`, the 0-based rank by `order` (keys must be unique), sorting in `partitions` tasks.

    `bucket` must never decrease along `order`; `bucket_counts` (columns `bucket`, `count`) holds df's rows per
    value of `bucket`, exactly (one row per bucket that has rows: one per hour of the log with events), and
    `bucket` there has the type of `bucket` over df (the partition of a bucket is a hash of its value).
    """
    # repartition(partitions, col) puts a row in pmod(hash(col), partitions), Spark's HashPartitioning (a
    # repartition to a given number is never coalesced by adaptive execution); each row checks it below.
    part = F.pmod(F.hash("bucket"), F.lit(partitions))
    earlier = Window.orderBy("bucket").rowsBetween(Window.unboundedPreceding, -1)
    earlier_here = Window.partitionBy("_part").orderBy("bucket").rowsBetween(Window.unboundedPreceding, -1)
    offsets = bucket_counts.withColumn("_part", part).select(
        F.col("bucket").alias("_bucket"), "_part",
        (F.coalesce(F.sum("count").over(earlier), F.lit(0))
         - F.coalesce(F.sum("count").over(earlier_here), F.lit(0))).alias("_offset"))
    # monotonically_increasing_id is (partition << 33) + the row's number in its partition: after the sort, its place.
    place = F.monotonically_increasing_id() - F.spark_partition_id().cast("long") * (1 << 33)
    rank = F.when(F.spark_partition_id() == F.col("_part"), F.col("_offset") + place).otherwise(
        F.raise_error(F.lit("with_global_index: a row is not in its bucket's hash partition")).cast("long"))
    return (df.withColumn("_bucket", bucket).join(F.broadcast(offsets), "_bucket")
            .repartition(partitions, "_bucket").sortWithinPartitions(*order)
            .withColumn(name, rank).drop("_bucket", "_part", "_offset"))

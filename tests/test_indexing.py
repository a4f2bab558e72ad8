"""The global rank of pipelines.indexing against numpy's lexicographic sort, on ties and uneven buckets."""

import numpy as np
import pandas as pd
import pytest
from pyspark.errors import PySparkException
from pyspark.sql import functions as F

from pipelines.indexing import packed_key, with_global_index


@pytest.fixture(scope="module")
def events(spark):
    rng = np.random.default_rng(3)
    n = 5000
    # Many ties on ts (and on ts + user), one bucket with most of the rows, buckets with one row, gaps between them.
    ts = np.concatenate([rng.integers(0, 100, 300), rng.integers(500, 510, 4000), [9000],
                         rng.integers(20000, 20300, 699)])
    df = pd.DataFrame({"ts": ts, "user": rng.integers(0, 20, n), "item": rng.integers(0, 5, n),
                       "line": rng.permutation(n)})
    rows = spark.createDataFrame(df)
    bucket = F.floor(F.col("ts") / 100)
    return df, rows, bucket, rows.groupBy(bucket.alias("bucket")).count()


@pytest.mark.parametrize("packed", [False, True], ids=["columns", "packed"])
@pytest.mark.parametrize("partitions", [1, 3, 16])  # 16: more partitions than the 7 buckets, some stay empty
def test_global_index_is_the_rank_by_all_keys(events, packed, partitions):
    df, rows, bucket, counts = events
    first = packed_key(F.col("ts"), F.col("user"), (0, 20299), 20) if packed else ["ts", "user"]

    ranked = with_global_index(rows, [*first, "item", "line"], "rank", bucket, counts, partitions).toPandas()

    expected = df.iloc[np.lexsort((df.line, df.item, df.user, df.ts))].assign(rank=np.arange(len(df)))
    got = ranked.sort_values("rank")[["ts", "user", "item", "line", "rank"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True), check_dtype=False)


def test_packed_key_falls_back_to_two_columns_when_a_long_cannot_hold_it(spark):
    assert len(packed_key(F.col("a"), F.col("b"), (0, 2**40), 2**22)) == 1
    assert len(packed_key(F.col("a"), F.col("b"), (0, 2**40), 2**23)) == 2


def test_a_bucket_hashed_to_another_partition_fails_the_job(events):
    """The counts' bucket as int while the rows' is long: the two hash differently, and the rank must not be wrong
    silently."""
    _, rows, bucket, counts = events
    wrong = counts.select(F.col("bucket").cast("int").alias("bucket"), "count")
    with pytest.raises(PySparkException, match="not in its bucket's hash partition"):
        with_global_index(rows, ["ts", "user", "item", "line"], "rank", bucket, wrong, 3).collect()

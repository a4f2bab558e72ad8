"""The global rank of pipelines.indexing against numpy's lexicographic sort, on ties and uneven buckets."""

import numpy as np
import pandas as pd
from pyspark.sql import functions as F

from pipelines.indexing import with_global_index


def test_global_index_is_the_rank_by_all_keys(spark):
    rng = np.random.default_rng(3)
    n = 5000
    # Many ties on ts (and on ts + user), one bucket with most of the rows, buckets with one row, gaps between them.
    ts = np.concatenate([rng.integers(0, 100, 300), rng.integers(500, 510, 4000), [9000],
                         rng.integers(20000, 20300, 699)])
    df = pd.DataFrame({"ts": ts, "user": rng.integers(0, 20, n), "item": rng.integers(0, 5, n),
                       "line": rng.permutation(n)})
    rows = spark.createDataFrame(df)
    bucket = F.floor(F.col("ts") / 100)
    counts = rows.groupBy(bucket.alias("bucket")).count()

    ranked = with_global_index(rows, ["ts", "user", "item", "line"], "rank", bucket, counts).toPandas()

    expected = df.iloc[np.lexsort((df.line, df.item, df.user, df.ts))].assign(rank=np.arange(n))
    got = ranked.sort_values("rank")[["ts", "user", "item", "line", "rank"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True), check_dtype=False)

"""Evaluation's candidates never pass through the driver JVM in one piece: a driver with a 512 MB heap (a child
process, since the heap is fixed when the JVM starts) loads 150,000 events x 499 negatives (300 MB of ids, about
the 146k x 500 that killed compare at the default 1 GB heap) by reading the table's files; collecting the same
table through the JVM runs out of heap, and the error names the step, what it needed and the setting that helps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EVENTS, USERS, NEGATIVES, ITEMS = 150_000, 3_000, 499, 9_000


@pytest.mark.slow
def test_candidates_bigger_than_the_driver_heap_load(tmp_path):
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=1200,
                          check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"child failed (rc {proc.returncode}):\n{(proc.stdout + proc.stderr)[-6000:]}"
    out = json.loads(lines[-1])
    assert out["heap"] == "512m"
    expected, loaded = out["expected"], out["loaded"]
    assert loaded == expected  # counts per split, sums of every id, widths of the padded arrays
    assert expected["events"] == EVENTS and expected["neg_width"] == NEGATIVES
    oom = out["jvm_collect"]
    assert oom.startswith("collecting eval_candidates through the driver JVM: the driver JVM ran out of Java heap "
                          "(spark.driver.memory=512m) (it needs "), oom
    assert "spark-submit --driver-memory" in oom


def first_negative(event_id):
    """The first negative of an event (a Spark column or a numpy array of event ids)."""
    return event_id * 31 % ITEMS


def other_negatives(event_id):
    return event_id * 7919 % ITEMS


def child(folder: Path) -> dict:
    from conftest import TEST_JVM_OPTIONS
    from pyspark.sql import functions as F

    from twots.data.snapshot import read_delta
    from twots.evaluation.evaluate import load_arrays
    from twots.spark import OutOfMemory, get_spark, memory_guard

    spark = get_spark("twots-small-heap", master="local[2]", conf={
        "spark.driver.memory": "512m", "spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4",
        "spark.driver.extraJavaOptions": TEST_JVM_OPTIONS})
    spark.sparkContext.setLogLevel("OFF")
    events = spark.range(EVENTS, numPartitions=48).select(
        F.col("id").alias("event_id"), (F.col("id") % USERS).cast("int").alias("user_id"),
        (F.col("id") % ITEMS).cast("int").alias("item_id"), F.col("id").alias("ts"),
        F.when(F.col("id") < EVENTS // 3, "val").otherwise("test").alias("split"),
        # Cheap to generate on a busy box, still one row's own ids: [a(id), b(id) x 498].
        F.concat(F.array(first_negative(F.col("id")).cast("int")),
                 F.array_repeat(other_negatives(F.col("id")).cast("int"), NEGATIVES - 1)).alias("neg_item_ids"))
    events.write.format("delta").save(str(folder / "eval_candidates"))
    users = spark.range(USERS, numPartitions=2).select(F.col("id").cast("int").alias("user_id"),
                                                       (F.col("id") % 2 == 0).alias("is_active"),
                                                       (F.col("id") % 7 * 5).alias("n_train"))
    users.select("user_id", "is_active", F.expr(f"transform(sequence(0, cast(user_id % 20 as int)), "
                                                f"k -> cast(pmod(user_id + k, {ITEMS}) as int))").alias("item_ids")) \
        .write.format("delta").save(str(folder / "sequences"))
    users.write.format("delta").save(str(folder / "user_activity"))

    table = read_delta(spark, folder, "eval_candidates")
    ids = np.arange(EVENTS, dtype=np.int64)  # what was written, computed again here
    lengths = np.arange(USERS) % 20 + 1
    expected = {"events": EVENTS, "val": EVENTS // 3, "test": EVENTS - EVENTS // 3, "neg_width": NEGATIVES,
                "sums": [int((ids % USERS).sum()), int((ids % ITEMS).sum()), int(ids.sum()),
                         int(first_negative(ids).sum() + (NEGATIVES - 1) * other_negatives(ids).sum())],
                "warmup_sum": int(sum(((u + np.arange(n)) % ITEMS).sum() for u, n in enumerate(lengths))),
                "warmup_items": int(lengths.sum()), "warmup_width": int(lengths.max()), "rows_match": True}

    data = load_arrays(folder, spark, ("val", "test"))
    ev, warm = data.events, data.warmup.item_ids
    loaded = {"events": len(ev), "val": int((data.split == "val").sum()), "test": int((data.split == "test").sum()),
              "neg_width": ev.neg_item_ids.shape[1],
              "sums": [int(ev.user_id.sum()), int(ev.item_id.sum()), int(ev.event_id.sum()),
                       int(ev.neg_item_ids.sum(dtype="int64"))],
              "warmup_sum": int(warm[warm >= 0].sum()), "warmup_items": int((warm >= 0).sum()),
              "warmup_width": warm.shape[1],
              "rows_match": bool((ev.user_id == ev.event_id % USERS).all()
                                 and (ev.neg_item_ids[:, 0] == first_negative(ev.event_id)).all()
                                 and (ev.neg_item_ids[:, 1:] == other_negatives(ev.event_id)[:, None]).all())}
    out = {"heap": spark.sparkContext.getConf().get("spark.driver.memory"), "expected": expected, "loaded": loaded}
    try:
        with memory_guard(spark, "collecting eval_candidates through the driver JVM",
                          f"{EVENTS * (NEGATIVES + 4) * 4 / 2**20:,.0f} MB of ids"):
            table.toArrow()
        out["jvm_collect"] = "fit in the heap"
    except OutOfMemory as err:
        out["jvm_collect"] = str(err)
    return out


if __name__ == "__main__":
    result = child(Path(sys.argv[1]))
    print(json.dumps(result), flush=True)
    os._exit(0)  # after an OutOfMemoryError the JVM need not stop cleanly; the folder is pytest's to remove

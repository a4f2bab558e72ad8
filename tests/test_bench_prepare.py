"""bench/prepare.py's reading of Spark's event log: task metrics summed per prepare step, by the step property
every job of a step carries (Delta's own jobs included), across the files of a rolling event log."""

from __future__ import annotations

import json

from conftest import load_bench

from pipelines.pipeline import STEP_PROPERTY

bench = load_bench("prepare")


def job(stages: list[int], step: str | None, description: str) -> dict:
    properties = {"spark.job.description": description, **({STEP_PROPERTY: step} if step else {})}
    return {"Event": "SparkListenerJobStart", "Job ID": 0, "Stage IDs": stages, "Properties": properties}


def task(stage: int, run_ms: int, cpu_ns: int, gc_ms: int = 0, shuffle: int = 0, spilled: tuple = (0, 0)) -> dict:
    """A SparkListenerTaskEnd with the metric names Spark 4 writes."""
    return {"Event": "SparkListenerTaskEnd", "Stage ID": stage, "Stage Attempt ID": 0, "Task Metrics": {
        "Executor Run Time": run_ms, "Executor CPU Time": cpu_ns, "JVM GC Time": gc_ms,
        "Memory Bytes Spilled": spilled[0], "Disk Bytes Spilled": spilled[1],
        "Shuffle Write Metrics": {"Shuffle Bytes Written": shuffle, "Shuffle Records Written": 1}}}


def test_task_metrics_are_summed_per_step_across_a_rolling_event_log(tmp_path, capsys):
    log = tmp_path / "eventlog_v2_local-1"
    log.mkdir()
    files = {  # events_10 comes after events_2: numeric order, not the names' order
        "events_1_local-1": [job([0, 1], "parse", "prepare: parse"), task(0, 4000, 3_000_000_000, gc_ms=500),
                             task(1, 2000, 1_500_000_000, shuffle=2_000_000)],
        "events_2_local-1": [job([2], "interactions", "Delta: Compute snapshot"),  # Delta replaced the description
                             task(2, 1000, 800_000_000, spilled=(3_000_000, 1_000_000))],
        "events_10_local-1": [job([3], None, "no step"), task(3, 500, 100_000_000), task(1, 1000, 500_000_000),
                              {"Event": "SparkListenerTaskEnd", "Stage ID": 2, "Task Metrics": None}],  # failed task
    }
    for name, events in files.items():
        (log / name).write_text("".join(json.dumps(e) + "\n" for e in events))

    found = bench.task_time_by_step(log)

    assert set(found) == {"parse", "interactions", "other"}
    assert found["parse"] == {"stages": 2, "tasks": 3, "run_s": 7.0, "cpu_s": 5.0, "gc_s": 0.5,
                                 "shuffle_mb": 2.0, "spill_mb": 0.0}
    assert found["interactions"]["tasks"] == 1 and found["interactions"]["spill_mb"] == 4.0
    assert found["other"]["run_s"] == 0.5

    bench.print_task_time({"parse": 10.0, "interactions": 2.0}, found)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|\n").split("|")]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["parse"][7:9] == ["3.5 s", "6.5 s"]  # 7 task seconds on 2 cores: 3.5 s of the 10 s wall
    assert rows["other"][1] == "-" and rows["other"][8] == "-"

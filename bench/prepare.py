"""Prepare on generated Taobao-format data, against a single-node DuckDB yardstick in the same run.

    bin/python bench/prepare.py [--rows 1000000 10000000] [--runs 1] [--workdir bench-output/prepare]

Each size is generated once (`jobs/generate.py`, seed 7) (cached in the workdir). Each run then times, back to
back on the same files: `jobs/prepare.py` as its own process, as a user would run it (`local[2]`), and the same
logic in DuckDB (2 threads, this script's `duckdb` mode in its own process): validate every line with the same
reasons, dense ids, the global time order and split, activity, stage-1 offer sets, last-K sequences and the
evaluation sample, each table written as Parquet. Peak memory is the largest resident set of each process tree,
sampled every 0.2 s (experiments.memory.PeakRSS). Spark's step times come from its manifest.json. Prints one
table per size and the ratio Spark wall / DuckDB wall; medians when --runs > 1.

Where Spark's time goes: the Spark run writes its event log (<workdir>/eventlog-<rows>), and the bench prints,
per step, the tasks' run, CPU and GC seconds, shuffle bytes written and bytes spilled, against the step's wall.
Task seconds over the 2 cores are the executors' share of the wall; the rest is the driver's (planning, code
generation, scheduling, Delta's commits and snapshots) or waiting.

The two outputs are then compared: every table without random draws must hold the same rows (users, items,
interactions, user_activity, the ids of stage1_offers and of sequences). The negatives and the evaluation sample
use DuckDB's `hash` where Spark uses `xxhash64`: the same amount of hashing, other values.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from experiments.memory import PeakRSS  # noqa: E402  (after the path set-up)
from pipelines.config import STEPS as PREPARE_STEPS  # noqa: E402

CORES = 2  # Spark's local[CORES] and DuckDB's threads: the same cores for both engines
STEPS = [step for step in PREPARE_STEPS if step != "manifest"]  # the manifest step is in "start, manifest, exit"
# Tables (and columns) whose content has no random draw: Spark's and DuckDB's must be equal.
SAME_ROWS = {
    "users": "user_id, raw_user_id",
    "items": "item_id, raw_item_id, feature_ids, raw_features",
    "interactions": "event_id, user_id, item_id, ts, split, feature_ids",
    "user_activity": "user_id, n_train, is_active",
    "stage1_offers": "event_id, user_id, item_id",
    "sequences": "user_id, is_active, item_ids, prev_item_id",
}


def run_measured(cmd: list[str], env: dict) -> tuple[float, float, float, str]:
    """Run cmd; return (wall seconds, peak RSS of its process tree in GB, CPU seconds of that tree, its output).

    CPU seconds (user + system, each process's last sample) say what a run costs even on a shared box, where
    the wall time also counts the waits for a core.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    with PeakRSS({}, root=proc.pid, count_root=True) as memory:
        for line in proc.stdout:  # progress as it comes: a long run shows its finished steps
            log.append(line)
            if line.startswith(("[prepare]", "[duckdb]")):
                print("   ", line, end="", flush=True)
        proc.wait()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(log)[-4000:]}")
    return time.perf_counter() - start, memory.peak / 1e9, memory.cpu_s, "".join(log)


def task_time_by_step(event_log: Path) -> dict[str, dict]:
    """Sum Spark's task metrics per prepare step from an event log (JSON lines); the step is the job property
    pipelines.pipeline.STEP_PROPERTY of the job that ran the task's stage ("other" outside the steps)."""
    from pipelines.pipeline import STEP_PROPERTY

    stage_step, found = {}, {}
    # Spark 4 rolls its event log by default: a folder of events_<n>_<app id> files, read in the order of n.
    files = (sorted(event_log.glob("events_*"), key=lambda f: int(f.name.split("_")[1])) if event_log.is_dir()
             else [event_log])
    for event in _events(files):
        if event["Event"] == "SparkListenerJobStart":
            name = (event.get("Properties") or {}).get(STEP_PROPERTY) or "other"
            stage_step.update({stage: name for stage in event["Stage IDs"]})
        elif event["Event"] == "SparkListenerTaskEnd" and event.get("Task Metrics"):
            m = event["Task Metrics"]
            step = found.setdefault(stage_step.get(event["Stage ID"], "other"), {
                "stages": set(), "tasks": 0, "run_s": 0.0, "cpu_s": 0.0, "gc_s": 0.0, "shuffle_mb": 0.0,
                "spill_mb": 0.0})
            step["stages"].add(event["Stage ID"])
            step["tasks"] += 1
            step["run_s"] += m["Executor Run Time"] / 1e3
            step["cpu_s"] += m["Executor CPU Time"] / 1e9
            step["gc_s"] += m["JVM GC Time"] / 1e3
            step["shuffle_mb"] += m["Shuffle Write Metrics"]["Shuffle Bytes Written"] / 1e6
            step["spill_mb"] += (m["Memory Bytes Spilled"] + m["Disk Bytes Spilled"]) / 1e6
    return {name: {**step, "stages": len(step["stages"])} for name, step in found.items()}


def _events(files: list[Path]):
    """The events of the files, in order, parsed one line at a time."""
    for path in files:
        with path.open() as lines:
            yield from map(json.loads, lines)


def print_task_time(walls: dict[str, float], by_step: dict[str, dict], cores: int = CORES) -> None:
    print(f"\nSpark's tasks per step (event log, last run): executors' share of the wall = task seconds / {cores} "
          "cores; the rest is driver-side work or waiting")
    print("| step | wall | stages | tasks | task run s | task CPU s | GC s | executors' share | rest | shuffle MB "
          "| spilled MB |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for name in [*walls, *sorted(set(by_step) - set(walls))]:
        step, wall = by_step.get(name, {}), walls.get(name)
        share = step.get("run_s", 0.0) / cores
        cells = [f"{wall:.1f} s" if wall is not None else "-", str(step.get("stages", 0)), str(step.get("tasks", 0)),
                 *(f"{step.get(k, 0.0):.1f}" for k in ("run_s", "cpu_s", "gc_s")), f"{share:.1f} s",
                 f"{wall - share:.1f} s" if wall is not None else "-",
                 *(f"{step.get(k, 0.0):.1f}" for k in ("shuffle_mb", "spill_mb"))]
        print(f"| {name} | {' | '.join(cells)} |")


def prepare_duckdb(cfg, threads: int = CORES) -> dict:
    """The prepare logic of pipelines/ in DuckDB SQL, tables as Parquet under cfg.output; returns step times."""
    import duckdb

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"threads": threads})
    con.execute("SET enable_progress_bar = false")
    timings = {}

    def step(name, *statements):
        start = time.perf_counter()
        for sql in statements:
            con.execute(sql)
        timings[name] = round(time.perf_counter() - start, 3)
        print(f"[duckdb] {name} done in {timings[name]:.1f}s", flush=True)

    def write(name, query):
        return f"COPY ({query}) TO '{out / name}.parquet' (FORMAT parquet)"

    window = [f"WHEN ts < {cfg.min_ts} THEN 'out_of_window'"] if cfg.min_ts is not None else []
    window += [f"WHEN ts > {cfg.max_ts} THEN 'out_of_window'"] if cfg.max_ts is not None else []
    kept = ", ".join(f"'{b}'" for b in cfg.behaviors)
    files = f"{cfg.input}/part-*" if Path(cfg.input).is_dir() else cfg.input
    step("parse", f"""
      CREATE TEMP TABLE parsed AS
      WITH lines AS (
        SELECT regexp_replace(raw, '\\r$', '') AS raw, filename AS source_file, row_number() OVER () AS line
        FROM read_csv('{files}', columns={{'raw': 'VARCHAR'}}, delim='\\x01', quote='', escape='',
                      header=false, auto_detect=false, filename=true)),
      f AS (SELECT *, string_split(raw, ',') AS fields FROM lines),
      v AS (SELECT raw, source_file, line, len(fields) AS nf, trim(fields[1]) AS u, trim(fields[2]) AS i,
                   trim(fields[3]) AS c, trim(fields[4]) AS b, trim(fields[5]) AS t FROM f),
      w AS (SELECT *, CASE WHEN regexp_full_match(t, '[0-9]{{1,12}}') THEN TRY_CAST(t AS BIGINT) END AS ts FROM v)
      SELECT CASE
          WHEN trim(raw) = '' THEN 'empty_line'
          WHEN lower(trim(raw)) = 'user_id,item_id,category_id,behavior_type,timestamp' THEN 'header'
          WHEN nf <> 5 THEN 'wrong_field_count'
          WHEN coalesce(u = '' OR i = '' OR c = '' OR b = '' OR t = '', true) THEN 'missing_field'
          WHEN NOT (regexp_full_match(u, '[0-9]+') AND regexp_full_match(i, '[0-9]+')
                    AND regexp_full_match(c, '[0-9]+')) THEN 'non_numeric_id'
          WHEN ts IS NULL THEN 'bad_timestamp'
          {' '.join(window)}
          WHEN b NOT IN ('pv', 'buy', 'cart', 'fav') THEN 'unknown_behavior'
          WHEN b NOT IN ({kept}) THEN 'excluded_behavior'
        END AS reason, raw, source_file, line, u AS raw_user_id, i AS raw_item_id, ts, [c] AS raw_features
      FROM w""",
         "CREATE TEMP TABLE good AS SELECT line, raw_user_id, raw_item_id, ts, raw_features FROM parsed "
         "WHERE reason IS NULL")
    accepted, n_items = con.execute("SELECT count(*), count(DISTINCT raw_item_id) FROM good").fetchall()[0]
    step("rejects", write("rejects", "SELECT raw, reason, source_file FROM parsed WHERE reason IS NOT NULL"))
    step("users", """CREATE TEMP TABLE users AS SELECT (row_number() OVER (ORDER BY raw_user_id) - 1)::INT AS user_id,
                     raw_user_id FROM (SELECT DISTINCT raw_user_id FROM good)""", write("users", "FROM users"))
    step("items", """CREATE TEMP TABLE raw_items AS SELECT raw_item_id, list_sort(list(DISTINCT f)) AS raw_features
                     FROM (SELECT raw_item_id, unnest(raw_features) AS f FROM good) GROUP BY raw_item_id""",
         """CREATE TEMP TABLE features AS SELECT (row_number() OVER (ORDER BY f) - 1)::INT AS feature_id, f
            FROM (SELECT DISTINCT unnest(raw_features) AS f FROM raw_items)""",
         """CREATE TEMP TABLE items AS WITH ids AS (
              SELECT (row_number() OVER (ORDER BY raw_item_id) - 1)::INT AS item_id, raw_item_id, raw_features
              FROM raw_items)
            SELECT item_id, raw_item_id, (SELECT list_sort(list(feature_id)) FROM unnest(raw_features) AS x(f)
                                          JOIN features USING (f)) AS feature_ids, raw_features FROM ids""",
         write("items", "FROM items"))
    train_end = int(accepted * cfg.train_fraction)
    val_end = int(accepted * (cfg.train_fraction + cfg.val_fraction))
    step("interactions", f"""CREATE TEMP TABLE interactions AS
        SELECT event_id, user_id, item_id, ts,
               CASE WHEN event_id < {train_end} THEN 'train' WHEN event_id < {val_end} THEN 'val' ELSE 'test' END
                 AS split, feature_ids
        FROM (SELECT row_number() OVER (ORDER BY g.ts, u.user_id, it.item_id, g.line) - 1 AS event_id,
                     u.user_id, it.item_id, g.ts, it.feature_ids
              FROM good g JOIN users u USING (raw_user_id) JOIN items it USING (raw_item_id))""",
         write("interactions", "FROM interactions"))
    step("user_activity", f"""CREATE TEMP TABLE activity AS SELECT user_id, coalesce(n, 0)::INT AS n_train,
            coalesce(n, 0) > {cfg.t_star} AS is_active FROM users LEFT JOIN
            (SELECT user_id, count(*) AS n FROM interactions WHERE split = 'train' GROUP BY 1) USING (user_id)""",
         write("user_activity", "FROM activity"))

    def negatives(count, salt):
        return (f"list_transform(range({count}), lambda k: ((item_id + 1 + "
                f"(hash({cfg.seed}, {salt}, event_id, k) % {n_items - 1})::BIGINT) % {n_items})::INT)")

    step("stage1_offers", f"""CREATE TEMP TABLE offers AS SELECT event_id, user_id, item_id,
            {negatives(cfg.negatives, 1)} AS neg_item_ids FROM interactions WHERE split = 'train'""",
         write("stage1_offers", "FROM offers"))
    t_star, k = cfg.t_star, cfg.last_k
    kept_step = f"n <= {t_star} OR back <= {k}"
    step("sequences", write("sequences", f"""
        WITH r AS (SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY event_id DESC) AS back,
                          count(*) OVER (PARTITION BY user_id) AS n FROM offers)
        SELECT user_id, n > {t_star} AS is_active,
               list(item_id ORDER BY event_id) FILTER (WHERE {kept_step}) AS item_ids,
               flatten(list(neg_item_ids ORDER BY event_id) FILTER (WHERE {kept_step})) AS neg_item_ids,
               coalesce(max(item_id) FILTER (WHERE n > {t_star} AND back = {k + 1}), -1) AS prev_item_id
        FROM r GROUP BY user_id, n"""))
    sample = (f"WHERE hash({cfg.seed}, 3, user_id) % 1000000 < {int(cfg.eval_sample * 1_000_000)}"
              if cfg.eval_sample < 1 else "")
    step("eval_candidates", write("eval_candidates", f"""
        WITH s AS (SELECT *, min(event_id) OVER (PARTITION BY user_id, item_id) AS first FROM interactions {sample})
        SELECT event_id, user_id, item_id, ts, split, {negatives(cfg.eval_negatives, 2)} AS neg_item_ids,
               event_id > first AS is_repeat
        FROM s WHERE split IN ('val', 'test')"""))
    return {"accepted": accepted, "n_items": n_items, "timings_s": timings}


def compare_outputs(spark_out: Path, duck_out: Path) -> dict[str, str]:
    """Rows in one output and not the other, per table without random draws (Spark's Delta folder holds one
    version: the bench removes it before each run)."""
    import duckdb

    con = duckdb.connect(config={"threads": 2})
    con.execute("SET enable_progress_bar = false")
    found = {}
    for table, columns in SAME_ROWS.items():
        spark_rows = f"SELECT {columns} FROM read_parquet('{spark_out / table}/*.parquet')"
        duck_rows = f"SELECT {columns} FROM read_parquet('{duck_out / table}.parquet')"
        only = [con.execute(f"SELECT count(*) FROM ({a} EXCEPT ALL {b})").fetchall()[0][0]
                for a, b in ((spark_rows, duck_rows), (duck_rows, spark_rows))]
        found[table] = ("same rows" if only == [0, 0]
                        else f"DIFFERENT: {only[0]} only in Spark, {only[1]} only in DuckDB")
    return found


def main() -> None:
    if sys.argv[1:2] == ["duckdb"]:  # the yardstick's own process: same flags as jobs/prepare.py
        from pipelines.config import PrepareConfig
        from twots.config import load

        print(json.dumps(prepare_duckdb(load(PrepareConfig, "prepare", sys.argv[2:]))), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workdir", default=str(REPO / "bench-output" / "prepare"))
    parser.add_argument("--driver-memory", default="8g")
    parser.add_argument("--eval-sample", default="0.1", help="fraction of users evaluated (499 negatives each)")
    args = parser.parse_args()
    work = Path(args.workdir)
    submit = f"--master local[{CORES}] --driver-memory {args.driver_memory}"
    env = {**os.environ, "PYSPARK_SUBMIT_ARGS": f"{submit} pyspark-shell"}
    py = sys.executable
    for rows in args.rows:
        data, event_logs = work / f"taobao-{rows}", work / f"eventlog-{rows}"
        spark_env = {**os.environ, "PYSPARK_SUBMIT_ARGS": (
            f"{submit} --conf spark.eventLog.enabled=true --conf spark.eventLog.dir={event_logs.resolve().as_uri()} "
            "--conf spark.eventLog.compress=false pyspark-shell")}
        if not (data / "_generator.json").exists():
            gen_s, *_ = run_measured([py, "jobs/generate.py", "--rows", str(rows), "--output", str(data)], env)
            print(f"generated {rows:,} rows in {gen_s:.0f}s", flush=True)
        flags = ["--source", "taobao", "--input", str(data), "--eval-sample", args.eval_sample]
        spark_out, duck_out = work / f"prepared-{rows}", work / f"duckdb-{rows}"
        walls, peaks, cpus = {"spark": [], "duckdb": []}, {"spark": [], "duckdb": []}, {"spark": [], "duckdb": []}
        steps = {engine: {s: [] for s in STEPS} for engine in walls}
        steps_wall = {engine: [] for engine in walls}  # all steps, start to end: Spark runs some at the same time
        loads = []
        for run in range(args.runs):
            shutil.rmtree(event_logs, ignore_errors=True)
            event_logs.mkdir(parents=True)
            for engine, out, cmd, run_env in (("spark", spark_out, [py, "jobs/prepare.py"], spark_env),
                                              ("duckdb", duck_out, [py, "bench/prepare.py", "duckdb"], env)):
                shutil.rmtree(out, ignore_errors=True)
                wall, peak, cpu, log = run_measured([*cmd, *flags, "--output", str(out)], run_env)
                if engine == "spark":
                    manifest = json.loads((out / "manifest.json").read_text())
                    timings = spark_timings = manifest["timings_s"]
                    steps_wall[engine].append(manifest["wall_s"])
                else:
                    timings = json.loads(log.strip().splitlines()[-1])["timings_s"]
                    steps_wall[engine].append(sum(timings[s] for s in STEPS))
                walls[engine].append(wall)
                peaks[engine].append(peak)
                cpus[engine].append(cpu)
                for s in STEPS:
                    steps[engine][s].append(timings[s])
                print(f"rows {rows:,} run {run + 1} {engine}: {wall:.1f}s, {cpu:.1f} CPU s, peak {peak:.1f} GB",
                      flush=True)
            loads.append(os.getloadavg()[0])
            print(f"rows {rows:,} run {run + 1}: Spark / DuckDB = {walls['spark'][-1] / walls['duckdb'][-1]:.2f}x "
                  f"(1-minute system load {loads[-1]:.1f})", flush=True)
        med = {e: statistics.median(w) for e, w in walls.items()}
        print(f"\nprepare, {rows:,} generated Taobao-format rows, {os.cpu_count()}-core CPU: Spark local[{CORES}] vs "
              f"DuckDB {CORES} threads, {args.runs} run(s) each (median), eval_sample {args.eval_sample}, "
              f"1-minute system load after each run {', '.join(f'{x:.1f}' for x in loads)}")
        print("| step | Spark | DuckDB | ratio |\n|---|---|---|---|")
        for s in STEPS:
            a, b = statistics.median(steps["spark"][s]), statistics.median(steps["duckdb"][s])
            print(f"| {s} | {a:.1f} s | {b:.1f} s | {a / max(b, 1e-3):.1f}x |")
        together = {e: statistics.median(v) for e, v in steps_wall.items()}
        print(f"| the steps together (Spark's overlap) | {together['spark']:.1f} s | {together['duckdb']:.1f} s | "
              f"{together['spark'] / together['duckdb']:.1f}x |")
        starts = {e: med[e] - together[e] for e in med}
        print(f"| start, manifest, exit | {starts['spark']:.1f} s | {starts['duckdb']:.1f} s | |")
        print(f"| **total (process wall)** | {med['spark']:.1f} s | {med['duckdb']:.1f} s | "
              f"**{med['spark'] / med['duckdb']:.2f}x** |")
        cpu = {e: statistics.median(c) for e, c in cpus.items()}
        print(f"| CPU (user + system, process tree) | {cpu['spark']:.1f} s | {cpu['duckdb']:.1f} s | "
              f"{cpu['spark'] / cpu['duckdb']:.2f}x |")
        print(f"| peak RSS | {max(peaks['spark']):.1f} GB | {max(peaks['duckdb']):.1f} GB | |")
        (event_log,) = event_logs.iterdir()
        print_task_time(spark_timings, task_time_by_step(event_log))
        print(f"\nsame content (last run): {json.dumps(compare_outputs(spark_out, duck_out))}", flush=True)


if __name__ == "__main__":
    main()
